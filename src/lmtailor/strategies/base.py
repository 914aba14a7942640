"""What a strategy is: a config class and a ``run()`` that returns predictions for the test rows.

The run's context and its output are shared types of the bottom layer (``core/context.py``,
``core/strategy_output.py``).

Strategies never score themselves: the runner hands their predictions to the one evaluator.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from lmtailor.core.context import RunContext
from lmtailor.core.strategy_output import StrategyOutput
from lmtailor.strategies.traits import StrategyTraits


class StrategyConfig(BaseModel):
    """Fields every strategy accepts; each strategy subclasses it with its own knobs."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="registered strategy name")
    label: str | None = Field(None, description="row label in the results table (default: derived from the knobs)")
    models: list[str] | None = Field(None, description="run only on these of the experiment's models (default: all)")


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
