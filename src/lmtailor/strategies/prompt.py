"""Zero-shot and few-shot prompting of a general model: the bottom rung of the spectrum.

Exemplars are drawn at random (fixed by the seed) from the training split only; for classification the draw
covers as many distinct labels as it can. Classification is scored by label likelihood by default (see
``inference/label_scoring.py``), generation tasks by greedy decoding.
"""

from __future__ import annotations

import random
from typing import Literal, Sequence

from pydantic import Field

from lmtailor.data.example import Example
from lmtailor.errors import UserError
from lmtailor.strategies.base import RunContext, Strategy, StrategyConfig, StrategyOutput


class PromptConfig(StrategyConfig):
    """Knobs of a prompting run."""

    name: Literal["prompt"] = Field(description="registered strategy name")
    shots: int = Field(0, ge=0, description="exemplars (solved training rows) shown before each test row; 0: zero-shot")
    exemplars: Literal["random"] = Field(
        "random", description="how exemplars are chosen: random rows of the training split, fixed by the seed")
    scoring: Literal["likelihood", "constrained", "generate"] | None = Field(
        None, description="how answers are produced: likelihood (score every label), constrained (greedy decoding "
                          "limited to the labels) or generate (free greedy text); default: likelihood for "
                          "classification (constrained for an openai: API model, which gives no label "
                          "likelihoods: a JSON answer limited to the labels), generate otherwise")
    backend: Literal["transformers", "llamacpp"] = Field(
        "transformers", description="inference engine: transformers (the model's weights in PyTorch) or llamacpp "
                                    "(the model's GGUF file in llama.cpp: an embedded model that ships one, a .gguf "
                                    "path, or a trained row after `lmtailor export --merge --gguf`); llamacpp runs "
                                    "decoder-only models and needs the llamacpp extra")


def draw_exemplars(train: Sequence[Example], shots: int, seed: int, distinct_targets: bool,
                   exclude_inputs: frozenset[str] = frozenset()) -> list[Example]:
    """Draw ``shots`` rows from ``train`` at random; with ``distinct_targets``, one per target before any repeat."""
    pool = [e for e in train if e.input not in exclude_inputs]
    if shots > len(pool):
        raise UserError(f"shots={shots} needs {shots} training rows, but the training split has {len(pool)} usable "
                        "rows; lower shots or raise data.max_train")
    rng = random.Random(seed)
    order = rng.sample(pool, len(pool))
    if not distinct_targets:
        return order[:shots]
    seen: set[str] = set()
    first = [e for e in order if not (e.target in seen or seen.add(e.target))]  # first row of each target
    picked = first[:shots]
    chosen = {id(e) for e in picked}
    picked += [e for e in order if id(e) not in chosen][: shots - len(picked)]
    rng.shuffle(picked)  # so labels do not appear in a fixed pattern (the repeats all at the end)
    return picked


class PromptStrategy(Strategy):
    """Prompt a generative model (decoder-only or encoder-decoder) with the instruction and ``shots`` solved rows."""

    Config = PromptConfig
    config: PromptConfig

    def default_label(self) -> str:
        return "zero-shot" if self.config.shots == 0 else f"{self.config.shots}-shot"

    def uses_seed(self) -> bool:
        return self.config.shots > 0  # zero-shot scoring is deterministic: one run says it all

    def accepts_api_models(self) -> bool:
        return True

    def run(self, ctx: RunContext) -> StrategyOutput:
        from lmtailor.inference.predict import predict
        from lmtailor.models import load_model
        from lmtailor.remote.reference import is_remote

        cfg = self.config
        if is_remote(ctx.model_ref) and cfg.backend == "transformers":
            return self._run_remote(ctx)
        if cfg.backend == "llamacpp":
            return self._run_llamacpp(ctx)
        with ctx.meter.phase("load"):
            loaded = load_model(ctx.model_ref, ctx.runtime)
        if loaded.family == "encoder":
            raise UserError(f"{ctx.model_ref} is an encoder: it has no language-model head to prompt; fine-tune it as "
                            "a classifier (finetune) or prompt a decoder-only or encoder-decoder model")
        ctx.meter.set_params(0, sum(p.numel() for p in loaded.model.parameters()))
        exemplars = self._exemplars(ctx)
        with ctx.meter.phase("inference"):
            predictions, inference = predict(loaded.model, loaded.tokenizer, ctx.task, ctx.data.test, exemplars,
                                             ctx.budget, ctx.meter, mode=cfg.scoring,
                                             progress_desc=f"{self.label()} {ctx.model_ref}")
        return StrategyOutput(predictions=predictions, details=self._details(exemplars, inference))

    def _run_llamacpp(self, ctx: RunContext) -> StrategyOutput:
        """Score or generate through llama.cpp on the model's GGUF (prompts from its Hugging Face tokenizer)."""
        from lmtailor.inference.llamacpp import load_llamacpp
        from lmtailor.inference.llamacpp_predict import predict_llamacpp

        with ctx.meter.phase("load"):
            loaded = load_llamacpp(ctx.model_ref)
        try:
            ctx.meter.set_params(0, loaded.model.n_params)
            exemplars = self._exemplars(ctx)
            with ctx.meter.phase("inference"):
                predictions, inference = predict_llamacpp(loaded.model, loaded.tokenizer, ctx.task, ctx.data.test,
                                                          exemplars, ctx.budget, ctx.meter, mode=self.config.scoring,
                                                          progress_desc=f"{self.label()} {ctx.model_ref} (llama.cpp)")
        finally:
            loaded.model.close()
        details = self._details(exemplars, inference)
        details["gguf"] = inference["gguf"]  # which file and weight type answered: Q4_1 is not the fp32 model
        return StrategyOutput(predictions=predictions, details=details)

    def _exemplars(self, ctx: RunContext) -> list[Example]:
        test_inputs = frozenset(e.input for e in ctx.data.test)  # a duplicate of a test row is no exemplar either
        exemplars = draw_exemplars(ctx.data.train, self.config.shots, ctx.seed, ctx.task.type == "classification",
                                   test_inputs)
        leaked = {e.id for e in exemplars} & {e.id for e in ctx.data.test}
        if leaked:
            raise RuntimeError(f"exemplars {sorted(leaked)} are test rows; the splits share ids, which they must not")
        if exemplars:
            ctx.log.info("%s: exemplars %s", self.label(), ", ".join(e.id for e in exemplars))
        return exemplars

    def _details(self, exemplars: list[Example], inference: dict) -> dict:
        return {"shots": self.config.shots, "exemplars": self.config.exemplars, "backend": self.config.backend,
                "exemplar_ids": [e.id for e in exemplars], "scoring": inference["mode"],
                "truncated_inputs": inference["truncated_inputs"], "inference": inference}

    def _run_remote(self, ctx: RunContext) -> StrategyOutput:
        """Ask an OpenAI-compatible endpoint (``openai:MODEL@URL``); its bill comes from the responses' usage."""
        from lmtailor.remote.client import OpenAIEndpoint
        from lmtailor.remote.predict import predict_remote
        from lmtailor.remote.reference import parse_endpoint

        with ctx.meter.phase("load"):
            endpoint = OpenAIEndpoint(parse_endpoint(ctx.model_ref), ctx.api)
        exemplars = self._exemplars(ctx)
        with ctx.meter.phase("inference"):
            predictions, inference = predict_remote(endpoint, ctx.task, ctx.data.test, exemplars, ctx.budget,
                                                    ctx.meter, mode=self.config.scoring,
                                                    progress_desc=f"{self.label()} {ctx.model_ref}")
        return StrategyOutput(predictions=predictions, details=self._details(exemplars, inference))
