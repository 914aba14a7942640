"""How a raw row's fields become a task row (``data.format``): named input/target fields, Alpaca rows, or messages.

- ``fields``: ``data.input_field`` and ``data.target_field`` hold the input and the answer.
- ``alpaca``: ``instruction``, ``input`` (optional, may be empty) and ``output``, as in Stanford Alpaca's
  ``alpaca_data.json``. The row's instruction travels in ``meta["instruction"]`` and replaces ``task.instruction``
  when the row is rendered (``prompting/formats.py``). A row with an empty input is a request that needs no context: its
  instruction becomes the input and ``meta["instruction"]`` is "" (Alpaca's no-input prompt), so that every row
  has a non-empty input to split, de-duplicate and retrieve on.
- ``messages``: a list of ``{"role", "content"}`` turns, the chat layout of TRL and the OpenAI API: an optional
  system turn first, then user and assistant turns alternating, ending with the assistant's answer. The last user
  turn is the input, the last assistant turn the target; ``meta`` keeps ``system``, the earlier turns
  (``history``) and ``instruction: ""`` (the user turn is the whole request: no task instruction is added).

Each reader says which fields every row needs and turns one record into (input, target, meta), adding a problem
that names the row, the field (and the turn) and the fix when it cannot.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from lmtailor.data.validate import Coerced, Problems, Record, as_text, field_names, field_text

ROW_FORMATS = ("fields", "alpaca", "messages")
ROLES = ("system", "user", "assistant")

ALPACA_HINT = ("data.format: alpaca reads the fields 'instruction', 'input' (optional, may be empty) and 'output' "
               "of every row, as in Stanford Alpaca's alpaca_data.json; for other field names use data.format: "
               "fields with data.input_field / data.target_field")
MESSAGES_HINT = ("data.format: messages reads a field 'messages' in every row: a list of {\"role\": ..., \"content\": "
                 "...} turns (an optional system turn first, then user and assistant alternating, ending with the "
                 "assistant's answer), e.g. {\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, "
                 "{\"role\": \"assistant\", \"content\": \"Hello\"}]}")

Parsed = tuple[str, str, dict[str, Any]]  # input, target, meta


@dataclass
class FieldsReader:
    """Input and target from two named fields."""

    input_field: str
    target_field: str

    @property
    def required(self) -> list[tuple[str, str, str]]:
        return [(role, field, f"set data.{role}_field in the experiment file to the field that holds the {role}")
                for role, field in (("input", self.input_field), ("target", self.target_field))]

    @property
    def answer_field(self) -> str:
        return self.target_field

    def read(self, rec: Record, problems: Problems, coerced: Coerced) -> Parsed | None:
        hint = (f"every row needs the fields {self.input_field!r} and {self.target_field!r}; if they are named "
                "differently, set data.input_field / data.target_field in the experiment file")
        input_text = field_text(rec, "input", self.input_field, hint, problems, coerced)
        target = field_text(rec, "target", self.target_field, hint, problems, coerced)
        return None if input_text is None or target is None else (input_text, target, {})


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)  # an empty cell in a table column of numbers


class AlpacaReader:
    """Stanford Alpaca rows: instruction, optional input, output."""

    required = [("instruction", "instruction", ALPACA_HINT), ("output", "output", ALPACA_HINT)]
    answer_field = "output"

    def read(self, rec: Record, problems: Problems, coerced: Coerced) -> Parsed | None:
        instruction = field_text(rec, "instruction", "instruction", ALPACA_HINT, problems, coerced)
        output = field_text(rec, "output", "output", ALPACA_HINT, problems, coerced)
        value = rec.fields.get("input")
        input_text, reason = ("", None) if value is None or _is_nan(value) else as_text(value)
        if input_text is None:
            problems.add(f"{rec.where}, field 'input'", f"{reason}; expected text (or leave it empty)", ALPACA_HINT,
                         row=rec.number)
            return None
        if instruction is None or output is None:
            return None
        input_text = input_text.strip()
        if not input_text:  # a request without context: the instruction is the whole input
            return instruction, output, {"instruction": ""}
        return input_text, output, {"instruction": instruction}


def _turns(rec: Record, problems: Problems) -> list[tuple[str, str]] | None:
    """The (role, content) turns of a row's ``messages`` field, or ``None`` after recording what is wrong."""
    where = f"{rec.where}, field 'messages'"
    if "messages" not in rec.fields:
        problems.add(where, f"missing; this row has fields {field_names(rec.fields)}", MESSAGES_HINT, row=rec.number)
        return None
    value = rec.fields["messages"]
    if isinstance(value, str):  # a CSV cell or a string column holding the list as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            problems.add(where, f"text that is not a JSON list of turns ({e.msg})", MESSAGES_HINT, row=rec.number)
            return None
    if not isinstance(value, (list, tuple)) or not value:
        problems.add(where, f"holds {json.dumps(value, default=str)[:60]}, not a non-empty list of turns",
                     MESSAGES_HINT, row=rec.number)
        return None
    turns = []
    for number, turn in enumerate(value, 1):
        at = f"{where}, turn {number}"
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            problems.add(at, f"{json.dumps(turn, default=str)[:60]} is not an object with 'role' and 'content'",
                         MESSAGES_HINT, row=rec.number)
            return None
        content, reason = as_text(turn["content"])
        if turn["role"] not in ROLES:
            problems.add(at, f"role {turn['role']!r} is not one of {', '.join(ROLES)}", MESSAGES_HINT, row=rec.number)
            return None
        if content is None or not content.strip():
            problems.add(at, f"the {turn['role']} turn's content {reason or 'is empty'}; expected text",
                         "fill in or remove turns with empty content", row=rec.number)
            return None
        turns.append((turn["role"], content.strip()))
    return turns


