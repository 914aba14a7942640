"""A persistent FAISS index of chunk embeddings under ``cache_dir()/indexes/<key>/``, rebuilt only when needed.

The key hashes the embedder's identity, the chunking parameters and every chunk (id, span, text), so an unchanged
corpus finds its index on disk and embeds nothing. A changed corpus gets a new index, but its vectors come from the
chunk-hash ``EmbeddingStore``: only chunks whose text changed are embedded again. An index directory is written
under a temporary name and renamed into place with its manifest written last; one without a valid manifest is
never loaded.

What an index cost the first time (the embedding of every distinct chunk text, whether done now or taken from the
store) is kept in its manifest and returned as ``BuildStats.charged_*`` when the index or stored vectors are reused,
so the ``rag`` rung can charge it to every row (``Meter.charge_cached``): the set-up cost does not depend on the
cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lmtailor.io import shared_dir_mode, write_json_atomic
from lmtailor.paths import cache_dir
from lmtailor.retrieval.base import Hit, check_chunks, check_k
from lmtailor.retrieval.chunking import Chunk
from lmtailor.retrieval.embedding import DEFAULT_EMBEDDER, Embedder, EmbeddingStore, embed_with_store

log = logging.getLogger("lmtailor")

INDEX_FORMAT = 1  # bump when the files in an index directory change meaning
INDEX_FILE, MANIFEST_FILE = "index.faiss", "manifest.json"


@dataclass
class BuildStats:
    """What building (or finding) a dense index cost: chunks, newly embedded, reused vectors, seconds, where."""

    chunks: int
    embedded: int
    reused: int
    embed_s: float
    build_s: float
    index_path: str
    reused_index: bool
    # embedding reused rather than done now (a reused index: all of it), at what it cost when it was done
    charged_embed_s: float = 0.0
    charged_embed_cpu_s: float = 0.0
    charged_unknown: int = 0  # reused vectors (or a whole index) stored before costs were kept: cost unknown

    def as_dict(self) -> dict:
        return asdict(self)


def index_key(embedder_identity: str, chunks: list[Chunk], params: dict | None = None) -> str:
    """The index's cache key: embedder identity + chunking parameters + corpus content, as one digest."""
    h = hashlib.sha256(f"format={INDEX_FORMAT}\0embedder={embedder_identity}\0".encode())
    h.update(json.dumps(params or {}, sort_keys=True, default=str).encode() + b"\0")
    for c in chunks:
        h.update(f"{c.id}\0{c.start_char}\0{c.end_char}\0".encode() + c.text.encode("utf-8") + b"\0")
    return h.hexdigest()[:32]


def build_dense_index(chunks: list[Chunk], embedder: Embedder, params: dict | None = None,
                      root: Path | None = None):
    """Load the index for these chunks from the cache, or build it (embedding only unseen chunk texts)."""
    import faiss

    check_chunks(chunks)
    t0 = time.perf_counter()
    root = Path(root) if root else cache_dir() / "indexes"
    key = index_key(embedder.identity, chunks, params)
    final = root / key
    index = _load(final, key, len(chunks))
    if index is not None:
        log.info("dense index: reusing %s (%d chunks, nothing embedded; its first-time embedding is charged)", final,
                 len(chunks))
        first = _first_time_cost(final)
        stats = BuildStats(len(chunks), 0, len(chunks), 0.0, time.perf_counter() - t0, str(final), True,
                           first.get("embed_s", 0.0), first.get("embed_cpu_s", 0.0),
                           first.get("unknown", len(chunks)))
        return index, stats
    store = EmbeddingStore(embedder.identity)
    try:
        vectors, emb = embed_with_store([c.text for c in chunks], embedder, store)
    finally:
        store.close()
    index = faiss.IndexFlatIP(vectors.shape[1])  # inner product of unit vectors = cosine similarity
    index.add(vectors)
    manifest = {"format": INDEX_FORMAT, "key": key, "embedder": embedder.ref, "embedder_identity": embedder.identity,
                "dim": int(vectors.shape[1]), "chunks": len(chunks), "params": params or {},
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                # the embedding of every distinct chunk text: done now, or reused at its stored cost
                "first_time_cost": {"embed_s": round(emb["embed_s"] + emb["reused_embed_s"], 4),
                                    "embed_cpu_s": round(emb["embed_cpu_s"] + emb["reused_embed_cpu_s"], 4),
                                    "unknown": emb["reused_cost_unknown"]}}
    _write(index, manifest, final)
    stats = BuildStats(len(chunks), emb["embedded"], emb["reused"], emb["embed_s"], time.perf_counter() - t0,
                       str(final), False, emb["reused_embed_s"], emb["reused_embed_cpu_s"],
                       emb["reused_cost_unknown"])
    log.info("dense index: built %s (%d chunks: %d embedded, %d reused, %.1fs embedding)", final, len(chunks),
             stats.embedded, stats.reused, stats.embed_s)
    return index, stats


