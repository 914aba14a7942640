"""The general probe set of the forgetting probe: held-out English prose and general multiple-choice questions.

Both are built offline and deterministically, and nothing here is ever a training row, a few-shot exemplar or a
retrieval document: the probe measures what training on the task cost the model *outside* the task.

Why these texts. The built-in tasks are made of the standard library's docstrings, and ``pydoc_data.topics`` (the
language reference) sits right next to that domain, so a model tuned on docstrings could look *better* on it and
hide what it forgot. The general text must be English prose that every CPython install carries, located the way
Python itself finds it, never from site-packages (whose licence files vary with what is installed):

- ``LICENSE.txt``: the history of the software and its licence terms, plain English (narrative and legal) with no
  code. It is the file the ``license()`` builtin shows, found where ``site`` looks for it (next to ``os.py``, or
  one folder up on Windows); Debian ships it too (``libpython3.x-stdlib``);
- the Zen of Python (the ``this`` module, rot13-encoded in its source): nineteen English aphorisms.

Left out: ``email/architecture.rst`` is prose but half of it documents the email package's API (the tasks'
domain); ``idlelib``, ``turtledemo``, ``tkinter`` and ``test`` are split into optional packages by Linux
distributions, so the set would change with what a machine happens to have. The files change with the Python
version, so every probe records the set's digest and sources: probes are comparable only with the same digest (the
runner compares a tuned model with its base model on the same machine, so they always are). Both texts are
everywhere on the web, so models have likely seen them: absolute perplexities are low, but the probe measures the
*change* training makes, and losing well-known text is forgetting too.

Passages are cut on sentence boundaries to at most ``PASSAGE_WORDS`` words, by words rather than by a model's
tokens, so every model is probed on the same texts; the probe cuts each to its token limit and counts the cuts.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import importlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

MAX_PASSAGES = 64
PASSAGE_WORDS = 64  # ~100 tokens of English for a BPE tokenizer, under the probe's 128-token limit

_UNDERLINE = re.compile(r"^\s*([=\-~^*#])\1{2,}\s*$")  # RST/Markdown heading underlines
_COLUMNS = re.compile(r"\S {3,}\S")  # a table row: columns separated by runs of spaces
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9*])")


def _license_text() -> str | None:
    """The interpreter's LICENSE.txt, where ``site`` finds it for ``license()``."""
    here = Path(os.__file__).parent
    for folder in (here, here.parent):
        for name in ("LICENSE.txt", "LICENSE"):
            if (folder / name).is_file():
                return (folder / name).read_text(encoding="utf-8", errors="replace")
    return None


def _zen_text() -> str | None:
    """The Zen of Python, decoded from the ``this`` module (which prints it on first import: kept quiet)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            this = importlib.import_module("this")
    except ImportError:
        return None
    return codecs.decode(this.s, "rot13")


SOURCES = (("python-license", _license_text), ("zen-of-python", _zen_text))


def _paragraphs(text: str) -> list[str]:
    """Prose paragraphs, whitespace collapsed: headings' underlines and tables (the release table) dropped."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.splitlines() if ln.strip() and not _UNDERLINE.match(ln)]
        if not lines or any(_COLUMNS.search(ln.strip()) for ln in lines):
            continue
        paragraphs.append(" ".join(" ".join(lines).split()))
    return paragraphs


def _sentences(paragraph: str, words: int) -> list[str]:
    """Sentences of a paragraph; a sentence longer than ``words`` words is cut into pieces of that size."""
    out = []
    for sentence in _SENTENCE_END.split(paragraph):
        tokens = sentence.split()
        out += [" ".join(tokens[i:i + words]) for i in range(0, len(tokens), words)]
    return out


def pack_passages(text: str, words: int = PASSAGE_WORDS) -> list[str]:
    """Cut one source into passages of whole sentences, each at most ``words`` words (paragraphs kept together
    when they fit, so a passage reads as continuous prose)."""
    passages: list[str] = []
    current: list[str] = []
    size = 0
    for paragraph in _paragraphs(text):
        for sentence in _sentences(paragraph, words):
            n = len(sentence.split())
            if current and size + n > words:
                passages.append(" ".join(current))
                current, size = [], 0
            current.append(sentence)
            size += n
    if current:
        passages.append(" ".join(current))
    return passages


