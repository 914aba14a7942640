"""Size a model of a base model's family to a parameter budget, for pre-training from scratch.

The sized config is the base config with its width (hidden size, heads, feed-forward size) and depth (layers)
changed and everything else kept: architecture, activation, normalisation, positions, tied embeddings, special token
ids. The vocabulary is the base tokenizer's, so the scratch model reads the same tokens as the base model. The head
size stays the base's (width moves in whole heads), the feed-forward/hidden and query/key-value head ratios stay the
base's, and among the shapes within 10% of the target the one whose width/depth ratio is nearest the base's wins.

Parameters are counted exactly, by building the model on PyTorch's meta device (no memory, no initialisation):
shared (tied) tensors once. A model's size is linear in its depth, so each width is built twice (1 and 2 layers) to
get the embedding and per-layer counts, and only the chosen shape is built whole.

    sized = size_model(base_config, target=10_000_000, vocab_size=len(tokenizer))
    sized.params, sized.layers, sized.hidden     # e.g. 9_873_920, 8, 192
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from lmtailor.errors import UserError
from lmtailor.models.family import auto_class, detect_family, head_for

TOLERANCE = 0.10  # a shape within 10% of the target counts as on target
CHINCHILLA_TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022: compute-optimal training uses ~20 tokens per parameter
_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}


def parse_param_count(value: int | str) -> int:
    """A parameter count from an int or a string such as ``"10M"``, ``"1.5m"``, ``"500k"``, ``"2B"``, ``"10_000"``."""
    if isinstance(value, bool):
        raise UserError(f"{value!r} is not a parameter count; write e.g. 10M, 500K, 1.5B or 10000000")
    if isinstance(value, int):
        count = value
    else:
        match = re.fullmatch(r"\s*([0-9][0-9_]*(?:\.[0-9]+)?)\s*([kKmMbBgG]?)\s*", str(value))
        if not match:
            raise UserError(f"{value!r} is not a parameter count; write e.g. 10M, 500K, 1.5B or 10000000")
        count = int(float(match.group(1).replace("_", "")) * _SUFFIXES[match.group(2).lower()])
    if count <= 0:
        raise UserError(f"a parameter count must be positive, got {value!r}")
    return count


def human_count(n: float) -> str:
    """``9873920`` -> ``"9.9M"``; the short form used in labels and logs."""
    for div, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= div:
            text = f"{n / div:.1f}".rstrip("0").rstrip(".")
            return f"{text}{suffix}"
    return str(int(n))


@dataclass(frozen=True)
class Shape:
    """The knobs sizing turns: width in heads of a fixed size, and depth."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    layers: int


@dataclass(frozen=True)
class _Family:
    """How one family of configs names its shape: read it, and write a new one into a copy."""

    read: Callable[[Any], Shape]
    write: Callable[[Any, Shape, Shape], None]  # (config copy, new shape, base shape)
    decoupled_head_dim: Callable[[Any], bool] = lambda c: False  # head_dim x heads != hidden (Gemma)


def _read_llama(c) -> Shape:
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    return Shape(c.hidden_size, c.num_attention_heads, kv, head_dim, c.intermediate_size, c.num_hidden_layers)


def _write_llama(c, s: Shape, base: Shape) -> None:
    c.hidden_size, c.num_attention_heads, c.num_key_value_heads = s.hidden, s.heads, s.kv_heads
    c.intermediate_size, c.num_hidden_layers = s.ffn, s.layers
    if hasattr(c, "head_dim"):
        c.head_dim = s.head_dim
    if getattr(c, "layer_types", None):  # Gemma 3, Qwen 3...: the base's pattern of attention types, repeated
        pattern = list(c.layer_types)
        c.layer_types = [pattern[i % len(pattern)] for i in range(s.layers)]
    if getattr(c, "max_window_layers", None) is not None:  # Qwen 2: sliding window on layers past this one
        c.max_window_layers = min(c.max_window_layers, s.layers)


