"""Resolve a model reference to a directory (or hub id) that ``from_pretrained`` loads, without loading weights.

A reference is, in this order: an alias (embedded real models and tiny test models, one registry), an existing
local directory (or a ``.gguf`` file, converted once like the embedded ones), or a Hugging Face Hub id. Anything else raises ``ModelNotFoundError`` naming every place looked.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from lmtailor.errors import UserError
from lmtailor.models.embedded import EMBEDDED_MODELS, locate_embedded
from lmtailor.registry import Registry
from lmtailor.remote.reference import is_remote

Source = Literal["embedded", "local", "hub", "tiny"]


class ModelNotFoundError(UserError):
    """A model reference that is no alias, no local directory and no reachable hub model."""


@dataclass(frozen=True)
class Alias:
    """A named model: how to get its directory, and what the ``lmtailor models`` listing says about it."""

    name: str
    source: Source
    family: str
    description: str
    locate: Callable[[], Path]
    # where ``locate`` puts a model it builds on first use, without building it (for ``lmtailor models``)
    cached_path: Callable[[], Path] | None = None


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model reference points: ``path`` is a local directory, or a hub id when ``source`` is "hub"."""

    ref: str
    path: str
    source: Source


MODEL_ALIASES: Registry[Alias] = Registry("model alias")


def _embedded_alias(entry) -> Alias:
    return Alias(entry.alias, "embedded", entry.family, entry.description, lambda: locate_embedded(entry.alias))


def _bert2bert_dir(encoder_alias: str, build: bool = True) -> Path:
    from lmtailor.models.bert2bert import bert2bert_dir, bert2bert_path

    where = bert2bert_dir if build else bert2bert_path
    return where(locate_embedded(encoder_alias), f"{encoder_alias}-bert2bert")


def _tiny_alias(family: str, model_family: str, what: str) -> Alias:
    from lmtailor.models.tiny import tiny_model_dir

    return Alias(f"tiny-{family}", "tiny", model_family, f"tiny random {what} for tests (untrained)",
                 lambda: tiny_model_dir(family))


for _entry in EMBEDDED_MODELS:
    MODEL_ALIASES.register(_entry.alias, _embedded_alias(_entry))
MODEL_ALIASES.register("minilm-l6-bert2bert", Alias(
    "minilm-l6-bert2bert", "embedded", "encoder-decoder",
    "BERT2BERT warm-started from minilm-l6 (encoder and decoder untied; cross-attention random: fine-tune first)",
    lambda: _bert2bert_dir("minilm-l6"), cached_path=lambda: _bert2bert_dir("minilm-l6", build=False)))
MODEL_ALIASES.register("tiny-llama", _tiny_alias("llama", "decoder-only", "Llama with a ChatML chat template"))
MODEL_ALIASES.register("tiny-t5", _tiny_alias("t5", "encoder-decoder", "T5"))
MODEL_ALIASES.register("tiny-bart", _tiny_alias("bart", "encoder-decoder", "BART"))
MODEL_ALIASES.register("tiny-bert", _tiny_alias("bert", "encoder", "BERT"))


def resolve_model(ref: str) -> ResolvedModel:
    """Find the model ``ref`` names. Embedded GGUF models are converted (once, cached) so the path is loadable."""
    if ref in MODEL_ALIASES:
        alias = MODEL_ALIASES.get(ref)
        return ResolvedModel(ref, str(alias.locate()), alias.source)

    if is_remote(ref):
        raise UserError(f"{ref} is an OpenAI-compatible endpoint: it answers requests (the model of prompt and rag, "
                        "or a synthetic-data teacher) but has no weights to load, train or export here")
    local = Path(ref).expanduser()
    if local.is_file() and local.suffix == ".gguf":  # a user's own GGUF: converted once and cached like ours
        from lmtailor.models.embedded import file_sha256
        from lmtailor.models.gguf_cache import ensure_converted

        path = ensure_converted(local.stem, file_sha256(local), lambda scratch: local.resolve())
        return ResolvedModel(ref, str(path), "local")
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelNotFoundError(f"{local.resolve()} is a directory but has no config.json, so it is not a "
                                     "saved transformers model (save one with model.save_pretrained(dir); a PEFT adapter directory is "
                                     "not a whole model: merge it into its base first).")
        return ResolvedModel(ref, str(local.resolve()), "local")
    hub_problem = _hub_problem(ref)
    if hub_problem is None:
        return ResolvedModel(ref, ref, "hub")
    raise ModelNotFoundError(_not_found_message(ref, local, hub_problem))


def _valid_hub_id(ref: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(ref)
    except HFValidationError:
        return False
    return not ref.startswith((".", "~", "/")) and ref.count("/") <= 1


def _offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(v and v.upper() in {"1", "ON", "YES", "TRUE"} for v in flags)


def _hub_problem(ref: str) -> str | None:
    """None if the hub (or the local hub cache) has ``ref``; otherwise why not, in words."""
    if not _valid_hub_id(ref):
        return "it is not a valid hub id (expected 'name' or 'owner/name')"
    from huggingface_hub import model_info, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(ref, "config.json"), str):
        return None  # downloaded before: from_pretrained loads it from the hub cache, even offline
    if _offline():
        return "HF_HUB_OFFLINE is set, so the hub was not asked, and it is not in the local hub cache"
    # model_info fails at once when the hub's name does not resolve; hf_hub_download would retry for ~25 s.
    try:
        model_info(ref, timeout=10)
    except Exception as exc:  # the hub client raises many types (HTTP, DNS, timeout); all mean "not from here"
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        if isinstance(exc, GatedRepoError):
            return "it is gated on the hub: accept its licence on the hub and log in (hf auth login)"
        if isinstance(exc, RepositoryNotFoundError):
            return "the hub has no model with that id (or it is private)"
        return f"the hub is unreachable ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
    return None


def _not_found_message(ref: str, local: Path, hub_problem: str) -> str:
    near = difflib.get_close_matches(ref, MODEL_ALIASES.names(), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(near)}? " if near else ""
    lines = [f"model {ref!r} was not found. Looked in:",
             f"  - embedded and tiny aliases: {hint}known: {', '.join(MODEL_ALIASES.names())}",
             f"  - a local directory: {local.resolve()} does not exist",
             f"  - the Hugging Face Hub: {hub_problem}"]
    if "unreachable" in hub_problem or "HF_HUB_OFFLINE" in hub_problem:
        lines.append("Without the hub, use an embedded alias (e.g. smollm2-135m-instruct) or the path of a "
                     "directory holding a saved model (config.json, weights, tokenizer).")
    return "\n".join(lines)


