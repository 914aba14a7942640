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

from lmtailor.runtime import Runtime
from lmtailor.training.common import common_training_args, use_loss_bar
from lmtailor.training.engine import engine_trainer_class
from lmtailor.training.peft_methods import FINETUNE_METHODS, prepare_for_training
from lmtailor.training.peft_methods import learning_rate as method_learning_rate

if TYPE_CHECKING:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from lmtailor.strategies.finetune import FinetuneConfig

# Each method's default rate for decoder-only and encoder-decoder models; the sources are cited in
# training/peft_methods.py (LoRA 2e-4 from QLoRA, full 5e-5 from BERT / the Transformers default, ...).
DEFAULT_LEARNING_RATE = {name: FINETUNE_METHODS.get(name).learning_rate for name in FINETUNE_METHODS}


def learning_rate(cfg: "FinetuneConfig") -> float:
    """The configured learning rate, or the method's default for generative (decoder / encoder-decoder) models."""
    return method_learning_rate(cfg, "decoder-only")


def lora_config(cfg) -> "LoraConfig":
    """PEFT's ``LoraConfig`` for a causal LM from LoRA knobs (no target_modules = PEFT's default); continued
    pre-training's LoRA phase uses it (fine-tuning builds its config through ``training/peft_methods.py``)."""
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.target_modules, bias="none")


def sft_config(cfg: "FinetuneConfig", runtime: Runtime, seed: int, output_dir: Path, max_seq_len: int,
               has_eval: bool, padding_free: bool) -> "SFTConfig":
    """TRL's ``SFTConfig`` for one run: precision from ``runtime``, no checkpoints, no trackers, progress shown;
    ``padding_free`` as resolved for the loaded model (``training/padding_free.use_padding_free``)."""
    from trl import SFTConfig

    args = common_training_args(cfg, runtime, seed, output_dir, has_eval, learning_rate(cfg))
    if padding_free:
        # A flattened batch has no padding at all (and no attention mask): every token is real. Counting "non
        # padding" would instead drop every token equal to the pad id, which is eos for many tokenizers.
        args["include_num_input_tokens_seen"] = "all"
    return SFTConfig(
        **args,
        # rows are already cut to this; TRL's own truncation is then a no-op (and padding-free refuses it)
        max_length=None if padding_free else max_seq_len,
        completion_only_loss=cfg.completion_only_loss,
        packing=False,  # one row per sequence: padding-free flattens a batch, it never splits or merges rows
        padding_free=padding_free,
    )


def build_trainer(model, tokenizer, cfg: "FinetuneConfig", train: "Dataset", validation: "Dataset | None",
                  runtime: Runtime, seed: int, output_dir: Path, max_seq_len: int) -> "SFTTrainer":
    """An ``SFTTrainer`` over pre-tokenized rows, the model prepared by the fine-tuning method (PEFT methods wrap
    it through TRL's ``peft_config``; full and freeze train it in fp32 master weights)."""
    from lmtailor.training.compact_loss import CompactLossSFTTrainer

    from lmtailor.training.padding_free import use_padding_free

    model, peft_config = prepare_for_training(model, cfg, "decoder-only")
    args = sft_config(cfg, runtime, seed, output_dir, max_seq_len, has_eval=validation is not None,
                      padding_free=use_padding_free(model, tokenizer.pad_token_id, cfg))
    # TRL's SFTTrainer, with the loss projected onto the vocabulary at the answer positions only where TRL's own
    # fused head would project every position (CPU, MPS): training/compact_loss.py
    trainer_class = engine_trainer_class(CompactLossSFTTrainer)
    trainer = trainer_class(model=model, args=args, train_dataset=train, eval_dataset=validation,
                            processing_class=tokenizer, peft_config=peft_config)
    return use_loss_bar(trainer)
