"""Label scores without any cache: the reference the shared-prefix scorer (``inference/label_scoring.py``) checks
itself against, its fallback, and the naive one-forward-per-label scores tests and benchmarks compare with.

The check scores one row (its shortest and longest label) cache-free in fp32 and compares its summed label
log-probs with the cached ones; the tolerances below are measured. The fallback scores rows cache-free in batches:
each row's prompt left-padded to the batch's longest (padding before a prompt moves no real token's distance to
another, so full and sliding-window attention see what an unpadded forward sees), then each label's tokens.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Sequence

import torch

from lmtailor.inference.generation import pad_batch
from lmtailor.inference.virtual_tokens import computed_virtual_tokens, virtual_token_count

# Tolerances of the check, as a relative difference of a summed label log-prob, |s - ref| / max(1, |ref|), the
# reference being the same row scored without the cache in fp32. Measured with benchmarks/label_scoring_tolerance.py
# --rows 16 (the demo's 4-shot prompt, 515-651 tokens; 16 test rows x 8 labels = 128 scores per model; CPU with AMX),
# largest difference over the 128 scores, once sliding windows were measured in positions (inference/position_masks.py;
# before, gemma3's fp32 cache was 2.7e-2 off, its check failed and every row fell back: issue 19):
#                                          smollm2-135m-instruct   gemma3-270m
#   (a) fp32 cached vs fp32 uncached       4.6e-6                  4.3e-6   (float reordering only)
#   (b) bf16 uncached vs fp32 uncached     1.1e-1                  2.7e-2   (bf16 rounding alone; medians 1.6e-2, 8.9e-3)
#   (c) bf16 cached vs fp32 uncached       7.7e-2                  3.3e-2   (what a bf16 run's check compares)
# fp32: 2e-3 is ~400x the largest (a). bf16: the check cannot tell a cache error from rounding smaller than (b), so
# the tolerance is the largest of (b) and (c) with ~1.4x margin for other prompts and rows: 0.15 (0.25 before the
# reference was fp32). A reference that cannot be fp32 (quantized weights, no memory) carries rounding on both
# sides: twice the bf16 tolerance.
FP32_CHECK_TOLERANCE = 2e-3
BF16_CHECK_TOLERANCE = 0.15


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def score_rows_uncached(model, prompts: Sequence[Sequence[int]], labels: Sequence[Sequence[int]],
                        pad_id: int) -> tuple[list[list[list[float]]], int]:
    """Per-token label log-probs of rows scored without a cache: (rows x labels) sequences of prompt + label, in
    one forward. Prompts are left-padded to one length (position ids keep each real token at its unpadded
    position), labels right-padded after them, so every label token's logits sit at the same positions. A model
    with virtual tokens goes one row at a time: PEFT puts them before the padding and ignores position ids."""
    if len(prompts) > 1 and virtual_token_count(model):
        parts = [score_rows_uncached(model, [p], labels, pad_id) for p in prompts]
        return [row for logps, _ in parts for row in logps], sum(n for _, n in parts)
    device = _device(model)
    n, width = len(labels), max(len(lab) for lab in labels)
    prompt_ids, prompt_mask = pad_batch(prompts, pad_id, device, side="left")
    label_ids, label_mask = pad_batch([list(lab[:-1]) for lab in labels] if width > 1 else [[pad_id]] * n,
                                      pad_id, device)
    if width == 1:
        label_ids, label_mask = label_ids[:, :0], label_mask[:, :0]
    rows = len(prompts)
    ids = torch.cat([prompt_ids.repeat_interleave(n, dim=0), label_ids.repeat(rows, 1)], dim=1)
    mask = torch.cat([prompt_mask.repeat_interleave(n, dim=0), label_mask.repeat(rows, 1)], dim=1)
    extra = {} if virtual_token_count(model) else {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
    out = model(input_ids=ids, attention_mask=mask, logits_to_keep=width, **extra)
    logits = out.logits.float().view(rows, n, width, -1)
    lp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    logps = [[[lp[r, j, k, lab[k]].item() for k in range(len(lab))] for j, lab in enumerate(labels)]
             for r in range(rows)]
    tokens = int(mask.sum()) + computed_virtual_tokens(model) * rows * n
    return logps, tokens


@torch.no_grad()
def naive_label_scores(model, prompts: Sequence[Sequence[int]], labels: Sequence[Sequence[int]],
                       normalize: bool = False) -> list[list[float]]:
    """Reference scores: one full forward per (row, label), no cache, no batching (for tests and benchmarks)."""
    device = _device(model)
    scores = []
    for prompt in prompts:
        row = []
        for lab in labels:
            ids = torch.tensor([list(prompt) + list(lab)], device=device)
            # the last positions: a prompt-tuned PeftModel also returns logits for its virtual tokens, first
            lp = torch.log_softmax(model(input_ids=ids).logits[0, -ids.shape[1]:].float(), dim=-1)
            start = len(prompt)
            logps = [lp[start + j - 1, t].item() for j, t in enumerate(lab)]
            row.append(sum(logps) / len(logps) if normalize else sum(logps))
        scores.append(row)
    return scores


class CannotCastToFp32(Exception):
    """The model's weights cannot be cast to fp32 for the reference (quantized storage)."""


