"""What every inference backend is: a ``Predictor`` that scores labels, generates and counts tokens, asked with one
``PredictRequest``.

A backend is one class implementing ``Predictor`` (``claims`` and ``open`` to be chosen and loaded; ``score_labels``,
``generate`` and ``count_tokens`` to answer) plus one ``BACKENDS.register`` line (``inference/backends/__init__.py``).
Strategies never see which backend answers: they open a predictor and call ``inference.answer.answer``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Sequence

from lmtailor.core.budget import Budget
from lmtailor.core.context import RunContext
from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.inference.calibration import check_calibration
from lmtailor.inference.modes import Mode, check_mode, default_mode
from lmtailor.measure.meter import Meter
from lmtailor.prompting.exemplars import Exemplars

Answers = tuple[list[str], dict]  # a prediction per row (aligned with the request's rows), and the details


@dataclass(frozen=True)
class PredictRequest:
    """The rows to answer and how: what every backend is asked, in one object.

    ``exemplars`` are shown before every row, or per row (a ``RowExemplars``); ``mode`` is None until
    ``inference.answer.answer`` resolves it with the predictor's default; ``normalize`` (likelihood) ranks labels by
    mean instead of summed token log-probability; ``calibrate`` (likelihood) divides out the labels' prior measured
    on content-free inputs (``inference/calibration.py``); ``progress_desc`` names the progress bar.
    """

    task: TaskSpec
    rows: Sequence[Example]
    budget: Budget
    exemplars: Exemplars = ()
    mode: Mode | None = None
    normalize: bool = False
    calibrate: bool = False
    progress_desc: str = ""


class Predictor(Protocol):
    """An inference backend with a model opened: it answers ``PredictRequest``s and counts into the meter.

    Subclass it to get the defaults below (a local model of unknown size, all three modes, nothing to close);
    ``claims``, ``open``, ``score_labels``, ``generate`` and ``count_tokens`` are each backend's own.
    """

    name: ClassVar[str]  # its name in ``BACKENDS`` (and in the record's details)
    tokenizer: Any = None  # the Hugging Face tokenizer its prompts are built with; None: it has none (an endpoint)
    n_params: int | None = None  # parameters that answer each request; None: not known here (an endpoint)
    input_limit: int | None = None  # positions the model reads (prompt, and answer if it shares them); None: no limit
    answer_in_context: bool = True  # the answer takes positions of the same context as the prompt (decoder-only)

    @classmethod
    def claims(cls, model_ref: str) -> bool:
        """Whether ``model_ref`` names a model only this backend can run (chosen when no ``backend:`` is set)."""
        ...

    @classmethod
    def open(cls, model_ref: str, ctx: RunContext) -> "Predictor":
        """Load (or connect to) the model ``model_ref`` names; call it inside the meter's ``load`` phase."""
        ...

    def score_labels(self, request: PredictRequest, meter: Meter) -> Answers:
        """Answer each row with one of ``request.task.labels`` (``request.mode``: likelihood or constrained)."""
        ...

    def generate(self, request: PredictRequest, meter: Meter) -> Answers:
        """Answer each row with free greedy text, at most ``request.budget.max_new_tokens`` tokens."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes in this predictor's input (a text of at most ``budget.max_input_tokens`` is never
        cut)."""
        ...

    def default_mode(self, task: TaskSpec) -> Mode:
        """The mode used when the row sets no ``scoring:``: likelihood for classification, generate otherwise."""
        return default_mode(task)

    def check(self, task: TaskSpec, mode: str, calibrate: bool) -> None:
        """Refuse a mode this backend cannot do for ``task``, or calibration without label likelihoods."""
        check_mode(task, mode)
        if calibrate:
            check_calibration(mode)

    def describe(self) -> dict:
        """What the row's details keep about the engine beside ``backend`` (llama.cpp: which GGUF answered)."""
        return {}

    def close(self) -> None:
        """Free what ``open`` took (a llama.cpp context) now rather than at garbage collection."""
