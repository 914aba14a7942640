"""Choosing on validation, reporting on test.

Every configuration is scored on the validation rows as well as the test rows (runner.py), with the same scorer.
Wherever the report *chooses* — the best configuration of a rung, the recommendation, a learning curve's data
required — it chooses on the validation scores, and then reports the test scores of what it chose: a rung with seven
configurations would otherwise report a best-of-seven score that is optimistic by construction. When some candidate
has no validation score (no validation rows, ``data.max_validation: 0``, or records written before validation was
scored) the choice falls back to the test scores, and the report says so.
"""

from __future__ import annotations

VALIDATION, TEST = "validation", "test"


def selection_split(groups: list[dict]) -> str:
    """``"validation"`` when every group with a test score also has a validation score, else ``"test"``."""
    scored = [g for g in groups if g.get("score_mean") is not None]
    if scored and all(g.get("validation_score_mean") is not None for g in scored):
        return VALIDATION
    return TEST


def selection_score(group: dict, split: str) -> float | None:
    """The score ``group`` is chosen by on ``split``: its validation mean, or its test mean."""
    return group.get("validation_score_mean") if split == VALIDATION else group.get("score_mean")


def signed(group: dict, split: str) -> float:
    """The selection score, negated for a lower-is-better metric, so that larger is always better."""
    value = selection_score(group, split)
    return value if group.get("higher_is_better") in (True, None) else -value


def best_of(groups: list[dict], split: str) -> dict | None:
    """The group with the best selection score on ``split``; ties: the first in plan order."""
    found = [g for g in groups if selection_score(g, split) is not None]
    return max(found, key=lambda g: signed(g, split)) if found else None  # max keeps the first of equals


def selection_block(groups: list[dict], validation_rows: int, test_rows: int) -> dict:
    """results.json's ``selection``: the split choices are made on, the row counts, and the sentence saying so."""
    split = selection_split(groups)
    return {"split": split, "validation_rows": validation_rows, "test_rows": test_rows,
            "sentence": selection_sentence(split, validation_rows, test_rows)}


def selection_sentence(split: str, validation_rows: int, test_rows: int) -> str:
    """The report's one line on how configurations were chosen and where their scores come from."""
    if split == VALIDATION:
        return (f"Configurations were chosen on the {validation_rows} validation rows; scores are on the "
                f"{test_rows} test rows.")
    why = ("the run has no validation rows (data.max_validation: 0 or data.validation_fraction: 0)"
           if not validation_rows else
           "some rows have no validation scores (records written by an older lmtailor, or a metric that is not "
           "scored on validation)")
    return (f"Configurations were chosen on the {test_rows} test rows, because {why}: the scores of chosen "
            "configurations are optimistic (chosen and reported on the same rows).")
