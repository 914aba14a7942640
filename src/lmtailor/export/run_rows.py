"""Find the trained rows of a run directory and what their artifacts need to stand alone.

A row's record (``results/<row_id>.json``, written by ``runner.py``) names its base model (``model``), its status,
and its artifacts relative to the run directory: ``adapter`` (a PEFT adapter, to be applied to the base model) or
``model`` (a whole model, already standalone). Rows that pre-train before fine-tuning (continued-pretraining,
scratch) also keep ``pretrained_model``: their adapter was trained on that model, not on the record's base.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lmtailor.errors import UserError
from lmtailor.paths import inside
from lmtailor.rundir import RunDir

ArtifactKind = Literal["adapter", "model"]
ADAPTER_CONFIG = "adapter_config.json"
LABELS_FILE = "labels.json"  # written by training/classifier.py next to a classifier's artifact


@dataclass(frozen=True)
class TrainedRow:
    """One trained row of a run, with its artifact resolved to a path."""

    run_dir: Path
    row_id: str
    record: dict[str, Any]
    kind: ArtifactKind
    artifact: Path

    @property
    def model_ref(self) -> str:
        """The base model reference the row was run with (an alias, a directory or a hub id)."""
        return self.record["model"]

    @property
    def method(self) -> str | None:
        """The fine-tuning method (``details.method``, or ``details.finetune.method`` after pre-training)."""
        details = self.record.get("details") or {}
        return details.get("method") or (details.get("finetune") or {}).get("method")

    @property
    def pretrained(self) -> bool:
        """True when the row trained the model on a corpus before fine-tuning it (continued-pretraining, scratch)."""
        return "pretrain" in (self.record.get("details") or {})

    @property
    def labels(self) -> list[str] | None:
        """A classifier's labels in head order (from ``labels.json`` beside the artifact, else the record)."""
        path = self.artifact / LABELS_FILE
        if path.is_file():
            return list(json.loads(path.read_text(encoding="utf-8"))["labels"])
        details = self.record.get("details") or {}
        return list(details["labels"]) if details.get("head") == "sequence-classification" else None

    def artifact_path(self, name: str) -> Path | None:
        """The record's artifact ``name`` as a path (relative ones are under the run directory)."""
        return _artifact_path(self.run_dir, self.record, name)

    @property
    def is_peft(self) -> bool:
        """True for a PEFT adapter (its config names a ``peft_type``); bottleneck adapters of AdapterHub are not."""
        path = self.artifact / ADAPTER_CONFIG
        return self.kind == "adapter" and path.is_file() and "peft_type" in json.loads(path.read_text("utf-8"))

    def peft_config(self) -> dict[str, Any]:
        """The adapter's ``adapter_config.json`` (``peft_type``, ``base_model_name_or_path``, ...)."""
        path = self.artifact / ADAPTER_CONFIG
        if not path.is_file():
            raise UserError(f"row {self.row_id}: {self.artifact} has no {ADAPTER_CONFIG}, so it is not a PEFT "
                            "adapter; lmtailor merges PEFT adapters only")
        config = json.loads(path.read_text(encoding="utf-8"))
        if "peft_type" not in config:
            raise UserError(f"row {self.row_id}: {path} has no peft_type: not a PEFT adapter (bottleneck adapters "
                            "of other libraries are loaded with that library, not merged by lmtailor)")
        return config


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """Every result record of ``run_dir``, in the experiment's order, read and checked as the report reads them (a
    row id builds output paths, export/<row_id>: never a crafted one)."""
    run = RunDir(run_dir)
    if not run.record_files():
        raise UserError(f"{run_dir}: no results/*.json; is this a run directory made by `lmtailor run`?")
    return [r.as_dict() for r in run.records()]


def _artifact_path(run_dir: Path, record: dict[str, Any], name: str) -> Path | None:
    value = (record.get("artifacts") or {}).get(name)
    if value is None:
        return None
    # a record is a file anyone can edit: its artifact must stay inside the run (export deletes and replaces paths)
    where = RunDir(run_dir).record_path(str(record.get("row_id")))
    return inside(run_dir, value, where, f"artifacts.{name}")


def _artifact(run_dir: Path, record: dict[str, Any]) -> tuple[ArtifactKind, Path] | None:
    """The row's adapter or model; what is on disk decides, so an adapter saved under "model" is still an adapter."""
    for name in ("adapter", "model"):
        path = _artifact_path(run_dir, record, name)
        if path is not None:
            return ("adapter" if (path / ADAPTER_CONFIG).is_file() else name), path  # type: ignore[return-value]
    return None


def trained_rows(run_dir: Path) -> list[TrainedRow]:
    """The rows of ``run_dir`` that finished and saved an adapter or a model."""
    rows = []
    for record in read_records(run_dir):
        found = _artifact(run_dir, record)
        if record.get("status") == "ok" and found is not None:
            rows.append(TrainedRow(Path(run_dir), record["row_id"], record, *found))
    return rows


def _listing(rows: list[TrainedRow]) -> str:
    return "\n".join(f"  {r.row_id}  ({r.record.get('label', '')}, {r.kind})" for r in rows)


def select_row(run_dir: Path, row_id: str | None = None) -> TrainedRow:
    """The trained row ``row_id``, or the only trained row when ``row_id`` is None; errors list the choices."""
    run_dir = Path(run_dir)
    records = {r["row_id"]: r for r in read_records(run_dir)}
    rows = trained_rows(run_dir)
    if row_id is None:
        if len(rows) == 1:
            return _checked(rows[0])
        if not rows:
            raise UserError(f"{run_dir} has no trained row with a saved adapter or model (prompt and rag rows have "
                            "nothing to export; failed rows saved nothing)")
        raise UserError(f"{run_dir} has {len(rows)} trained rows; choose one with --row:\n{_listing(rows)}")
    if row_id not in records:
        near = difflib.get_close_matches(row_id, list(records), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise UserError(f"{run_dir} has no row {row_id!r}.{hint} Trained rows:\n{_listing(rows) or '  (none)'}")
    record = records[row_id]
    if record.get("status") != "ok":
        message = (record.get("error") or {}).get("message", "")
        raise UserError(f"row {row_id} did not finish (status {record.get('status')}: {message[:200]}); it saved "
                        "nothing to export")
    match = [r for r in rows if r.row_id == row_id]
    if not match:
        raise UserError(f"row {row_id} ({record.get('strategy')}) saved no adapter or model: only trained rows "
                        f"(finetune, continued-pretraining, scratch) can be exported. Trained rows:\n"
                        f"{_listing(rows) or '  (none)'}")
    return _checked(match[0])


def _checked(row: TrainedRow) -> TrainedRow:
    if not row.artifact.is_dir():
        raise UserError(f"row {row.row_id}: its {row.kind} directory {row.artifact} is missing; was the run "
                        "directory moved without its artifacts/ folder?")
    return row
