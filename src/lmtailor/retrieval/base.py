"""What every retriever returns: ranked hits over chunks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from lmtailor.errors import UserError
from lmtailor.retrieval.chunking import Chunk


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk: its score under the retriever that found it, and its rank (1 = best)."""

    chunk: Chunk
    score: float
    rank: int


class Retriever(Protocol):
    """Ranks the chunks it was built on for each query; ``build_stats`` says what building it cost."""

    build_stats: dict

    def retrieve(self, queries: list[str], k: int) -> list[list[Hit]]:
        """The best ``k`` chunks for each query, best first (fewer when fewer chunks match)."""
        ...


def check_k(k: int) -> None:
    """Refuse a top-k that cannot be meant."""
    if not isinstance(k, int) or k < 1:
        raise UserError(f"retrieval top-k must be a positive integer, got {k!r}")


def check_chunks(chunks: list[Chunk]) -> None:
    """Refuse an empty corpus and duplicate chunk ids (both would give wrong hits silently)."""
    if not chunks:
        raise UserError("cannot build a retriever on no chunks: the corpus is empty after loading and chunking")
    seen: set[str] = set()
    for c in chunks:
        if c.id in seen:
            raise UserError(f"chunk id {c.id!r} occurs twice: document ids in a corpus must be unique")
        seen.add(c.id)
