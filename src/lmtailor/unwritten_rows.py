"""A row whose record could not be written is not lost: its files wait beside its artifact for ``run --resume``.

A row's record (``results/<row>.json``) is what tells ``run --resume`` the row finished. When it cannot be written
(``results/`` made read-only, a quota, a disk that filled up after training) the training itself is done and its
artifact saved, so retraining would only repeat hours of work. The row's files (record and predictions, exactly as
they would have been written) then go to ``artifacts/<row>/unwritten-record/`` under their run-relative paths,
the run stops with a message saying so, and a resumed run moves them into place before deciding which rows
finished (``runner._finished_records``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from lmtailor.errors import UserError
from lmtailor.io import write_text_atomic
from lmtailor.rundir import RunDir

log = logging.getLogger("lmtailor")


class RowNotRecorded(UserError):
    """A row finished but its record could not be written to ``results/``; it was kept for ``run --resume``."""


def stash_dir(run_dir: Path, row_id: str) -> Path:
    return RunDir(run_dir).stash_dir(row_id)


def stash_row(run_dir: Path, row_id: str, files: dict[str, str], error: OSError) -> RowNotRecorded:
    """Keep ``files`` (run-relative path -> text) in the row's stash; return the error for the runner to raise."""
    where = stash_dir(run_dir, row_id)
    try:
        for rel, text in files.items():
            write_text_atomic(where / rel, text)
    except OSError as stash_error:
        return RowNotRecorded(f"row {row_id} finished but neither its record nor a copy could be written "
                              f"({type(error).__name__}: {error}; then {type(stash_error).__name__}: {stash_error}); "
                              f"make {run_dir} writable and run `lmtailor run --resume {run_dir}`: the row runs again")
    return RowNotRecorded(f"row {row_id} finished but its record could not be written ({type(error).__name__}: "
                          f"{error}). Its record and predictions are kept in {where} beside its artifact: make "
                          f"{RunDir(run_dir).results} writable again and run `lmtailor run --resume {run_dir}`, "
                          "which puts them in place without training the row again")


def restore_row(run_dir: Path, row_id: str) -> bool:
    """Move a stashed row's files into place (record last); True when there was a stash. Raises ``UserError``
    naming the file when they still cannot be written."""
    where = stash_dir(run_dir, row_id)
    if not where.is_dir():
        return False
    files = sorted((p for p in where.rglob("*") if p.is_file() and not p.name.startswith(".")),
                   key=lambda p: p.relative_to(where).parts[0] == RunDir(run_dir).results.name)  # the record last
    for path in files:
        rel = path.relative_to(where)
        try:
            write_text_atomic(Path(run_dir) / rel, path.read_text(encoding="utf-8"))
        except OSError as e:
            raise UserError(f"cannot resume {run_dir}: row {row_id}'s record is kept in {where}, but {rel} still "
                            f"cannot be written ({type(e).__name__}: {e}); make it writable and resume again") from None
    shutil.rmtree(where, ignore_errors=True)
    log.info("row %s: its record, kept in %s when results/ could not be written, is now in place", row_id, where)
    return True
