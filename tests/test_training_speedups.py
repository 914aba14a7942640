"""Correctness of the training speed-ups (issue 8): the compact SFT loss (training/compact_loss.py) gives TRL's loss,
gradients and logged metrics; it steps aside where it does not apply; rows are tokenized once, before the trainer,
and trained on exactly as tokenized. No timing is asserted here: speed is measured by benchmarks/train_throughput.py.
"""

from __future__ import annotations

import pytest
import torch

from lmtailor.core.budget import Budget
from lmtailor.strategies.finetune import FinetuneConfig

from colours import CPU, TASK, colour_splits

BUDGET = Budget(max_input_tokens=32, max_new_tokens=6, max_seq_len=128, eval_batch_size=4)
SPLITS = colour_splits(8, 2, 2)


def _config(**kw) -> FinetuneConfig:
    return FinetuneConfig.model_validate({"name": "finetune", **kw})


@pytest.fixture()
def make_trainer(tiny_llama_dir, tmp_path, one_torch_thread):
    from lmtailor.models import load_model
    from lmtailor.training.dataset import build_sft_rows
    from lmtailor.training.sft import build_trainer

    def make(**kw):
        loaded = load_model("tiny-llama", CPU)
        rows = build_sft_rows(loaded.tokenizer, TASK, SPLITS.train[:4], BUDGET)
        lora = {"method": "lora", "lora_dropout": 0.0, "target_modules": "all-linear"}  # no dropout: comparable
        cfg = _config(**(kw if "method" in kw else {**lora, **kw}))
        trainer = build_trainer(loaded.model, loaded.tokenizer, cfg, cfg.method, rows.dataset, None, CPU, 0,
                                tmp_path, BUDGET.max_seq_len)
        return trainer, rows

    return make


def _loss_and_grads(trainer, batch, compact: bool):
    """(loss, {trainable name: grad}, metrics appended) of one compute_loss + backward, by one path or the other."""
    trainer.compact_loss, model = compact, trainer.model
    model.train()
    model.zero_grad()
    trainer._metrics["train"].clear()
    trainer._total_train_tokens = 0  # a running count: each path starts from zero
    loss = trainer.compute_loss(model, {k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()})
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    metrics = {k: list(v) for k, v in trainer._metrics["train"].items()}
    return loss.detach(), grads, metrics


@pytest.mark.parametrize("padding_free", [False, True])
def test_compact_loss_equals_trl_loss_gradients_and_metrics(make_trainer, padding_free):
    trainer, rows = make_trainer(padding_free=padding_free)
    assert trainer.compact_loss  # CPU, LoRA, plain NLL: the compact path is the one that trains
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    # the answer is a small part of each row: most positions are never projected onto the vocabulary
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert 0 < labelled < batch["input_ids"].numel() / 3
    compact_loss, compact_grads, compact_metrics = _loss_and_grads(trainer, batch, compact=True)
    trl_loss, trl_grads, trl_metrics = _loss_and_grads(trainer, batch, compact=False)
    torch.testing.assert_close(compact_loss, trl_loss, atol=1e-5, rtol=1e-5)
    assert compact_grads.keys() == trl_grads.keys() and len(compact_grads) > 0
    for name in trl_grads:
        torch.testing.assert_close(compact_grads[name], trl_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    assert any(g.abs().sum() > 0 for g in compact_grads.values())  # a real gradient, not zeros on both sides
    for key in ("entropy", "mean_token_accuracy", "num_tokens"):
        assert compact_metrics[key] == pytest.approx(trl_metrics[key], rel=1e-4, abs=1e-6), key
    # tokens seen: every real token of the four rows, padded or flattened
    assert compact_metrics["num_tokens"] == [sum(len(trainer.train_dataset[i]["input_ids"]) for i in range(4))]


def test_compact_loss_uses_num_items_in_batch_like_trl(make_trainer):
    # With gradient accumulation the Trainer divides by the labelled tokens of the whole accumulated batch.
    trainer, _ = make_trainer()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    with torch.no_grad():
        trainer.compact_loss = True
        compact = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=torch.tensor(40))
        trainer.compact_loss = False
        trl = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=torch.tensor(40))
    torch.testing.assert_close(compact, trl, atol=1e-5, rtol=1e-5)


def test_compact_loss_steps_aside_for_virtual_tokens(make_trainer):
    # prompt tuning prepends virtual tokens inside PEFT's forward: positions shift, so TRL's own path is used
    trainer, _ = make_trainer(method="prompt-tuning")
    assert trainer.compact_loss is False


def test_a_model_that_ignores_a_logits_mask_is_detected(tiny_llama_dir, one_torch_thread):
    from lmtailor.models import load_model
    from lmtailor.training.compact_loss import supports_compact_logits

    model = load_model("tiny-llama", CPU).model
    assert supports_compact_logits(model)
    forward = model.forward
    model.forward = lambda *a, logits_to_keep=None, **kw: forward(*a, **kw)  # a forward that returns every position
    assert not supports_compact_logits(model)


def test_rows_are_tokenized_once_and_trained_as_tokenized(make_trainer):
    """The trainer's dataset holds exactly the ids ``build_sft_rows`` produced (TRL neither re-tokenizes nor cuts
    them), and ``trainer.train`` reads that same in-memory dataset every epoch (no per-epoch tokenization)."""
    from lmtailor.models import load_model
    from lmtailor.training.dataset import build_sft_rows

    trainer, rows = make_trainer()
    fresh = build_sft_rows(load_model("tiny-llama", CPU).tokenizer, TASK, SPLITS.train[:4], BUDGET)
    assert [r["input_ids"] for r in trainer.train_dataset] == fresh.dataset["input_ids"] == rows.dataset["input_ids"]
    labels = trainer.data_collator([trainer.train_dataset[0]])["labels"][0].tolist()
    mask = rows.dataset[0]["completion_mask"]
    assert labels == [t if m else -100 for t, m in zip(rows.dataset[0]["input_ids"], mask)]
