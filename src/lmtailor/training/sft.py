"""Supervised fine-tuning through TRL's ``SFTTrainer``, configured for honest measurement on any hardware.

TRL fits as is: it accepts a pre-tokenized dataset (``input_ids`` + ``completion_mask``), builds ``labels`` with -100
on the prompt when ``completion_only_loss`` is on (in dataset preparation since TRL 1.x, not in the collator), pads
per batch, wraps the model with PEFT from ``peft_config``, and its ``log_history`` is the training log we record.
What we set explicitly, because the defaults are wrong for us, is said next to each argument below.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lmtailor.runtime import Runtime
from lmtailor.training.common import common_training_args, fp32_for_full, use_loss_bar

if TYPE_CHECKING:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from lmtailor.strategies.finetune import FinetuneConfig

# Where the default learning rates come from:
# - LoRA 2e-4: the QLoRA paper (Dettmers et al. 2023, appendix B.2: 2e-4 for models up to 13B) and the value in
#   the PEFT/TRL LoRA examples; LoRA wants roughly 10x the full fine-tuning rate.
# - full 5e-5: the Transformers ``TrainingArguments`` default, the top of BERT's fine-tuning range
#   (Devlin et al. 2019: 5e-5, 3e-5, 2e-5); small models like SmolLM2-135M tolerate the top of the range.
DEFAULT_LEARNING_RATE = {"lora": 2e-4, "full": 5e-5}


def learning_rate(cfg: "FinetuneConfig") -> float:
    """The configured learning rate, or the method's default."""
    return cfg.learning_rate if cfg.learning_rate is not None else DEFAULT_LEARNING_RATE[cfg.method]


def lora_config(cfg: "FinetuneConfig") -> "LoraConfig":
    """PEFT's ``LoraConfig`` for a causal LM from the strategy's knobs (no target_modules = PEFT's default)."""
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.target_modules, bias="none")


def sft_config(cfg: "FinetuneConfig", runtime: Runtime, seed: int, output_dir: Path, max_seq_len: int,
               has_eval: bool) -> "SFTConfig":
    """TRL's ``SFTConfig`` for one run: precision from ``runtime``, no checkpoints, no trackers, progress shown."""
    from trl import SFTConfig

    return SFTConfig(
        **common_training_args(cfg, runtime, seed, output_dir, has_eval, learning_rate(cfg)),
        max_length=max_seq_len,  # rows are already cut to this; TRL's own truncation is then a no-op
        completion_only_loss=cfg.completion_only_loss,
        packing=False,
    )


def build_trainer(model, tokenizer, cfg: "FinetuneConfig", train: "Dataset", validation: "Dataset | None",
                  runtime: Runtime, seed: int, output_dir: Path, max_seq_len: int) -> "SFTTrainer":
    """An ``SFTTrainer`` over pre-tokenized rows; LoRA wraps ``model`` in place, full fine-tuning trains it all."""
    from trl import SFTTrainer

    model = fp32_for_full(model, cfg)
    args = sft_config(cfg, runtime, seed, output_dir, max_seq_len, has_eval=validation is not None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=validation,
                         processing_class=tokenizer, peft_config=lora_config(cfg) if cfg.method == "lora" else None)
    return use_loss_bar(trainer)
