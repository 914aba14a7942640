"""Hybrid retrieval: dense and BM25 rankings fused by reciprocal rank fusion (Cormack et al., 2009).

RRF scores a chunk by ``sum(1 / (rrf_k + rank))`` over the rankings that contain it; it needs no score
calibration between cosine similarities and BM25 scores, which live on unrelated scales. ``rrf_k=60`` is the
paper's default.
"""

from __future__ import annotations

from pathlib import Path

from lmtailor.errors import UserError
from lmtailor.retrieval.base import Hit, check_chunks, check_k
from lmtailor.retrieval.bm25 import BM25Retriever
from lmtailor.retrieval.chunking import Chunk
from lmtailor.retrieval.dense_index import DenseRetriever
from lmtailor.retrieval.embedding import DEFAULT_EMBEDDER, Embedder

RRF_K = 60


def rrf_fuse(rankings: list[list[Hit]], k: int, rrf_k: int = RRF_K) -> list[Hit]:
    """Fuse several rankings of chunks into one of at most ``k`` hits, scored by reciprocal rank fusion."""
    scores: dict[str, float] = {}
    chunk_of: dict[str, Chunk] = {}
    for ranking in rankings:
        for hit in ranking:
            scores[hit.chunk.id] = scores.get(hit.chunk.id, 0.0) + 1.0 / (rrf_k + hit.rank)
            chunk_of[hit.chunk.id] = hit.chunk
    # Ties (equal fused score) keep the order in which chunks were first seen: the first ranking's order.
    best = sorted(scores, key=lambda cid: -scores[cid])[:k]
    return [Hit(chunk_of[cid], scores[cid], rank) for rank, cid in enumerate(best, start=1)]


class HybridRetriever:
    """Dense + BM25, each asked for ``depth`` candidates, fused by reciprocal rank fusion."""

    def __init__(self, chunks: list[Chunk], embedder: str | Embedder = DEFAULT_EMBEDDER, batch_size: int = 32,
                 params: dict | None = None, index_root: Path | None = None, stopwords: str | list[str] | None = "en",
                 stemmer: str | None = None, rrf_k: int = RRF_K, depth: int = 50) -> None:
        check_chunks(chunks)
        if rrf_k < 0 or depth < 1:
            raise UserError(f"hybrid retrieval: rrf_k must be >= 0 and depth >= 1, got rrf_k={rrf_k}, depth={depth}")
        self.rrf_k, self.depth = rrf_k, depth
        self.dense = DenseRetriever(chunks, embedder, batch_size, params, index_root)
        self.bm25 = BM25Retriever(chunks, stopwords=stopwords, stemmer=stemmer)
        self.build_stats = {"build_s": self.dense.build_stats["build_s"] + self.bm25.build_stats["build_s"],
                            "dense": self.dense.build_stats, "bm25": self.bm25.build_stats}

    def retrieve(self, queries: list[str], k: int) -> list[list[Hit]]:
        """The ``k`` best chunks per query by fused rank; candidates come from the top ``max(k, depth)`` of each."""
        check_k(k)
        n = max(k, self.depth)
        dense, lexical = self.dense.retrieve(queries, n), self.bm25.retrieve(queries, n)
        return [rrf_fuse([d, b], k, self.rrf_k) for d, b in zip(dense, lexical)]
