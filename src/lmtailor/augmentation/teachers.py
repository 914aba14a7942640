"""Open a synthetic-data teacher from its model reference: the same resolution as inference (``BACKENDS``), so the
strategies that train on synthetic rows never ask what kind of model the teacher is.

A reference the ``openai`` backend claims (``openai:MODEL@URL``) is asked over HTTP (``remote_teacher.py``, billed
in the row's data phase); any other is loaded with transformers (``synthetic_teacher.HFTeacher``). llama.cpp writes
no synthetic rows here: its backend is for answering, and a teacher needs sampling with lmtailor's own seeds.
"""

from __future__ import annotations

from typing import Callable

from lmtailor.augmentation.remote_teacher import RemoteTeacher
from lmtailor.augmentation.synthetic_teacher import HFTeacher, Teacher
from lmtailor.core.context import RunContext
from lmtailor.errors import UserError
from lmtailor.inference.backends import resolve_backend
from lmtailor.models import load_model
from lmtailor.remote.client import OpenAIEndpoint
from lmtailor.remote.reference import parse_endpoint


def _remote(ref: str, ctx: RunContext) -> Teacher:
    return RemoteTeacher(OpenAIEndpoint(parse_endpoint(ref), ctx.api), meter=ctx.meter)


def _local(ref: str, ctx: RunContext) -> Teacher:
    with ctx.meter.phase("load"):
        loaded = load_model(ref, ctx.runtime)
    return HFTeacher(loaded.model, loaded.tokenizer, ref)


_OPENERS: dict[str, Callable[[str, RunContext], Teacher]] = {"openai": _remote, "transformers": _local}


def open_teacher(ref: str, ctx: RunContext) -> Teacher:
    """The teacher ``ref`` names, opened the way its inference backend would answer it."""
    backend = resolve_backend(ref)
    if backend not in _OPENERS:
        raise UserError(f"synthetic.teacher {ref!r} resolves to the {backend} inference backend, which cannot write "
                        f"synthetic rows; use a model the {' or '.join(_OPENERS)} backend answers")
    return _OPENERS[backend](ref, ctx)
