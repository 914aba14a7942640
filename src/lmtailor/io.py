"""Atomic file writes: a half-written file is never taken for a whole one, and shared as the umask allows.

``tempfile.mkstemp``/``mkdtemp`` create private (0600/0700) files and folders whatever the umask; what lmtailor
writes (results, reports, weights) is given the mode an ordinary ``open`` would give it instead, so a group or a
web server can read a run when the user's umask says so.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable


def process_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it (and put it straight back)
    os.umask(mask)
    return mask


def shared_file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (0644 with the usual 022)."""
    return 0o666 & ~process_umask()


def shared_dir_mode() -> int:
    """The mode ``mkdir()`` gives a new folder under the current umask (0755 with the usual 022)."""
    return 0o777 & ~process_umask()


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, shared_file_mode())  # mkstemp's 0600 would hide results from the user's group
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_text(obj: Any) -> str:
    """``obj`` as the indented JSON ``write_json_atomic`` writes."""
    return json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"


def jsonl_text(rows: Iterable[dict]) -> str:
    """``rows`` as the JSON lines ``write_jsonl_atomic`` writes."""
    return "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    write_text_atomic(path, json_text(obj))


def write_jsonl_atomic(path: Path, rows: Iterable[dict]) -> None:
    """Write one JSON object per line, atomically."""
    write_text_atomic(path, jsonl_text(rows))
