"""The row and split types every strategy, scorer and report shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """One task row: an input text, its gold target, and a stable id that names where it came from."""

    id: str
    input: str
    target: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class DatasetSplits:
    """Disjoint train / validation / test rows of one dataset, fixed by a seed."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]
    source: str = ""

    def ids(self) -> dict[str, list[str]]:
        """Return the row ids of each split (written to the run directory so users see which rows scored)."""
        return {
            "train": [e.id for e in self.train],
            "validation": [e.id for e in self.validation],
            "test": [e.id for e in self.test],
        }
