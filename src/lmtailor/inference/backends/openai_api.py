"""The OpenAI-compatible API backend: a model behind ``openai:MODEL@BASE_URL`` (``remote/``), asked over HTTP.

It claims every ``openai:`` reference. An endpoint gives no label likelihoods and no tokenizer: classification
defaults to ``constrained`` (a JSON answer limited to the labels), and inputs are cut by a rule of thumb
(``remote/predict.py``); tokens and money come from the responses' usage.
"""

from __future__ import annotations

from typing import ClassVar

from lmtailor.core.context import RunContext
from lmtailor.core.task_spec import TaskSpec
from lmtailor.inference.backends.base import Answers, PredictRequest, Predictor
from lmtailor.inference.modes import Mode
from lmtailor.measure.meter import Meter
from lmtailor.remote.client import OpenAIEndpoint
from lmtailor.remote.predict import check_remote_request, default_remote_mode, predict_remote
from lmtailor.remote.reference import is_remote, parse_endpoint


class OpenAIPredictor(Predictor):
    """An OpenAI-compatible chat-completions endpoint (its responses cached on disk, ``remote/cache.py``)."""

    name: ClassVar[str] = "openai"

    def __init__(self, endpoint: OpenAIEndpoint) -> None:
        self.endpoint = endpoint

    @classmethod
    def claims(cls, model_ref: str) -> bool:
        return is_remote(model_ref)

    @classmethod
    def open(cls, model_ref: str, ctx: RunContext) -> "OpenAIPredictor":
        return cls(OpenAIEndpoint(parse_endpoint(model_ref), ctx.api))

    def default_mode(self, task: TaskSpec) -> Mode:
        return default_remote_mode(task)  # type: ignore[return-value]

    def check(self, task: TaskSpec, mode: str, calibrate: bool) -> None:
        check_remote_request(task, mode, calibrate, self.endpoint.ref.ref)

    # Both modes send one request per row: the request body is what differs (remote/predict.py).
    def score_labels(self, request: PredictRequest, meter: Meter) -> Answers:
        return predict_remote(self.endpoint, request, meter)

    def generate(self, request: PredictRequest, meter: Meter) -> Answers:
        return predict_remote(self.endpoint, request, meter)

    def count_tokens(self, text: str) -> int:
        # No tokenizer: at most one token per character, so a text within the budget is never cut (the cut allows
        # remote.predict.CHARS_PER_TOKEN characters per token).
        return len(text)
