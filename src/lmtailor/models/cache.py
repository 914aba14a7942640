"""Build a cache directory once, atomically: a half-written directory is never taken for a finished one.

The work happens in a uniquely named temporary directory beside the target, which is renamed into place when
complete. A lock file keeps two processes from doing the same slow build (e.g. a GGUF conversion) twice.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from lmtailor.measure.meter import tooling

try:  # POSIX only; elsewhere two processes may both build, and the rename still keeps the result whole
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

COMPLETE_MARKER = ".lmtailor-complete"


def is_complete(path: Path) -> bool:
    """True when ``path`` is a finished cache directory (written by :func:`build_once`)."""
    return (Path(path) / COMPLETE_MARKER).is_file()


@contextlib.contextmanager
def _lock(target: Path) -> Iterator[None]:
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "a+") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Return ``target``, first running ``build(tmp_dir)`` and renaming ``tmp_dir`` to ``target`` if it is missing."""
    target = Path(target)
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target):
        if is_complete(target):  # another process finished it while we waited for the lock
            return target
        if target.exists():  # left by an interrupted build from before markers, or removed marker: redo it
            shutil.rmtree(target)
        # A build killed outright (SIGKILL, power loss) skips its cleanup: its scratch directory, up to a GiB of
        # half-written weights, is still here. Holding the lock, no live build owns one, so they can go.
        for stale in target.parent.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
        try:
            # Tool set-up (a GGUF converted, a model built into the cache): no deployment pays it, so the row
            # being metered keeps it out of its time and $ and records it apart (Meter.tooling).
            with tooling(f"built {target.name} into the model cache"):
                build(tmp)
            (tmp / COMPLETE_MARKER).write_text("ok\n")
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; a cache of public model weights need not be
            os.rename(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def dir_size(path: Path) -> int:
    """Total size in bytes of the files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
