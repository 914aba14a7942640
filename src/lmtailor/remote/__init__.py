"""OpenAI-compatible endpoints as models: ``openai:MODEL@BASE_URL`` references for prompting, RAG and teachers.

``reference`` parses the reference, ``client`` sends requests (retries, concurrency limit, timeout, on-disk response
cache from ``cache``), ``predict`` predicts test rows; an endpoint as the teacher of synthetic data is
``lmtailor.augmentation.remote_teacher`` and the experiment's ``api:`` block ``lmtailor.core.api_settings``. Names
are imported on first use, so ``import lmtailor.remote`` loads no HTTP client.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PREFIX": "reference", "EndpointRef": "reference", "is_remote": "reference", "parse_endpoint": "reference",
    "is_loopback": "reference", "ResponseCache": "cache", "ApiResult": "client", "EndpointError": "client",
    "OpenAIEndpoint": "client", "predict_remote": "predict",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