@dataclass(frozen=True)
class TextSet:
    """The held-out general passages, where they came from, and a digest that names this exact set."""

    passages: tuple[str, ...]
    sources: tuple[str, ...]  # the sources found on this machine, in order
    missing: tuple[str, ...]  # sources this Python does not have

    @property
    def sha256(self) -> str:
        return hashlib.sha256("\n\x1e".join(self.passages).encode()).hexdigest()[:16]


def general_text_set(max_passages: int = MAX_PASSAGES, words: int = PASSAGE_WORDS) -> TextSet:
    """The general text set: every source's passages, thinned evenly to ``max_passages`` (deterministic)."""
    pool: list[str] = []
    found, missing = [], []
    for name, read in SOURCES:
        text = read()
        if text and text.strip():
            found.append(name)
            pool += pack_passages(text, words)
        else:
            missing.append(name)
    if len(pool) > max_passages:  # evenly spaced, so every source keeps its share
        pool = [pool[i * len(pool) // max_passages] for i in range(max_passages)]
    return TextSet(tuple(pool), tuple(found), tuple(missing))


@dataclass(frozen=True)
class ChoiceItem:
    """A general multiple-choice question; ``answer`` indexes ``choices``."""

    question: str
    choices: tuple[str, ...]
    answer: int
    kind: str


_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_OPPOSITES = (("hot", "cold"), ("big", "small"), ("up", "down"), ("day", "night"), ("open", "closed"),
              ("fast", "slow"), ("happy", "sad"), ("early", "late"))


def _shared(kind: str, questions: list[str], answers: list[str], choices: tuple[str, ...]) -> list[ChoiceItem]:
    """Items of one kind that share their choices (the other items' answers are the distractors): with one choice
    set they are scored together, and their common prompt prefix (instruction and choice list) is computed once by
    ``score_labels``'s prefix cache, 3-5x cheaper than a choice set per item."""
    return [ChoiceItem(q, choices, choices.index(a), kind) for q, a in zip(questions, answers)]


def general_choice_items() -> list[ChoiceItem]:
    """Forty general questions built by rule, the right answer among the others of its kind: addition (8 choices),
    multiplication (4), which of two numbers is larger (2), the day after a day (7), the month after a month (12),
    opposites (8)."""
    sums = [(12 + 9 * i, 7 + 5 * i) for i in range(8)]
    products = [(3, 4), (4, 5), (6, 8), (7, 9)]
    items = _shared("addition", [f"What is {a} + {b}?" for a, b in sums], [str(a + b) for a, b in sums],
                    tuple(sorted({str(a + b) for a, b in sums}, key=int)))
    items += _shared("multiplication", [f"What is {a} × {b}?" for a, b in products],
                     [str(a * b) for a, b in products], tuple(sorted({str(a * b) for a, b in products}, key=int)))
    for a, b in ((47, 74), (108, 81), (15, 51), (230, 203), (9, 90), (66, 56)):
        items.append(ChoiceItem(f"Which number is larger, {a} or {b}?", (str(a), str(b)), int(b > a), "comparison"))
    days = list(range(7))
    items += _shared("days", [f"Which day comes after {_DAYS[d]}?" for d in days],
                     [_DAYS[(d + 1) % 7] for d in days], _DAYS)
    months = [0, 1, 3, 5, 7, 9, 11]
    items += _shared("months", [f"Which month comes after {_MONTHS[m]}?" for m in months],
                     [_MONTHS[(m + 1) % 12] for m in months], _MONTHS)
    items += _shared("opposites", [f"What is the opposite of {w}?" for w, _ in _OPPOSITES],
                     [o for _, o in _OPPOSITES], tuple(sorted(o for _, o in _OPPOSITES)))
    return items
