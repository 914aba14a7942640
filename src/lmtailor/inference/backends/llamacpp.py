"""The llama.cpp backend: a decoder-only model's GGUF file in llama.cpp (the ``llamacpp`` extra), fed lmtailor's own
prompt token ids (``inference/llamacpp_predict.py``), so both engines see the same prompts. Chosen by
``backend: llamacpp``; it claims no model reference by itself (a ``.gguf`` path also loads in transformers)."""

from __future__ import annotations

from typing import ClassVar

from lmtailor.core.context import RunContext
from lmtailor.inference.backends.base import Answers, PredictRequest, Predictor
from lmtailor.inference.llamacpp import LoadedLlamaCpp, load_llamacpp
from lmtailor.inference.llamacpp_predict import llamacpp_generate, llamacpp_labels
from lmtailor.measure.meter import Meter


class LlamaCppPredictor(Predictor):
    """A GGUF loaded in llama.cpp, with the Hugging Face tokenizer that writes its prompts."""

    name: ClassVar[str] = "llamacpp"

    def __init__(self, loaded: LoadedLlamaCpp) -> None:
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.n_params = loaded.model.n_params
        self.input_limit = loaded.model.n_ctx  # the context holds the prompt and the answer

    @classmethod
    def claims(cls, model_ref: str) -> bool:
        return False

    @classmethod
    def open(cls, model_ref: str, ctx: RunContext) -> "LlamaCppPredictor":
        return cls(load_llamacpp(model_ref))

    def score_labels(self, request: PredictRequest, meter: Meter) -> Answers:
        return llamacpp_labels(self.model, self.tokenizer, request, meter)

    def generate(self, request: PredictRequest, meter: Meter) -> Answers:
        return llamacpp_generate(self.model, self.tokenizer, request, meter)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def describe(self) -> dict:
        return {"gguf": self.model.describe()["gguf"]}  # which file and weight type answered: Q4_1 is not fp32

    def close(self) -> None:
        self.model.close()
