"""Check data rows before any model is loaded: every problem names the file, the row and the field, and says the fix.

Problems in one file are collected (up to a limit) and raised together as one ``DataError``, so users fix them in
one go instead of one per run.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from lmtailor.core.example import Example
from lmtailor.errors import UserError

MAX_PROBLEMS = 10


class DataError(UserError, ValueError):
    """Data that cannot be used as given; the message names file, row and field and says how to fix it."""


@dataclass
class Record:
    """One raw row as read from a file: its fields and where it is (``line 3`` / ``row 3`` / ``item 3``)."""

    number: int
    where: str
    fields: dict[str, Any]


class Problems:
    """Collects the problems of one file, then raises them as one ``DataError`` (in row order, up to a limit)."""

    def __init__(self, file: str, limit: int = MAX_PROBLEMS) -> None:
        self.file = file
        self.limit = limit
        self.items: list[tuple[int, int, str]] = []
        self.hints: list[str] = []

    def add(self, where: str, message: str, hint: str | None = None, row: int = 0) -> None:
        """Record one problem at ``where`` (e.g. ``line 3, field 'target'``) of row number ``row`` (0: the whole
        file); ``hint`` says how to fix it and is shown once."""
        self.items.append((row, len(self.items), f"{where}: {message}" if where else message))
        if hint and hint not in self.hints:
            self.hints.append(hint)

    @property
    def count(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        """Raise every collected problem as one ``DataError``."""
        if not self.items:
            return
        noun = "problem" if self.count == 1 else "problems"
        lines = [f"{self.file}: {self.count} {noun} in the data; fix them and run again:"]
        lines += [f"  {m}" for _, _, m in sorted(self.items)[: self.limit]]
        if self.count > self.limit:
            lines.append(f"  ... and {self.count - self.limit} more (only the first {self.limit} are shown)")
        lines += [f"How to fix: {h}" for h in self.hints]
        raise DataError("\n".join(lines))


def as_text(value: Any) -> tuple[str | None, str | None]:
    """Return (text, None) for usable values, (None, reason) otherwise; numbers and booleans become text."""
    if isinstance(value, str):
        return value, None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, "is empty (null)"
    if isinstance(value, bool):
        return json.dumps(value), None
    if isinstance(value, (int, float)):
        return repr(value), None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8"), None
        except UnicodeDecodeError:
            return None, "holds bytes that are not valid UTF-8"
    return None, f"holds a {type(value).__name__} ({json.dumps(value, default=str)[:60]}), not text"


def field_names(fields: dict) -> str:
    return ", ".join(repr(k) for k in fields) or "none"


class Coerced:
    """Counts non-string values read as text, for one warning per field."""

    def __init__(self) -> None:
        self.by_field: Counter[str] = Counter()
        self.first: dict[str, str] = {}

    def note(self, field: str, where: str, value: Any, text: str) -> None:
        self.by_field[field] += 1
        self.first.setdefault(field, f"{where}: {value!r} -> {text!r}")

    def warnings(self, file: str) -> list[str]:
        return [f"{file}: field {f!r} holds numbers or booleans in {n} row(s), read as text (e.g. {self.first[f]})"
                for f, n in sorted(self.by_field.items())]


def _missing_everywhere(records: list[Record], wanted: list[tuple[str, str, str]], problems: Problems) -> set[str]:
    """Report a field absent from every row once (not once per row); return those fields. ``wanted`` holds
    (role, field, how to fix it) triples."""
    absent = set()
    for role, field, hint in wanted:
        if records and all(field not in r.fields for r in records):
            absent.add(field)
            problems.add("", f"no row has a field {field!r} (the {role}); the rows have fields "
                         f"{field_names(records[0].fields)}", hint)
    return absent


def field_text(rec: Record, role: str, field: str, fields_hint: str, problems: Problems,
                coerced: Coerced) -> str | None:
    """The stripped text of ``rec[field]``, or ``None`` after recording why it cannot be used."""
    where = f"{rec.where}, field {field!r}"
    if field not in rec.fields:
        problems.add(where, f"missing; this row has fields {field_names(rec.fields)}", fields_hint, row=rec.number)
        return None
    value = rec.fields[field]
    text, reason = as_text(value)
    if text is None:
        problems.add(where, f"{reason}; expected text", "give every row a text value in that field", row=rec.number)
        return None
    if isinstance(value, (int, float)):
        coerced.note(field, rec.where, value, text)
    if not text.strip():
        problems.add(where, f"the {role} is empty or only whitespace", f"fill in or remove rows with an empty {role}",
                     row=rec.number)
        return None
    return text.strip()


def _meta_value(rec: Record, key: str, field: str, problems: Problems) -> str | list[str] | None:
    """A row's optional ``meta`` value (gold_doc, answers): a non-empty string or list of them; None when unset."""
    value = rec.fields.get(field)
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v.strip() for v in value):
        return [v.strip() for v in value]
    problems.add(f"{rec.where}, field {field!r}", f"the {key} must be a string or a list of non-empty strings, got "
                 f"{type(value).__name__} {str(value)[:60]!r}", f"fix the {field!r} value of this row or leave it empty",
                 row=rec.number)
    return None


