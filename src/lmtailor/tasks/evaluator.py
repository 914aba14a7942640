"""The one evaluator: every strategy's predictions are scored here, on the same test rows, by the task's scorer.

Besides the corpus-level metrics, each test row's own score on the primary metric is kept (``details["per_row"]``,
in test-row order) so that the report can put a bootstrap confidence interval over test rows around the mean.

Retrieval strategies also hand over the documents they retrieved per row; where the rows name their gold document
(``meta["gold_doc"]``, a document id or a list of them) retrieval is scored too: recall@k and MRR, beside the task
metric.
"""

from __future__ import annotations

from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.tasks import TASK_TYPES
from lmtailor.tasks.base import Metric
from lmtailor.tasks.generation import _tokenizer
from lmtailor.tasks.qa import _alternatives, token_f1
from lmtailor.tasks.retrieval_metrics import retrieval_metrics


def evaluate(task: TaskSpec, test: list[Example], predictions: list[str],
             retrieved: list[list[str]] | None = None, k: int | None = None) -> dict:
    """Score ``predictions`` (aligned with ``test``) with the task type's scorer, and ``retrieved`` at ``k``."""
    if len(predictions) != len(test):
        raise ValueError(f"strategy returned {len(predictions)} predictions for {len(test)} test rows")
    scorer = TASK_TYPES.get(task.type)()
    # A task type may read richer references from the rows (e.g. qa: every accepted answer in meta["answers"]).
    references = scorer.references(test) if hasattr(scorer, "references") else [e.target for e in test]
    result = scorer.score(references, predictions, task.labels)
    result["primary_metric"] = scorer.primary_metric
    per_row = per_row_scores(task.type, scorer.primary_metric, references, predictions)
    if per_row is not None:
        result["details"]["per_row"] = per_row
    if retrieved is not None:
        metrics, details = score_retrieval(test, retrieved, k or max(map(len, retrieved), default=1))
        result["metrics"] += metrics
        result["details"]["retrieval"] = details
    return result


def _accuracy_rows(references: list, predictions: list[str]) -> list[float]:
    return [float(r == p) for r, p in zip(references, predictions)]


def _qa_f1_rows(references: list, predictions: list[str]) -> list[float]:
    return [max(token_f1(g, p) for g in _alternatives(r)) for r, p in zip(references, predictions)]


def _rouge_l_rows(references: list, predictions: list[str]) -> list[float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_tokenizer())  # the tokenizer Generation.score uses
    return [scorer.score(r, p)["rougeL"].fmeasure for r, p in zip(references, predictions)]


# Only metrics that are a mean over rows have per-row scores: their mean is the metric itself. Corpus-level ones
# (macro-F1, BLEU, chrF) do not decompose, so a metric missing here gets no per-row list rather than a made-up one.
_PER_ROW = {("classification", "accuracy"): _accuracy_rows, ("qa", "f1"): _qa_f1_rows,
            ("generation", "rougeL"): _rouge_l_rows}


def per_row_scores(task_type: str, metric: str, references: list, predictions: list[str]) -> list[float] | None:
    """Each row's own score on ``metric`` of ``task_type`` (their mean is the metric), or None when the metric is
    not a mean over rows (or this task type's per-row scorer is not known)."""
    rows = _PER_ROW.get((task_type, metric))
    return None if rows is None else rows(references, predictions)


def score_retrieval(test: list[Example], retrieved: list[list[str]], k: int) -> tuple[list[dict], dict]:
    """recall@k and MRR over the rows with a gold document; no metrics (and the reason) when none has one."""
    if len(retrieved) != len(test):
        raise ValueError(f"strategy returned retrieved documents for {len(retrieved)} of {len(test)} test rows")
    scored = [(docs, e.meta["gold_doc"]) for docs, e in zip(retrieved, test) if e.meta.get("gold_doc")]
    if not scored:
        return [], {"scored": False, "reason": "no test row names its gold document (meta gold_doc)"}
    m = retrieval_metrics([d for d, _ in scored], [g for _, g in scored], k)
    metrics = [Metric(f"recall@{k}", m[f"recall@{k}"]), Metric("mrr", m["mrr"])]
    return [x.as_dict() for x in metrics], {"scored": True, "k": k, "queries": m["queries"], f"hit@{k}": m[f"hit@{k}"],
                                            "rows_without_gold": len(test) - len(scored)}
