"""The size limits every strategy, trainer and predictor respects."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    """Size limits a strategy must respect, resolved from the experiment file."""

    max_input_tokens: int = 256
    max_new_tokens: int = 32
    max_seq_len: int = 384
    eval_batch_size: int = 8
