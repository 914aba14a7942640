"""``RunDir``: the one place that knows a run directory's layout, and its one reader and writer of row records.

```
RUN/experiment.yaml     the experiment as written (what `run --resume` reloads)    run.json   its base directory
RUN/config.yaml         the experiment as run (every default filled in)             run.lock   held while it runs
RUN/splits.json         the split's row ids, content digests, data warnings         run.log    the run's log
RUN/task.json           the task definition every row answered
RUN/results/<row>.json  each row's record (RunRecord), written last: it marks the row finished
RUN/predictions/<row>.jsonl, predictions/validation/<row>.jsonl    each row's answers
RUN/artifacts/<row>/    what a row saved (adapter, model, checkpoints; unwritten-record/ when results/ was not
                        writable, unwritten_rows.py)
RUN/augmented/<row>.jsonl, synthetic/<row>.jsonl    extra training rows     probes/<model>.json   forgetting probes
RUN/results.json, results.md, report.md, report.html    the reports     export/<row>/   `lmtailor export`
```

Records are files anyone can copy or edit, so every one is read through ``read_record``: its version checked and
migrated (versions.py), its shape checked (record_check.py, then the model), its row id and artifact paths checked
(paths.py), and its test rows and task checked against the run's (provenance.py).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from pydantic import ValidationError

from lmtailor.errors import UserError
from lmtailor.io import json_text, write_json_atomic, write_jsonl_atomic, write_text_atomic
from lmtailor.paths import check_record, slug
from lmtailor.rundir.provenance import check_record_of_run, digest_of_test_rows, task_identity
from lmtailor.rundir.record import RunRecord
from lmtailor.rundir.record_check import check_record_fields
from lmtailor.rundir.versions import upgrade

STASH_DIR = "unwritten-record"
NOT_A_RUN = "is this a run directory made by `lmtailor run`?"


class UnreadableRecord(UserError):
    """A row record that is not JSON text at all (truncated, binary)."""


class RunDir:
    """A run directory: the paths of its files, and reading and writing its records and run files."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @classmethod
    def create(cls, root: Path, name: str) -> "RunDir":
        """A fresh directory ``root/<name>-<timestamp>[-k]``: runs never overwrite each other."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path, k = Path(root) / f"{slug(name)}-{stamp}", 2
        while path.exists():
            path, k = Path(root) / f"{slug(name)}-{stamp}-{k}", k + 1
        path.mkdir(parents=True)
        return cls(path)

    # --- where things are --------------------------------------------------------------------------------------
    @property
    def experiment(self) -> Path:
        """``experiment.yaml``: the experiment as written (resume)."""
        return self.path / "experiment.yaml"

    @property
    def run_meta(self) -> Path:
        """``run.json``: the run's base directory."""
        return self.path / "run.json"

    @property
    def config(self) -> Path:
        """``config.yaml``: the experiment as run, defaults filled in."""
        return self.path / "config.yaml"

    @property
    def splits(self) -> Path:
        """``splits.json``: the split's ids, digests and data warnings."""
        return self.path / "splits.json"

    @property
    def task(self) -> Path:
        """``task.json``: the task definition."""
        return self.path / "task.json"

    @property
    def results(self) -> Path:
        """``results/``: the folder of row records."""
        return self.path / "results"

    @property
    def results_json(self) -> Path:
        """``results.json``: the deterministic summary."""
        return self.path / "results.json"

    @property
    def results_md(self) -> Path:
        """``results.md``: the table."""
        return self.path / "results.md"

    @property
    def report_md(self) -> Path:
        """``report.md``: the report, in Markdown."""
        return self.path / "report.md"

    @property
    def report_html(self) -> Path:
        """``report.html``: the report, in HTML."""
        return self.path / "report.html"

    @property
    def lock(self) -> Path:
        """``run.lock``: held while a process runs it (run_lock.py)."""
        return self.path / "run.lock"

    @property
    def log(self) -> Path:
        """``run.log``: the run's log."""
        return self.path / "run.log"

    def record_path(self, row_id: str) -> Path:
        """``results/<row>.json``: the row's record."""
        return self.results / f"{row_id}.json"

    def predictions_path(self, row_id: str, split: str = "test") -> Path:
        """``predictions/<row>.jsonl`` (test rows) or ``predictions/validation/<row>.jsonl``."""
        folder = self.path / "predictions"
        return (folder if split == "test" else folder / split) / f"{row_id}.jsonl"

    def artifacts_dir(self, row_id: str) -> Path:
        """``artifacts/<row>/``: what the row saved (adapter, model, checkpoints)."""
        return self.path / "artifacts" / row_id

    def stash_dir(self, row_id: str) -> Path:
        """Where a finished row's files wait when ``results/`` cannot be written (unwritten_rows.py)."""
        return self.artifacts_dir(row_id) / STASH_DIR

    def extra_rows_path(self, kind: str, row_id: str, suffix: str = "") -> Path:
        """``augmented/<row>.jsonl`` or ``synthetic/<row><suffix>.jsonl``: the extra training rows a row made."""
        return self.path / kind / f"{row_id}{suffix}.jsonl"

    def probe_path(self, model_ref: str, tag: str = "") -> Path:
        """``probes/<model>[-tag].json``: the forgetting probe of a base model, once per run."""
        return self.path / "probes" / f"{slug(model_ref)}{'-' + tag if tag else ''}.json"

    def export_dir(self, row_id: str) -> Path:
        """``export/<row>/``: where ``lmtailor export`` puts a row's merged model and GGUF file by default."""
        return self.path / "export" / row_id

    @staticmethod
    def of_artifact(path: Path) -> Path | None:
        """The run directory holding ``path`` (somewhere under ``RUN/artifacts/<row>/``), or None."""
        return next((p.parent for p in Path(path).parents if p.name == "artifacts"), None)

    # --- run files -------------------------------------------------------------------------------------------------
    def has_results(self) -> bool:
        """Whether this is a run directory (it has a ``results/`` folder)."""
        return self.results.is_dir()

    def record_files(self) -> list[Path]:
        """The files of ``results/``, sorted by name (none when there is no such folder)."""
        return sorted(self.results.glob("*.json"))

    def read_json(self, path: Path, required: bool = True) -> Any:
        """A JSON file of the run; a missing one is None unless ``required``; a damaged one is named."""
        if not path.is_file():
            if not required:
                return None
            raise UserError(f"{path} is missing; it is written by `lmtailor run` at the start of a run: {NOT_A_RUN}")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise UserError(f"{path} is not a readable file: not a text file (byte offset {e.start} is not UTF-8); "
                            "restore it, or run the experiment again") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not a readable file: not valid JSON (line {e.lineno}: {e.msg}); restore "
                            "it, or run the experiment again") from None

    def read_task(self) -> dict | None:
        """``task.json`` (name, type, instruction, labels), or None when the run has none."""
        task = self.read_json(self.task, required=False)
        return task if isinstance(task, dict) else None

    def read_splits(self) -> dict | None:
        """``splits.json``, or None when the run has none."""
        splits = self.read_json(self.splits, required=False)
        return splits if isinstance(splits, dict) else None

    def test_digest(self) -> str | None:
        """The digest of the run's test-row ids (``splits.json``), or None without one."""
        return digest_of_test_rows(self.read_splits())

    def base_dir(self) -> Path:
        """The directory the experiment's relative paths were resolved against (``run.json``)."""
        return Path(self.read_json(self.run_meta)["base_dir"])

    def write_start(self, experiment_text: str, base_dir: Path) -> None:
        """What ``run --resume`` needs, written first: the experiment as written and its base directory."""
        write_text_atomic(self.experiment, experiment_text)
        write_json_atomic(self.run_meta, {"base_dir": str(Path(base_dir).resolve())})

    def write_run_files(self, config_text: str, split_record: dict, task: dict) -> None:
        """The experiment as run, the splits and the task."""
        write_text_atomic(self.config, config_text)
        write_json_atomic(self.splits, split_record)
        write_json_atomic(self.task, task)

    # --- row records -----------------------------------------------------------------------------------------------
    def read_record(self, path: Path, test_digest: str | None = None, task: dict | None = None) -> RunRecord:
        """The record at ``path``, checked (see the module's docstring); ``test_digest`` and ``task`` are the run's
        (``test_digest()``, ``task_identity(read_task())``), passed in when reading many records."""
        raw = self._raw_record(path)
        check_record_fields(path, raw)  # status, metrics, error: what the report computes with
        missing = [k for k in ("row_id", "label", "model", "status") if k not in raw]
        if missing:
            raise UserError(f"{path} lacks {missing}: it is not a row record of `lmtailor run`")
        raw = upgrade(raw, path)
        check_record(raw, path, self.path)
        check_record_of_run(path, raw, test_digest, task)
        try:
            return RunRecord.model_validate(raw)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise UserError(f"{path}: {where}: {first['msg']} (got {str(first.get('input'))[:80]!r}); re-run the row "
                            "(remove the file, then `lmtailor run --resume RUN_DIR`) or restore the file") from None

    def records(self) -> list[RunRecord]:
        """Every row record of ``results/``, checked, in plan order (row_index, then row_id)."""
        if not self.has_results():
            raise UserError(f"{self.results} is missing: {NOT_A_RUN}")
        digest, task = self.test_digest(), task_identity(self.read_task())
        records = [self.read_record(p, digest, task) for p in self.record_files()]
        return sorted(records, key=lambda r: (r.row_index or 0, r.row_id))

    def _raw_record(self, path: Path) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            why = f"not a text file (byte offset {e.start} is not UTF-8)"
        except json.JSONDecodeError as e:
            why = f"not valid JSON (line {e.lineno}: {e.msg})"
        raise UnreadableRecord(f"{path} is not a readable row record: {why}; re-run that row (remove the file, then "
                        "`lmtailor run --resume RUN_DIR`) or restore the file")

    def row_files(self, record: RunRecord, predictions: dict[str, str]) -> dict[str, str]:
        """The files of a finished row, run-relative path -> text: its ``predictions`` (split -> JSON lines), then its
        record (last: written last, it marks the row finished)."""
        files = {str(self.predictions_path(record.row_id, split).relative_to(self.path)): text
                 for split, text in predictions.items()}
        files[str(self.record_path(record.row_id).relative_to(self.path))] = json_text(record.as_dict())
        return files

    def write_files(self, files: dict[str, str]) -> None:
        """Write run-relative ``files`` in order, each atomically."""
        for rel, text in files.items():
            write_text_atomic(self.path / rel, text)

    def _inside(self, path: Path) -> Path:
        """``path`` when it lies in this run directory: every file a run holds is written through here."""
        if not Path(path).resolve().is_relative_to(self.path.resolve()):
            raise ValueError(f"{path} is not inside the run directory {self.path}")
        return Path(path)

    def write_text(self, path: Path, text: str) -> None:
        """Write a run file (a path this class gave, e.g. ``report_md``) atomically."""
        write_text_atomic(self._inside(path), text)

    def write_json(self, path: Path, obj: Any) -> None:
        write_json_atomic(self._inside(path), obj)

    def write_jsonl(self, path: Path, rows: Iterable[dict]) -> None:
        write_jsonl_atomic(self._inside(path), rows)
