"""A planned row: one strategy run (a configured strategy on one model, a training-set size and a seed) and its id.

Here, below the runner, so that what plans rows (``runner.plan_rows``) and what adds rows to a plan
(``strategies/controls.py``) both build them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmtailor.paths import slug
from lmtailor.strategies.base import Strategy


@dataclass
class PlannedRow:
    """One strategy run: a configured strategy on one model, with an optional training-set size and a seed."""

    row_id: str
    strategy: Strategy
    model_ref: str
    seed: int
    train_size: int | None
    index: int = 0  # position in the plan: the table keeps the experiment file's order

    @property
    def label(self) -> str:
        size = f" n={self.train_size}" if self.train_size is not None else ""
        return self.strategy.label() + size


def unique_row_id(row: PlannedRow, seen: set[str]) -> str:
    """A readable id for ``row`` (label, model, seed), made unique against ``seen`` with "-2", "-3"...; adds it."""
    base = f"{slug(row.label)}__{slug(row.model_ref)}__s{row.seed}"
    row_id, k = base, 2
    while row_id in seen:
        row_id, k = f"{base}-{k}", k + 1
    seen.add(row_id)
    return row_id
