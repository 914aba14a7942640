"""Each row's next token from its own logits: greedy, or sampled with its own temperature, top_p and generator.

A continuously batched step holds requests with different decoding settings side by side, so the choice is made
per row, with transformers' own warpers (temperature, then top_p, as ``generate`` applies them; top_k off, as
``inference/generation.py`` sets it). A sampled row draws from its own ``torch.Generator``, seeded with the
request's seed: its tokens depend on that seed only, not on which other requests share its steps.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Sequence

import torch

from lmtailor.inference.generation import LabelTrie


@dataclass
class Chooser:
    """How one row picks its tokens: greedy (``temperature`` 0) or sampled; along a label trie when constrained."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    trie: LabelTrie | None = None
    stop_ids: tuple[int, ...] = ()
    _generator: torch.Generator | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.temperature > 0.0:  # a seed-less request gets a fresh one: its answer is not reproducible then
            seed = self.seed if self.seed is not None else secrets.randbits(62)
            self._generator = torch.Generator().manual_seed(seed)

    @property
    def plain_greedy(self) -> bool:
        """The argmax of the whole vocabulary: a batch computes it for all such rows at once."""
        return self._generator is None and self.trie is None

    def choose(self, logits: torch.Tensor, answer: Sequence[int]) -> int:
        """The next token given this row's last-position ``logits`` (vocab,) and its answer so far."""
        logits = logits.float()
        if self.trie is not None:  # off the trie or complete: only a stop token may follow
            allowed = self.trie.allowed(answer) or list(self.stop_ids)
            masked = torch.full_like(logits, float("-inf"))
            masked[allowed] = logits[allowed]
            logits = masked
        if self._generator is None:
            return int(torch.argmax(logits))
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        scores = TemperatureLogitsWarper(self.temperature)(None, logits[None])
        if self.top_p < 1.0:
            scores = TopPLogitsWarper(self.top_p)(None, scores)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs[0], 1, generator=self._generator))
