"""Zero-shot and few-shot prompting of a general model: the bottom rung of the spectrum.

Exemplars come from the training split only, never a row whose input is also a test input. ``exemplars: random``
draws them at random (fixed by the seed), for classification covering as many distinct labels as it can;
``exemplars: similar`` shows each row the training rows nearest to it (``retrieval/similar_exemplars.py``: the pool
is embedded in the meter's ``index`` phase, each input when it is answered). Classification is scored by label
likelihood by default (see ``inference/label_scoring.py``), generation tasks by greedy decoding; ``calibrate: true``
divides out the labels' prior measured on content-free inputs (``inference/calibration.py``).
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Literal, Sequence

from pydantic import Field, field_validator, model_validator

from lmtailor.core.context import RunContext
from lmtailor.core.example import Example
from lmtailor.core.strategy_output import StrategyOutput
from lmtailor.errors import UserError
from lmtailor.inference.answer import answer
from lmtailor.inference.backends import check_backend_name, open_predictor
from lmtailor.inference.backends.base import PredictRequest
from lmtailor.prompting.exemplars import Exemplars, RowExemplars
from lmtailor.retrieval.similar_exemplars import SimilarExemplars
from lmtailor.strategies.base import Strategy, StrategyConfig
from lmtailor.strategies.traits import StrategyTraits


class PromptConfig(StrategyConfig):
    """Knobs of a prompting run."""

    name: Literal["prompt"] = Field(description="registered strategy name")
    shots: int = Field(0, ge=0, description="exemplars (solved training rows) shown before each test row; 0: zero-shot")
    exemplars: Literal["random", "similar"] = Field(
        "random", description="how exemplars are chosen: random (rows of the training split drawn with the seed) or "
                              "similar (for each test row, the training rows nearest to it by the embedder)")
    embedder: str = Field("minilm-l6", description="exemplars: similar: the sentence embedder that measures "
                                                        "how near a training row is to the input")
    calibrate: bool = Field(False, description="contextual calibration of label scores (Zhao et al. 2021): divide "
                                               "each label's probability by its probability for content-free inputs "
                                               "(N/A, empty, [MASK]) in the same prompt; classification scored by "
                                               "likelihood only (not an openai: API model)")
    scoring: Literal["likelihood", "constrained", "generate"] | None = Field(
        None, description="how answers are produced: likelihood (score every label), constrained (greedy decoding "
                          "limited to the labels) or generate (free greedy text); default: likelihood for "
                          "classification (constrained for an openai: API model, which gives no label "
                          "likelihoods: a JSON answer limited to the labels), generate otherwise")
    backend: str | None = Field(
        None, description="inference engine (a name in BACKENDS): transformers (the model's weights in PyTorch), "
                          "llamacpp (the model's GGUF file in llama.cpp: an embedded model that ships one, a .gguf "
                          "path, or a trained row after `lmtailor export --merge --gguf`; decoder-only models, the "
                          "llamacpp extra) or openai; default: from the model reference (openai:MODEL@URL: the API, "
                          "else transformers)")

    _backend_known = field_validator("backend")(check_backend_name)

    @model_validator(mode="after")
    def _knobs_that_apply(self) -> "PromptConfig":
        check_prompt_knobs(self.shots, self.exemplars, self.calibrate, self.scoring)
        return self


def check_prompt_knobs(shots: int, exemplars: str, calibrate: bool, scoring: str | None) -> None:
    """Refuse knobs that would be silently ignored: similar exemplars with no shots, calibration without scores."""
    if exemplars == "similar" and shots == 0:
        raise ValueError("exemplars: similar chooses the exemplars shown, but shots is 0; set shots (e.g. 4) or "
                         "remove exemplars")
    if calibrate and scoring not in (None, "likelihood"):
        raise ValueError(f"calibrate: true recalibrates the label scores of scoring: likelihood, which "
                         f"scoring: {scoring} does not compute; remove calibrate or use scoring: likelihood")


def usable_pool(train: Sequence[Example], test: Sequence[Example]) -> list[Example]:
    """The training rows an exemplar may come from: none whose input is also a test input (a test row's twin)."""
    test_inputs = frozenset(e.input for e in test)
    return [e for e in train if e.input not in test_inputs]


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


class ExemplarChooser:
    """How a prompted rung (prompt, rag) picks its exemplars: one seeded random draw shown before every row, or each
    row's nearest training rows (``exemplars: similar``). Never a test row, nor a row sharing a test input."""

    def __init__(self, ctx: RunContext, shots: int, how: str, embedder: str, label: str) -> None:
        self.ctx, self.shots, self.how, self.embedder_ref, self.label = ctx, shots, how, embedder, label
        self.index = None

    def set_up(self, embedder=None) -> None:
        """``similar``: embed the training pool once (call it inside the meter's ``index`` phase); ``embedder``: an
        ``Embedder`` already loaded (rag's), else one is loaded from the configured reference."""
        if self.how != "similar" or not self.shots:
            return
        from lmtailor.retrieval.embedding import Embedder

        embedder = embedder or Embedder(self.embedder_ref)
        self.index = SimilarExemplars(usable_pool(self.ctx.data.train, self.ctx.data.test), embedder)

    def serving_params(self) -> int:
        """Parameters that answer beside the model: the embedder, for ``similar`` (it embeds every input)."""
        return sum(p.numel() for p in self.index.embedder.model.parameters()) if self.index is not None else 0

    def choose(self) -> Exemplars:
        """The exemplars of the test rows: the seeded draw, or (``similar``) each row's nearest training rows, which
        embeds the test inputs (call it inside the ``inference`` phase: a deployment pays it per request)."""
        ctx = self.ctx
        if self.index is not None:
            exemplars: Exemplars = self.index.nearest([e.input for e in ctx.data.test], self.shots)
            used = exemplars.distinct()
        else:
            exemplars = used = draw_exemplars(usable_pool(ctx.data.train, ctx.data.test), self.shots, ctx.seed,
                                              ctx.task.type == "classification")
        leaked = {e.id for e in used} & {e.id for e in ctx.data.test}
        if leaked:
            raise RuntimeError(f"exemplars {sorted(leaked)} are test rows; the splits share ids, which they must not")
        if used:
            ctx.log.info("%s: exemplars %s%s", self.label, ", ".join(e.id for e in used[:20]),
                         f" (+{len(used) - 20} more)" if len(used) > 20 else "")
        return exemplars

    def details(self, exemplars: Exemplars) -> dict:
        """What the record keeps: every exemplar id used (the honesty check reads them) and, per row, which."""
        if not isinstance(exemplars, RowExemplars):
            return {"exemplars": self.how, "exemplar_ids": [e.id for e in exemplars]}
        return {"exemplars": self.how, "embedder": self.embedder_ref,
                "exemplar_ids": sorted(e.id for e in exemplars.distinct()),
                "exemplar_ids_by_row": {row.id: [e.id for e in shots]
                                        for row, shots in zip(self.ctx.data.test, exemplars)}}


def exemplar_chooser(ctx: RunContext, shots: int, how: str, embedder: str, label: str) -> ExemplarChooser:
    """An ``ExemplarChooser`` set up: for ``similar``, the training pool embedded in the meter's ``index`` phase."""
    chooser = ExemplarChooser(ctx, shots, how, embedder, label)
    if how == "similar" and shots:
        with ctx.meter.phase("index"):
            chooser.set_up()
    return chooser


def prompt_label(shots: int, exemplars: str, calibrate: bool) -> str:
    """The knobs of a prompted row as words: "zero-shot", "4-shot similar", "4-shot, calibrated"."""
    text = "zero-shot" if shots == 0 else f"{shots}-shot" + (" similar" if exemplars == "similar" else "")
    return text + (", calibrated" if calibrate else "")


class PromptStrategy(Strategy):
    """Prompt a generative model (decoder-only or encoder-decoder) with the instruction and ``shots`` solved rows."""

    Config = PromptConfig
    config: PromptConfig
    TRAITS = StrategyTraits(place="prompting", use="prompted", rung="prompt")

    def default_label(self) -> str:
        return prompt_label(self.config.shots, self.config.exemplars, self.config.calibrate)

    def traits(self) -> StrategyTraits:
        shots = self.config.shots  # 0: zero-shot, the reference of the report's "Δ vs zero-shot"
        return replace(self.TRAITS, data=("exemplars",), exemplars=shots) if shots else self.TRAITS

    def uses_seed(self) -> bool:
        # zero-shot scoring and nearest-row exemplars are deterministic: one run says it all
        return self.config.shots > 0 and self.config.exemplars == "random"

    def accepts_api_models(self) -> bool:
        return True

    def _chooser(self, ctx: RunContext) -> ExemplarChooser:
        cfg = self.config
        return exemplar_chooser(ctx, cfg.shots, cfg.exemplars, cfg.embedder, self.label())

    def run(self, ctx: RunContext) -> StrategyOutput:
        cfg = self.config
        with ctx.meter.phase("load"):
            predictor = open_predictor(ctx.model_ref, cfg.backend, ctx)
        try:
            chooser = self._chooser(ctx)
            if predictor.n_params is not None:  # an endpoint's are not known here
                ctx.meter.set_params(0, predictor.n_params + chooser.serving_params())
            with ctx.meter.phase("inference"):
                exemplars = chooser.choose()
                request = PredictRequest(ctx.task, ctx.data.test, ctx.budget, exemplars, cfg.scoring,
                                         calibrate=cfg.calibrate, progress_desc=f"{self.label()} {ctx.model_ref}")
                predictions, inference = answer(predictor, request, ctx.meter)
        finally:
            predictor.close()
        details = {"shots": cfg.shots, "backend": predictor.name, **chooser.details(exemplars),
                   "calibrate": cfg.calibrate, "scoring": inference["mode"],
                   "truncated_inputs": inference["truncated_inputs"], "inference": inference, **predictor.describe()}
        return StrategyOutput(predictions=predictions, details=details)

