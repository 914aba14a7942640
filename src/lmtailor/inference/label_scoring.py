"""Classification by label likelihood: score every label's answer tokens given the prompt, pick the best.

No free text is parsed: for each row, the score of a label is the sum of the log-probabilities of its completion
tokens (the label, then the end-of-turn token, exactly as training writes it) given the prompt. The sum is the
default because the end-of-turn token already penalises a label that stops early ("os" vs "os.path"); the
length-normalised mean is offered for label sets whose token lengths vary a lot.

Fast path (``prefix_cache=True``), which gives the same scores as one full forward per (row, label):

1. The instruction and few-shot exemplars are the same in every prompt, so the longest common token prefix of all
   prompts is run once and its KV cache (a transformers ``DynamicCache``) kept (none when nothing is shared).
2. Rows go ``batch_size`` at a time, shortest first: copies of that cache take the rows' own suffixes, left-padded,
   in one forward (the padding between prefix and suffix is masked, and explicit position ids keep each real
   token at its unpadded position); only the last position's logits are computed (``logits_to_keep=1``: Gemma 3's
   vocabulary has 262k entries), giving every label's first token.
3. The cache is then repeated once per label (``batch_repeat_interleave``) and every row's labels' remaining tokens
   run as one batch, right-padded: attention is causal, so a real token never sees the padding after it, and
   padded positions are never read. Log-probs are taken as logit minus log-sum-exp at the label tokens only.

The first batch's shortest (most padded) row is also scored without any cache, in fp32 (the weights are cast up
for that one forward and back, exactly); if the two disagree by more than the precision explains (an architecture
whose cache does not survive copying or batch expansion, or that ignores position ids) the run logs it and scores
every row the slower, cache-free way. Which check ran and the difference it measured go into ``LabelScores.check``.

A prefix- or prompt-tuned PeftModel puts its virtual tokens before every prompt: they open the shared prefix, a
cache the base model then continues (``inference/virtual_tokens.py``); the cache-free path and the self-check run
the PeftModel itself.
"""

from __future__ import annotations

import copy
import itertools
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from lmtailor.inference.generation import pad_batch
from lmtailor.inference.virtual_tokens import (cache_keyword, computed_virtual_tokens, virtual_token_cache,
                                              virtual_token_count)

log = logging.getLogger("lmtailor")


@dataclass
class LabelScores:
    """Per-row label scores, and what it cost to compute them."""

    scores: list[list[float]]  # [row][label], higher is more likely
    tokens: int = 0  # real tokens fed to the model (the shared prefix counted once)
    prefix_len: int = 0  # tokens of the shared prompt prefix computed once (0: no prefix cache)
    # "prefix-cache" (rows batched after the shared prefix's cache), "batched" (rows batched, no shared prefix) or
    # "no-cache" (one cache-free forward per row)
    path: str = "prefix-cache"
    notes: list[str] = field(default_factory=list)
    # the self-check of the cached path: its reference, the measured difference and the tolerance (None: no check)
    check: dict | None = None

    def best(self) -> list[int]:
        """Index of the highest-scoring label of each row."""
        return [max(range(len(row)), key=row.__getitem__) for row in self.scores]


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _cache_keyword(model) -> str:
    """The forward keyword for a KV cache: ``cache`` in recent transformers 5.x, ``past_key_values`` before."""
    return cache_keyword(model)


def new_cache(model):
    """An empty ``DynamicCache`` laid out for the model (sliding-window layers where its config has them)."""
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def forward_with_cache(model, input_ids: torch.Tensor, cache, **kwargs):
    """Run ``model`` on ``input_ids`` after what ``cache`` holds; the cache grows in place."""
    return model(input_ids=input_ids, use_cache=True, **{_cache_keyword(model): cache}, **kwargs)


def _reduce(logps: list[float], normalize: bool) -> float:
    return sum(logps) / len(logps) if normalize else sum(logps)


