"""The nearest-neighbour floor: answer each row with what the training rows most like it say, and no language model.

For a task whose answer is one of the labels (classification), the ``k`` training rows nearest the input by cosine
similarity of sentence embeddings vote, one vote each; a tie goes to the tied label whose nearest row is closest.
For a task that generates text (generation, qa), the answer is the nearest training row's target, copied.

Why it is in the table: prompting with each input's nearest training rows as exemplars (``exemplars: similar``)
can score far above zero-shot while the language model adds little to what the embedder already knows (on the
demo's task the similar-exemplar prompt scored about what a vote of the same neighbours scores). Beside this row a
reader sees whether the model, or only the retrieval, earns the gain; it is also a real deployment candidate, at the
price of one small encoder per request. The row's model is the embedder (``models: [minilm-l6]``); ``k`` is fixed
and documented, never chosen on the test rows.

The pool is the training rows minus any whose input is also a test input (as for exemplars); the neighbours of
every answered row are recorded as its exemplars, so the honesty checks verify that no test row was used.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import numpy as np
from pydantic import Field

from lmtailor.core.context import RunContext
from lmtailor.core.example import Example
from lmtailor.core.strategy_output import StrategyOutput
from lmtailor.errors import UserError
from lmtailor.strategies.base import Strategy, StrategyConfig
from lmtailor.strategies.prompt import usable_pool
from lmtailor.strategies.traits import StrategyTraits
from lmtailor.tasks import TASK_TYPES


class NearestConfig(StrategyConfig):
    """Knobs of the nearest-neighbour row."""

    name: Literal["nearest"] = Field(description="registered strategy name")
    k: int | None = Field(None, ge=1, description="label tasks: neighbours that vote (default 5); text tasks copy "
                                                  "the nearest row's answer, so k must be 1 or unset")


def vote(neighbours: list[Example]) -> str:
    """The most common target among ``neighbours`` (nearest first); a tie goes to the tied target seen first, which
    is the one whose nearest row is closest."""
    counts = Counter(e.target for e in neighbours)
    top = max(counts.values())
    return next(e.target for e in neighbours if counts[e.target] == top)


class NearestStrategy(Strategy):
    """k-nearest-neighbour vote (labels) or the nearest row's answer (text), by the row's model as the embedder."""

    Config = NearestConfig
    config: NearestConfig
    TRAITS = StrategyTraits(place="floor", use="floor", rung="nearest", data=("training rows",))

    def default_label(self) -> str:
        return "nearest" if self.config.k is None else f"{self.config.k}-nearest"

    def uses_seed(self) -> bool:
        return False  # embeddings and the vote are deterministic: every seed would give the same answers

    def uses_training_data(self) -> bool:
        return True

    def run(self, ctx: RunContext) -> StrategyOutput:
        from lmtailor.retrieval.embedding import Embedder

        labels_task = TASK_TYPES.get(ctx.task.type).output == "labels"
        k = self.config.k or (5 if labels_task else 1)
        if not labels_task and k != 1:
            raise UserError(f"{self.label()}: k={k} is for label tasks; a {ctx.task.type} task copies the nearest "
                            "row's answer, so remove k or set k: 1")
        pool = usable_pool(ctx.data.train, ctx.data.test)
        if len(pool) < k:
            raise UserError(f"{self.label()}: k={k} needs {k} training rows, but {len(pool)} are usable; lower k or "
                            "raise data.max_train")
        with ctx.meter.phase("index"):  # once per deployment: the training rows embedded
            embedder = Embedder(ctx.model_ref)
            vectors = embedder.encode_queries([e.input for e in pool])
        ctx.meter.set_params(0, sum(p.numel() for p in embedder.model.parameters()))  # nothing trained
        with ctx.meter.phase("inference"):  # per request: the input embedded, then the vote
            sims = embedder.encode_queries([e.input for e in ctx.data.test]) @ vectors.T
            neighbours = [[pool[j] for j in np.argsort(-row, kind="stable")[:k]] for row in sims]
            predictions = [vote(n) if labels_task else n[0].target for n in neighbours]
            ctx.meter.add_examples("inference", len(ctx.data.test))
        rule = (f"a vote of the {k} nearest of {len(pool)} training rows" if labels_task
                else f"the answer of the nearest of {len(pool)} training rows")
        return StrategyOutput(predictions=predictions, details={
            "rule": rule, "k": k, "embedder": ctx.model_ref,
            # the neighbours are what the row was shown: the honesty checks read them as exemplars
            "exemplars": "nearest", "exemplar_ids": sorted({e.id for n in neighbours for e in n}),
            "exemplar_ids_by_row": {row.id: [e.id for e in n] for row, n in zip(ctx.data.test, neighbours)}})
