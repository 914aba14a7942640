"""builtin:pydoc-summary — write a standard-library object's one-line summary from its signature and the rest of its
docstring. Built from the running Python, like builtin:pydoc-module (same cached extraction).

Each row's input is the object's qualified name with its signature, a blank line, and its docstring without the
summary paragraph; its target is that summary (the first paragraph, whitespace-joined, PEP 257's "summary line").
Rows are dropped when the summary is trivially copied from the input (see ``is_copied``), when little or no
docstring is left once the summary is removed, when the input or the summary is too long, and when another row has
the same docstring body or the same summary (compared normalised, ``data/leakage.py``): one row per summary.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import platform
import re
from collections import Counter

from pydantic import BaseModel, ConfigDict, Field

from lmtailor.core.example import Example
from lmtailor.data.builtin import BuiltinDataset, BuiltinSpec
from lmtailor.data.leakage import normalize_text
from lmtailor.data.pydoc_module import cache_path, extract_objects
from lmtailor.data.validate import DataError

log = logging.getLogger("lmtailor")

INSTRUCTION = ("Write the one-line summary that opens the docstring of this Python standard library object, "
               "given its signature and the rest of its docstring.")
# Docstrings of C functions without introspectable signatures often open with one ("B.count(sub[, start]) -> int").
_SIGNATURE_PARAGRAPH = re.compile(r"^[\w.]+\(")
_WORDS = re.compile(r"[^\W_]+")


class PydocSummaryOptions(BaseModel):
    """Options of builtin:pydoc-summary (``data.options`` in the experiment file)."""

    model_config = ConfigDict(extra="forbid")

    max_rows: int | None = Field(None, ge=1, description="keep at most this many rows (chosen by a hash of the "
                                 "row id, so the same rows on every machine)")
    min_summary_words: int = Field(3, ge=1, description="drop summaries with fewer words (\"**DEPRECATED**\", "
                                   "\"Breakpoint class.\")")
    max_summary_chars: int = Field(200, ge=10, description="drop summaries longer than this (a first paragraph "
                                   "that long is not a one-line summary)")
    min_rest_chars: int = Field(20, ge=1, description="drop rows whose docstring, once its summary is removed, "
                                "has fewer characters than this (nothing to summarise)")
    max_input_chars: int = Field(1500, ge=50, description="drop rows whose input (signature and rest of the "
                                 "docstring) is longer than this, rather than truncate them")
    max_copied_bigrams: float = Field(0.8, ge=0.0, le=1.0, description="drop rows where more than this share of "
                                      "the summary's word bigrams appear in the input (a copied summary)")


def split_docstring(doc: str) -> tuple[str | None, str, str]:
    """Split a docstring into (signature paragraph or None, summary on one line, the rest)."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", doc.strip()) if p.strip()]
    signature = paragraphs.pop(0) if paragraphs and _SIGNATURE_PARAGRAPH.match(paragraphs[0]) else None
    if not paragraphs:
        return signature, "", ""
    return signature, " ".join(paragraphs[0].split()), "\n\n".join(paragraphs[1:])


def _words(text: str) -> list[str]:
    return _WORDS.findall(text.lower())


def is_copied(summary: str, text: str, max_copied_bigrams: float = 0.8) -> bool:
    """Whether ``summary`` is trivially copied from ``text``.

    Copied means: its words (lowercased, punctuation ignored) appear in ``text`` as one run, or more than
    ``max_copied_bigrams`` of its distinct word bigrams appear in ``text`` (a copy with a word changed or a clause
    added: "Connect to *address* and return the socket object." after "Convenience function."). Word *unigram*
    overlap is deliberately not used: a docstring's body shares most words of its own summary without copying it
    ("Return the high median of data." above a body about "the larger of the two middle values"): on Python 3.11
    a unigram threshold of 0.8 would drop about 8% of the rows, most of them good ones; the bigram rule drops <1%.
    """
    words, source = _words(summary), _words(text)
    if not words:
        return False
    if f" {' '.join(words)} " in f" {' '.join(source)} ":
        return True
    bigrams = set(itertools.pairwise(words))
    if not bigrams:
        return False
    shared = len(bigrams & set(itertools.pairwise(source)))
    return shared / len(bigrams) > max_copied_bigrams


