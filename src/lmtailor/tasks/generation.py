"""Free-text generation: exact match and ROUGE-L (rouge-score, the maintained reference implementation)."""

from __future__ import annotations

from typing import ClassVar

from lmtailor.tasks.base import Metric


def _normalize(text: str) -> str:
    return " ".join(text.strip().split())


class Generation:
    """Write a text; scored by exact match (whitespace-normalised) and ROUGE-L F-measure."""

    name: ClassVar[str] = "generation"
    primary_metric: ClassVar[str] = "rougeL"
    output: ClassVar[str] = "text"

    def score(self, references: list[str], predictions: list[str], labels: tuple[str, ...] | None) -> dict:
        from rouge_score import rouge_scorer

        if len(references) != len(predictions):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        n = len(references)
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        rouge = [scorer.score(r, p)["rougeL"].fmeasure for r, p in zip(references, predictions)]
        exact = [_normalize(r) == _normalize(p) for r, p in zip(references, predictions)]
        metrics = [
            Metric("rougeL", sum(rouge) / n if n else 0.0),
            Metric("exact_match", sum(exact) / n if n else 0.0),
        ]
        return {"metrics": [m.as_dict() for m in metrics], "details": {"n": n, "empty_predictions": sum(not p.strip() for p in predictions)}}
