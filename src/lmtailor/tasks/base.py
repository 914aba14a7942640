"""What a task type is: how its predictions are produced (labels or free text) and how they are scored.

The resolved task itself (``TaskSpec``) is a shared type of the bottom layer: ``core/task_spec.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol


@dataclass(frozen=True)
class Metric:
    """One score, with the direction that makes it better (the report must not guess)."""

    name: str
    value: float
    higher_is_better: bool = True

    def as_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "higher_is_better": self.higher_is_better}


class TaskType(Protocol):
    """A task type: scores predictions against references; the first metric is the headline one."""

    name: ClassVar[str]
    primary_metric: ClassVar[str]
    #: "labels": strategies choose among ``TaskSpec.labels``; "text": strategies generate free text.
    output: ClassVar[str]
    #: how corpora are checked for answers (retrieval/exclusion.py): "contains", "equals" or "ignored"
    target_in_corpus: ClassVar[str]

    def score(self, references: list[str], predictions: list[str], labels: tuple[str, ...] | None) -> dict:
        """Return ``{"metrics": [Metric.as_dict(), ...], "details": {...}}`` for aligned lists."""
        ...
