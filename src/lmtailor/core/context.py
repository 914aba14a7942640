"""What one strategy run on one model is handed: the run context, built by the runner.

The meter and the runtime live above this layer (``measure/meter.py`` imports psutil and the pricing tables,
``runtime.py`` imports torch), so the context names them by the protocols below, the part of them a run uses;
``tests/test_core.py`` checks that ``Meter`` and ``Runtime`` match these protocols member for member.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lmtailor.core.api_settings import ApiSettings
from lmtailor.core.budget import Budget
from lmtailor.core.example import DatasetSplits
from lmtailor.core.task_spec import TaskSpec


class RowMeter(Protocol):
    """The meter of one row (``measure.meter.Meter``): phases, counts and costs a strategy reports to."""

    hardware: str
    phases: dict[str, Any]

    def phase(self, name: str) -> AbstractContextManager[Any]: ...
    def tooling(self, what: str) -> AbstractContextManager[None]: ...
    def mark(self, phase: str) -> Any: ...
    def cost_since(self, mark: Any) -> Any: ...
    def charge_cached(self, cost: Any, source: str, phase: str | None = None) -> None: ...
    def add_tokens(self, phase: str, n: int) -> None: ...
    def add_examples(self, phase: str, n: int) -> None: ...
    def count_inference(self, model: Any, tokens: int, examples: int) -> None: ...
    def add_api_call(self, phase: str, input_tokens: int, output_tokens: int, usd: float, sent: bool,
                     latency_s: float | None = None, model: str | None = None) -> None: ...
    def set_params(self, trainable: int, total: int) -> None: ...
    def add_artifact(self, name: str, path: Path) -> None: ...
    def add_flops(self, phase: str, flops: float) -> None: ...


class RowRuntime(Protocol):
    """The device and dtype of a run (``runtime.Runtime``)."""

    @property
    def device(self) -> str: ...
    @property
    def precision(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def trust_remote_code(self) -> bool: ...
    @property
    def dtype(self) -> Any: ...  # a torch.dtype
    @property
    def hardware(self) -> str: ...
    def describe(self) -> str: ...


@dataclass
class RunContext:
    """Everything one strategy run on one model needs; built by the runner."""

    task: TaskSpec
    data: DatasetSplits
    model_ref: str
    budget: Budget
    seed: int
    meter: RowMeter
    out_dir: Path
    runtime: RowRuntime
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("lmtailor"))
    base_dir: Path = Path(".")  # the experiment file's folder: relative paths in strategy configs start here
    row_id: str = "row"  # the row's id in the run: names its files outside ``out_dir``
    run_dir: Path | None = None  # the run directory (extra-data files go there); default: ``out_dir``
    api: ApiSettings = field(default_factory=ApiSettings)  # how to reach openai:MODEL@URL models (experiment api:)

    def __post_init__(self) -> None:
        if self.run_dir is None:
            self.run_dir = self.out_dir
