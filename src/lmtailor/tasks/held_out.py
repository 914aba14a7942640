"""Every row answers the test rows and the validation rows in one pass; both are scored by the one evaluator.

The runner hands a strategy ``test = test + validation`` (``held_out_data``), so every exclusion a strategy applies
to the rows it answers (exemplars, retrieval corpora, ``task:train``, content duplicates) protects the validation
rows too, and every strategy (present and future, local or API) is scored on validation without code of its own.
``ctx.data.validation`` is unchanged: trained strategies still use it for their validation loss and early stopping.
``split_and_score`` cuts the predictions (and retrieved documents) back into the two sets and scores each: the test
score is what the report shows, the validation score is what the report chooses by (report/selection.py).

The meter's inference phase then covers both sets: its per-example latency and $ per 1k stay per example (time and
bill divided by the rows answered), and the record's ``validation.rows`` says how many of the answered rows were
validation rows; counts in ``details`` (e.g. truncated inputs) cover both sets.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from lmtailor.core.example import DatasetSplits, Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.tasks.evaluator import evaluate


def ids_digest(ids: list[str]) -> str:
    """The digest of a list of row ids (which rows, in which order), as stored in the records."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def held_out_data(data: DatasetSplits) -> DatasetSplits:
    """``data`` with the validation rows appended to the rows to answer (test first, then validation)."""
    return replace(data, test=list(data.test) + list(data.validation))


def split_and_score(task: TaskSpec, test: list[Example], validation: list[Example], predictions: list[str],
                    retrieved: list[list[str]] | None = None, k: int | None = None) -> tuple[dict, dict | None]:
    """Score the test part and the validation part of ``predictions`` (aligned with test + validation).

    Returns (the evaluator's result on the test rows, the record's ``validation`` block or None when there are no
    validation rows). The validation block: ``{"rows", "ids_sha256", "metrics", "primary_metric",
    "score_details"}`` (``score_details["per_row"]`` in validation-row order).
    """
    n, expected = len(test), len(test) + len(validation)
    if len(predictions) != expected:
        raise ValueError(f"strategy returned {len(predictions)} predictions for {expected} rows "
                         f"({n} test + {len(validation)} validation)")
    if retrieved is not None and len(retrieved) != expected:
        raise ValueError(f"strategy returned retrieved documents for {len(retrieved)} of {expected} rows")
    scored = evaluate(task, test, predictions[:n], None if retrieved is None else retrieved[:n], k)
    if not validation:
        return scored, None
    val = evaluate(task, validation, predictions[n:], None if retrieved is None else retrieved[n:], k)
    return scored, {"rows": len(validation), "ids_sha256": ids_digest([e.id for e in validation]),
                    "metrics": val["metrics"], "primary_metric": val["primary_metric"],
                    "score_details": val["details"]}
