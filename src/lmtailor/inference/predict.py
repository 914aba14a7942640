"""Answer test rows with a loaded Hugging Face model (decoder-only or encoder-decoder): the transformers backend's
front door for code that already holds the model, as fine-tuning does after training.

    predictions, details = predict(model, tokenizer, task, rows, exemplars, budget, meter)

Label likelihood (with a shared-prefix KV cache), label-constrained greedy decoding, or free greedy generation;
``inference/answer.py`` chooses the mode, ``inference/backends/transformers.py`` the model family's path.
"""

from __future__ import annotations

from typing import Sequence

from lmtailor.core.budget import Budget
from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.inference.answer import answer
from lmtailor.inference.backends.base import Answers, PredictRequest
from lmtailor.inference.backends.transformers import TransformersPredictor
from lmtailor.inference.hf_rows import pad_token_id
from lmtailor.inference.modes import MODES, Mode, check_mode, default_mode
from lmtailor.measure.meter import Meter
from lmtailor.prompting.exemplars import Exemplars

__all__ = ["MODES", "Mode", "check_mode", "default_mode", "pad_token_id", "predict"]


def predict(model, tokenizer, task: TaskSpec, rows: Sequence[Example], exemplars: Exemplars, budget: Budget,
            meter: Meter, mode: Mode | None = None, progress_desc: str = "",
            normalize: bool = False, calibrate: bool = False) -> Answers:
    """Return a prediction per row (aligned with ``rows``) and details; counts tokens and rows into ``meter``.

    The arguments are those of ``PredictRequest``: ``exemplars`` shown before every row (or a ``RowExemplars``),
    ``normalize`` and ``calibrate`` for likelihood scoring.
    """
    request = PredictRequest(task, rows, budget, exemplars, mode, normalize, calibrate, progress_desc)
    return answer(TransformersPredictor(model, tokenizer), request, meter)
