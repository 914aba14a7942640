"""Classification: accuracy, macro-F1 and per-class counts."""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

from lmtailor.tasks.base import Metric


class Classification:
    """Pick one label from a fixed set; scored by accuracy and macro-F1 over the gold label set."""

    name: ClassVar[str] = "classification"
    primary_metric: ClassVar[str] = "accuracy"
    output: ClassVar[str] = "labels"
    #: corpora are not checked for labels (retrieval/exclusion.py): they are common words, not a leak
    target_in_corpus: ClassVar[str] = "ignored"

    def score(self, references: list[str], predictions: list[str], labels: tuple[str, ...] | None) -> dict:
        if len(references) != len(predictions):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        n = len(references)
        correct = sum(r == p for r, p in zip(references, predictions))
        classes = sorted(set(labels or ()) | set(references))
        per_class = {}
        f1s = []
        for c in classes:
            tp = sum(r == c and p == c for r, p in zip(references, predictions))
            fp = sum(r != c and p == c for r, p in zip(references, predictions))
            fn = sum(r == c and p != c for r, p in zip(references, predictions))
            precision = tp / (tp + fp) if tp + fp else 0.0
            recall = tp / (tp + fn) if tp + fn else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            per_class[c] = {"support": tp + fn, "predicted": tp + fp, "correct": tp, "f1": round(f1, 4)}
            # Macro-F1 averages over classes present in the gold test rows, as scikit-learn does with labels=None.
            if tp + fn:
                f1s.append(f1)
        outside = sum(p not in classes for p in predictions)
        metrics = [
            Metric("accuracy", correct / n if n else 0.0),
            Metric("macro_f1", sum(f1s) / len(f1s) if f1s else 0.0),
        ]
        return {
            "metrics": [m.as_dict() for m in metrics],
            "details": {"n": n, "per_class": per_class, "predicted_outside_label_set": outside,
                        "prediction_counts": dict(Counter(predictions).most_common())},
        }
