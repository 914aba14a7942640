"""The shape of a row record, checked on every read (``RunDir.read_record``): a hand-edited or damaged record is
refused by name.

The report computes means, intervals and costs from ``status``, ``metrics`` and ``error``; a record whose status is
neither ``ok`` nor ``failed``, or whose metric value is a string, would otherwise end in a traceback deep inside a
statistics function, or worse, in a number. These checks run first, on the JSON as read, so their messages say what
the report needs; the ``RunRecord`` model then checks the other fields' types.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmtailor.errors import UserError

STATUSES = ("ok", "failed")  # runner.run_row writes one of these
FIX = "re-run the row (lmtailor run --resume RUN_DIR after removing the file) or restore the file from the run"


def check_record_fields(path: Path, record: Any) -> None:
    """Raise ``UserError`` naming ``path`` and the key when ``record`` is not a row record the report can read."""
    if not isinstance(record, dict):
        raise UserError(f"{path} holds a JSON {type(record).__name__}, not a row record (an object); {FIX}")
    status = record.get("status")
    if status not in STATUSES:
        raise UserError(f"{path}: status is {status!r}, expected one of {', '.join(STATUSES)}; {FIX}")
    error = record.get("error")
    if error is not None and not (isinstance(error, dict) and isinstance(error.get("type", ""), str)):
        raise UserError(f"{path}: error must be an object with the exception's type and message; {FIX}")
    _check_metrics(path, "metrics", record.get("metrics"))
    validation = record.get("validation")
    if validation is not None:
        if not isinstance(validation, dict):
            raise UserError(f"{path}: validation is a {type(validation).__name__}, expected an object; {FIX}")
        _check_metrics(path, "validation.metrics", validation.get("metrics"))


def _check_metrics(path: Path, key: str, metrics: Any) -> None:
    """Each metric: a name and a number (or null: not scored), optionally higher_is_better."""
    if metrics is None:
        return
    if not isinstance(metrics, list):
        raise UserError(f"{path}: {key} is a {type(metrics).__name__}, expected a list of metrics; {FIX}")
    for i, m in enumerate(metrics):
        where = f"{path}: {key}.{i}"
        if not isinstance(m, dict) or not isinstance(m.get("name"), str):
            raise UserError(f"{where}: expected an object with a name and a value; {FIX}")
        value = m.get("value")
        # NaN is a number here: a metric undefined on the rows (results.json writes it as null)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is not None and not number:
            raise UserError(f"{where} ({m['name']}): value {value!r} is not a number; {FIX}")
        if not isinstance(m.get("higher_is_better", True), bool):
            raise UserError(f"{where} ({m['name']}): higher_is_better must be true or false; {FIX}")
