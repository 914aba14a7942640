"""Answer rows through any backend: the one place a scoring mode is chosen, checked and dispatched.

    predictor = open_predictor(model_ref, backend, ctx)      # inference/backends
    predictions, details = answer(predictor, PredictRequest(task, rows, budget, exemplars), meter)
"""

from __future__ import annotations

from dataclasses import replace

from lmtailor.inference.backends.base import Answers, PredictRequest, Predictor
from lmtailor.measure.meter import Meter


def answer(predictor: Predictor, request: PredictRequest, meter: Meter) -> Answers:
    """Return a prediction per row (aligned with ``request.rows``) and details; the predictor counts into ``meter``.

    The mode is the request's, else the predictor's default for the task; it is checked against what the predictor
    can do before any row is answered.
    """
    mode = request.mode or predictor.default_mode(request.task)
    predictor.check(request.task, mode, request.calibrate)
    request = replace(request, mode=mode)
    if mode == "generate":
        return predictor.generate(request, meter)
    return predictor.score_labels(request, meter)
