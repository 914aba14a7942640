"""Inference backends: one registry, ``BACKENDS``, of ``Predictor`` classes (``inference/backends/base.py``).

A row's backend is resolved once, from its model reference and the strategy's ``backend:`` setting: the named
backend when it is set, else the one backend that claims the reference (``openai:MODEL@URL``: the API backend),
else ``transformers``.

    with ctx.meter.phase("load"):
        predictor = open_predictor(ctx.model_ref, cfg.backend, ctx)
    predictions, details = answer(predictor, PredictRequest(task, rows, budget, exemplars), ctx.meter)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmtailor.errors import UserError
from lmtailor.registry import Registry

if TYPE_CHECKING:  # the backends import torch, llama.cpp or an HTTP client: only when one is resolved
    from lmtailor.inference.backends.base import Predictor
    from lmtailor.core.context import RunContext

BACKENDS: Registry[type["Predictor"]] = Registry("inference backend")
BACKENDS.register("transformers", "lmtailor.inference.backends.transformers:TransformersPredictor")
BACKENDS.register("llamacpp", "lmtailor.inference.backends.llamacpp:LlamaCppPredictor")
BACKENDS.register("openai", "lmtailor.inference.backends.openai_api:OpenAIPredictor")

DEFAULT_BACKEND = "transformers"  # what answers a reference no backend claims


def check_backend_name(name: str | None) -> str | None:
    """A ``backend:`` setting: None (from the model reference) or a registered name; else a ValueError naming the
    nearest ones, for the config validator to report."""
    if name is not None and name not in BACKENDS:
        raise ValueError(BACKENDS.unknown_message(name))
    return name


def resolve_backend(model_ref: str, backend: str | None = None) -> str:
    """The backend that answers ``model_ref``: ``backend`` when set, else the one that claims the reference, else
    ``transformers``."""
    if backend is not None:
        BACKENDS.get(backend)  # an unknown name: the registry's message, with the nearest names
        return backend
    claimed = [name for name in BACKENDS if BACKENDS.get(name).claims(model_ref)]
    if len(claimed) > 1:
        raise UserError(f"model {model_ref!r} is claimed by the inference backends {', '.join(claimed)}; set the "
                        "strategy's backend: to the one that should answer it")
    return claimed[0] if claimed else DEFAULT_BACKEND


def open_predictor(model_ref: str, backend: str | None, ctx: "RunContext") -> "Predictor":
    """Resolve the backend of ``model_ref`` and open the model in it (call it inside the meter's ``load`` phase)."""
    return BACKENDS.get(resolve_backend(model_ref, backend)).open(model_ref, ctx)
