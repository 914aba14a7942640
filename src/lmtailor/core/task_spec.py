"""The resolved task every strategy, prompt format and scorer reads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    """A resolved task: its type, the instruction shown to models, and for classification the label set."""

    name: str
    type: str
    instruction: str
    labels: tuple[str, ...] | None = None
    # How rows are laid out as prompts (prompting/formats.py): "chat" (messages through the model's chat template,
    # the plain template when it has none), "alpaca" or "plain". Training and inference read the same field.
    prompt_format: str = "chat"
