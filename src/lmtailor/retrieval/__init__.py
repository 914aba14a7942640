"""Retrieval for the ``rag`` rung: corpora, token chunking, embeddings with a persistent FAISS index, BM25, hybrid.

    docs = load_corpus("builtin:pydoc", base_dir=Path("."), exclude_ids=test_ids)
    embedder = Embedder("minilm-l6")
    chunks = chunk_documents(docs, embedder.tokenizer, chunk_tokens=200, overlap=40)
    retriever = make_retriever("hybrid", chunks, embedder=embedder)
    hits = retriever.retrieve(["How do I parse JSON?"], k=5)   # list (per query) of Hit(chunk, score, rank)
    retrieval_metrics([[h.chunk.doc_id for h in q] for q in hits], ["json.loads"], k=5)

Heavy libraries (torch, faiss, bm25s) are imported only when a retriever is built.
"""

from __future__ import annotations

from typing import Literal

from lmtailor.registry import Registry
from lmtailor.retrieval.base import Hit, Retriever
from lmtailor.retrieval.chunking import Chunk, chunk_documents
from lmtailor.retrieval.corpus import BUILTIN_CORPORA, CorpusError, Document, load_corpus
from lmtailor.tasks.retrieval_metrics import retrieval_metrics

# kind -> class taking (chunks, **options); one line per retriever kind.
RETRIEVERS: Registry[type] = Registry("retriever")
RETRIEVERS.register("dense", "lmtailor.retrieval.dense_index:DenseRetriever")
RETRIEVERS.register("bm25", "lmtailor.retrieval.bm25:BM25Retriever")
RETRIEVERS.register("hybrid", "lmtailor.retrieval.hybrid:HybridRetriever")


def make_retriever(kind: Literal["dense", "bm25", "hybrid"] | str, chunks: list[Chunk], **options) -> Retriever:
    """Build the retriever ``kind`` over ``chunks``; ``options`` go to its class (embedder=, stopwords=, rrf_k=...)."""
    return RETRIEVERS.get(kind)(chunks, **options)


def __getattr__(name: str):
    # Embedder pulls in numpy/sentence-transformers machinery; import it only when asked for.
    if name in {"Embedder", "DEFAULT_EMBEDDER"}:
        from lmtailor.retrieval import embedding

        return getattr(embedding, name)
    raise AttributeError(f"module 'lmtailor.retrieval' has no attribute {name!r}")


__all__ = [
    "BUILTIN_CORPORA",
    "DEFAULT_EMBEDDER",
    "RETRIEVERS",
    "Chunk",
    "CorpusError",
    "Document",
    "Embedder",
    "Hit",
    "Retriever",
    "chunk_documents",
    "load_corpus",
    "make_retriever",
    "retrieval_metrics",
]
