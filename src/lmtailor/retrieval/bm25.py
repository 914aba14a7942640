"""Lexical retrieval with BM25 through ``bm25s`` (built in memory: indexing thousands of chunks takes well under
a second, so it is not cached on disk)."""

from __future__ import annotations

import time

from lmtailor.errors import UserError
from lmtailor.retrieval.base import Hit, check_chunks, check_k
from lmtailor.retrieval.chunking import Chunk


def _stemmer(language: str | None):
    """A PyStemmer stemmer for ``language``, or None; PyStemmer is optional, so say how to get it."""
    if language is None:
        return None
    try:
        import Stemmer
    except ImportError:
        raise UserError(f"BM25 stemming ({language!r}) needs the PyStemmer package: pip install PyStemmer "
                        "(or leave the stemmer unset)") from None
    try:
        return Stemmer.Stemmer(language)
    except KeyError:
        raise UserError(f"BM25 stemmer: PyStemmer has no {language!r} stemmer; it has "
                        f"{', '.join(Stemmer.algorithms())}") from None


class BM25Retriever:
    """Chunks ranked by BM25 over bm25s's word tokens (lower-cased, stopwords removed, optionally stemmed)."""

    def __init__(self, chunks: list[Chunk], stopwords: str | list[str] | None = "en", stemmer: str | None = None,
                 k1: float = 1.5, b: float = 0.75, method: str = "lucene") -> None:
        import bm25s

        check_chunks(chunks)
        t0 = time.perf_counter()
        self.chunks = list(chunks)
        self._tokenize_opts = {"stopwords": stopwords or [], "stemmer": _stemmer(stemmer)}
        self._bm25 = bm25s.BM25(k1=k1, b=b, method=method)
        self._bm25.index(self._tokenize([c.text for c in self.chunks]), show_progress=False)
        self.build_stats = {"chunks": len(self.chunks), "build_s": time.perf_counter() - t0}

    def _tokenize(self, texts: list[str]) -> list[list[str]]:
        import bm25s

        # Strings, not ids: bm25s then maps query words onto the corpus vocabulary and skips unknown ones.
        return bm25s.tokenize(texts, return_ids=False, show_progress=False, **self._tokenize_opts)

    def retrieve(self, queries: list[str], k: int) -> list[list[Hit]]:
        """The ``k`` best chunks per query by BM25; chunks sharing no word with the query are left out."""
        check_k(k)
        if not queries:
            return []
        k = min(k, len(self.chunks))
        ids, scores = self._bm25.retrieve(self._tokenize(queries), k=k, show_progress=False)
        out = []
        for row_ids, row_scores in zip(ids, scores):
            # A zero score means no query word occurs in the chunk: its place in the ranking would be arbitrary.
            kept = [(int(i), float(s)) for i, s in zip(row_ids, row_scores) if s > 0]
            out.append([Hit(self.chunks[i], s, rank) for rank, (i, s) in enumerate(kept, start=1)])
        return out
