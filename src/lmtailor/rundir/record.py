"""``RunRecord``: the typed result record of one row, ``results/<row_id>.json``.

The fields are those ``runner.run_row`` writes, in the order it writes them. Where a block's structure is fixed (the
task, a metric, the error, the validation block) it is a model; the blocks each strategy, the meter or the machine
fill with what they measured (``config``, ``details``, ``score_details``, ``meter``, ``environment``, ``forgetting``,
``distributed``, ``traits``) stay JSON objects (``dict[str, Any]``): their keys belong to their writers.

Only ``row_id``, ``label``, ``model`` and ``status`` are required, as the report always required them: a failed row
has no metrics, a record of version 1 no validation block. Unknown keys are kept (``extra="allow"``): a record from
a newer lmtailor that only *added* a key still reads, and the key survives a read-write round trip; a change of
meaning or shape bumps ``RESULT_SCHEMA_VERSION`` instead (rundir/versions.py), and that is what refuses a record.

``as_dict()`` gives the record as the report reads it this step: exactly the keys the file held (or the writer
set), with the values unchanged — no float made of an int, no NaN made null — so ``results.json`` is the same bytes
whether its records came through the model or not.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

# 2: every row is also scored on the validation rows (the record's ``validation``), and the baseline row exists.
# A change of the record's shape bumps it and adds a migration (rundir/versions.py).
RESULT_SCHEMA_VERSION = 2

Number = int | float  # in this order: an int stays an int (pydantic would make 1 into 1.0 for a plain float)


class _Block(BaseModel):
    """A part of the record: extra keys kept, values assigned later validated too."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)


class Metric(_Block):
    """One score with its direction; ``value`` None (or NaN) when the metric is undefined on the rows."""

    name: str
    value: Number | None = None
    higher_is_better: bool = True


class RecordTask(_Block):
    """The task a row was scored on (``task.json`` holds the whole definition)."""

    name: str | None = None
    type: str | None = None


class RowError(_Block):
    """Why a failed row failed: the exception's type and message, and its traceback."""

    type: str = ""
    message: str = ""
    traceback: str | None = None


class ValidationScores(_Block):
    """The row scored on the validation rows (answered in the same pass as the test rows)."""

    rows: int | None = None
    ids_sha256: str | None = None
    metrics: list[Metric] | None = None
    primary_metric: str | None = None
    score_details: dict[str, Any] | None = None


class RunRecord(_Block):
    """One row's result record: what ran (strategy, config, model, seed, data), how it scored, what it cost."""

    schema_version: int = RESULT_SCHEMA_VERSION
    row_id: str
    row_index: int | None = None
    label: str
    strategy: str | None = None
    config: dict[str, Any] | None = None
    model: str
    seed: int | None = None
    family: str | None = None
    train_size: int | None = None
    train_size_requested: int | None = None
    task: RecordTask | None = None
    test_rows: int | None = None
    test_ids_sha256: str | None = None
    status: Literal["ok", "failed"]
    error: RowError | None = None
    metrics: list[Metric] | None = None
    primary_metric: str | None = None
    score_details: dict[str, Any] | None = None
    validation: ValidationScores | None = None
    details: dict[str, Any] | None = None
    artifacts: dict[str, str] | None = None
    forgetting: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None  # what the strategy declares it is (place on the spectrum, ...)
    meter: dict[str, Any] | None = None
    environment: dict[str, Any] | None = None
    started_at: str | None = None
    finished_at: str | None = None
    distributed: dict[str, Any] | None = None  # each process's outcome, under several processes

    def model_post_init(self, context: Any) -> None:
        # The version is written even where the writer left the default: a record without one reads as version 1.
        self.__pydantic_fields_set__.add("schema_version")

    def update(self, **fields: Any) -> None:
        """Set several fields at once, each validated (a key that is no field is kept as an extra one)."""
        for name, value in fields.items():
            setattr(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        """The record as a plain dict (what the report reads and the file holds): the keys that were set, values as
        given."""
        return self.model_dump(mode="python", exclude_unset=True)
