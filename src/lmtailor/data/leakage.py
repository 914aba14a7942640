"""Leakage by content: one normalisation of text, and rows sharing a test row's input dropped from training.

Ids say which row is which, not what it says: the same input can sit in a train file and a test file under two ids,
or twice in one source with a letter's case changed. Every content check of lmtailor (the splits here, the corpora
in ``retrieval/exclusion.py``, the report's honesty checks) compares texts after :func:`normalize_text`:

1. Unicode NFKC (full-width letters, ligatures and compatibility forms become their plain equivalents);
2. casefold (``True`` and ``true`` are one word);
3. every run of whitespace becomes one space;
4. punctuation (Unicode category P) at both ends is stripped ("Return the median." and "return the median" match);
   a text that is only punctuation keeps it.

A row's *request* is its input with its own instruction, system text and earlier turns (``validate.request_key``),
each normalised; its digest (:func:`row_digest`) is what ``splits.json`` stores per row, so the report can check
content without holding the rows' text.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from typing import Iterable, Sequence

from lmtailor.core.example import Example
from lmtailor.data.validate import request_key

NORMALISATION = "nfkc+casefold+whitespace+edge-punctuation/v1"


def _is_edge(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch).startswith("P")


def normalize_text(text: str) -> str:
    """``text`` as every content check compares it: NFKC, casefolded, whitespace collapsed, edge punctuation off."""
    t = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    i, j = 0, len(t)
    while i < j and _is_edge(t[i]):
        i += 1
    while j > i and _is_edge(t[j - 1]):
        j -= 1
    return t[i:j] or t


def normalized_request(e: Example) -> str:
    """The row's request (input, own instruction, system text, earlier turns), normalised, as one string."""
    instruction, system, history, text = request_key(e)
    if instruction is None and system is None and not history:
        return normalize_text(text)  # the common case: the input alone, so it compares with corpus text directly
    parts = [normalize_text(instruction or ""), normalize_text(system or ""),
             [[role, normalize_text(content)] for role, content in history], normalize_text(text)]
    return json.dumps(parts, ensure_ascii=False)


def row_digest(e: Example) -> str:
    """A short sha256 of the row's normalised request: equal digests, equal requests."""
    return hashlib.sha256(normalized_request(e).encode()).hexdigest()[:16]


def rows_fingerprint(pairs: Iterable[tuple[str, str]]) -> str:
    """One digest of (row id, row digest) pairs: a record names the rows a check ran against without listing them."""
    lines = sorted(f"{i}\x1f{d}" for i, d in pairs)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def content_record(parts: dict[str, Sequence[Example]]) -> dict:
    """What ``splits.json`` keeps of the rows' content: the normalisation and each row's digest, by split."""
    return {"normalisation": NORMALISATION,
            "digests": {name: {e.id: row_digest(e) for e in rows} for name, rows in parts.items()}}


def drop_shared_inputs(rows: Sequence[Example], held_out: Sequence[Example]) -> tuple[list[Example], list[dict]]:
    """``rows`` minus those whose normalised request is also a ``held_out`` row's; returns (kept, what was dropped).

    Each dropped entry names the row and the held-out row it repeats: ``{"id", "same_input_as"}``.
    """
    held = {}
    for e in held_out:
        held.setdefault(normalized_request(e), e.id)
    kept, dropped = [], []
    for e in rows:
        twin = held.get(normalized_request(e))
        if twin is None:
            kept.append(e)
        else:
            dropped.append({"id": e.id, "same_input_as": twin})
    return kept, dropped


def dropped_warning(split: str, dropped: list[dict], held_out: str) -> str:
    """The log line for rows :func:`drop_shared_inputs` dropped from ``split``, naming the first few pairs."""
    shown = ", ".join(f"{d['id']} = {d['same_input_as']}" for d in dropped[:5])
    return (f"dropped {len(dropped)} {split} row(s) whose input is also a {held_out} row's (compared after "
            f"normalisation: {NORMALISATION}), so that no model learns or is chosen on a row it is scored on: "
            f"{shown}{' ...' if len(dropped) > 5 else ''} (listed in splits.json, dropped_duplicates)")