def _read_t5(c) -> Shape:
    return Shape(c.d_model, c.num_heads, c.num_heads, c.d_kv, c.d_ff, c.num_layers)


def _write_t5(c, s: Shape, base: Shape) -> None:
    decoder_ratio = (c.num_decoder_layers or base.layers) / base.layers
    c.d_model, c.num_heads, c.d_kv, c.d_ff = s.hidden, s.heads, s.head_dim, s.ffn
    c.num_layers, c.num_decoder_layers = s.layers, max(1, round(s.layers * decoder_ratio))


def _read_bart(c) -> Shape:
    return Shape(c.d_model, c.encoder_attention_heads, c.encoder_attention_heads,
                 c.d_model // c.encoder_attention_heads, c.encoder_ffn_dim, c.encoder_layers)


def _write_bart(c, s: Shape, base: Shape) -> None:
    decoder_ratio = c.decoder_layers / base.layers
    c.d_model = s.hidden
    c.encoder_attention_heads = c.decoder_attention_heads = s.heads
    c.encoder_ffn_dim = c.decoder_ffn_dim = s.ffn
    c.encoder_layers, c.decoder_layers = s.layers, max(1, round(s.layers * decoder_ratio))


_LLAMA_ATTRS = ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers")
_T5_TYPES = {"t5", "mt5", "umt5"}
_BART_TYPES = {"bart", "mbart"}


def _family(config) -> _Family:
    model_type = getattr(config, "model_type", "")
    if model_type in _T5_TYPES:
        return _Family(_read_t5, _write_t5, lambda c: c.d_kv * c.num_heads != c.d_model)
    if model_type in _BART_TYPES:
        return _Family(_read_bart, _write_bart)
    if not getattr(config, "is_encoder_decoder", False) and all(hasattr(config, a) for a in _LLAMA_ATTRS):
        return _Family(_read_llama, _write_llama,
                       lambda c: _read_llama(c).head_dim * c.num_attention_heads != c.hidden_size)
    raise UserError(f"scratch: sizing knows Llama-style decoder configs (hidden_size, num_attention_heads, "
                    f"intermediate_size, num_hidden_layers: Llama, SmolLM, Qwen, Gemma, Mistral...), T5 and BART; "
                    f"model type {model_type!r} is none of them")


@dataclass(frozen=True)
class SizedModel:
    """A config sized to a budget, with its exact parameter count."""

    config: Any  # a transformers PretrainedConfig of the base's class
    params: int
    non_embedding_params: int
    target: int
    shape: Shape
    base_shape: Shape

    @property
    def layers(self) -> int:
        return self.shape.layers

    @property
    def hidden(self) -> int:
        return self.shape.hidden

    def summary(self) -> dict:
        """The sizing for the run record."""
        s, b = self.shape, self.base_shape
        return {"params": self.params, "non_embedding_params": self.non_embedding_params, "target_params": self.target,
                "off_target": round(self.params / self.target - 1, 4),
                "shape": {"hidden": s.hidden, "layers": s.layers, "heads": s.heads, "kv_heads": s.kv_heads,
                          "head_dim": s.head_dim, "ffn": s.ffn},
                "base_shape": {"hidden": b.hidden, "layers": b.layers, "heads": b.heads, "ffn": b.ffn}}


def _model_class(config):
    return auto_class(head_for(detect_family(config), None))


def build_on_meta(config):
    """The model ``config`` describes, built on the meta device: shapes only, no memory, no initialisation."""
    import torch

    with torch.device("meta"):
        return _model_class(config).from_config(config)


def count_params(config) -> tuple[int, int]:
    """(all, non-embedding) parameters of the model ``config`` describes; tied tensors once."""
    model = build_on_meta(config)
    total = sum(p.numel() for p in model.parameters())
    embeddings = {id(m.weight): m.weight.numel() for m in (model.get_input_embeddings(), model.get_output_embeddings())
                  if m is not None and getattr(m, "weight", None) is not None}
    return total, total - sum(embeddings.values())


def _widths(base: Shape, decoupled: bool, max_hidden: int) -> list[tuple[int, int]]:
    """Candidate (hidden, heads): whole heads of the base's size; a decoupled head size (Gemma: 4 heads of 256 in a
    width of 640) moves the hidden size in steps of 64 and the heads in proportion."""
    if not decoupled:
        return [(n * base.head_dim, n) for n in range(1, max_hidden // base.head_dim + 1)]
    step = min(64, base.hidden)
    return [(h, max(1, round(base.heads * h / base.hidden))) for h in range(step, max_hidden + 1, step)]


def _kv_heads(heads: int, base: Shape) -> int:
    """The divisor of ``heads`` nearest the base's query/key-value head ratio (grouped-query attention kept)."""
    want = max(1, round(heads * base.kv_heads / base.heads))
    return min((d for d in range(1, heads + 1) if heads % d == 0), key=lambda d: (abs(d - want), -d))


def _shape(base: Shape, hidden: int, heads: int, layers: int) -> Shape:
    ffn = max(1, round(hidden * base.ffn / base.hidden))
    return Shape(hidden, heads, _kv_heads(heads, base), base.head_dim, ffn, layers)


def _configure(base_config, family: _Family, base: Shape, shape: Shape, vocab_size: int):
    config = copy.deepcopy(base_config)
    family.write(config, shape, base)
    config.vocab_size = vocab_size
    return config


def size_model(base_config, target: int, vocab_size: int, min_layers: int = 1,
               at_least_smallest: bool = False) -> SizedModel:
    """Size ``base_config``'s family to about ``target`` parameters with ``vocab_size`` tokens.

    A target below the smallest model this vocabulary allows (one head, ``min_layers`` layers) is an error, or, with
    ``at_least_smallest``, gives that smallest model.
    """
    family = _family(base_config)
    base = family.read(base_config)
    decoupled = family.decoupled_head_dim(base_config)
    max_layers = max(4 * base.layers, 8)
    candidates: list[tuple[float, float, Shape]] = []  # (distance from target, aspect distance, shape)
    smallest: int | None = None
    for hidden, heads in _widths(base, decoupled, max(4 * base.hidden, 256)):
        one, _ = count_params(_configure(base_config, family, base, _shape(base, hidden, heads, 1), vocab_size))
        two, _ = count_params(_configure(base_config, family, base, _shape(base, hidden, heads, 2), vocab_size))
        per_layer, fixed = two - one, 2 * one - two
        low = fixed + min_layers * per_layer
        smallest = low if smallest is None else min(smallest, low)
        if low > target * (1 + TOLERANCE) and candidates:
            break  # wider models only grow
        layers = min(max(round((target - fixed) / per_layer), min_layers), max_layers)
        params = fixed + layers * per_layer
        aspect = abs(math.log((hidden / layers) / (base.hidden / base.layers)))
        candidates.append((abs(params / target - 1), aspect, _shape(base, hidden, heads, layers)))
    assert smallest is not None
    if target < smallest * (1 - TOLERANCE) and not at_least_smallest:
        raise UserError(f"params: {human_count(target)} is below the smallest {base_config.model_type} with this "
                        f"tokenizer's {vocab_size:,}-token vocabulary ({human_count(smallest)}: one head, "
                        f"{min_layers} layer{'s' if min_layers > 1 else ''}); ask for at least {human_count(smallest)}")
    on_target = [c for c in candidates if c[0] <= TOLERANCE]
    best = min(on_target, key=lambda c: c[1]) if on_target else min(candidates, key=lambda c: c[0])
    config = _configure(base_config, family, base, best[2], vocab_size)
    params, non_embedding = count_params(config)
    return SizedModel(config, params, non_embedding, target, best[2], base)
