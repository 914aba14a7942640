"""Which engine decodes a served model: ``--batching continuous`` (the default) or ``static``, and llama.cpp's.

Continuous batching (``continuous.py``) steps a decoder-only model over its own KV cache. The models it does not
step fall back to static batching (``engine.py``, through ``generate``), and say so at start-up: encoder-decoder
models (their decoder's cache is paired with the encoder's) and prefix or prompt tuning (its virtual tokens sit in
a cache ``generate_ids`` builds). The llama.cpp backend decodes one request at a time.
"""

from __future__ import annotations

from lmtailor.inference.hf_rows import pad_token_id
from lmtailor.serve.continuous import ContinuousEngine
from lmtailor.serve.engine import Engine
from lmtailor.serve.llamacpp_engine import LlamaCppEngine
from lmtailor.serve.target import ServedModel

ENGINES: dict[str, type[Engine]] = {"continuous": ContinuousEngine, "static": Engine}
DEFAULT_BATCHING = "continuous"


def engine_class(served: ServedModel, batching: str = DEFAULT_BATCHING) -> type[Engine]:
    """The engine class that serves ``served`` with the ``batching`` asked for, where the model allows it."""
    if batching not in ENGINES:
        raise ValueError(f"batching must be one of {sorted(ENGINES)}, got {batching!r}")
    if served.backend == "llamacpp":
        return LlamaCppEngine
    if batching == "continuous" and (served.seq2seq or served.virtual_tokens):
        return Engine
    return ENGINES[batching]


def make_engine(served: ServedModel, max_batch: int, batching: str = DEFAULT_BATCHING,
                prefix_cache: bool = True) -> Engine:
    """The engine decoding ``served`` in batches of up to ``max_batch`` requests (a continuous one reusing the
    shared prompt prefix's keys and values unless ``prefix_cache`` is off)."""
    cls = engine_class(served, batching)
    options = {"reuse_prefix": prefix_cache} if cls is ContinuousEngine else {}
    return cls(served.model, served.tokenizer, pad_token_id(served.tokenizer), max_batch, **options)
