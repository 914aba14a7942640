"""A batch that requests join and leave between decoding steps: one KV cache, each row left-padded on its own.

The state is a transformers ``DynamicCache`` (batch x heads x slots x dim per layer), a batch x slots attention
mask (1 for a real token), each row's next position and its last token. A decoding step feeds every row's last
token at its own position and appends one slot. Joining requests are prefilled together (left-padded among
themselves) into a cache of their own, which is then left-padded to the batch's width, or the batch to theirs, and
concatenated along the batch. A finished row is removed from the cache, and slots that are padding in every row
left are dropped from the left.

Padding is only on the left of a row, before all of its real tokens, so slots and positions of real tokens differ by
the same offset: transformers' masks, which measure causality and sliding windows in slots (``masking_utils``), are
then right for every row, including Gemma 3's sliding-window layers. (Padding between a cache and new tokens would
not be: see ``inference/position_masks.py``.) For the same reason the cache keeps every slot
(``position_masks.unbounded_cache``): a sliding-window cache layer crops by slots, not per row. The one exception
is a shared prompt prefix whose keys and values are reused (``prefix_cache.py``): the joining rows' padding then
sits between that prefix and the rest of each prompt, which only full-attention models are given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from lmtailor.inference.generation import pad_batch
from lmtailor.inference.position_masks import unbounded_cache
from lmtailor.inference.virtual_tokens import cache_keyword
from lmtailor.serve.prefix_cache import PrefixCache, reusable
from lmtailor.serve.rows import RowState
from lmtailor.serve.token_choice import Chooser


@dataclass
class LiveRow:
    """One request in the batch: its prompt, how it picks tokens, and its answer's state (``rows.RowState``)."""

    prompt: list[int]
    chooser: Chooser
    state: RowState

    def take(self, logits: torch.Tensor, argmax: int) -> int:
        """Choose this row's next token (``argmax``: of its logits, computed for the batch at once), hand it to the
        row's state, and return it."""
        token = argmax if self.chooser.plain_greedy else self.chooser.choose(logits, self.state.ids)
        self.state.accept(token)
        self.state.flush()
        return token


def _pad_slots_left(cache, width: int) -> None:
    """Grow every layer of ``cache`` to ``width`` slots with zero slots on the left (masked as padding)."""
    for layer in cache.layers:
        extra = width - layer.keys.shape[-2]
        if extra > 0:
            layer.keys = torch.nn.functional.pad(layer.keys, (0, 0, extra, 0))
            layer.values = torch.nn.functional.pad(layer.values, (0, 0, extra, 0))


def _concat_rows(cache, other) -> None:
    """Append ``other``'s rows to ``cache`` (both of the same width)."""
    for layer, more in zip(cache.layers, other.layers):
        layer.keys = torch.cat([layer.keys, more.keys], dim=0)
        layer.values = torch.cat([layer.values, more.values], dim=0)


def _drop_left_slots(cache, count: int) -> None:
    for layer in cache.layers:
        layer.keys = layer.keys[:, :, count:, :]
        layer.values = layer.values[:, :, count:, :]


class DecodeBatch:
    """The rows being decoded, their shared cache, and one step at a time (``admit``, then ``step``)."""

    def __init__(self, model, pad_id: int, reuse_prefix: bool = True) -> None:
        self.model = model
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self._keyword = cache_keyword(model)
        self.rows: list[LiveRow] = []
        self.cache = None
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(0, dtype=torch.long, device=self.device)  # each row's next position
        self.last = torch.zeros(0, dtype=torch.long, device=self.device)  # each row's last token
        # the shared prompt prefix's keys and values (prefix_cache.py), where the model's layers allow it
        self.prefix = PrefixCache(self._forward, self.device) if reuse_prefix and reusable(model) else None

    def __len__(self) -> int:
        return len(self.rows)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1, **{self._keyword: cache})
        return out.logits[:, -1, :]

    def _take(self, rows: Sequence[LiveRow], logits: torch.Tensor) -> torch.Tensor:
        """Each row's next token (given to the row), as a tensor of the batch's last tokens."""
        argmax = logits.argmax(dim=-1).tolist()
        return torch.tensor([row.take(logits[i], argmax[i]) for i, row in enumerate(rows)], device=self.device)

    @torch.no_grad()
    def admit(self, rows: Sequence[LiveRow]) -> None:
        """Prefill ``rows`` and give each its first token; those not finished by it join the batch."""
        if not rows:
            return
        prompts = [row.prompt for row in rows]
        shared = self.prefix.length_for(prompts) if self.prefix else 0
        ids, mask = pad_batch([p[shared:] for p in prompts], self.pad_id, self.device, side="left")
        positions = shared + (mask.cumsum(-1) - 1).clamp(min=0)
        if shared:  # [shared prefix | padding | rest of the prompt], the prefix's keys and values reused
            cache = self.prefix.cache_for(shared, len(rows))
            mask = torch.cat([mask.new_ones(len(rows), shared), mask], dim=1)
        else:
            cache = unbounded_cache()
        logits = self._forward(ids, mask, positions, cache)
        last = self._take(rows, logits)
        if self.cache is None:
            self.rows, self.cache, self.mask = list(rows), cache, mask
            self.positions, self.last = positions[:, -1] + 1, last
        else:
            width = max(self.mask.shape[1], mask.shape[1])
            _pad_slots_left(self.cache, width)
            _pad_slots_left(cache, width)
            _concat_rows(self.cache, cache)
            self.mask = torch.cat([_pad_mask_left(self.mask, width), _pad_mask_left(mask, width)])
            self.rows += rows
            self.positions = torch.cat([self.positions, positions[:, -1] + 1])
            self.last = torch.cat([self.last, last])
        self._drop_finished()

    @torch.no_grad()
    def step(self) -> None:
        """Decode one token for every row; finished rows leave the batch."""
        if not self.rows:
            return
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        logits = self._forward(self.last[:, None], self.mask, self.positions[:, None], self.cache)
        self.last = self._take(self.rows, logits)
        self.positions = self.positions + 1
        self._drop_finished()

    def _drop_finished(self) -> None:
        keep = [i for i, row in enumerate(self.rows) if not row.state.finished]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.clear()
            return
        index = torch.tensor(keep, device=self.device)
        self.cache.batch_select_indices(index)
        self.rows = [self.rows[i] for i in keep]
        self.mask, self.positions, self.last = self.mask[index], self.positions[index], self.last[index]
        unused = int((self.mask.sum(dim=0) == 0).long().cumprod(dim=0).sum())  # leading all-padding slots
        if unused:
            _drop_left_slots(self.cache, unused)
            self.mask = self.mask[:, unused:]

    def clear(self) -> list[LiveRow]:
        """Empty the batch; return the rows it held."""
        rows, self.rows, self.cache = self.rows, [], None
        self.mask = self.mask[:0, :0]
        self.positions, self.last = self.positions[:0], self.last[:0]
        return rows


def _pad_mask_left(mask: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(mask, (width - mask.shape[1], 0))
