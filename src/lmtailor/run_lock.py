"""One lmtailor process at a time per run directory: ``run`` and ``run --resume`` hold ``RUN_DIR/run.lock``.

Two processes resuming the same run would both retrain every unfinished row and overwrite each other's checkpoints
and records. The lock is an advisory ``flock`` on ``run.lock``, which the kernel releases when its holder exits
however it exits (``kill -9`` too): a lock file left by a dead process is simply taken over, with no pid guessing.
The file holds the holder's pid, for the refusal message only. It is never deleted: deleting it would let a third
process lock a new file while a second still holds the old one.

Under several processes (``accelerate launch``) only the main process locks: the others follow it (runner.py).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import IO

from lmtailor.errors import UserError
from lmtailor.io import shared_file_mode
from lmtailor.rundir import RunDir

try:
    import fcntl
except ImportError:  # Windows: no flock; the run is not locked
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("lmtailor")


class RunInUse(UserError):
    """Another live process holds the run directory's lock."""


class RunLock:
    """The lock on one run directory, held from ``acquire`` until ``release`` (or the process's end)."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._file: IO[str] | None = None  # closing it (also when garbage-collected) releases the lock

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self, run_dir: Path) -> "RunLock":
        """Lock ``run_dir`` or raise ``RunInUse`` naming the lock file and the holder's pid; never waits."""
        if fcntl is None or self.held:
            return self
        path = RunDir(run_dir).lock
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, shared_file_mode())
        except OSError as e:
            raise UserError(f"cannot create the run's lock {path} ({e.strerror}): a run writes its results, "
                            f"checkpoints and reports into {run_dir}, so it must be a writable directory") from None
        f = os.fdopen(fd, "r+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _pid_in(f)
            f.close()
            raise RunInUse(f"{run_dir} is in use: another lmtailor process (pid {holder or 'unknown'}) is running it "
                           f"and holds its lock {path}. Two processes would both retrain the unfinished rows; wait "
                           f"for that one to finish or stop it, then `lmtailor run --resume {run_dir}` continues "
                           "what is left") from None
        except OSError as e:  # a filesystem without locks (some network mounts): run, but say it is unguarded
            f.close()
            log.warning("cannot lock %s (%s): nothing stops a second `run --resume` of this run meanwhile", path,
                        e.strerror)
            return self
        except BaseException:
            f.close()
            raise
        stale = _pid_in(f)
        if stale is not None and stale != os.getpid():
            log.info("took over %s from pid %d, which no longer holds it (it ended without releasing it)", path, stale)
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self.path, self._file = path, f
        return self

    def release(self) -> None:
        """Unlock (the pid is cleared; the file stays, see the module docstring). Safe to call when not held."""
        if self._file is None:
            return
        f, self._file = self._file, None
        try:
            f.seek(0)
            f.truncate()
        finally:
            f.close()  # closing the descriptor releases the flock


def _pid_in(f: IO[str]) -> int | None:
    f.seek(0)
    text = f.read(32).strip()
    return int(text) if text.isdigit() else None
