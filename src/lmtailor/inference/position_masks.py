"""Attention masks measured in positions, for batches padded between a shared cache and each row's own tokens.

The shared-prefix label scorer (``inference/label_scoring.py``) puts each row's padding between the prefix's cache
and the row's suffix; position ids keep every real token where it would be unpadded, and the attention mask hides
the padding. A full-attention layer then sees exactly what an unpadded forward sees. A sliding-window layer does
not: transformers measures the window in cache slots (``kv_idx > q_idx - window``, ``masking_utils``), so k padding
slots in the middle push a row's k oldest in-window tokens out of its window. Gemma 3 (local layers of 512 tokens,
five of every six) scored the demo's ~600-token 4-shot prompts 2.7e-2 off the cache-free reference that way.

Here the window is measured in positions instead, through transformers' own mask builder (so the mask has the
format the model's attention implementation takes), and the cache keeps every slot: a sliding-window cache layer
keeps only the last ``window - 1`` slots, and a padded row needs up to its padding's worth more.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

_SLIDING, _FULL = "sliding_attention", "full_attention"


def _text_config(model) -> Any:
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def slides(model) -> bool:
    """Whether some of the model's attention layers use a sliding window (Gemma 2/3, Mistral, Qwen2 with
    ``use_sliding_window``...), the others full attention: their masks are then built by position
    (``position_masks``). Other hybrids (chunked attention, linear or state-space layers) keep transformers' masks,
    and the scorer's self-check decides whether their cache can be shared."""
    config = _text_config(model)
    types = getattr(config, "layer_types", None)
    if types:
        return _SLIDING in types and set(types) <= {_SLIDING, _FULL}
    return bool(getattr(config, "sliding_window", None))


def _window_by_position(positions: torch.Tensor, window: int) -> Callable:
    """Mask function: key slot ``kv`` is inside query slot ``q``'s window when their positions (not slots) are
    less than ``window`` apart. ``positions``: batch x slots, every slot of the cache and the input."""

    def inner(batch_idx, head_idx, q_idx, kv_idx):
        return positions[batch_idx, kv_idx] > positions[batch_idx, q_idx] - window

    return inner


def position_masks(model, attention_mask: torch.Tensor, positions: torch.Tensor, cache, query_len: int):
    """The attention masks of one forward of ``query_len`` tokens after ``cache``, for a model that ``slides``:
    a mapping of layer type to mask where the model has several layer types, else the sliding one.

    ``attention_mask``: batch x slots, 1 for a real token; ``positions``: batch x slots, every slot's position
    (a padding slot's is never read). Causality stays by slot: padding never reorders real tokens.
    """
    from transformers.masking_utils import create_causal_mask

    config = _text_config(model)
    batch = attention_mask.shape[0]
    param = next(model.parameters())
    shape_only = torch.empty(batch, query_len, 1, dtype=param.dtype, device=param.device)
    common = dict(config=config, inputs_embeds=shape_only, attention_mask=attention_mask, cache=cache,
                  position_ids=positions[:, -query_len:], allow_is_causal_skip=False)
    sliding = create_causal_mask(**common, and_mask_function=_window_by_position(positions, config.sliding_window))
    types = getattr(config, "layer_types", None)
    if not types:
        return sliding
    return {_SLIDING: sliding, _FULL: create_causal_mask(**common)}


def unbounded_cache() -> Any:
    """An empty cache whose layers keep every slot (``DynamicCache`` without the config's sliding-window layers)."""
    from transformers import DynamicCache

    return DynamicCache()
