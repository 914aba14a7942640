"""A tiny LoRA fine-tune on the colour task through the training engine: the shared set-up of the checkpoint, fault
and resume tests (fp32 on the CPU, seed 0, a few steps)."""

from __future__ import annotations

from pathlib import Path

import torch

from lmtailor.core.budget import Budget
from lmtailor.strategies.finetune import FinetuneConfig, FinetuneStrategy

from colours import CPU, TASK, colour_splits

BUDGET = Budget(max_input_tokens=32, max_new_tokens=8, max_seq_len=128, eval_batch_size=8)
SPLITS = colour_splits(16, 4, 4)  # batch 4: 4 optimizer steps an epoch


def finetune_config(**overrides) -> FinetuneConfig:
    """LoRA, 8 steps of 4 rows, a checkpoint every 2 steps, a high learning rate so weights visibly move."""
    knobs = dict(name="finetune", method="lora", max_steps=8, batch_size=4, learning_rate=1e-2, logging_steps=1,
                 checkpoint_steps=2, keep_checkpoints=2)
    return FinetuneConfig.model_validate({**knobs, **overrides})


def sft_trainer(out_dir: Path, **overrides):
    """An engine trainer (``training/sft.py``) over the colour rows, not yet trained, checkpoints in
    ``out_dir/checkpoints``; returns (trainer, config, tokenizer). Seeded, so two calls build the same trainer."""
    from transformers import set_seed

    from lmtailor.models import load_model
    from lmtailor.training.dataset import build_sft_rows
    from lmtailor.training.engine import as_engine_trainer
    from lmtailor.training.sft import build_trainer

    cfg = finetune_config(**overrides)
    set_seed(0)
    loaded = load_model("tiny-llama", CPU)
    task = FinetuneStrategy(cfg).tuned_task(TASK)
    train = build_sft_rows(loaded.tokenizer, task, SPLITS.train, BUDGET)
    val = build_sft_rows(loaded.tokenizer, task, SPLITS.validation, BUDGET)
    trainer = build_trainer(loaded.model, loaded.tokenizer, cfg, cfg.method, train.dataset, val.dataset, CPU, 0,
                            Path(out_dir) / "checkpoints", BUDGET.max_seq_len)
    return as_engine_trainer(trainer), cfg, loaded.tokenizer


def trainable_weights(model) -> dict[str, torch.Tensor]:
    """A copy of the weights that train (the LoRA matrices)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)