class RowReader(Protocol):
    """Turns one record into (input, target, meta) per ``data.format`` (``data/row_formats.py``)."""

    required: list[tuple[str, str, str]]  # (role, field, how to fix it): the fields every row must have
    answer_field: str  # the field holding the answer (an unlabeled split leaves it empty)

    def read(self, rec: Record, problems: Problems, coerced: Coerced) -> tuple[str, str, dict] | None: ...


def records_to_examples(records: list[Record], file: str, reader: RowReader, id_field: str | None, problems: Problems,
                        meta_fields: dict[str, str] | None = None) -> tuple[list[Example], list[str]]:
    """Turn raw records into ``Example`` rows, collecting every problem into ``problems``; returns (rows, warnings).

    ``reader`` reads the input, target and format-specific meta of a record (``row_formats.row_reader``).
    ``meta_fields`` maps optional row facts to the fields holding them (``gold_doc``: the id(s) of the row's gold
    document in a RAG corpus; ``answers``: every accepted answer of a QA row); rows may leave them empty.
    """
    meta_fields = {k: v for k, v in (meta_fields or {}).items() if v}
    optional = [("id", id_field)] if id_field else []
    optional += list(meta_fields.items())
    absent = _missing_everywhere(records, reader.required + [
        (role, field, f"set data.{role}_field in the experiment file to the field that holds the {role}")
        for role, field in optional], problems)
    coerced = Coerced()
    rows: list[Example] = []
    first_row_of_id: dict[str, str] = {}
    for rec in records:
        if absent:
            break
        parsed = reader.read(rec, problems, coerced)
        row_id = field_text(rec, "id", id_field, "give every row an id, or unset data.id_field to number rows",
                            problems, coerced) if id_field else f"{file}:{rec.number}"
        if parsed is None or row_id is None:
            continue
        if row_id in first_row_of_id:
            problems.add(f"{rec.where}, field {id_field!r}", f"id {row_id!r} is already used by "
                         f"{first_row_of_id[row_id]}", "ids must be unique: fix or drop the repeated ids",
                         row=rec.number)
            continue
        first_row_of_id[row_id] = rec.where
        input_text, target, own_meta = parsed
        meta = {"file": file, "row": rec.number, **own_meta}
        for key, field in meta_fields.items():
            value = _meta_value(rec, key, field, problems)
            if value is not None:
                meta[key] = value if key != "answers" or isinstance(value, list) else [value]
        rows.append(Example(row_id, input_text, target, meta))
    return rows, coerced.warnings(file)


def request_key(e: Example) -> tuple:
    """What a row asks: its input, with its own instruction, system text and earlier turns when it has them (two
    Alpaca rows with the same input and different instructions are different requests)."""
    history = tuple((t["role"], t["content"]) for t in e.meta.get("history") or ())
    return e.meta.get("instruction"), e.meta.get("system"), history, e.input


def drop_exact_duplicates(rows: list[Example]) -> tuple[list[Example], list[str]]:
    """Drop rows whose request (``request_key``) and target repeat an earlier row (so a split cannot leak); warn about
    what was dropped."""
    seen: dict[tuple, str] = {}
    kept, dropped = [], []
    for e in rows:
        key = (request_key(e), e.target)
        if key in seen:
            dropped.append(f"{e.id} = {seen[key]}")
        else:
            seen[key] = e.id
            kept.append(e)
    warnings = []
    if dropped:
        warnings.append(f"dropped {len(dropped)} row(s) that repeat an earlier row exactly (same input and target), "
                        f"so that no row is in both train and test: {', '.join(dropped[:5])}"
                        + (" ..." if len(dropped) > 5 else ""))
    by_input: dict[tuple, Example] = {}
    conflicts = []
    for e in kept:
        other = by_input.setdefault(request_key(e), e)
        if other is not e and other.target != e.target:
            conflicts.append(f"{other.id} ({other.target!r}) vs {e.id} ({e.target!r})")
    if conflicts:
        warnings.append(f"{len(conflicts)} input(s) appear with different targets: {', '.join(conflicts[:5])}"
                        + (" ..." if len(conflicts) > 5 else "") + "; no model can get both right, and the copies "
                        "may land in different splits: fix the targets or drop one copy")
    return kept, warnings


def unique_ids(splits: dict[str, list[Example]]) -> None:
    """Raise if a row id is used in two splits (ids name rows in the predictions and the report)."""
    owner: dict[str, str] = {}
    clashes = []
    for name, rows in splits.items():
        for e in rows:
            if e.id in owner and owner[e.id] != name:
                clashes.append(f"{e.id!r} ({owner[e.id]} and {name})")
            owner.setdefault(e.id, name)
    if clashes:
        raise DataError(f"{len(clashes)} row id(s) are used in two splits: {', '.join(clashes[:5])}; ids must be "
                        "unique across the train, validation and test files: fix the id field")


def unseen_label_warnings(splits: dict[str, list[Example]]) -> list[str]:
    """For classification: warn about validation/test labels that no training row has."""
    train_labels = {e.target for e in splits.get("train", [])}
    warnings = []
    for name in ("validation", "test"):
        unseen = Counter(e.target for e in splits.get(name, []) if e.target not in train_labels)
        if unseen:
            listed = ", ".join(f"{label!r} ({n} rows)" for label, n in sorted(unseen.items())[:5])
            warnings.append(f"{name} has label(s) that no training row has: {listed}; no trained model can predict "
                            "them: add training rows for them or drop those rows")
    return warnings
