"""Padding-free batches (decoder-only): TRL flattens each batch into one sequence whose position ids restart at
every row, with no attention mask. Whether rows then stay apart is up to the model's attention: transformers 5
(``masking_utils``) reads the restarts in ``position_ids`` and builds a block-diagonal causal mask for sdpa, eager
and flex attention (flash attention gets the row boundaries as ``cu_seq_lens``). A model whose attention does not
build its mask that way would let every row attend to the rows before it, and train on that silently.

So before training, ``check_padding_free`` runs the model once on two flattened batches that differ only in their
first row: the second row's logits must not move, and must equal those of the second row run alone.

Padding-free is the default for decoder-only fine-tuning (``use_padding_free``): on the demo's LoRA row it trains
1.3x faster than padded batches at no worse loss (``benchmarks/README.md``): no FLOPs go to padding. It stays
off where it cannot help or cannot work: one row per batch, prefix / prompt tuning (their virtual tokens would go
before the whole flattened batch), and a model that fails the check (a warning says so, and batches are padded).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from lmtailor.errors import UserError

if TYPE_CHECKING:
    from lmtailor.core.training_loop import TrainingLoop
    from lmtailor.training.method_settings import MethodSettings

log = logging.getLogger(__name__)


def _flat_batch(rows: list[list[int]], pad_token_id: int) -> dict:
    """A padding-free batch exactly as TRL's collator builds it for training (every key the model receives)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    batch = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=True)(
        [{"input_ids": r} for r in rows])
    batch.pop("labels")
    return batch


@torch.no_grad()
def check_padding_free(model, pad_token_id: int) -> None:
    """Raise a UserError if, with this model's attention implementation, a row of a padding-free batch sees the
    rows before it (or its positions do not restart)."""
    vocab = model.config.get_text_config().vocab_size
    first, other, second = [3, 4, 5, 6, 7], [8, 9, 10, 11, 12], [13, 14, 15, 16]
    if max(first + other + second) >= vocab:
        return  # a vocabulary too small to probe is a toy; nothing real trains on it
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        logits = []
        for rows in ([first, second], [other, second]):
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                     for k, v in _flat_batch(rows, pad_token_id).items()}
            logits.append(model(**batch, use_cache=False).logits[0, len(first):].float())
        alone = model(input_ids=torch.tensor([second], device=device), use_cache=False).logits[0].float()
    finally:
        model.train(was_training)
    tol = 1e-3 if next(model.parameters()).dtype == torch.float32 else 5e-2
    scale = 1.0 + alone.abs().max().item()
    leaks = not torch.allclose(logits[0], logits[1], atol=1e-5 * scale, rtol=0)
    shifted = not torch.allclose(logits[0], alone, atol=tol * scale, rtol=0)
    if leaks or shifted:
        impl = getattr(model.config, "_attn_implementation", None) or "unknown"
        problem = "attend to the rows before them" if leaks else "do not restart their positions"
        raise UserError(f"padding_free: with attention implementation {impl!r}, rows of a flattened batch "
                        f"{problem} in {type(model).__name__}, so training would mix examples. Set padding_free: "
                        "false (or use a model whose attention builds its mask through transformers' masking "
                        "utilities: sdpa, eager, flex or flash attention)")


def use_padding_free(model, pad_token_id: int, cfg: "TrainingLoop", method: "MethodSettings") -> bool:
    """Whether a decoder-only run flattens its batches: ``padding_free`` as set (true is checked on ``model`` and
    refused if rows would mix), or, when unset, wherever it applies and the check passes."""
    from lmtailor.training.peft_methods import finetune_method

    if cfg.padding_free is False:
        return False
    if cfg.padding_free is None:
        if cfg.batch_size == 1 or not finetune_method(method.name).padding_free_ok:
            return False
        try:
            check_padding_free(model, pad_token_id)
        except UserError as e:
            log.warning("%s. Training on padded batches instead.", e)
            return False
        return True
    check_padding_free(model, pad_token_id)
    return True
