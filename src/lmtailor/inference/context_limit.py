"""How many input positions a Hugging Face model reads: what bounds the prompt (and rag's passages) it is given."""

from __future__ import annotations


def input_limit(model_or_config) -> int | None:
    """How many input positions a model (or its config) has (None: no fixed limit, e.g. T5's relative positions)."""
    config = getattr(model_or_config, "config", model_or_config)
    config = getattr(config, "encoder", None) or config  # EncoderDecoderModel: the encoder reads the passages
    if getattr(config, "relative_attention_num_buckets", None):  # T5
        return None
    return getattr(config, "max_position_embeddings", None)
