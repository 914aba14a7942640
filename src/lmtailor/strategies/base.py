"""What a strategy is: a config class and a ``run()`` that returns predictions for the test rows.

Strategies never score themselves: the runner hands their predictions to the one evaluator.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from lmtailor.data.example import DatasetSplits
from lmtailor.measure.meter import Meter
from lmtailor.remote.settings import ApiSettings
from lmtailor.runtime import Runtime
from lmtailor.strategies.traits import StrategyTraits
from lmtailor.tasks.base import TaskSpec


class StrategyConfig(BaseModel):
    """Fields every strategy accepts; each strategy subclasses it with its own knobs."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="registered strategy name")
    label: str | None = Field(None, description="row label in the results table (default: derived from the knobs)")
    models: list[str] | None = Field(None, description="run only on these of the experiment's models (default: all)")


@dataclass(frozen=True)
class Budget:
    """Size limits a strategy must respect, resolved from the experiment file."""

    max_input_tokens: int = 256
    max_new_tokens: int = 32
    max_seq_len: int = 384
    eval_batch_size: int = 8


@dataclass
class RunContext:
    """Everything one strategy run on one model needs; built by the runner."""

    task: TaskSpec
    data: DatasetSplits
    model_ref: str
    budget: Budget
    seed: int
    meter: Meter
    out_dir: Path
    runtime: Runtime
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("lmtailor"))
    base_dir: Path = Path(".")  # the experiment file's folder: relative paths in strategy configs start here
    row_id: str = "row"  # the row's id in the run: names its files outside ``out_dir``
    run_dir: Path | None = None  # the run directory (extra-data files go there); default: ``out_dir``
    api: ApiSettings = field(default_factory=ApiSettings)  # how to reach openai:MODEL@URL models (experiment api:)

    def __post_init__(self) -> None:
        if self.run_dir is None:
            self.run_dir = self.out_dir


@dataclass
class StrategyOutput:
    """A strategy's answer for the test rows (aligned with ``ctx.data.test``) plus what it wants recorded."""

    predictions: list[str]
    artifacts: dict[str, Path] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    # Retrieval strategies: the document ids retrieved for each test row, best first, scored against the rows'
    # gold documents (meta["gold_doc"]) at ``retrieval_k`` by the evaluator.
    retrieved_doc_ids: list[list[str]] | None = None
    retrieval_k: int | None = None
    # Training strategies: the tuned model and its tokenizer, as served (LoRA merged), so the runner can probe what
    # the training made it forget (measure/forgetting.py) against the base model. Dropped once probed.
    tuned: tuple[Any, Any] | None = None


class Strategy(ABC):
    """One rung of the spectrum. Subclasses set ``Config`` and implement ``run``."""

    Config: ClassVar[type[StrategyConfig]] = StrategyConfig
    TRAITS: ClassVar[StrategyTraits | None] = None  # what it is (strategies/traits.py); every strategy declares it

    def __init__(self, config: StrategyConfig) -> None:
        self.config = config

    def label(self) -> str:
        """Row label in the results table; a config's ``label`` wins over the derived one."""
        return self.config.label or self.default_label()

    def default_label(self) -> str:
        return self.config.name

    def traits(self) -> StrategyTraits:
        """What this configured strategy is (the record's ``traits``); override where the knobs change them."""
        if self.TRAITS is None:
            raise TypeError(f"strategy {type(self).__name__} declares no TRAITS (strategies/traits.py): the report "
                            "could not place its rows; see docs/ARCHITECTURE.md, How to add a strategy")
        return self.TRAITS

    def uses_seed(self) -> bool:
        """Whether results depend on the seed; deterministic runs (zero-shot scoring) are run once, not per seed."""
        return True

    def accepts_api_models(self) -> bool:
        """Whether the strategy can run on an ``openai:MODEL@URL`` endpoint (it only asks the model for answers)."""
        return False

    def uses_model(self) -> bool:
        """Whether the strategy runs a model (it is planned once per model); the trivial baseline runs none."""
        return True

    def uses_training_data(self) -> bool:
        """Whether the strategy learns from the training split (learning-curve sizes apply only then)."""
        return False

    @abstractmethod
    def run(self, ctx: RunContext) -> StrategyOutput:
        """Produce predictions for ``ctx.data.test``; measure through ``ctx.meter``."""
