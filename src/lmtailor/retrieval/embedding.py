"""Sentence embeddings through sentence-transformers, and a store that remembers every chunk's embedding.

The store is one SQLite file per embedder under ``cache_dir()/embeddings/``, keyed by the sha256 of the chunk text:
a chunk whose text did not change is never embedded again, whichever corpus, file or position it comes from. Each
vector keeps what embedding it cost (its share of its block's wall and CPU seconds), so an index assembled from
stored vectors is charged the embedding it did not redo (``measure/setup_cost.py``).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np

from lmtailor.errors import UserError
from lmtailor.paths import cache_dir

DEFAULT_EMBEDDER = "minilm-l6"
# Encoded this many texts per store write: an interrupted build keeps what it embedded.
ENCODE_BLOCK = 512
# Files that describe a sentence-transformers directory without changing its vectors.
_IDENTITY_SKIP = {"README.md", ".gitattributes"}


def text_sha(text: str) -> str:
    """The store's key of a chunk: sha256 of its UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _dir_digest(path: Path) -> str:
    """sha256 over every file of a model directory (names and bytes): the same weights give the same digest."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name not in _IDENTITY_SKIP):
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class Embedder:
    """A sentence-transformers model by alias, local directory or hub id; vectors come out L2-normalized."""

    def __init__(self, ref: str = DEFAULT_EMBEDDER, batch_size: int = 32, device: str | None = None) -> None:
        from lmtailor.models import resolve_model

        self.ref = ref
        self.batch_size = batch_size
        self.device = device
        self.path = resolve_model(ref).path

    @cached_property
    def model(self):
        """The loaded SentenceTransformer (loaded on first use)."""
        from lmtailor.models.safe_weights import load_sentence_transformer

        try:
            return load_sentence_transformer(self.path, device=self.device)
        except OSError as e:
            raise UserError(f"embedder {self.ref!r} ({self.path}) could not be loaded as a sentence-transformers "
                            f"model: {e}") from e

    @cached_property
    def identity(self) -> str:
        """What the vectors depend on: the model's files (local) or its id (hub), as one hex digest."""
        local = Path(self.path)
        what = f"dir:{_dir_digest(local)}" if local.is_dir() else f"hub:{self.path}"
        return hashlib.sha256(what.encode()).hexdigest()[:24]

    @property
    def tokenizer(self):
        """The tokenizer the model embeds with: chunk with it so chunk sizes are in the embedder's tokens."""
        return self.model.tokenizer

    @property
    def max_seq_length(self) -> int:
        """Tokens beyond this are cut off before embedding."""
        return int(self.model.max_seq_length)

    @property
    def dim(self) -> int:
        """Length of one embedding vector."""
        # get_embedding_dimension is the sentence-transformers >= 5 name; older releases have the long one.
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get_dim())

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Embed passages (with the model's document prompt, if it has one) as float32 unit vectors."""
        # encode_document/encode_query (sentence-transformers >= 5) apply the model's passage/query prompts.
        return self._encode(getattr(self.model, "encode_document", self.model.encode), texts)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed queries (with the model's query prompt, if it has one) as float32 unit vectors."""
        return self._encode(getattr(self.model, "encode_query", self.model.encode), texts)

    def _encode(self, fn, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = fn(list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
                  show_progress_bar=False)
        return np.ascontiguousarray(vecs, dtype=np.float32)


class EmbeddingStore:
    """Embeddings of one embedder keyed by chunk-text sha256, in SQLite (each write is one atomic transaction)."""

    def __init__(self, embedder_identity: str, root: Path | None = None) -> None:
        root = root or cache_dir() / "embeddings"
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / f"{embedder_identity}.sqlite"
        self._db = sqlite3.connect(self.path, timeout=60)
        self._db.execute("CREATE TABLE IF NOT EXISTS emb (sha TEXT PRIMARY KEY, vec BLOB NOT NULL)")
        # A table of its own, so a store written before costs were kept keeps working (its vectors' cost: unknown).
        self._db.execute("CREATE TABLE IF NOT EXISTS emb_cost (sha TEXT PRIMARY KEY, wall_s REAL, cpu_s REAL)")

    def get(self, shas: Sequence[str], dim: int) -> dict[str, np.ndarray]:
        """The stored vectors among ``shas`` (missing ones are left out)."""
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(shas))
        for i in range(0, len(unique), 900):  # SQLite limits the number of bound parameters
            part = unique[i:i + 900]
            rows = self._db.execute(f"SELECT sha, vec FROM emb WHERE sha IN ({','.join('?' * len(part))})", part)
            for sha, blob in rows:
                vec = np.frombuffer(blob, dtype=np.float32)
                if vec.shape == (dim,):
                    found[sha] = vec
        return found

    def put(self, shas: Sequence[str], vecs: np.ndarray, wall_s_each: float | None = None,
            cpu_s_each: float | None = None) -> None:
        """Store ``vecs[i]`` under ``shas[i]`` with what embedding each cost, all in one transaction."""
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?)",
                                 [(s, np.asarray(v, dtype=np.float32).tobytes()) for s, v in zip(shas, vecs)])
            if wall_s_each is not None:
                self._db.executemany("INSERT OR REPLACE INTO emb_cost VALUES (?, ?, ?)",
                                     [(s, wall_s_each, cpu_s_each) for s in shas])

    def costs(self, shas: Sequence[str]) -> dict[str, tuple[float, float]]:
        """(wall seconds, CPU seconds) it took to embed each of ``shas`` that has a stored cost."""
        found: dict[str, tuple[float, float]] = {}
        unique = list(dict.fromkeys(shas))
        for i in range(0, len(unique), 900):
            part = unique[i:i + 900]
            marks = ",".join("?" * len(part))
            rows = self._db.execute(f"SELECT sha, wall_s, cpu_s FROM emb_cost WHERE sha IN ({marks})", part)
            found.update({sha: (float(w or 0.0), float(c or 0.0)) for sha, w, c in rows})
        return found

    def close(self) -> None:
        self._db.close()


