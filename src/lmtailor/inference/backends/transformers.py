"""The transformers backend: a Hugging Face model's weights in PyTorch, the default for any local or hub model.

It routes by what the model's family adapter says it predicts with (``models/families``), in one place
(``_PATHS``): "causal" answers through ``inference/causal.py`` (chat or plain prompts), "seq2seq" through
``inference/seq2seq.py`` (Flan-style source text). A family that predicts with nothing (encoders: no language-model
head) is refused when opened.
"""

from __future__ import annotations

from typing import Callable, ClassVar

from lmtailor.core.context import RunContext
from lmtailor.errors import UserError
from lmtailor.inference.backends.base import Answers, PredictRequest, Predictor
from lmtailor.inference.causal import causal_generate, causal_labels
from lmtailor.inference.context_limit import input_limit
from lmtailor.inference.seq2seq import seq2seq_generate, seq2seq_labels
from lmtailor.measure.meter import Meter
from lmtailor.models import load_model
from lmtailor.models.families import model_family

Path = Callable[..., Answers]
# the family adapter's ``predicts_with`` -> (score labels, generate): the one place this backend tells paths apart
_PATHS: dict[str, tuple[Path, Path]] = {
    "causal": (causal_labels, causal_generate),
    "seq2seq": (seq2seq_labels, seq2seq_generate),
}


class TransformersPredictor(Predictor):
    """A loaded decoder-only or encoder-decoder model and its tokenizer (a tuned model is answered the same way)."""

    name: ClassVar[str] = "transformers"

    def __init__(self, model, tokenizer) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.family = model_family(model)
        self._labels, self._generate = _PATHS[self.family.predicts_with]
        self.n_params = sum(p.numel() for p in model.parameters())
        self.input_limit = input_limit(model)
        self.answer_in_context = not self.family.seq2seq  # an encoder-decoder's answer is the decoder's

    @classmethod
    def claims(cls, model_ref: str) -> bool:
        return False  # the default: it runs any reference no other backend claims

    @classmethod
    def open(cls, model_ref: str, ctx: RunContext) -> "TransformersPredictor":
        loaded = load_model(model_ref, ctx.runtime)
        if loaded.adapter.predicts_with is None:
            raise UserError(f"{model_ref} is an encoder: it has no language-model head to prompt or to read passages "
                            "and answer with; fine-tune it as a classifier (finetune) or use a decoder-only or "
                            "encoder-decoder model")
        return cls(loaded.model, loaded.tokenizer)

    def score_labels(self, request: PredictRequest, meter: Meter) -> Answers:
        return self._labels(self.model, self.tokenizer, request, meter)

    def generate(self, request: PredictRequest, meter: Meter) -> Answers:
        return self._generate(self.model, self.tokenizer, request, meter)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
