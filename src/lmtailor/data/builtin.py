"""Built-in datasets: made on this machine from what every Python install has, so the demo needs no download.

Add one: write a module with a ``BuiltinSpec`` (its options model and a ``build`` function) and register it below
in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from pydantic import BaseModel

from lmtailor.core.example import Example
from lmtailor.registry import Registry


@dataclass
class BuiltinDataset:
    """The rows of a built-in dataset, plus the task defaults (type, instruction, labels) it implies."""

    rows: list[Example]
    task_defaults: dict
    description: str
    files: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BuiltinSpec:
    """How to build one built-in dataset: a pydantic options model (unknown keys are errors) and a builder."""

    description: str
    options: type[BaseModel]
    build: Callable[[BaseModel], BuiltinDataset]

    def load(self, options: dict) -> BuiltinDataset:
        """Validate ``options`` (``data.options`` of the experiment) and build the dataset."""
        return self.build(self.options.model_validate(options))


BUILTIN_DATASETS: Registry[BuiltinSpec] = Registry("built-in dataset")
BUILTIN_DATASETS.register("pydoc-module", "lmtailor.data.pydoc_module:SPEC")
BUILTIN_DATASETS.register("pydoc-summary", "lmtailor.data.pydoc_summary:SPEC")
BUILTIN_DATASETS.register("pydoc-qa", "lmtailor.data.pydoc_qa:SPEC")