def embed_with_store(texts: Sequence[str], embedder: Embedder, store: EmbeddingStore) -> tuple[np.ndarray, dict]:
    """Vectors for ``texts``: stored ones reused, the rest encoded in batches (tqdm bar) and stored."""
    from tqdm.auto import tqdm

    shas = [text_sha(t) for t in texts]
    dim = embedder.dim
    known = store.get(shas, dim)
    todo = list(dict.fromkeys(s for s in shas if s not in known))
    text_of = dict(zip(shas, texts))
    t0, c0 = time.perf_counter(), _cpu_seconds()
    with tqdm(total=len(todo), desc="embedding chunks", unit="chunk", disable=not todo) as bar:
        for i in range(0, len(todo), ENCODE_BLOCK):
            block = todo[i:i + ENCODE_BLOCK]
            w, c = time.perf_counter(), _cpu_seconds()
            vecs = embedder.encode_documents([text_of[s] for s in block])
            store.put(block, vecs, (time.perf_counter() - w) / len(block), (_cpu_seconds() - c) / len(block))
            known.update(zip(block, vecs))
            bar.update(len(block))
    embed_s = time.perf_counter() - t0 if todo else 0.0
    embed_cpu_s = _cpu_seconds() - c0 if todo else 0.0
    matrix = np.stack([known[s] for s in shas]) if shas else np.zeros((0, dim), dtype=np.float32)
    new = set(todo)
    # The embedding this index did not redo, at what it cost when it was done (each distinct text once).
    reused_distinct = [s for s in dict.fromkeys(shas) if s not in new]
    stored = store.costs(reused_distinct)
    # embedded counts distinct texts encoded now; reused counts chunks whose vector was already stored.
    return matrix, {"embedded": len(todo), "reused": sum(1 for s in shas if s not in new), "embed_s": embed_s,
                    "embed_cpu_s": embed_cpu_s,
                    "reused_embed_s": sum(w for w, _ in stored.values()),
                    "reused_embed_cpu_s": sum(c for _, c in stored.values()),
                    "reused_cost_unknown": len(reused_distinct) - len(stored)}


def _cpu_seconds() -> float:
    import os

    import psutil

    t = psutil.Process(os.getpid()).cpu_times()
    return t.user + t.system
