"""Task types and their scorers. Add a task type: one module, one line below."""

from lmtailor.registry import Registry
from lmtailor.tasks.base import Metric, TaskType

TASK_TYPES: Registry[type[TaskType]] = Registry("task type")
TASK_TYPES.register("classification", "lmtailor.tasks.classification:Classification")
TASK_TYPES.register("generation", "lmtailor.tasks.generation:Generation")
TASK_TYPES.register("qa", "lmtailor.tasks.qa:Qa")

__all__ = ["TASK_TYPES", "Metric", "TaskType"]
