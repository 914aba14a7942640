"""The keys and values of the prompt prefix that requests share (a chat template's system turn), computed once.

Chat requests to one model begin with the same tokens: the template's opening, the system prompt, the user turn's
header (SmolLM2's template: 24 of the 42 tokens of a one-line question). vLLM (automatic prefix caching) and SGLang
(RadixAttention) reuse such a prefix's keys and values instead of recomputing them for every request; the continuous
batch does the same for one prefix at a time. An admission reuses the longest prefix that its prompts share with
the stored one; when they share fewer than ``MIN_SHARED`` tokens with it (or none is stored), the longest prefix
that two or more joining prompts share among themselves becomes the stored one. Every row still prefills at least
its last prompt token, whose logits give its first answer token. Keys and values of a prefix do not depend on
what follows it (causal attention), so the stored prefix also serves any shorter prefix of it, cut along its slots.

The joining rows are laid out as [shared prefix | left padding | rest of the prompt]: the padding is masked out and
positions count real tokens only, so full-attention layers see exactly the prompt. Sliding-window layers measure
windows in slots (``inference/position_masks.py``), which that padding would shift, and other hybrid layers keep
state a prefix of keys and values does not hold: models with them prefill every prompt whole (``reusable``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from lmtailor.inference.position_masks import unbounded_cache

MIN_SHARED = 8  # a shorter shared prefix saves less than the copies it costs
_FULL = "full_attention"

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, object], torch.Tensor]


def reusable(model) -> bool:
    """Whether every attention layer of ``model`` attends to all earlier slots (no sliding window, no other
    kind of layer), so that a shared prefix's keys and values can be reused with padding after them."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    types = getattr(config, "layer_types", None)
    if types and set(types) != {_FULL}:
        return False
    return not getattr(config, "sliding_window", None) or getattr(config, "use_sliding_window", None) is False


def shared_length(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all of ``prompts`` have in common, leaving at least one token of each to prefill."""
    limit = min(len(p) for p in prompts) - 1
    first = prompts[0]
    n = 0
    while n < limit and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


class PrefixCache:
    """One stored prefix and its keys and values (batch of one), computed by ``forward``."""

    def __init__(self, forward: Forward, device) -> None:
        self.forward = forward
        self.device = device
        self.ids: list[int] = []
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.reused_tokens = 0  # prompt tokens not prefilled thanks to the stored prefix
        self.usable = True  # False once the model's cache turned out not to be plain keys and values per slot

    def length_for(self, prompts: Sequence[Sequence[int]]) -> int:
        """The prefix length an admission of ``prompts`` reuses (0: none), storing a new prefix if it must."""
        if not self.usable:
            return 0
        if self.ids:
            n = min(shared_length([self.ids + [-1], *prompts]), len(self.ids))
            if n >= MIN_SHARED:
                self.reused_tokens += n * len(prompts)
                return n
        if len(prompts) < 2 or (n := shared_length(prompts)) < MIN_SHARED or not self._store(list(prompts[0][:n])):
            return 0
        self.reused_tokens += n * (len(prompts) - 1)  # computed once now, for these rows and later ones
        return n

    def _store(self, ids: list[int]) -> bool:
        """Compute and keep the keys and values of ``ids``; False (and never again) if the cache is not plain."""
        cache = unbounded_cache()
        self.forward(torch.tensor([ids], device=self.device), torch.ones(1, len(ids), dtype=torch.long,
                     device=self.device), torch.arange(len(ids), device=self.device)[None], cache)
        layers = [(getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in cache.layers]
        if not layers or any(k is None or v is None or k.shape[-2] != len(ids) for k, v in layers):
            self.usable = False  # a state-space or otherwise compressed cache: prefill prompts whole
            return False
        self.ids, self.layers = ids, layers
        return True

    def cache_for(self, length: int, rows: int):
        """A cache holding the first ``length`` tokens of the stored prefix for each of ``rows`` rows."""
        cache = unbounded_cache()
        for i, (keys, values) in enumerate(self.layers):
            cache.update(keys[:, :, :length].expand(rows, -1, -1, -1).contiguous(),
                         values[:, :, :length].expand(rows, -1, -1, -1).contiguous(), i)
        return cache
