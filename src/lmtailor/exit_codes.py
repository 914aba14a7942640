"""What ``lmtailor run`` (and ``demo``) exits with, so a script or CI job can tell a run whose rows failed.

A failed row is recorded and the run goes on (runner.py), so a finished run can still be a failed one: the exit code
says so. The trivial baseline row runs no model and cannot fail, so "every row failed" means every other row.
"""

from __future__ import annotations

from lmtailor.report.traits import traits_of

OK = 0  # every row finished
SOME_ROWS_FAILED = 1  # at least one row failed, at least one other than the trivial baseline finished
USAGE_ERROR = 2  # what the message names: command line, experiment file, data, a run directory in use or unwritable
ALL_ROWS_FAILED = 3  # no row but the trivial baseline finished: nothing was measured
INTERRUPTED = 130  # Ctrl-C / SIGTERM: a checkpoint is saved, `lmtailor run --resume RUN_DIR` continues

HELP = """exit codes:
  0    every row finished
  1    some rows failed (their errors are in RUN_DIR/results/<row>.json and RUN_DIR/run.log)
  2    a usage, configuration or data error, or the run directory is in use by another lmtailor process or
       cannot be written (a finished row's record then waits in artifacts/<row>/unwritten-record/)
  3    every row failed (but the trivial baseline, which runs no model)
  130  interrupted (Ctrl-C/SIGTERM); continue with lmtailor run --resume RUN_DIR"""


def run_exit_code(records: list[dict]) -> int:
    """The exit code of a finished run from its row records (``status`` ``ok`` or ``failed``)."""
    if all(r.get("status") == "ok" for r in records):
        return OK
    measured = [r for r in records if not ((t := traits_of(r)) is not None and t.fixed_rule)] or records
    if not any(r.get("status") == "ok" for r in measured):
        return ALL_ROWS_FAILED
    return SOME_ROWS_FAILED


def failed_rows_line(records: list[dict]) -> str | None:
    """One line naming the failed rows, for the end of the run's output; None when none failed."""
    failed = [r["row_id"] for r in records if r.get("status") != "ok"]
    if not failed:
        return None
    shown = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
    return (f"{len(failed)} of {len(records)} rows failed ({shown}): their errors are in results/<row>.json and "
            "run.log")
