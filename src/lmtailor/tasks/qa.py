"""Question answering: SQuAD exact match and token F1, the best over a row's gold answers.

A row's gold answers are ``Example.meta["answers"]`` (a list of alternatives) when it has them, else its target
(``Qa.references``). Answers are normalised as the official SQuAD evaluation script does (lowercase, drop
punctuation, drop the articles a/an/the, collapse whitespace), with punctuation taken in the Unicode sense (as
MLQA's evaluation does) so that « », ¿ or 、 do not cost a match.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import ClassVar

from lmtailor.core.example import Example
from lmtailor.tasks.base import Metric

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _is_punct(ch: str) -> bool:
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")


def normalize_answer(text: str) -> str:
    """SQuAD answer normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if not _is_punct(ch))
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(gold: str, prediction: str) -> float:
    """1.0 when the normalised texts are equal, else 0.0."""
    return float(normalize_answer(gold) == normalize_answer(prediction))


def token_f1(gold: str, prediction: str) -> float:
    """F1 of the normalised tokens (as a bag); when either side is empty, 1.0 only if both are (SQuAD 2.0)."""
    gold_tokens, pred_tokens = normalize_answer(gold).split(), normalize_answer(prediction).split()
    if not gold_tokens or not pred_tokens:
        return float(gold_tokens == pred_tokens)
    same = sum((Counter(gold_tokens) & Counter(pred_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _alternatives(reference: str | Sequence[str]) -> list[str]:
    answers = [reference] if isinstance(reference, str) else list(reference)
    if not answers:
        raise ValueError("a reference has no gold answer (an empty answers list)")
    return answers


class Qa:
    """Answer a question with a short text; scored by token F1 (headline) and exact match, SQuAD-style."""

    name: ClassVar[str] = "qa"
    primary_metric: ClassVar[str] = "f1"
    output: ClassVar[str] = "text"
    #: only a document that IS an answer shows it: the phrase belongs in the document the question is about
    target_in_corpus: ClassVar[str] = "equals"

    @staticmethod
    def references(rows: list[Example]) -> list[list[str]]:
        """The gold answers of each row: ``meta["answers"]`` when given, else the target alone."""
        return [list(e.meta.get("answers") or [e.target]) for e in rows]

    def score(self, references: list[str] | list[Sequence[str]], predictions: list[str],
              labels: tuple[str, ...] | None) -> dict:
        """Score aligned lists; each reference is one gold answer or a list of alternatives (the best one counts)."""
        if len(references) != len(predictions):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        n = len(references)
        em = f1 = 0.0
        for ref, pred in zip(references, predictions):
            golds = _alternatives(ref)
            em += max(exact_match(g, pred) for g in golds)
            f1 += max(token_f1(g, pred) for g in golds)
        metrics = [Metric("f1", f1 / n if n else 0.0), Metric("exact_match", em / n if n else 0.0)]
        return {"metrics": [m.as_dict() for m in metrics],
                "details": {"n": n, "empty_predictions": sum(not p.strip() for p in predictions)}}
