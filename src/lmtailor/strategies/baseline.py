"""The trivial baseline: the free rule a user would try before any model, the floor every score is read against.

No model, no training, no money: for a task whose answer is one of the labels (classification), the most common
label of the training rows (ties: the first in ``task.labels`` order); for a task that generates text (generation,
qa), the input's first sentence cut to ``max_words`` words (default 20). The rule is fixed and documented rather than
tuned: a rule chosen on the test rows would be no floor, and one rule a reader can apply by hand is the point.

Every run adds this row once (runner.plan_rows) unless the strategies list it already or the experiment sets
``trivial_baseline: false``. Its record says ``strategy: "baseline"`` and ``details.rule`` (what it predicted), so
the report (and any reader of the records) can tell a row that scored below it. The report never recommends it
unless no other configuration beats it by the paired test (report/recommend.py).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Literal

from pydantic import Field

from lmtailor.core.context import RunContext
from lmtailor.core.example import Example
from lmtailor.core.strategy_output import StrategyOutput
from lmtailor.strategies.base import Strategy, StrategyConfig
from lmtailor.strategies.traits import StrategyTraits
from lmtailor.tasks import TASK_TYPES

NO_MODEL = "none"  # the model column of the baseline row: it uses no model
# A sentence ends at . ! or ? followed by white space, or at a blank line (a docstring's summary line has no full
# stop before its blank line). A single line break does not end it: wrapped text breaks lines mid-sentence.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


class BaselineConfig(StrategyConfig):
    """Knobs of the trivial baseline row."""

    name: Literal["baseline"] = Field(description="registered strategy name")
    max_words: int = Field(20, ge=1, description="text tasks: the input's first sentence is cut to this many words")


def majority_label(train: list[Example], labels: tuple[str, ...] | None) -> str:
    """The most common target of ``train``; ties go to the label listed first in ``labels`` (then sort order)."""
    if not train:
        raise ValueError("the majority-class baseline needs training rows")
    counts = Counter(e.target for e in train)
    order = {label: i for i, label in enumerate(labels or ())}
    return min(counts, key=lambda t: (-counts[t], order.get(t, len(order)), t))


def first_sentence(text: str, max_words: int) -> str:
    """The first sentence of ``text`` (white space collapsed), cut to ``max_words`` words."""
    sentence = _SENTENCE_END.split(text.strip(), maxsplit=1)[0]
    return " ".join(sentence.split()[:max_words])


class BaselineStrategy(Strategy):
    """The majority class (label tasks) or the input's first sentence (text tasks): no model, about $0 and 0 s."""

    Config = BaselineConfig
    config: BaselineConfig
    # A fixed rule: it counts the training rows' labels, fits nothing, and is read as using no data.
    TRAITS = StrategyTraits(place="floor", use="floor", rung="baseline")

    def default_label(self) -> str:
        return "baseline"

    def uses_seed(self) -> bool:
        return False  # a fixed rule: every seed would give the same answers

    def uses_model(self) -> bool:
        return False

    def run(self, ctx: RunContext) -> StrategyOutput:
        ctx.meter.set_params(0, 0)
        labels_task = TASK_TYPES.get(ctx.task.type).output == "labels"
        with ctx.meter.phase("inference"):
            if labels_task:
                answer = majority_label(ctx.data.train, ctx.task.labels)
                predictions = [answer] * len(ctx.data.test)
                rule = f"majority class of the {len(ctx.data.train)} training rows: {answer!r}"
            else:
                predictions = [first_sentence(e.input, self.config.max_words) for e in ctx.data.test]
                rule = f"the input's first sentence, cut to {self.config.max_words} words"
            ctx.meter.add_examples("inference", len(ctx.data.test))
        return StrategyOutput(predictions=predictions, details={"rule": rule, "kind": "majority-class" if labels_task
                                                                else "first-sentence"})
