"""Loading, validation, splits, instruction formats and built-in datasets."""

from lmtailor.data.example import DatasetSplits, Example

__all__ = ["DatasetSplits", "Example"]
