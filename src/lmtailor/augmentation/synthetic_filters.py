"""Parsing a teacher's reply into a row, and the filters a synthetic row must pass (self-instruct style).

Each filter is a small function that returns a ``Rejected(reason, detail)`` or ``None`` (the row passes); the
reasons are the names in ``REASONS`` and go into the rejection log. Duplicates are judged on the row's *input*:
that is what a synthetic row must never copy from the real data (a copied test input would leak the answer into
training). Similarity is ROUGE-L F1 from ``rouge_score``, as in self-instruct (Wang et al. 2023), which keeps an
instruction only when its ROUGE-L to every existing one is below 0.7.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple, Sequence

UNPARSEABLE = "unparseable"
LABEL_NOT_IN_SET = "label_not_in_set"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
EXACT_DUPLICATE = "exact_duplicate"
NOT_NOVEL = "not_novel"
NEAR_DUPLICATE = "near_duplicate"
LABEL_QUOTA_FULL = "label_quota_full"
SURPLUS = "surplus"  # generated in the last batch after the target count was reached
REASONS = (UNPARSEABLE, LABEL_NOT_IN_SET, TOO_SHORT, TOO_LONG, EXACT_DUPLICATE, NOT_NOVEL, NEAR_DUPLICATE,
           LABEL_QUOTA_FULL, SURPLUS)


class Rejected(NamedTuple):
    """Why a generated row was dropped: one of ``REASONS`` and a sentence a person can check."""

    reason: str
    detail: str


@dataclass(frozen=True)
class Parsed:
    """A teacher's reply split into the task's fields."""

    input: str
    target: str


# Markers at the start of a line, tolerating markdown emphasis ("**Input:**") and any case.
_INPUT = re.compile(r"^[ \t>*_#]*input[ \t*_]*:[*_]*[ \t]*", re.IGNORECASE | re.MULTILINE)
_OUTPUT = re.compile(r"^[ \t>*_#]*output[ \t*_]*:[*_]*[ \t]*", re.IGNORECASE | re.MULTILINE)
# Where a reply that goes on writing more examples starts its next one.
_NEXT = re.compile(r"^[ \t>*_#]*(?:input[ \t*_]*:|example\b)", re.IGNORECASE | re.MULTILINE)


def parse_example(text: str) -> Parsed | Rejected:
    """Split a reply laid out as ``Input: …`` / ``Output: …`` into (input, target); later examples are ignored."""
    start = _INPUT.search(text)
    if start is None:
        return Rejected(UNPARSEABLE, "no line starting with 'Input:'")
    out = _OUTPUT.search(text, start.end())
    if out is None:
        return Rejected(UNPARSEABLE, "no line starting with 'Output:' after the input")
    following = _NEXT.search(text, out.end())
    input_text = text[start.end(): out.start()].strip()
    target = text[out.end(): following.start() if following else len(text)].strip()
    if not input_text:
        return Rejected(UNPARSEABLE, "the input is empty")
    if not target:
        return Rejected(UNPARSEABLE, "the output is empty")
    return Parsed(input_text, target)


def canonical_label(target: str, labels: Sequence[str]) -> str | None:
    """The label ``target`` names, ignoring case, surrounding quotes and a final period; None when it names none."""
    wanted = target.strip().strip("\"'`").rstrip(".").strip().casefold()
    for label in labels:
        if label.casefold() == wanted:
            return label
    return None


def check_label(target: str, labels: Sequence[str]) -> Rejected | None:
    """A classification row's output must be one of the task's labels."""
    if canonical_label(target, labels) is None:
        shown = target if len(target) <= 60 else target[:57] + "..."
        return Rejected(LABEL_NOT_IN_SET, f"output {shown!r} is none of {', '.join(labels)}")
    return None


def check_length(input_text: str, count_tokens: Callable[[str], int], min_chars: int,
                 max_tokens: int) -> Rejected | None:
    """The input must have at least ``min_chars`` characters and at most ``max_tokens`` tokens."""
    if len(input_text) < min_chars:
        return Rejected(TOO_SHORT, f"input has {len(input_text)} characters, fewer than {min_chars}")
    n = count_tokens(input_text)
    if n > max_tokens:
        return Rejected(TOO_LONG, f"input has {n} tokens, more than {max_tokens}")
    return None


def normalize(text: str) -> str:
    """Text as compared for exact duplicates: NFKC, case-folded, punctuation and runs of spaces as one space."""
    return " ".join(re.sub(r"[\W_]+", " ", unicodedata.normalize("NFKC", text).casefold()).split())


class ExactIndex:
    """Normalized inputs already taken (real rows and accepted synthetic rows), each with who took it."""

    def __init__(self) -> None:
        self._owner: dict[str, str] = {}

    def add(self, text: str, owner: str) -> None:
        """Remember ``text`` as belonging to ``owner`` (e.g. "real row 't-12'"); the first owner is kept."""
        self._owner.setdefault(normalize(text), owner)

    def owner(self, text: str) -> str | None:
        """Who already has this (normalized) text, if anyone."""
        return self._owner.get(normalize(text))


def check_exact_duplicate(input_text: str, taken: ExactIndex) -> Rejected | None:
    """The input must not equal (after ``normalize``) a real row's input or an accepted synthetic row's."""
    owner = taken.owner(input_text)
    if owner is not None:
        return Rejected(EXACT_DUPLICATE, f"input equals that of {owner}")
    return None


class RougeIndex:
    """Texts to compare new inputs against by ROUGE-L F1, searched without scoring every pair.

    ROUGE-L's longest common subsequence is never longer than the multiset overlap of the two token lists, so
    ``2·overlap / (len_a + len_b)`` bounds the F1 from above; only texts whose bound reaches the threshold are
    scored with ``rouge_score``. The answer is exactly the brute-force one, found through an inverted index.
    Texts with no ASCII letters or digits have no tokens under rouge_score's tokenizer and never match (exact
    duplicates of them are still caught by ``ExactIndex``).
    """

    def __init__(self, texts: Iterable[tuple[str, str]] = ()) -> None:
        from rouge_score import rouge_scorer, tokenizers

        self._scorer = rouge_scorer.RougeScorer(["rougeL"])
        self._tokenizer = tokenizers.DefaultTokenizer()
        self._texts: list[tuple[str, str, Counter]] = []  # (text, owner, token counts)
        self._postings: dict[str, list[int]] = defaultdict(list)
        for text, owner in texts:
            self.add(text, owner)

    def __len__(self) -> int:
        return len(self._texts)

    def add(self, text: str, owner: str) -> None:
        """Index ``text``, reported as ``owner`` when a new text is close to it."""
        counts = Counter(self._tokenizer.tokenize(text))
        index = len(self._texts)
        self._texts.append((text, owner, counts))
        for token in counts:
            self._postings[token].append(index)

    def closest(self, text: str, threshold: float) -> tuple[float, str] | None:
        """The highest ROUGE-L F1 of ``text`` to an indexed text and its owner, if some reach ``threshold``."""
        counts = Counter(self._tokenizer.tokenize(text))
        size = sum(counts.values())
        overlap: Counter = Counter()
        for token, n in counts.items():
            for index in self._postings.get(token, ()):
                overlap[index] += min(n, self._texts[index][2][token])
        best: tuple[float, str] | None = None
        for index, shared in overlap.items():
            other, owner, other_counts = self._texts[index]
            if 2 * shared / (size + sum(other_counts.values())) < threshold:
                continue
            score = self._scorer.score(other, text)["rougeL"].fmeasure
            if score >= threshold and (best is None or score > best[0]):
                best = (score, owner)
        return best


def check_novelty(input_text: str, seeds: RougeIndex, threshold: float) -> Rejected | None:
    """The input must differ from the seed rows its prompt showed: ROUGE-L F1 below ``threshold`` to each."""
    hit = seeds.closest(input_text, threshold)
    if hit is not None:
        return Rejected(NOT_NOVEL, f"ROUGE-L {hit[0]:.2f} (>= {threshold}) to {hit[1]}, shown in its prompt")
    return None


def check_near_duplicate(input_text: str, index: RougeIndex, threshold: float) -> Rejected | None:
    """The input must not be close to a real row's or an accepted synthetic row's: ROUGE-L F1 below ``threshold``."""
    hit = index.closest(input_text, threshold)
    if hit is not None:
        return Rejected(NEAR_DUPLICATE, f"ROUGE-L {hit[0]:.2f} (>= {threshold}) to {hit[1]}")
    return None


def label_quotas(labels: Sequence[str], rows: int) -> dict[str, int]:
    """Each label's share of ``rows``: equal, the first ``rows % len(labels)`` labels one more."""
    base, extra = divmod(rows, len(labels))
    return {label: base + (i < extra) for i, label in enumerate(labels)}


def check_label_quota(label: str, accepted: Counter, quotas: dict[str, int]) -> Rejected | None:
    """With label balance on, a label stops being accepted once it has its share of the rows."""
    if accepted[label] >= quotas[label]:
        return Rejected(LABEL_QUOTA_FULL, f"label {label!r} already has its {quotas[label]} rows")
    return None
