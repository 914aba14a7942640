"""Generation (greedy, constrained to a label set, or sampled) in padded batches through HF ``generate``.

Prompts arrive as token ids (``lmtailor.prompting.formats`` made them), so padding is done here: on the left, with an
attention mask, which ``generate`` turns into the right position ids. Rows are batched in order of prompt length
to waste little on padding, and answers are returned in the rows' order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from lmtailor.inference.virtual_tokens import (cache_keyword, computed_virtual_tokens, virtual_token_cache,
                                              virtual_token_count)
from lmtailor.models.families import model_family


@dataclass
class Generated:
    """Generated token ids per row (stop token included, padding removed) and the real tokens processed."""

    ids: list[list[int]]
    tokens: int


class LabelTrie:
    """The label token sequences as a prefix tree: which tokens may follow a partial answer."""

    def __init__(self, sequences: Sequence[Sequence[int]]) -> None:
        self.root: dict = {}
        self.ends: dict[tuple[int, ...], int] = {}
        for index, seq in enumerate(sequences):
            node = self.root
            for t in seq:
                node = node.setdefault(int(t), {})
            self.ends.setdefault(tuple(int(t) for t in seq), index)

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """Tokens that extend ``prefix`` towards some label (empty when it left the tree or is complete)."""
        node = self.root
        for t in prefix:
            node = node.get(int(t))
            if node is None:
                return []
        return list(node)

    def match(self, ids: Sequence[int]) -> int | None:
        """Index of the label whose sequence ``ids`` is, if any."""
        return self.ends.get(tuple(int(t) for t in ids))


#: The prediction of a constrained answer that names no label (decoding stopped on a stop token inside a label):
#: never a class, so the scorer counts it wrong, as the API path does with an answer it cannot parse. Picking a
#: real label instead would score a no-answer as right whenever that label is the truth.
NO_LABEL = ""


def labels_of_matches(matches: Sequence[int | None], labels: Sequence[str]) -> tuple[list[str], int]:
    """The label each ``LabelTrie.match`` result names (``NO_LABEL`` for None), and how many named none."""
    return [labels[m] if m is not None else NO_LABEL for m in matches], sum(m is None for m in matches)


def count_truncated(answers: Sequence[Sequence[int]], stop_ids: Sequence[int], max_new_tokens: int,
                    stop_forced_at_limit: bool = False) -> int:
    """How many generated answers were cut at ``max_new_tokens``: they reached the limit without ending on a stop
    token (an answer that ends on a stop token exactly at the limit finished on its own).

    ``stop_forced_at_limit``: the model forces its stop token at the limit (BART's ``forced_eos_token_id``), so an
    answer of the full length is counted as cut even when it ends on one.
    """
    stops = set(stop_ids)
    return sum(len(ids) >= max_new_tokens and (stop_forced_at_limit or not ids or ids[-1] not in stops)
               for ids in answers)


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, device, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token-id rows to one width on ``side``; return (ids, attention mask)."""
    width = max(len(s) for s in seqs)
    pads = [[pad_id] * (width - len(s)) for s in seqs]
    ones = [[1] * len(s) for s in seqs]
    zeros = [[0] * (width - len(s)) for s in seqs]
    if side == "left":
        rows, masks = [p + list(s) for p, s in zip(pads, seqs)], [z + o for z, o in zip(zeros, ones)]
    else:
        rows, masks = [list(s) + p for p, s in zip(pads, seqs)], [o + z for z, o in zip(zeros, ones)]
    return torch.tensor(rows, device=device), torch.tensor(masks, device=device)


def _strip(new_ids: list[int], stop_ids: Sequence[int]) -> list[int]:
    """Cut a generated row after its first stop token (what follows is padding)."""
    for i, t in enumerate(new_ids):
        if t in stop_ids:
            return new_ids[: i + 1]
    return new_ids


@dataclass(frozen=True)
class SamplingParams:
    """Sampled instead of greedy decoding (data augmentation, a teacher writing synthetic rows).

    ``top_k`` is off: temperature and nucleus sampling only (self-instruct), not transformers' default top-50.
    """

    temperature: float
    top_p: float
    seed: int


def _batch_seed(seed: int, start: int) -> int:
    # Each batch gets its own seed from the call's seed and its position, so a batch's samples do not depend on
    # how many random numbers earlier batches drew.
    return (seed * 1_000_003 + start) % 2**63


@torch.no_grad()
def generate_ids(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: Sequence[int],
                 pad_id: int, batch_size: int = 8, trie: LabelTrie | None = None,
                 on_batch: Callable[[int], None] | None = None, sampling: SamplingParams | None = None,
                 batch_kwargs: Callable[[list[int]], dict] | None = None) -> Generated:
    """Decode each prompt in batches of ``batch_size``: greedily (only along ``trie`` when given), or sampled.

    Decoder-only prompts are left-padded, so every row's answer starts at the same position; encoder-decoder
    sources are right-padded (BART's learned absolute positions would shift under left padding), and their output
    starts with the decoder's start token. Returned ids are the answer tokens, stop token kept. Sampling runs
    inside ``fork_rng``: the caller's global random state is left as it was. A decoder-only prefix- or
    prompt-tuned PeftModel generates through its base model from a cache holding the virtual tokens
    (``inference/virtual_tokens.py``).

    ``batch_kwargs(rows)``, given the indices of a batch's prompts in the order of its rows (shortest first), returns
    extra keyword arguments for that batch's ``generate`` call, e.g. a streamer and stopping criteria that route each
    row's tokens to its own request (``lmtailor.serve``).
    """
    from transformers import GenerationConfig

    seq2seq = model_family(model).seq2seq
    device = next(model.parameters()).device
    how = (dict(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
           if sampling is not None else dict(do_sample=False))
    config = GenerationConfig(max_new_tokens=max_new_tokens, num_beams=1, eos_token_id=list(stop_ids),
                              pad_token_id=pad_id, **how)
    forked = [device.index or 0] if device.type == "cuda" else []
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths: little padding
    results: list[list[int]] = [[] for _ in prompts]
    tokens = 0
    virtual = 0 if seq2seq else virtual_token_count(model)
    for start in range(0, len(order), batch_size):
        batch = order[start: start + batch_size]
        ids, mask = pad_batch([prompts[i] for i in batch], pad_id, device, side="right" if seq2seq else "left")
        generator, extra = model, {}
        if virtual:  # prefix / prompt tuning: the base model continues a cache that holds the virtual tokens
            generator, cache = virtual_token_cache(model, len(batch))
            extra = {cache_keyword(generator): cache}
            # placeholder ids for the cached positions (never embedded), attended to like any real token
            ids = torch.cat([torch.full((len(batch), virtual), pad_id, device=device), ids], dim=1)
            mask = torch.cat([torch.ones(len(batch), virtual, dtype=mask.dtype, device=device), mask], dim=1)
        answer_start = 1 if seq2seq else ids.shape[1]
        allowed_fn = None
        if trie is not None:
            # Finished or off-tree rows may only continue with a stop token; generate pads finished rows anyway.
            allowed_fn = lambda _, seq: trie.allowed(seq[answer_start:].tolist()) or list(stop_ids)  # noqa: E731
        with torch.random.fork_rng(devices=forked, enabled=sampling is not None):
            if sampling is not None:
                torch.manual_seed(_batch_seed(sampling.seed, start))
            more = batch_kwargs(list(batch)) if batch_kwargs is not None else {}
            out = generator.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                     prefix_allowed_tokens_fn=allowed_fn, **extra, **more)
        for row, i in enumerate(batch):
            results[i] = _strip(out[row, answer_start:].tolist(), stop_ids)
            tokens += len(prompts[i]) + len(results[i]) + computed_virtual_tokens(model)
        if on_batch:
            on_batch(len(batch))
    return Generated(results, tokens)
