"""Refuse, before anything loads, a local model whose config asks to run its own Python code without the user's leave.

A ``config.json`` with ``auto_map`` names modelling classes in Python files shipped beside the weights; Transformers
runs them only with ``trust_remote_code=True`` and otherwise raises a long ValueError from deep inside
``from_pretrained``. Reading the config ourselves turns that into one message naming the file and the setting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from lmtailor.errors import UserError


def remote_code_problem(ref: str) -> str | None:
    """Why the local model directory ``ref`` needs ``runtime.trust_remote_code`` (None: it does not, or it is no
    local directory: aliases, hub ids and endpoints are checked where they load)."""
    config = Path(ref).expanduser() / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no local config (alias, hub id) or an unreadable one: the loader says why
        return None
    auto_map = data.get("auto_map") if isinstance(data, dict) else None
    if not auto_map:
        return None
    names = ", ".join(sorted(map(str, auto_map))) if isinstance(auto_map, dict) else str(auto_map)
    return (f"model {ref!r}: {config} has auto_map ({names}): the model ships its own Python code, which lmtailor "
            "does not run unless told to. Read that code, then set runtime.trust_remote_code: true (or --set "
            "runtime.trust_remote_code=true), or use a model that Transformers supports natively")


def check_remote_code(refs: Iterable[str], trust_remote_code: bool) -> None:
    """Raise ``UserError`` for the first local model in ``refs`` that needs remote code the experiment did not allow."""
    if trust_remote_code:
        return
    for ref in dict.fromkeys(refs):
        problem = remote_code_problem(ref)
        if problem is not None:
            raise UserError(problem)