@contextmanager
def fp32_weights(model):
    """The model's floating-point weights and buffers in fp32 for the block, then back to their own dtypes.

    A bf16 or fp16 value is exact in fp32, so the round trip changes no weight. Quantized weights (integer
    storage) cannot be cast: ``CannotCastToFp32`` is raised before anything changes.
    """
    tensors = list(itertools.chain(model.parameters(), model.buffers()))
    if getattr(model, "hf_quantizer", None) is not None or any(
            not t.is_floating_point() for t in model.parameters()):
        raise CannotCastToFp32("quantized weights")
    saved = [(t, t.dtype) for t in tensors if t.is_floating_point() and t.dtype != torch.float32]
    try:
        for t, _ in saved:
            t.data = t.data.float()
        yield
    finally:
        for t, dtype in saved:
            t.data = t.data.to(dtype)


def _reference_scores(model, prompt, labels, pad_id: int) -> tuple[list[list[float]], int, str, float]:
    """Cache-free scores of one row: in fp32 where the weights can be cast (else in their own dtype, with the
    tolerance doubled: both sides then carry rounding), with the tolerance that applies and what the reference was."""
    dtype = next(model.parameters()).dtype
    if dtype == torch.float32:
        logps, n = score_rows_uncached(model, [prompt], labels, pad_id)
        return logps[0], n, "fp32, no cache", FP32_CHECK_TOLERANCE
    try:
        with fp32_weights(model):
            logps, n = score_rows_uncached(model, [prompt], labels, pad_id)
            return logps[0], n, "fp32, no cache", BF16_CHECK_TOLERANCE
    except (CannotCastToFp32, torch.OutOfMemoryError) as e:  # quantized, or a big model on a small GPU
        why = "quantized weights" if isinstance(e, CannotCastToFp32) else "no memory for an fp32 copy"
        logps, n = score_rows_uncached(model, [prompt], labels, pad_id)
        return logps[0], n, f"{str(dtype).removeprefix('torch.')}, no cache ({why})", 2 * BF16_CHECK_TOLERANCE


def check_against_reference(model, prompt, labels, pad_id: int, cached: list[list[float]]) -> tuple[dict, int, str]:
    """Compare one row's cached label log-probs with a cache-free fp32 computation: (the check for the record,
    tokens the reference ran, a note saying why the cache is set aside: empty when the check passed).

    Only the shortest and the longest label are recomputed: together they exercise the batch expansion and the
    right padding, for the price of two prompts instead of one per label.
    """
    picks = sorted({min(range(len(labels)), key=lambda j: len(labels[j])),
                    max(range(len(labels)), key=lambda j: len(labels[j]))})
    reference, n, what, tol = _reference_scores(model, prompt, [labels[j] for j in picks], pad_id)
    diff = max(abs(sum(cached[j]) - sum(ref)) / max(1.0, abs(sum(ref))) for j, ref in zip(picks, reference))
    check = {"reference": what, "labels_checked": len(picks), "relative_difference": round(diff, 6),
             "tolerance": tol, "passed": diff <= tol}
    note = "" if diff <= tol else (
        f"{type(model).__name__}: label scores with the prefix KV cache differ from scores without it (relative "
        f"difference {diff:.2g} against {what}, tolerance {tol:g}); scoring every row without the cache, in batches "
        "(slower, correct)")
    return check, n, note
