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

Where some layers attend through a sliding window (Gemma 2 and 3, Mistral), the padding between the prefix and a
row would shrink that row's window, which transformers measures in cache slots: the window is measured in positions
instead, and the cache keeps every slot (``inference/position_masks.py``).

The first batch's shortest (most padded) row is also scored without any cache, in fp32 (the weights are cast up
for that one forward and back, exactly; ``inference/label_reference.py``); if the two disagree by more than the
precision explains (an architecture whose cache does not survive copying or batch expansion, or that ignores
position ids) the run logs it and scores every row the slower, cache-free way, still in batches. Which check ran
and the difference it measured go into ``LabelScores.check``.

A prefix- or prompt-tuned PeftModel puts its virtual tokens before every prompt: they open the shared prefix, a
cache the base model then continues (``inference/virtual_tokens.py``); the cache-free path and the self-check run
the PeftModel itself.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from lmtailor.inference.generation import pad_batch
from lmtailor.inference.label_reference import check_against_reference, score_rows_uncached
from lmtailor.inference.position_masks import position_masks, slides, unbounded_cache
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
    """An empty cache for the model. One that keeps every slot where some layers slide: the scorer pads between the
    shared prefix and each row, and measures the window in positions (``inference/position_masks.py``)."""
    if slides(model):
        return unbounded_cache()
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


def _masks(model, cache, mask: torch.Tensor, every: torch.Tensor, query_len: int):
    """The forward's attention mask: the 2-D padding mask, or where some layers slide (and the cache keeps every
    slot), masks whose window is measured in positions, since padding sits between the prefix and each row."""
    if slides(model) and not any(getattr(cache, "is_sliding", ())):
        return position_masks(model, mask, every, cache, query_len)
    return mask


@torch.no_grad()
def _score_batch_cached(model, prefix_cache, prefix_len: int, prompts: Sequence[Sequence[int]],
                        labels: Sequence[Sequence[int]], pad_id: int) -> tuple[list[list[list[float]]], int]:
    """Per-token label log-probs of a batch of rows that continue ``prefix_cache`` (batch 1; None: no prefix).

    Two forwards for the whole batch. (1) The rows' suffixes, left-padded, after copies of the prefix cache: the
    padding sits between prefix and suffix, so the attention mask hides it and explicit position ids keep every
    real token where it would be unpadded; only the last position's logits are computed. (2) ``_later_tokens``.
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
    every = torch.cat([torch.arange(past, device=device).expand(rows, -1), positions], dim=1)  # each slot's position
    out = forward_with_cache(model, ids, cache, attention_mask=_masks(model, cache, mask, every, ids.shape[1]),
                             position_ids=positions, logits_to_keep=1)
    first_ids = torch.tensor([lab[0] for lab in labels], device=device)
    first = _token_logps(out.logits[:, -1:, :].expand(-1, len(labels), -1), first_ids.expand(rows, -1))  # rows × L
    tokens = sum(map(len, suffixes))
    if max(len(lab) for lab in labels) == 1:
        return [[[x] for x in row] for row in first.tolist()], tokens
    later = _later_tokens(model, cache, mask, every, labels, pad_id)
    logps = [[[f] + rest for f, rest in zip(firsts, rests)] for firsts, rests in zip(first.tolist(), later)]
    return logps, tokens + rows * sum(len(lab) - 1 for lab in labels)


def _later_tokens(model, cache, mask: torch.Tensor, every: torch.Tensor, labels: Sequence[Sequence[int]],
                  pad_id: int) -> list[list[list[float]]]:
    """Log-probs of every label's tokens after its first, for each row of ``cache`` (rows x labels x tokens): the
    cache repeated once per label, and every label's tokens (but its last) for every row as one right-padded batch.
    A real token never sees the padding after it (causal attention), and padded positions are never read; logits
    come out only for label positions: rows × labels × (longest label - 1) × vocabulary."""
    device, rows, n = mask.device, mask.shape[0], len(labels)
    width = max(len(lab) for lab in labels) - 1
    inputs, _ = pad_batch([list(lab[:-1]) or [pad_id] for lab in labels], pad_id, device)  # n × width
    targets, _ = pad_batch([list(lab[1:]) or [pad_id] for lab in labels], pad_id, device)
    cache.batch_repeat_interleave(n)  # row r's labels are rows r*n .. r*n+n-1
    start = mask.sum(-1).repeat_interleave(n)  # each row's real tokens so far: its labels' first position
    mask = torch.cat([mask.repeat_interleave(n, dim=0), torch.ones(rows * n, width, dtype=mask.dtype, device=device)],
                     dim=1)
    positions = start[:, None] + torch.arange(width, device=device)
    every = torch.cat([every.repeat_interleave(n, dim=0), positions], dim=1)
    out = forward_with_cache(model, inputs.repeat(rows, 1), cache, position_ids=positions,
                             attention_mask=_masks(model, cache, mask, every, width))
    later = _token_logps(out.logits, targets.repeat(rows, 1)).view(rows, n, width).tolist()
    return [[later[r][j][: len(lab) - 1] for j, lab in enumerate(labels)] for r in range(rows)]


def _check_cache(model, prompt, labels, pad_id: int, cached: list[list[float]], result: LabelScores) -> bool:
    """Hold one row's cached scores against the cache-free fp32 reference (``inference/label_reference.py``); on
    disagreement, log it and switch ``result`` to the cache-free path."""
    result.check, n, note = check_against_reference(model, prompt, labels, pad_id, cached)
    result.tokens += n
    if not note:
        return True
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
        if not batched:
            rows, n = score_rows_uncached(model, [prompts[i] for i in batch], labels, pad_id)
            result.tokens += n
        for i, row in zip(batch, rows):
            logps[i] = row
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
