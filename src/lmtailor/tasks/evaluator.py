"""The one evaluator: every strategy's predictions are scored here, on the same test rows, by the task's scorer."""

from __future__ import annotations

from lmtailor.data.example import Example
from lmtailor.tasks import TASK_TYPES, TaskSpec


def evaluate(task: TaskSpec, test: list[Example], predictions: list[str]) -> dict:
    """Score ``predictions`` (aligned with ``test``) with the task type's scorer."""
    if len(predictions) != len(test):
        raise ValueError(f"strategy returned {len(predictions)} predictions for {len(test)} test rows")
    scorer = TASK_TYPES.get(task.type)()
    # A task type may read richer references from the rows (e.g. qa: every accepted answer in meta["answers"]).
    references = scorer.references(test) if hasattr(scorer, "references") else [e.target for e in test]
    result = scorer.score(references, predictions, task.labels)
    result["primary_metric"] = scorer.primary_metric
    return result