def common_prefix_len(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by all prompts."""
    first = prompts[0]
    n = min(len(p) for p in prompts)
    for p in prompts[1:]:
        i = 0
        while i < n and p[i] == first[i]:
            i += 1
        n = i
    return n


def _token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at each position, from the logits, without a full-vocabulary log-softmax tensor.

    ``logits[..., V]`` and ``targets[...]`` line up; the log-sum-exp is taken in fp32 (as a log-softmax would be).
    """
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


@torch.no_grad()
def _score_batch_cached(model, prefix_cache, prefix_len: int, prompts: Sequence[Sequence[int]],
                        labels: Sequence[Sequence[int]], pad_id: int) -> tuple[list[list[list[float]]], int]:
    """Per-token label log-probs of a batch of rows that continue ``prefix_cache`` (batch 1; None: no prefix).

    Two forwards for the whole batch. (1) The rows' suffixes, left-padded, after copies of the prefix cache: the
    padding sits between prefix and suffix, so the attention mask hides it and explicit position ids keep every
    real token where it would be unpadded; only the last position's logits are computed. (2) The cache repeated
    once per label and every label's tokens (but its last) for every row as one right-padded batch: a real token
    never sees the padding after it (causal attention), and padded positions are never read. Logits come out
    only for label positions: batch × labels × (longest label - 1) × vocabulary.
    """
    device = _device(model)
    rows = len(prompts)
    if prefix_cache is not None:
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(rows)
        past = cache.get_seq_length()  # virtual tokens + shared prefix
    else:
        cache, past = new_cache(model), 0
    suffixes = [list(p[prefix_len:]) for p in prompts]
    ids, suffix_mask = pad_batch(suffixes, pad_id, device, side="left")
    mask = torch.cat([torch.ones(rows, past, dtype=suffix_mask.dtype, device=device), suffix_mask], dim=1)
    positions = past + (suffix_mask.cumsum(-1) - 1).clamp(min=0)
    out = forward_with_cache(model, ids, cache, attention_mask=mask, position_ids=positions, logits_to_keep=1)
    first_ids = torch.tensor([lab[0] for lab in labels], device=device)
    first = _token_logps(out.logits[:, -1:, :].expand(-1, len(labels), -1), first_ids.expand(rows, -1))  # rows × L
    tokens = sum(map(len, suffixes))
    width = max(len(lab) for lab in labels) - 1
    if width == 0:
        return [[[x] for x in row] for row in first.tolist()], tokens
    n = len(labels)
    rest = [list(lab[:-1]) or [pad_id] for lab in labels]  # the inputs that predict tokens 1..len-1
    inputs, _ = pad_batch(rest, pad_id, device)  # n × width
    targets, valid = pad_batch([list(lab[1:]) or [pad_id] for lab in labels], pad_id, device)
    valid[[len(lab) == 1 for lab in labels]] = 0  # a one-token label has nothing after its first token
    cache.batch_repeat_interleave(n)  # row r's labels are rows r*n .. r*n+n-1
    mask = torch.cat([mask.repeat_interleave(n, dim=0), torch.ones(rows * n, width, dtype=mask.dtype, device=device)],
                     dim=1)
    start = (past + suffix_mask.sum(-1)).repeat_interleave(n)
    positions = start[:, None] + torch.arange(width, device=device)
    out = forward_with_cache(model, inputs.repeat(rows, 1), cache, attention_mask=mask, position_ids=positions)
    later = _token_logps(out.logits, targets.repeat(rows, 1)).view(rows, n, width)
    first, later, valid = first.tolist(), later.tolist(), valid.tolist()
    logps = [[[first[r][j]] + later[r][j][: sum(valid[j])] for j in range(n)] for r in range(rows)]
    return logps, tokens + rows * sum(len(lab) - 1 for lab in labels)


@torch.no_grad()
def _score_row_uncached(model, prompt: Sequence[int], labels, pad_id: int):
    """All labels of one row as one right-padded batch of prompt + label, no cache (the fallback path)."""
    seqs = [list(prompt) + list(lab[:-1]) for lab in labels]
    device = _device(model)
    inputs, mask = pad_batch(seqs, pad_id, device)
    width = max(len(lab) for lab in labels)
    out = model(input_ids=inputs, attention_mask=mask, logits_to_keep=width)
    lp = torch.log_softmax(out.logits.float(), dim=-1)  # positions len(prompt)-1 .. end
    logps = [[lp[i, j, lab[j]].item() for j in range(len(lab))] for i, lab in enumerate(labels)]
    # a prompt-tuned PeftModel runs its virtual tokens before every sequence
    return logps, sum(len(s) for s in seqs) + computed_virtual_tokens(model) * len(seqs)


# Tolerances of the check, as a relative difference of a summed label log-prob, |s - ref| / max(1, |ref|), the
# reference being the same row scored without the cache in fp32. Measured with benchmarks/label_scoring_tolerance.py
# --rows 4 (the demo's 4-shot prompt, 570-651 tokens; 4 test rows x 8 labels = 32 scores per model; CPU with AMX),
# largest difference over the 32 scores:
#                                          smollm2-135m-instruct   gemma3-270m
#   (a) fp32 cached vs fp32 uncached       1.5e-5                  2.7e-2 on the check row: its cache does not
#                                                                  survive (issue 19); the check falls back
#   (b) bf16 uncached vs fp32 uncached     5.6e-2                  1.9e-2   (bf16 rounding alone; median 1.7e-2, 6.7e-3)
#   (c) bf16 cached vs fp32 uncached       3.9e-2                  4.7e-2   (what a bf16 run's check compares)
# fp32: the cache moves a score by float reordering only, so 2e-3 is ~100x smollm2's (a) and still ~10x below
# gemma3's mismatch. bf16: the check cannot tell a cache error from rounding smaller than (b), so the tolerance is
# (b)'s largest value with ~1.8x margin for other prompts and rows: 0.1, against the 0.25 the check allowed before
# against a bf16 reference. (gemma3's 2.7e-2 cache error is within bf16 rounding: a bf16 run keeps its cache, and
# the record's cache_check shows the difference.) A reference that cannot be fp32 (quantized weights, no memory)
# carries rounding on both sides: twice the bf16 tolerance.
FP32_CHECK_TOLERANCE = 2e-3
BF16_CHECK_TOLERANCE = 0.1


class CannotCastToFp32(Exception):
    """The model's weights cannot be cast to fp32 for the reference (quantized storage)."""


@contextmanager
def _fp32_weights(model):
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
        return *_score_row_uncached(model, prompt, labels, pad_id), "fp32, no cache", FP32_CHECK_TOLERANCE
    try:
        with _fp32_weights(model):
            return *_score_row_uncached(model, prompt, labels, pad_id), "fp32, no cache", BF16_CHECK_TOLERANCE
    except (CannotCastToFp32, torch.OutOfMemoryError) as e:  # quantized, or a big model on a small GPU
        why = "quantized weights" if isinstance(e, CannotCastToFp32) else "no memory for an fp32 copy"
        logps, n = _score_row_uncached(model, prompt, labels, pad_id)
        return logps, n, f"{str(dtype).removeprefix('torch.')}, no cache ({why})", 2 * BF16_CHECK_TOLERANCE


def _check_cache(model, prompt, labels, pad_id: int, cached: list[list[float]], result: "LabelScores") -> bool:
    """Compare the cached scores of one row with a cache-free fp32 computation; on disagreement, switch paths.

    Only the shortest and the longest label are recomputed: together they exercise the batch expansion and the
    right padding, for the price of two prompts instead of one per label.
    """
    picks = sorted({min(range(len(labels)), key=lambda j: len(labels[j])),
                    max(range(len(labels)), key=lambda j: len(labels[j]))})
    reference, n, what, tol = _reference_scores(model, prompt, [labels[j] for j in picks], pad_id)
    result.tokens += n
    diff = max(abs(sum(cached[j]) - sum(ref)) / max(1.0, abs(sum(ref))) for j, ref in zip(picks, reference))
    result.check = {"reference": what, "labels_checked": len(picks), "relative_difference": round(diff, 6),
                    "tolerance": tol, "passed": diff <= tol}
    if diff <= tol:
        return True
    note = (f"{type(model).__name__}: label scores with the prefix KV cache differ from scores without it "
            f"(relative difference {diff:.2g} against {what}, tolerance {tol:g}); scoring every row without the "
            "cache (slower, correct)")
    log.warning(note)
    result.notes.append(note)
    result.path, result.prefix_len = "no-cache", 0
    return False


@torch.no_grad()
def score_labels(model, prompts: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_id: int,
                 prefix_cache: bool = True, normalize: bool = False,
                 on_row: Callable[[], None] | None = None, batch_size: int = 8,
                 self_check: bool = True) -> LabelScores:
    """Score each label's completion ids after each prompt (sum of token log-probs; mean if ``normalize``).

    With ``prefix_cache`` (the default) rows are scored ``batch_size`` at a time after the shared prefix's cache
    (an empty one when the prompts share nothing); without it, one cache-free forward per row over all labels,
    the reference path. ``self_check=False`` skips the cache-free check of the first batch (for callers that
    already checked this model, see ``score_prompt_groups``).
    """
    if not prompts:
        return LabelScores([])
    if not labels or any(len(lab) == 0 for lab in labels):
        raise ValueError("every label needs at least one completion token")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    # Keep at least one token of each prompt outside the prefix: its logits give every label's first token.
    prefix_len = min(common_prefix_len(prompts), min(len(p) for p in prompts) - 1) if prefix_cache else 0
    # A prompt-learning adapter's virtual tokens precede every prompt: they are part of the shared prefix.
    virtual = virtual_token_count(model) if prefix_cache else 0
    path = ("prefix-cache" if prefix_len or virtual else "batched") if prefix_cache else "no-cache"
    result = LabelScores([], prefix_len=prefix_len, path=path)
    cache, scorer = None, model
    if prefix_len > 0 or virtual:
        if virtual:  # the base model continues a cache that holds the virtual tokens (inference/virtual_tokens.py)
            scorer, cache = virtual_token_cache(model, 1)
            result.tokens = computed_virtual_tokens(model)
        else:
            cache = new_cache(model)
        if prefix_len > 0:
            forward_with_cache(scorer, torch.tensor([list(prompts[0][:prefix_len])], device=_device(model)), cache,
                               logits_to_keep=1)
            result.tokens += prefix_len
    logps: list = [None] * len(prompts)
    batched = prefix_cache
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths: little padding
    for start in range(0, len(order), batch_size):
        batch = order[start: start + batch_size]
        if batched:
            rows, n = _score_batch_cached(scorer, cache, prefix_len, [prompts[i] for i in batch], labels, pad_id)
            result.tokens += n
            # The batch's shortest row carries the most padding: check it against a cache-free forward.
            if start == 0 and self_check and not _check_cache(model, prompts[batch[0]], labels, pad_id, rows[0],
                                                               result):
                batched = False
            else:
                for i, row in zip(batch, rows):
                    logps[i] = row
                    if on_row:
                        on_row()
                continue
        for i in batch:
            logps[i], n = _score_row_uncached(model, prompts[i], labels, pad_id)
            result.tokens += n
            if on_row:
                on_row()
    result.scores = [[_reduce(lp, normalize) for lp in row] for row in logps]
    return result


def score_prompt_groups(model, groups: Sequence[Sequence[Sequence[int]]], labels: Sequence[Sequence[int]],
                        pad_id: int, normalize: bool = False, batch_size: int = 8) -> LabelScores:
    """Score prompts that come in groups, each group's prompts sharing a long prefix of their own (a prompt with
    per-row exemplars, asked about each content-free input): each group's prefix runs once, not once per prompt.

    Scores come back in the groups' order, flattened. The first group is checked against a cache-free forward (as
    ``score_labels`` does); if the cache fails there, every group is scored without it.
    """
    out = LabelScores([], path="prefix-cache")
    cached = True
    for i, group in enumerate(groups):
        part = score_labels(model, group, labels, pad_id, prefix_cache=cached, normalize=normalize,
                            batch_size=batch_size, self_check=i == 0)
        cached = cached and part.path != "no-cache"
        out.scores += part.scores
        out.tokens += part.tokens
        out.prefix_len = max(out.prefix_len, part.prefix_len)
        out.notes += part.notes
        out.path = "prefix-cache per group" if cached else "no-cache"
    return out


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
            row.append(_reduce([lp[start + j - 1, t].item() for j, t in enumerate(lab)], normalize))
        scores.append(row)
    return scores