def _conversation_problem(turns: list[tuple[str, str]]) -> tuple[int, str] | None:
    """(turn number, what is wrong) when the turns are not system?, (user, assistant)+; ``None`` when they are."""
    start = 1 if turns[0][0] == "system" else 0
    for k, (role, _) in enumerate(turns[start:]):
        expected = "user" if k % 2 == 0 else "assistant"
        if role != expected:
            why = ("only the first turn may be a system turn" if role == "system"
                   else "turns must alternate user, assistant, user, ...")
            return start + k + 1, f"a {role} turn where a {expected} turn belongs ({why})"
    if turns[-1][0] != "assistant":
        return len(turns), (f"the last turn is a {turns[-1][0]} turn, not the assistant's answer: end each "
                            "conversation with the assistant turn the model should learn to give")
    return None


class MessagesReader:
    """Conversations: the last user turn is the input, the last assistant turn the answer."""

    required = [("messages", "messages", MESSAGES_HINT)]
    answer_field = "messages"

    def read(self, rec: Record, problems: Problems, coerced: Coerced) -> Parsed | None:
        turns = _turns(rec, problems)
        if turns is None:
            return None
        wrong = _conversation_problem(turns)
        if wrong:
            problems.add(f"{rec.where}, field 'messages', turn {wrong[0]}", wrong[1], MESSAGES_HINT, row=rec.number)
            return None
        system = turns[0][1] if turns[0][0] == "system" else None
        dialogue = turns[1:] if system else turns
        meta: dict[str, Any] = {"instruction": "",
                                "history": [{"role": role, "content": text} for role, text in dialogue[:-2]]}
        if system:
            meta["system"] = system
        return dialogue[-2][1], dialogue[-1][1], meta


def row_reader(row_format: str, input_field: str = "input", target_field: str = "target"):
    """The reader of ``data.format`` ``row_format`` (``fields`` reads ``input_field`` and ``target_field``)."""
    if row_format == "fields":
        return FieldsReader(input_field, target_field)
    if row_format == "alpaca":
        return AlpacaReader()
    if row_format == "messages":
        return MessagesReader()
    raise ValueError(f"unknown data.format {row_format!r}; use one of {', '.join(ROW_FORMATS)}")