def _row(obj: dict, opts: PydocSummaryOptions) -> tuple[Example | None, str]:
    """The row for one extracted object, or None and why it was dropped."""
    doc_signature, summary, rest = split_docstring(obj["doc"])
    if len(summary.split()) < opts.min_summary_words:
        return None, "summary_too_short"
    if len(summary) > opts.max_summary_chars:
        return None, "summary_too_long"
    if len(rest) < opts.min_rest_chars:
        return None, "rest_too_short"
    if obj.get("signature"):
        header = f"{obj['id']}{obj['signature']}"
    else:
        header = f"{obj['id']}\n{doc_signature}" if doc_signature else obj["id"]
    text = f"{header}\n\n{rest}"
    if len(text) > opts.max_input_chars:
        return None, "input_too_long"
    if is_copied(summary, text, opts.max_copied_bigrams):
        return None, "copied_summary"
    return Example(obj["id"], text, summary, {"kind": obj["kind"], "source_doc": obj["id"]}), ""


def build_rows(objects: list[dict], opts: PydocSummaryOptions) -> tuple[list[Example], dict]:
    """Turn extracted objects into rows sorted by id (the qualified name); returns (rows, counts of drops)."""
    dropped: Counter[str] = Counter()
    by_content: dict[tuple[str, str], Example] = {}
    for obj in objects:
        row, why = _row(obj, opts)
        if row is None:
            dropped[why] += 1
            continue
        # The same docstring under two names (random.triangular and random.Random.triangular) would put one
        # row in train and its twin in test: keep the first name.
        key = (row.input.split("\n\n", 1)[1], row.target)
        if key in by_content:
            dropped["duplicate"] += 1
            by_content[key] = min(by_content[key], row, key=lambda e: e.id)
        else:
            by_content[key] = row
    # Two objects with one summary ("Return the high median of data." under two names, or two docstrings that differ
    # below it) would put an answer in train and the same answer in test: one row per normalised summary, the first
    # name kept.
    by_summary: dict[str, Example] = {}
    for row in sorted(by_content.values(), key=lambda e: e.id):
        key = normalize_text(row.target)
        if key in by_summary:
            dropped["duplicate_summary"] += 1
        else:
            by_summary[key] = row
    rows = list(by_summary.values())
    if opts.max_rows is not None and len(rows) > opts.max_rows:
        rows = sorted(rows, key=lambda e: hashlib.sha256(e.id.encode()).hexdigest())[: opts.max_rows]
        dropped["over_max_rows"] = len(by_summary) - opts.max_rows
    return sorted(rows, key=lambda e: e.id), dict(dropped)


def build(opts: PydocSummaryOptions) -> BuiltinDataset:
    """Build builtin:pydoc-summary with ``opts``; logs how many objects it used and why others were dropped."""
    objects = extract_objects()
    rows, dropped = build_rows(objects, opts)
    version = platform.python_version()
    if not rows:
        raise DataError(f"builtin:pydoc-summary: no row left of {len(objects)} documented objects "
                        f"(dropped: {dropped}); loosen data.options")
    log.info("pydoc-summary: %d documented objects of the Python %s standard library; dropped %s; kept %d rows",
             len(objects), version, ", ".join(f"{n} {why}" for why, n in sorted(dropped.items())) or "none",
             len(rows))
    defaults = {"type": "generation", "name": "pydoc-summary", "instruction": INSTRUCTION}
    description = (f"builtin:pydoc-summary (docstring summaries of the Python {version} standard library: "
                   f"{len(rows)} rows)")
    return BuiltinDataset(rows, defaults, description, files=[str(cache_path())])


SPEC = BuiltinSpec(description="write a standard-library object's one-line docstring summary from its signature "
                   "and the rest of its docstring", options=PydocSummaryOptions, build=build)
