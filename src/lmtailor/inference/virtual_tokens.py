"""Serving decoder-only prompt-learning adapters (prefix tuning, prompt tuning) with a KV cache.

Both put ``num_virtual_tokens`` trained positions before every input: prompt tuning as input embeddings, prefix
tuning as keys and values in every layer. Neither merges into the weights, and PEFT's own paths do not fit our
fast ones: ``PeftModel.forward`` prepends the virtual tokens again on every call, so a shared-prefix KV cache
would hold them twice, and with transformers 5 ``PeftModel.generate`` drops a prefix-tuning prefix altogether
(the cache keyword moved from ``past_key_values`` to ``cache``), generating as the untuned base model would.

So the virtual tokens go where they belong, once: into a KV cache (``virtual_token_cache``) that the base model
then continues, as label scoring does with a shared prompt prefix and generation with a pre-filled cache. The
positions match training: the virtual tokens take positions 0..V-1 and the text starts at V.
"""

from __future__ import annotations

from typing import Any

import torch

from lmtailor.models.families import model_family


def _config(model):
    config = getattr(model, "active_peft_config", None)
    return config if config is not None and config.is_prompt_learning else None


def _peft_type(config) -> str:
    return str(getattr(config.peft_type, "value", config.peft_type))


def virtual_token_count(model) -> int:
    """Virtual tokens a decoder-only prompt-learning PeftModel puts before its input (0 for any other model)."""
    config = _config(model)
    if config is None or model_family(model).seq2seq:
        return 0
    return int(config.num_virtual_tokens)


def computed_virtual_tokens(model) -> int:
    """Virtual tokens that run through the model (prompt tuning's embeddings; a prefix's keys and values are
    given, not computed): what the meter counts for them."""
    config = _config(model)
    return 0 if config is None or _peft_type(config) == "PREFIX_TUNING" else int(config.num_virtual_tokens)


def cache_keyword(model) -> str:
    """The forward/generate keyword for a KV cache: ``cache`` in recent transformers 5.x, ``past_key_values``
    before."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


@torch.no_grad()
def virtual_token_cache(model, batch_size: int) -> tuple[Any, Any]:
    """(base model, a KV cache holding the virtual tokens for ``batch_size`` rows) of a prompt-learning PeftModel."""
    from transformers import DynamicCache

    config = _config(model)
    base = model.get_base_model()
    if _peft_type(config) == "PREFIX_TUNING":
        return base, model.get_prompt(batch_size=batch_size)  # PEFT builds the prefix as a DynamicCache
    if _peft_type(config) != "PROMPT_TUNING":
        raise NotImplementedError(f"serving {config.peft_type} adapters is not implemented; use prefix or "
                                  "prompt-tuning")
    embeds = model.get_prompt(batch_size=batch_size).to(base.dtype)
    cache = DynamicCache(config=base.config)
    base(inputs_embeds=embeds, use_cache=True, logits_to_keep=1, **{cache_keyword(base): cache})
    return base, cache
