"""What a strategy returns for one row: predictions aligned with the test rows plus what it wants recorded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StrategyOutput:
    """A strategy's answer for the test rows (aligned with ``ctx.data.test``) plus what it wants recorded."""

    predictions: list[str]
    artifacts: dict[str, Path] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    # Retrieval strategies: the document ids retrieved for each test row, best first, scored against the rows'
    # gold documents (meta["gold_doc"]) at ``retrieval_k`` by the evaluator.
    retrieved_doc_ids: list[list[str]] | None = None
    retrieval_k: int | None = None
    # Training strategies: the tuned model and its tokenizer, as served (LoRA merged), so the runner can probe what
    # the training made it forget (probing/forgetting.py) against the base model. Dropped once probed.
    tuned: tuple[Any, Any] | None = None
