"""The base class of errors whose messages are written for people: the CLI prints them without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (a config key, a data row, a missing model); the message says what and where."""


class TrainingInterrupted(UserError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; the run can be resumed from it.

    The runner does not record the row as failed: it stops the run, and ``lmtailor run --resume RUN_DIR`` continues.
    """
