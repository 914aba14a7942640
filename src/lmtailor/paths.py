"""Where lmtailor keeps caches, and the checks every path read from a run directory's records goes through.

A run directory's records (``results/<row_id>.json``) are files a user can copy, edit or receive from someone else,
so a name or path inside one is never trusted to build a path: ``checked_row_id`` accepts only what the runner's
slugs produce (``slug``: letters, digits, ``.``, ``-``, ``_``), and ``inside`` resolves a path (symlinks
followed) and refuses it unless it lies strictly inside the root it belongs to.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import platformdirs

from lmtailor.errors import UserError

# runner.plan_rows joins slugs (``slug`` keeps [A-Za-z0-9.] and turns the rest into "-") with "__", "s<seed>"
# and "-<k>"; nothing it writes holds a path separator, and a name of dots only would walk up a directory.
_ROW_ID = re.compile(r"[A-Za-z0-9._-]{1,200}")


def slug(text: str) -> str:
    """``text`` as one lower-case path component: runs of anything but letters, digits and ``.`` become ``-``."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def cache_dir() -> Path:
    """Return (and create) the cache directory for converted models and built datasets."""
    root = Path(os.environ.get("LMTAILOR_CACHE") or platformdirs.user_cache_dir("lmtailor"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def checked_row_id(value: object, where: Path, field: str = "row_id") -> str:
    """``value`` if it is a row id the runner could have written (safe as one path component); else a UserError
    naming the file ``where`` and its ``field``."""
    if not isinstance(value, str) or not _ROW_ID.fullmatch(value) or set(value) == {"."}:
        raise UserError(f"{where}: {field} {str(value)[:120]!r} is not a row id `lmtailor run` writes (letters, "
                        "digits, '.', '-' and '_' only): the file was not written by this run. Move it out of the run "
                        "directory, or restore the record the run wrote")
    return value


def check_record_row_id(record: dict, path: Path) -> str:
    """The record's ``row_id``, checked, and the same as its file's name (the runner writes results/<row_id>.json)."""
    if not isinstance(record, dict):
        raise UserError(f"{path} is not a row record of `lmtailor run` (not a JSON object); move it out of the run "
                        "directory")
    row_id = checked_row_id(record.get("row_id"), path)
    if path.stem != row_id:
        raise UserError(f"{path}: row_id {row_id!r} is not the file's name ({path.stem!r}); the runner writes "
                        "results/<row_id>.json, so this record was renamed or copied in. Move it out of the run "
                        "directory, or restore the record the run wrote")
    return row_id


def check_record(record: dict, path: Path, run_dir: Path) -> str:
    """Check a row record read from ``path`` in ``run_dir``: its row id (``check_record_row_id``) and every artifact
    path it names (``inside`` the run directory); return the row id."""
    row_id = check_record_row_id(record, path)
    artifacts = record.get("artifacts") or {}
    if not isinstance(artifacts, dict):
        raise UserError(f"{path}: artifacts is not a mapping of names to paths; restore the record the run wrote")
    for name, value in artifacts.items():
        inside(run_dir, value, path, f"artifacts.{name}")
    return row_id


def inside(root: Path, value: str | Path, where: Path, field: str) -> Path:
    """``value`` (relative to ``root`` unless absolute) as a path, refused unless it resolves strictly inside ``root``.

    ``where`` and ``field`` name the file and key the value came from, for the error."""
    if not isinstance(value, (str, Path)) or not str(value):
        raise UserError(f"{where}: {field} {str(value)[:120]!r} is not a path; restore the record the run wrote")
    path = Path(value)
    path = path if path.is_absolute() else Path(root) / path
    base = Path(root).resolve()
    resolved = path.resolve()
    if resolved == base or not resolved.is_relative_to(base):
        raise UserError(f"{where}: {field} {str(value)[:200]!r} points outside {root} (to {resolved}); lmtailor "
                        "reads and writes only inside the run directory. Move the file out of the run directory, or "
                        "restore the record the run wrote")
    return path
