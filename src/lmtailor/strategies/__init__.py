"""Strategies: one module per rung of the spectrum. Add one: a module with a ``Strategy`` subclass, one line below."""

from lmtailor.registry import Registry
from lmtailor.strategies.base import Strategy, StrategyConfig

STRATEGIES: Registry[type[Strategy]] = Registry("strategy")
STRATEGIES.register("prompt", "lmtailor.strategies.prompt:PromptStrategy")
STRATEGIES.register("finetune", "lmtailor.strategies.finetune:FinetuneStrategy")
STRATEGIES.register("rag", "lmtailor.strategies.rag:RagStrategy")
STRATEGIES.register("continued-pretraining", "lmtailor.strategies.continued_pretraining:ContinuedPretrainingStrategy")
STRATEGIES.register("scratch", "lmtailor.strategies.scratch:ScratchStrategy")
STRATEGIES.register("baseline", "lmtailor.strategies.baseline:BaselineStrategy")
STRATEGIES.register("nearest", "lmtailor.strategies.nearest:NearestStrategy")

__all__ = ["STRATEGIES", "Strategy", "StrategyConfig"]
