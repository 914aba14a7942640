"""What a fine-tuning run leaves behind, whatever trained it (TRL SFT, Seq2SeqTrainer, the classifier Trainer):
the model, the trainer's state, the encoded splits and the saved artifact, for measurement, inference and the run
record."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Trained:
    """One training's outcome: the same fields for every family's trainer."""

    model: Any  # the tuned model (a PeftModel for PEFT methods, else the model itself)
    state: Any  # transformers TrainerState: global_step, epoch, num_input_tokens_seen, log_history
    train: Any  # the encoded training split (SFTRows, Seq2SeqRows, EncodedSplit): .rows and .summary()
    validation: Any  # the encoded validation split, of the same kind
    trainable: int
    total: int
    artifact_name: str  # "adapter" or "model": the method's artifact kind
    artifact: Path
    learning_rate: float | None = None  # the peak learning rate it trained with
    padding_free: bool = False  # batches were flattened without padding (training/padding_free.py)
    labels: tuple[str, ...] = ()  # an encoder classifier's head outputs, in order
