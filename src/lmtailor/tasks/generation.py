"""Free-text generation: exact match, ROUGE-1/2/L (rouge-score), and corpus BLEU and chrF (sacrebleu).

Every metric is on a 0-1 scale, higher is better: sacrebleu's 0-100 scores are divided by 100 so that the report's
"percentage points" mean the same thing for every metric.
"""

from __future__ import annotations

import re
from typing import ClassVar

from lmtailor.tasks.base import Metric

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def _normalize(text: str) -> str:
    return " ".join(text.strip().split())


def _tokenizer():
    """rouge-score's tokenization (lowercase, Porter stemmer on words over 3 letters), but Unicode-aware.

    Its default tokenizer keeps only ``[a-z0-9]``, so "café" becomes "caf" and a Greek or Chinese text has no tokens
    at all (every prediction scores 0); letters and digits of any script are kept here.
    """
    from nltk.stem import porter
    from rouge_score.tokenizers import Tokenizer

    words = re.compile(r"[^\W_]+")  # letters and digits of any script; "_" splits like rouge-score does
    stemmer = porter.PorterStemmer()

    class UnicodeTokenizer(Tokenizer):
        def tokenize(self, text: str) -> list[str]:
            tokens = words.findall(text.lower())
            return [stemmer.stem(t) if len(t) > 3 and t.isascii() else t for t in tokens]

    return UnicodeTokenizer()


def rouge(references: list[str], predictions: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure over aligned pairs (0 for an empty list)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=_tokenizer())
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for ref, pred in zip(references, predictions):
        scores = scorer.score(ref, pred)
        for kind in ROUGE_TYPES:
            totals[kind] += scores[kind].fmeasure
    n = len(references)
    return {kind: total / n if n else 0.0 for kind, total in totals.items()}


def bleu_chrf(references: list[str], predictions: list[str]) -> dict[str, float]:
    """Corpus-level BLEU and chrF (sacrebleu defaults: 13a tokenizer, exponential smoothing), on a 0-1 scale."""
    if not references:
        return {"bleu": 0.0, "chrf": 0.0}
    from sacrebleu.metrics import BLEU, CHRF

    # One reference per row; sacrebleu takes a list of reference streams, each aligned with the predictions.
    return {"bleu": BLEU().corpus_score(predictions, [references]).score / 100,
            "chrf": CHRF().corpus_score(predictions, [references]).score / 100}


class Generation:
    """Write a text; scored by ROUGE-L F-measure (headline), ROUGE-1/2, exact match, BLEU and chrF."""

    name: ClassVar[str] = "generation"
    primary_metric: ClassVar[str] = "rougeL"
    output: ClassVar[str] = "text"
    #: a corpus document containing an answer shows it (retrieval/exclusion.py)
    target_in_corpus: ClassVar[str] = "contains"

    def score(self, references: list[str], predictions: list[str], labels: tuple[str, ...] | None) -> dict:
        if len(references) != len(predictions):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        n = len(references)
        r = rouge(references, predictions)
        exact = sum(_normalize(ref) == _normalize(pred) for ref, pred in zip(references, predictions))
        corpus = bleu_chrf(references, predictions)
        metrics = [
            Metric("rougeL", r["rougeL"]),
            Metric("rouge1", r["rouge1"]),
            Metric("rouge2", r["rouge2"]),
            Metric("exact_match", exact / n if n else 0.0),
            Metric("bleu", corpus["bleu"]),
            Metric("chrf", corpus["chrf"]),
        ]
        return {"metrics": [m.as_dict() for m in metrics],
                "details": {"n": n, "empty_predictions": sum(not p.strip() for p in predictions)}}
