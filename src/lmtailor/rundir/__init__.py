"""A run directory and its records: ``RunDir`` (the layout, its one reader and writer) and ``RunRecord`` (a row's
typed result record, its version checked and migrated on every read)."""

from lmtailor.rundir.layout import RunDir
from lmtailor.rundir.record import RESULT_SCHEMA_VERSION, RunRecord

__all__ = ["RESULT_SCHEMA_VERSION", "RunDir", "RunRecord"]
