"""A row record's ``schema_version``, checked on every read: the current version loads, an older one is migrated
step by step to the current shape, a newer or unknown one is refused by name.

A migration is one function per version step, ``MIGRATIONS[v]`` taking a record of version ``v`` (a plain dict, as
read from its file) to version ``v + 1``; a record with no ``schema_version`` was written before it existed and is
version 1. Adding a version: bump ``record.RESULT_SCHEMA_VERSION`` and add the step from the previous one here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmtailor.errors import UserError
from lmtailor.rundir.record import RESULT_SCHEMA_VERSION


def _v1_to_v2(record: dict[str, Any]) -> dict[str, Any]:
    """Version 1 records have no validation scores (rows were scored on the test rows only): ``validation`` is None,
    so the report chooses on the test rows and says so."""
    return {**record, "schema_version": 2, "validation": record.get("validation")}


MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}
READABLE_RECORD_VERSIONS = tuple(sorted({*MIGRATIONS, RESULT_SCHEMA_VERSION}))


def upgrade(record: dict[str, Any], path: Path) -> dict[str, Any]:
    """``record`` (read from ``path``) in the current version's shape; a UserError naming the file and the version
    when this lmtailor cannot read it."""
    version = record.get("schema_version", 1)
    if isinstance(version, bool) or version not in READABLE_RECORD_VERSIONS:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > RESULT_SCHEMA_VERSION
        fix = ("it was written by a newer lmtailor: upgrade lmtailor (pip install -U lmtailor), or report it with the "
               "lmtailor that wrote it (its version is in the record's environment)" if newer else
               "it was not written by any lmtailor release: restore the record the run wrote")
        raise UserError(f"{path} is a row record of schema_version {version!r}; this lmtailor reads versions "
                        f"{', '.join(map(str, READABLE_RECORD_VERSIONS))}. {fix.capitalize()}, or run the experiment "
                        "again")
    while version < RESULT_SCHEMA_VERSION:
        record = MIGRATIONS[version](record)
        version = record["schema_version"]
    return record
