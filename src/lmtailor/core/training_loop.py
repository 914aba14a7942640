"""The training-loop settings fine-tuning and pre-training share: one pydantic model each trainer reads.

``OptimizerSettings`` holds what every phase that trains sets (learning rate, batch, warm-up, clipping, logging,
checkpoints); ``TrainingLoop`` adds what a fine-tuning loop decides (epochs or steps, validation cadence, early
stopping, batch layout). The finetune strategy's config *is* a ``TrainingLoop`` (its YAML keys stay flat); a
pre-training phase builds one from its ``OptimizerSettings`` and the steps its token budget needs. The trainers in
``training/`` take a ``TrainingLoop`` and a method's settings (``training/method_settings.py``), never a strategy's
config.

Imports nothing of lmtailor: this is the bottom layer.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class OptimizerSettings(BaseModel):
    """What every training phase sets: AdamW's step, the batch, warm-up, clipping, logging and checkpoints."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float | None = Field(
        None, gt=0, description="peak AdamW learning rate (default per method and family, e.g. lora 2e-4, full "
                                "5e-5, ia3 3e-3, prompt-tuning 3e-2; sources in training/peft_methods.py)")
    batch_size: int = Field(8, ge=1, description="rows per forward/backward pass")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="passes per optimizer step (effective batch = batch_size x this)")
    warmup_ratio: float = Field(
        0.05, ge=0, lt=1, description="fraction of the steps spent warming the learning rate up linearly")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    logging_steps: int = Field(5, ge=1, description="steps between training-loss log entries")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, ~25% slower")
    checkpoint_steps: int = Field(
        500, ge=1, description="write a resumable checkpoint every this many optimizer steps (and on SIGINT/SIGTERM); "
                               "`lmtailor run --resume RUN_DIR` continues from the last complete one")
    keep_checkpoints: int = Field(
        1, ge=1, description="how many complete checkpoints to keep (older ones are deleted once a newer one is whole)")


class TrainingLoop(OptimizerSettings):
    """A whole training loop: the optimizer settings, how long it runs, when it is validated and stopped, and how
    batches are laid out."""

    epochs: float = Field(1.0, gt=0, description="passes over the training rows (fractions allowed)")
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps (overrides epochs)")
    eval_strategy: Literal["epoch", "steps", "no"] = Field(
        "epoch", description="when to compute the validation loss: each epoch, every eval_steps steps, or never")
    eval_steps: int | None = Field(
        None, ge=1, description="steps between validation losses (with eval_strategy: steps)")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop when the validation loss has not improved for this many evaluations "
                                "(needs eval_strategy epoch or steps); the best checkpoint's weights are kept")
    group_by_length: bool = Field(
        False, description="batch rows of similar length together (less padding, a little less randomness)")
    completion_only_loss: bool = Field(
        True, description="train on the answer tokens only (false: on the whole prompt too)")
    padding_free: bool | None = Field(
        None, description="decoder-only: concatenate each batch's rows into one sequence without padding; "
                          "position ids restart per row so no row attends to another. Unset: on for decoder-only "
                          "models with batch_size > 1 and a method without virtual tokens, once the loaded model "
                          "is checked to keep rows apart (else padded, with a warning); true: on (an error if the "
                          "check fails); false: each batch padded to its longest row")

    @model_validator(mode="after")
    def _check_cadence(self) -> "TrainingLoop":
        if self.eval_strategy == "steps" and self.eval_steps is None:
            raise ValueError("eval_strategy: steps needs eval_steps (e.g. eval_steps: 20)")
        if self.eval_steps is not None and self.eval_strategy != "steps":
            raise ValueError("eval_steps only applies with eval_strategy: steps")
        if self.early_stopping_patience is not None and self.eval_strategy == "no":
            raise ValueError("early_stopping_patience stops on the validation loss: set eval_strategy to epoch or "
                             "steps")
        return self
