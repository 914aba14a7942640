"""Tell decoder-only, encoder-decoder and encoder models apart from their config, via transformers' auto mappings.

Names lie ("bert-gpt", "t5-decoder-only"); the config's ``is_encoder_decoder`` and the auto classes that list
its ``model_type`` do not. BERT-like models also appear in the causal-LM mapping (``BertLMHeadModel``), so a
model counts as decoder-only only when it has a causal-LM head and no masked-LM head.
"""

from __future__ import annotations

from typing import Literal

from lmtailor.errors import UserError

Family = Literal["decoder-only", "encoder-decoder", "encoder"]
Head = Literal["causal-lm", "seq2seq-lm", "sequence-classification"]


class UnsupportedModelError(UserError):
    """A model whose architecture lmtailor cannot use (e.g. a vision model), or a head it does not have."""


def _mapping_names(head: Head | None) -> dict[str, object]:
    from transformers.models.auto import modeling_auto as auto

    return {
        "causal-lm": auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        "seq2seq-lm": auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
        "sequence-classification": auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
        None: auto.MODEL_MAPPING_NAMES,
    }[head]


def detect_family(config) -> Family:
    """Return "decoder-only", "encoder-decoder" or "encoder" for a transformers config."""
    from transformers.models.auto import modeling_auto as auto

    model_type = getattr(config, "model_type", "")
    if getattr(config, "is_encoder_decoder", False) or model_type in auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return "encoder-decoder"
    masked = model_type in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
    if model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not masked:
        return "decoder-only"
    if masked or model_type in auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        return "encoder"
    raise UnsupportedModelError(
        f"model type {model_type!r} is not a text model lmtailor can use: it has no causal-LM, seq2seq-LM, "
        "masked-LM or sequence-classification class in transformers. Use a decoder-only (Llama, Qwen, SmolLM, "
        "Gemma), encoder-decoder (T5, BART) or encoder (BERT, MiniLM) model.")


def check_head(config, head: Head | None) -> None:
    """Raise a clear error when transformers has no class for this model type with this head."""
    model_type = getattr(config, "model_type", "")
    if model_type not in _mapping_names(head):
        able = [h for h in ("causal-lm", "seq2seq-lm", "sequence-classification") if model_type in _mapping_names(h)]
        raise UnsupportedModelError(
            f"model type {model_type!r} has no {head or 'base'} head in transformers; heads it has: "
            f"{', '.join(able) or 'none'}")


def auto_class(head: Head | None):
    """The transformers auto class that loads a model with ``head``."""
    import transformers

    name = {"causal-lm": "AutoModelForCausalLM", "seq2seq-lm": "AutoModelForSeq2SeqLM",
            "sequence-classification": "AutoModelForSequenceClassification", None: "AutoModel"}[head]
    return getattr(transformers, name)
