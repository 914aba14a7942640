"""Exemplars shared by every row, or chosen per row (``exemplars: similar``), in one shape for every engine.

The predict functions take either a plain sequence of exemplars (the same solved rows before every test row) or a
``RowExemplars`` (item i: the exemplars of row i). ``exemplars_per_row`` turns both into one list per row, and
``cut_exemplars`` cuts every distinct exemplar's input to the budget once, counting each cut exemplar once.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

from lmtailor.core.example import Example


class RowExemplars(tuple):
    """Exemplars chosen per test row: item i is the (ordered) exemplar list shown before row i."""

    def __new__(cls, lists: Sequence[Sequence[Example]]) -> "RowExemplars":
        return super().__new__(cls, (tuple(x) for x in lists))

    def distinct(self) -> list[Example]:
        """Every exemplar used by some row, once each, in first-use order."""
        seen: dict[str, Example] = {}
        for row in self:
            for ex in row:
                seen.setdefault(ex.id, ex)
        return list(seen.values())


Exemplars = Union[Sequence[Example], RowExemplars]


def exemplars_per_row(exemplars: Exemplars, n_rows: int) -> list[Sequence[Example]]:
    """One exemplar list per row: a ``RowExemplars`` as it is (it must have ``n_rows`` items), shared ones repeated."""
    if isinstance(exemplars, RowExemplars):
        if len(exemplars) != n_rows:
            raise ValueError(f"{len(exemplars)} exemplar lists for {n_rows} rows")
        return list(exemplars)
    shared = tuple(exemplars)
    return [shared] * n_rows


def shot_count(exemplars: Exemplars) -> int:
    """Exemplars before each row (per-row lists all have the same length; the longest is reported)."""
    if isinstance(exemplars, RowExemplars):
        return max((len(x) for x in exemplars), default=0)
    return len(exemplars)


def cut_exemplars(per_row: list[Sequence[Example]],
                  cut: Callable[[str], tuple[str, bool]]) -> tuple[list[list[Example]], int]:
    """Every row's exemplars with inputs cut by ``cut(text) -> (text, was_cut)``; (lists, distinct exemplars cut).

    Each distinct exemplar (by id) is cut once, so shared exemplars cost one tokenization, not one per row.
    """
    done: dict[str, tuple[Example, bool]] = {}
    out = []
    for row in per_row:
        shots = []
        for ex in row:
            if ex.id not in done:
                text, was_cut = cut(ex.input)
                done[ex.id] = (Example(ex.id, text, ex.target, ex.meta), was_cut)
            shots.append(done[ex.id][0])
        out.append(shots)
    return out, sum(was_cut for _, was_cut in done.values())
