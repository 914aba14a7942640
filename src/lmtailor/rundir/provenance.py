"""Is a row record one of this run's? Its test rows and its task must be the run's own.

A record copied from another run (``results/<row>.json``) looks like any other: left in, the report would average it
in as another seed of the same configuration, scored on other test rows or on another task. Every record carries
the digest of the test-row ids it was scored on (``test_ids_sha256``, written by ``runner.run_row``) and its task's
name and type; the run keeps its test ids in ``splits.json`` and its task in ``task.json``. A record that disagrees
is refused, naming the file, what differs and how to fix it. ``lmtailor compare`` is the way to put runs side by
side.
"""

from __future__ import annotations

from pathlib import Path

from lmtailor.errors import UserError
from lmtailor.tasks.held_out import ids_digest


def digest_of_test_rows(splits: dict | None) -> str | None:
    """The digest of the run's test-row ids (from its ``splits.json``), or None when the run has none."""
    test = (splits or {}).get("test")
    return ids_digest([str(i) for i in test]) if isinstance(test, list) else None


def task_identity(task: dict | None) -> dict | None:
    """The run's task name and type (from its ``task.json``), what every record repeats; None without one."""
    return None if task is None else {"name": task.get("name"), "type": task.get("type")}


def check_record_of_run(path: Path, record: dict, test_digest: str | None, task: dict | None) -> None:
    """Refuse the record at ``path`` when it was scored on other test rows or on another task than the run's."""
    fix = (f"It is not a row of this run (copied from another one?), and the report would average it in as another "
           f"seed. Move it out of {path.parent}; to put two runs side by side use `lmtailor compare RUN_A RUN_B`")
    digest = record.get("test_ids_sha256")
    if test_digest is not None and digest is not None and digest != test_digest:
        raise UserError(f"{path} was scored on other test rows: test_ids_sha256 {digest!r}, but this run's test rows "
                        f"(splits.json) have the digest {test_digest!r}. {fix}")
    theirs = record.get("task")
    if task is not None and isinstance(theirs, dict):
        differ = [f"{k} {theirs.get(k)!r} (task.json: {task[k]!r})" for k in ("name", "type")
                  if k in theirs and theirs.get(k) != task[k]]
        if differ:
            raise UserError(f"{path} is a record of another task: {', '.join(differ)}. {fix}")
