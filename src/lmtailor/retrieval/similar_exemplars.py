"""``exemplars: similar``: the k training rows nearest each input, by cosine similarity of sentence embeddings.

Exemplars that resemble the input are the standard remedy for few-shot prompts whose random exemplars say little
about the row at hand (Liu et al. 2022, "What Makes Good In-Context Examples for GPT-3?", arXiv:2101.06804). The
pool is the training rows minus any whose input is also a test input (the caller passes it), embedded once when the
strategy sets up; each input is embedded when it is answered. Both sides go through the same encoder call: an input
is compared with inputs, not a query with passages. Texts longer than the embedder reads are cut by it (the
similarity is of their first part).

Order and ties: the nearest row is shown last, just before the input, as Liu et al. found best; rows with the same
similarity keep their order in the training split, so the choice never depends on anything but the data.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lmtailor.core.example import Example
from lmtailor.errors import UserError
from lmtailor.prompting.exemplars import RowExemplars


class SimilarExemplars:
    """A pool of solved rows embedded once; ``nearest`` gives each input its k most similar pool rows."""

    def __init__(self, pool: Sequence[Example], embedder) -> None:
        if not pool:
            raise UserError("exemplars: similar has no training row to choose from (every training row's input is "
                            "also a test input, or the training split is empty)")
        self.pool = list(pool)
        self.embedder = embedder
        self.vectors = embedder.encode_queries([e.input for e in self.pool])  # unit vectors: dot = cosine

    def nearest(self, inputs: Sequence[str], k: int) -> RowExemplars:
        """For each input, its ``k`` most similar pool rows, least similar first (the nearest next to the input)."""
        if k > len(self.pool):
            raise UserError(f"shots={k} needs {k} training rows, but the training split has {len(self.pool)} usable "
                            "rows; lower shots or raise data.max_train")
        if k == 0:
            return RowExemplars([[] for _ in inputs])
        sims = self.embedder.encode_queries(list(inputs)) @ self.vectors.T
        picks = []
        for row in sims:
            order = np.argsort(-row, kind="stable")[:k]  # stable: equal similarity keeps the split's order
            picks.append([self.pool[j] for j in reversed(order)])
        return RowExemplars(picks)