def _first_time_cost(path: Path) -> dict:
    """The manifest's ``first_time_cost`` of the index at ``path`` ({} for an index built before it was kept)."""
    try:
        cost = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8")).get("first_time_cost")
    except (OSError, ValueError):
        return {}
    return cost if isinstance(cost, dict) else {}


def _load(path: Path, key: str, n_chunks: int):
    """The index at ``path`` if its manifest is there and agrees with what we need; otherwise None."""
    import faiss

    manifest_path = path / MANIFEST_FILE
    if not path.is_dir():
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if (manifest.get("format"), manifest.get("key"), manifest.get("chunks")) != (INDEX_FORMAT, key, n_chunks):
            raise ValueError("manifest does not match")
        index = faiss.read_index(str(path / INDEX_FILE))
        if index.ntotal != n_chunks:
            raise ValueError(f"index holds {index.ntotal} vectors, manifest says {n_chunks}")
        return index
    except (OSError, ValueError, RuntimeError) as e:  # faiss raises RuntimeError for unreadable files
        log.warning("dense index: ignoring incomplete or damaged %s (%s); rebuilding", path, e)
        return None


def _write(index, manifest: dict, final: Path) -> None:
    """Write index then manifest into a scratch directory beside ``final``, then rename it into place."""
    import faiss

    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    os.chmod(scratch, shared_dir_mode())  # mkdtemp's 0700 would outlive the rename
    try:
        faiss.write_index(index, str(scratch / INDEX_FILE))
        write_json_atomic(scratch / MANIFEST_FILE, manifest)  # last: its presence means the rest is whole
        if final.exists():  # a damaged or manifest-less directory from an earlier crash or copy
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(scratch, final)
        except OSError:
            # Another process renamed the same (content-addressed, so identical) index into place first.
            if not (final / MANIFEST_FILE).is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class DenseRetriever:
    """Nearest chunks by embedding cosine similarity, from a cached FAISS index."""

    def __init__(self, chunks: list[Chunk], embedder: str | Embedder = DEFAULT_EMBEDDER, batch_size: int = 32,
                 params: dict | None = None, index_root: Path | None = None) -> None:
        self.chunks = list(chunks)
        self.embedder = embedder if isinstance(embedder, Embedder) else Embedder(embedder, batch_size=batch_size)
        self.index, stats = build_dense_index(self.chunks, self.embedder, params, index_root)
        self.stats = stats
        self.build_stats = stats.as_dict()

    def retrieve(self, queries: list[str], k: int) -> list[list[Hit]]:
        """The ``k`` chunks most similar to each query, best first."""
        check_k(k)
        if not queries:
            return []
        k = min(k, len(self.chunks))
        scores, ids = self.index.search(self.embedder.encode_queries(queries), k)
        return [[Hit(self.chunks[i], float(s), rank) for rank, (i, s) in enumerate(zip(row_ids, row_scores), 1)
                 if i >= 0] for row_ids, row_scores in zip(ids, scores)]

