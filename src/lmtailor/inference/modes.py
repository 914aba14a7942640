"""The three ways a model answers a test row, and which a task allows.

- ``likelihood``: score every label's tokens after the prompt and answer the most likely label;
- ``constrained``: greedy decoding limited to the label sequences;
- ``generate``: free greedy text.

The choice is made once, in ``inference/answer.py``; each backend implements the modes it can do.
"""

from __future__ import annotations

from typing import Literal

from lmtailor.core.task_spec import TaskSpec
from lmtailor.errors import UserError

Mode = Literal["likelihood", "constrained", "generate"]
MODES: tuple[str, ...] = ("likelihood", "constrained", "generate")


def default_mode(task: TaskSpec) -> Mode:
    """Likelihood scoring for classification, free generation otherwise."""
    return "likelihood" if task.type == "classification" else "generate"


def check_mode(task: TaskSpec, mode: str) -> None:
    """Refuse an unknown scoring mode, or a label mode on a task without labels."""
    if mode not in MODES:
        raise UserError(f"unknown scoring mode {mode!r}; use one of {', '.join(MODES)}")
    if mode != "generate" and not task.labels:
        raise UserError(f"scoring mode {mode!r} chooses among the task's labels, but task {task.name!r} "
                        f"({task.type}) has none; use scoring: generate")
