"""Supervised fine-tuning through TRL's ``SFTTrainer``, configured for honest measurement on any hardware.

TRL fits as is: it accepts a pre-tokenized dataset (``input_ids`` + ``completion_mask``), builds ``labels`` with -100
on the prompt when ``completion_only_loss`` is on (in dataset preparation since TRL 1.x, not in the collator), pads
per batch (or flattens it, padding-free), wraps the model with PEFT from ``peft_config``, and its ``log_history`` is
the training log we record. The fine-tuning method (``training/peft_methods.py``) prepares the model and builds the
PEFT config. What we set explicitly, because the defaults are wrong for us, is said next to each argument below.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lmtailor.core.training_loop import TrainingLoop
from lmtailor.models.families import model_family
from lmtailor.runtime import Runtime
from lmtailor.training.adapter_casts import skip_redundant_adapter_casts
from lmtailor.training.common import common_training_args, use_loss_bar
from lmtailor.training.engine import engine_trainer_class
from lmtailor.training.method_settings import MethodSettings
from lmtailor.training.peft_methods import prepare_for_training
from lmtailor.training.peft_methods import learning_rate as method_learning_rate

if TYPE_CHECKING:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer


def learning_rate(loop: TrainingLoop, method: MethodSettings) -> float:
    """The configured learning rate, or the method's default for generative (decoder / encoder-decoder) models: no
    fresh head trains beside the method."""
    return method_learning_rate(loop, method, fresh_head=False)


def sft_config(loop: TrainingLoop, method: MethodSettings, runtime: Runtime, seed: int, output_dir: Path,
               max_seq_len: int, has_eval: bool, padding_free: bool) -> "SFTConfig":
    """TRL's ``SFTConfig`` for one run: precision from ``runtime``, no checkpoints, no trackers, progress shown;
    ``padding_free`` as resolved for the loaded model (``training/padding_free.use_padding_free``)."""
    from trl import SFTConfig

    args = common_training_args(loop, runtime, seed, output_dir, has_eval, learning_rate(loop, method))
    if padding_free:
        # A flattened batch has no padding at all (and no attention mask): every token is real. Counting "non
        # padding" would instead drop every token equal to the pad id, which is eos for many tokenizers.
        args["include_num_input_tokens_seen"] = "all"
    return SFTConfig(
        **args,
        # rows are already cut to this; TRL's own truncation is then a no-op (and padding-free refuses it)
        max_length=None if padding_free else max_seq_len,
        completion_only_loss=loop.completion_only_loss,
        packing=False,  # one row per sequence: padding-free flattens a batch, it never splits or merges rows
        padding_free=padding_free,
    )


def build_trainer(model, tokenizer, loop: TrainingLoop, method: MethodSettings, train: "Dataset",
                  validation: "Dataset | None", runtime: Runtime, seed: int, output_dir: Path,
                  max_seq_len: int) -> "SFTTrainer":
    """An ``SFTTrainer`` over pre-tokenized rows, the model prepared by the fine-tuning method (PEFT methods wrap
    it through TRL's ``peft_config``; full and freeze train it in fp32 master weights)."""
    from lmtailor.training.compact_loss import CompactLossSFTTrainer

    from lmtailor.training.padding_free import use_padding_free

    model, peft_config = prepare_for_training(model, method, model_family(model).name,
                                              loop.gradient_checkpointing)
    args = sft_config(loop, method, runtime, seed, output_dir, max_seq_len, has_eval=validation is not None,
                      padding_free=use_padding_free(model, tokenizer.pad_token_id, loop, method))
    # TRL's SFTTrainer, with the loss projected onto the vocabulary at the answer positions only where TRL's own
    # fused head would project every position (CPU, MPS): training/compact_loss.py
    trainer_class = engine_trainer_class(CompactLossSFTTrainer)
    trainer = trainer_class(model=model, args=args, train_dataset=train, eval_dataset=validation,
                            processing_class=tokenizer, peft_config=peft_config)
    skip_redundant_adapter_casts(trainer.model)  # TRL wrapped it with PEFT: no fp32 round trip under bf16 autocast
    return use_loss_bar(trainer)
