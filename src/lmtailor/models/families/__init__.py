"""Model families as a registry: ``FAMILIES`` maps a family's name to its adapter (``families/base.py``).

The family is detected from a model's config (``models/family.py``), never from its name; ``family_of`` turns a
config or a family name into the adapter, and code asks the adapter instead of comparing family names.

Adding a family: one module with a ``FamilyAdapter`` subclass and its instance, and one line here.
"""

from __future__ import annotations

from typing import Any

from lmtailor.models.families.base import FamilyAdapter, TinyArchitecture
from lmtailor.models.family import detect_family
from lmtailor.registry import Registry

FAMILIES: Registry[FamilyAdapter] = Registry("model family")
FAMILIES.register("decoder-only", "lmtailor.models.families.decoder_only:DECODER_ONLY")
FAMILIES.register("encoder-decoder", "lmtailor.models.families.encoder_decoder:ENCODER_DECODER")
FAMILIES.register("encoder", "lmtailor.models.families.encoder:ENCODER")


def family_of(config_or_name: Any) -> FamilyAdapter:
    """The adapter of a family name ("decoder-only"), of a transformers config (detected from it), or the adapter
    itself; an unknown name is an ``UnknownNameError`` that suggests the nearest."""
    if isinstance(config_or_name, FamilyAdapter):
        return config_or_name
    name = config_or_name if isinstance(config_or_name, str) else detect_family(config_or_name)
    return FAMILIES.get(name)


def model_family(model) -> FamilyAdapter:
    """The adapter of a loaded model (a transformers model, or a PeftModel, whose ``config`` is its base's)."""
    return family_of(model.config)


def adapters() -> list[FamilyAdapter]:
    """Every registered family's adapter, in the order of their names."""
    return [FAMILIES.get(name) for name in FAMILIES.names()]


def pretraining_families() -> str:
    """The families that pre-train, with their objectives, for messages: "decoder-only (causal-lm), ..."."""
    return ", ".join(f"{a.name} ({', '.join(a.pretrain_objectives)})" for a in adapters() if a.pretrain_objectives)


def tiny_architectures() -> dict[str, tuple[FamilyAdapter, TinyArchitecture]]:
    """Every registered family's tiny test models, by name, each with its family."""
    return {arch.name: (adapter, arch) for adapter in adapters() for arch in adapter.tiny_architectures}


__all__ = ["FAMILIES", "FamilyAdapter", "TinyArchitecture", "adapters", "family_of", "model_family",
           "pretraining_families", "tiny_architectures"]
