"""The toy classification task several test modules train on: which colour word does the text contain?"""

from __future__ import annotations

import random

from lmtailor.core.example import DatasetSplits, Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.runtime import Runtime

LABELS = ("red", "green", "blue")
TASK = TaskSpec("colours", "classification", "Which colour word does the text contain?", LABELS)
CPU = Runtime("cpu", "fp32", "tests run in fp32 on the CPU")
_WORDS = "the a of one two river stone cloud quiet bright small old".split()


def colour_rows(n: int, prefix: str, seed: int) -> list[Example]:
    """``n`` rows of random filler words around one colour word, the label, cycling through ``LABELS``."""
    rng = random.Random(seed)
    return [Example(f"{prefix}{i}", " ".join(rng.choices(_WORDS, k=4)) + f" {LABELS[i % 3]} " +
                    " ".join(rng.choices(_WORDS, k=2)), LABELS[i % 3]) for i in range(n)]


def colour_splits(train: int, validation: int, test: int) -> DatasetSplits:
    """Disjoint splits of colour rows, fixed seeds."""
    return DatasetSplits(train=colour_rows(train, "train", 0), validation=colour_rows(validation, "val", 1),
                         test=colour_rows(test, "test", 2))
