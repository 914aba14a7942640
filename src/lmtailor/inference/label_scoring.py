"""Classification by label likelihood: score every label's answer tokens given the prompt, pick the best.

No free text is parsed: for each row, the score of a label is the sum of the log-probabilities of its completion
tokens (the label, then the end-of-turn token, exactly as training writes it) given the prompt. The sum is the
default because the end-of-turn token already penalises a label that stops early ("os" vs "os.path"); the
length-normalised mean is offered for label sets whose token lengths vary a lot.

Fast path (``prefix_cache=True``), which gives the same scores as one full forward per (row, label):

1. The few-shot exemplars are the same in every prompt, so the longest common token prefix of all prompts is run
   once and its KV cache (a transformers ``DynamicCache``) kept.
2. Per row, a copy of that cache takes the row's own suffix in one forward; only the last position's logits are
   computed (``logits_to_keep=1``: Gemma 3's vocabulary has 262k entries), giving every label's first token.
3. The cache is then repeated once per label (``batch_repeat_interleave``) and all labels' remaining tokens run
   as one batch. Labels are right-padded and need no attention mask: attention is causal, so a real token never
   sees the padding after it, and padded positions are never read.

The first row is also scored without any cache; if the two disagree (an architecture whose cache does not
survive copying or batch expansion) the run logs it and scores every row the slower, cache-free way.

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
from lmtailor.inference.virtual_tokens import (cache_keyword, computed_virtual_tokens, virtual_token_cache,
                                              virtual_token_count)

log = logging.getLogger("lmtailor")


@dataclass
class LabelScores:
    """Per-row label scores, and what it cost to compute them."""

    scores: list[list[float]]  # [row][label], higher is more likely
    tokens: int = 0  # real tokens fed to the model (the shared prefix counted once)
    prefix_len: int = 0  # tokens of the shared prompt prefix computed once (0: no prefix cache)
    path: str = "prefix-cache"  # "prefix-cache" or "no-cache"
    notes: list[str] = field(default_factory=list)

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


@torch.no_grad()
def _label_logps_after(model, cache, first_logits: torch.Tensor, labels: Sequence[Sequence[int]],
                       pad_id: int) -> tuple[list[list[float]], int]:
    """Per-token log-probs of each label given a cache that holds the whole prompt (batch 1)."""
    first = torch.log_softmax(first_logits.float(), dim=-1)
    logps = [[first[lab[0]].item()] for lab in labels]
    rest = [lab[:-1] for lab in labels]  # the inputs that predict tokens 1..n-1
    if max(len(r) for r in labels) < 2:
        return logps, 0
    cache.batch_repeat_interleave(len(labels))
    inputs, _ = pad_batch([r if r else [pad_id] for r in rest], pad_id, first_logits.device)
    out = forward_with_cache(model, inputs, cache)
    lp = torch.log_softmax(out.logits.float(), dim=-1)
    for i, lab in enumerate(labels):
        logps[i] += [lp[i, j - 1, lab[j]].item() for j in range(1, len(lab))]
    return logps, sum(len(r) for r in rest)


@torch.no_grad()
def _score_row_cached(model, prefix_cache, prefix_len: int, prompt: Sequence[int], labels, pad_id: int):
    cache = copy.deepcopy(prefix_cache)
    suffix = torch.tensor([list(prompt[prefix_len:])], device=_device(model))
    out = forward_with_cache(model, suffix, cache, logits_to_keep=1)
    logps, n = _label_logps_after(model, cache, out.logits[0, -1], labels, pad_id)
    return logps, suffix.shape[1] + n


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


def _check_cache(model, prompt, labels, pad_id: int, cached: list[list[float]], result: "LabelScores") -> bool:
    """Compare the cached scores of one row with a cache-free computation; on disagreement, switch paths.

    Only the shortest and the longest label are recomputed: together they exercise the batch expansion and the
    right padding, for the price of two prompts instead of one per label.
    """
    picks = sorted({min(range(len(labels)), key=lambda j: len(labels[j])),
                    max(range(len(labels)), key=lambda j: len(labels[j]))})
    reference, n = _score_row_uncached(model, prompt, [labels[j] for j in picks], pad_id)
    result.tokens += n
    tol = 2e-3 if next(model.parameters()).dtype == torch.float32 else 0.25
    if all(abs(sum(cached[j]) - sum(ref)) <= tol * max(1.0, abs(sum(ref))) for j, ref in zip(picks, reference)):
        return True
    note = (f"{type(model).__name__}: label scores with the prefix KV cache differ from scores without it; "
            "scoring every row without the cache (slower, correct)")
    log.warning(note)
    result.notes.append(note)
    result.path, result.prefix_len = "no-cache", 0
    return False


@torch.no_grad()
def score_labels(model, prompts: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_id: int,
                 prefix_cache: bool = True, normalize: bool = False,
                 on_row: Callable[[], None] | None = None) -> LabelScores:
    """Score each label's completion ids after each prompt (sum of token log-probs; mean if ``normalize``)."""
    if not prompts:
        return LabelScores([])
    if not labels or any(len(lab) == 0 for lab in labels):
        raise ValueError("every label needs at least one completion token")
    # Keep at least one token of each prompt outside the prefix: its logits give every label's first token.
    prefix_len = min(common_prefix_len(prompts), min(len(p) for p in prompts) - 1) if prefix_cache else 0
    # A prompt-learning adapter's virtual tokens precede every prompt: they are part of the shared prefix.
    virtual = virtual_token_count(model) if prefix_cache else 0
    result = LabelScores([], prefix_len=prefix_len, path="prefix-cache" if prefix_len or virtual else "no-cache")
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
    for i, prompt in enumerate(prompts):
        if cache is not None:
            logps, n = _score_row_cached(scorer, cache, prefix_len, prompt, labels, pad_id)
            if i == 0 and not _check_cache(model, prompt, labels, pad_id, logps, result):
                cache = None
                logps, extra = _score_row_uncached(model, prompt, labels, pad_id)
                n += extra
        else:
            logps, n = _score_row_uncached(model, prompt, labels, pad_id)
        result.tokens += n
        result.scores.append([_reduce(lp, normalize) for lp in logps])
        if on_row:
            on_row()
    return result


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
