"""Dense index reuse and invalidation, and dense / BM25 / hybrid retrieval on a corpus where the answer is obvious.

Dense tests embed with a tiny random sentence-transformers model (the tiny BERT + mean pooling): it knows nothing,
but identical text gets identical vectors, so a query copied from a document finds it. One integration test
uses the real minilm-l6.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtailor.errors import UserError
from lmtailor.retrieval import Document, chunk_documents, load_corpus, make_retriever, retrieval_metrics
from lmtailor.retrieval.dense_index import MANIFEST_FILE, build_dense_index
from lmtailor.retrieval.embedding import Embedder

FILES = {
    "rivers.txt": "The river runs past the old stone bridge. Boats carry grain down to the sea every spring. "
                  "Fishermen mend their nets on the bank.",
    "json.md": "Use json.loads to parse a string into a Python object, and json.dumps to serialize it again. "
               "Invalid input raises JSONDecodeError.",
    "stack.html": "<p>A stack is a last-in, first-out list of items: push adds an item on top, pop removes it "
                  "and raises IndexError when the stack is empty.</p>",
    "weather.txt": "The cloud over the hill is quiet and bright. Rain is expected on Tuesday, then sun.",
}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh cache for one test, so embedding counts start from nothing."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LMTAILOR_CACHE", str(root))
    return root


class CountingEmbedder(Embedder):
    """Records every passage it embeds."""

    def __init__(self, ref: str) -> None:
        super().__init__(ref, batch_size=8)
        self.embedded: list[str] = []

    def encode_documents(self, texts):
        self.embedded.extend(texts)
        return super().encode_documents(texts)


def _corpus(folder: Path, files: dict[str, str], embedder: Embedder):
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    docs = load_corpus(str(folder), folder)
    return chunk_documents(docs, embedder.tokenizer, chunk_tokens=12, overlap=3)


def test_second_build_reuses_the_index_and_embeds_nothing(cache, tiny_st_dir, tmp_path):
    embedder = CountingEmbedder(tiny_st_dir)
    chunks = _corpus(tmp_path / "docs", FILES, embedder)
    _, first = build_dense_index(chunks, embedder)
    assert (first.reused_index, first.chunks, first.embedded, first.reused) == (False, len(chunks), len(chunks), 0)
    assert first.embed_s > 0
    assert Path(first.index_path).parent == cache / "indexes"
    assert json.loads((Path(first.index_path) / MANIFEST_FILE).read_text())["chunks"] == len(chunks)
    embedder.embedded.clear()
    _, second = build_dense_index(chunks, embedder)
    assert (second.reused_index, second.embedded, second.embed_s) == (True, 0, 0.0)
    assert second.index_path == first.index_path
    assert embedder.embedded == []
    # No scratch directories are left beside the index.
    assert [p.name for p in (cache / "indexes").iterdir()] == [Path(first.index_path).name]


def test_editing_one_file_re_embeds_only_its_changed_chunks(cache, tiny_st_dir, tmp_path):
    embedder = CountingEmbedder(tiny_st_dir)
    folder = tmp_path / "docs"
    _, first = build_dense_index(_corpus(folder, FILES, embedder), embedder)
    embedder.embedded.clear()
    edited = dict(FILES, **{"rivers.txt": FILES["rivers.txt"].replace("Fishermen mend", "Children swim by")})
    chunks = _corpus(folder, edited, embedder)
    _, second = build_dense_index(chunks, embedder)
    assert not second.reused_index and second.index_path != first.index_path
    assert 0 < second.embedded < sum(1 for c in chunks if c.doc_id == "rivers.txt")  # its first chunk is unchanged
    assert second.reused == len(chunks) - second.embedded
    changed = {c.text for c in chunks if c.doc_id == "rivers.txt"}
    assert embedder.embedded and set(embedder.embedded) <= changed


def test_adding_and_removing_files(cache, tiny_st_dir, tmp_path):
    embedder = CountingEmbedder(tiny_st_dir)
    folder = tmp_path / "docs"
    build_dense_index(_corpus(folder, FILES, embedder), embedder)
    embedder.embedded.clear()
    chunks = _corpus(folder, {"new.txt": "A brand new document about tea and biscuits."}, embedder)
    _, added = build_dense_index(chunks, embedder)
    new_texts = [c.text for c in chunks if c.doc_id == "new.txt"]
    assert (added.reused_index, added.embedded) == (False, len(new_texts))
    assert embedder.embedded == new_texts
    embedder.embedded.clear()
    (folder / "weather.txt").unlink()
    chunks = _corpus(folder, {}, embedder)
    _, removed = build_dense_index(chunks, embedder)
    assert (removed.reused_index, removed.embedded, removed.chunks) == (False, 0, len(chunks))
    assert "weather.txt" not in {c.doc_id for c in chunks}


def test_an_index_dir_without_manifest_is_never_loaded(cache, tiny_st_dir, tmp_path):
    embedder = CountingEmbedder(tiny_st_dir)
    chunks = _corpus(tmp_path / "docs", FILES, embedder)
    _, first = build_dense_index(chunks, embedder)
    index_dir = Path(first.index_path)
    (index_dir / MANIFEST_FILE).unlink()  # as if the build had died before its last write
    _, again = build_dense_index(chunks, embedder)
    assert again.reused_index is False and again.embedded == 0  # rebuilt from the embedding store
    assert (index_dir / MANIFEST_FILE).is_file()
    (index_dir / "index.faiss").write_bytes(b"garbage")  # a damaged index with its manifest
    _, third = build_dense_index(chunks, embedder)
    assert third.reused_index is False
    _, fourth = build_dense_index(chunks, embedder)
    assert fourth.reused_index is True


def test_another_embedder_gets_another_index(cache, tiny_st_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    other = tmp_path / "other-st"
    model = SentenceTransformer(tiny_st_dir, device="cpu")
    model.max_seq_length = 32  # a changed config is a different embedder
    model.save(str(other))
    a, b = Embedder(tiny_st_dir), Embedder(str(other))
    chunks = _corpus(tmp_path / "docs", FILES, a)
    assert build_dense_index(chunks, a)[1].index_path != build_dense_index(chunks, b)[1].index_path


# --- retrieval ------------------------------------------------------------------------------------------------------

def _docs() -> list[Document]:
    return [Document(name, text) for name, text in FILES.items()]


@pytest.mark.parametrize("kind", ["dense", "bm25", "hybrid"])
def test_each_retriever_finds_the_obvious_document(cache, tiny_st_dir, kind):
    embedder = Embedder(tiny_st_dir)
    chunks = chunk_documents(_docs(), embedder.tokenizer, chunk_tokens=200, overlap=0)  # one chunk per document
    options = {} if kind == "bm25" else {"embedder": embedder}
    retriever = make_retriever(kind, chunks, **options)
    queries = [FILES["json.md"][:60], "The cloud over the hill is quiet and bright."]  # copied: obvious to dense too
    hits = retriever.retrieve(queries, k=3)
    assert [h[0].chunk.doc_id for h in hits] == ["json.md", "weather.txt"]
    for per_query in hits:
        assert [h.rank for h in per_query] == list(range(1, len(per_query) + 1))
        assert all(a.score >= b.score for a, b in zip(per_query, per_query[1:]))
    assert "build_s" in retriever.build_stats
    metrics = retrieval_metrics([[h.chunk.doc_id for h in q] for q in hits], ["json.md", {"weather.txt"}], k=3)
    assert metrics["recall@3"] == 1.0 and metrics["mrr"] == 1.0


def test_bm25_matches_words_and_leaves_out_unrelated_chunks(cache):
    chunks = chunk_documents(_docs(), _word_tokenizer(), 200, 0)
    retriever = make_retriever("bm25", chunks)
    (hits,) = retriever.retrieve(["what raises IndexError when empty?"], k=4)
    assert hits[0].chunk.doc_id == "stack.html"
    assert all(h.score > 0 for h in hits) and len(hits) < 4  # chunks sharing no word are not ranked
    assert retriever.retrieve(["zebra xylophone"], k=2) == [[]]


def test_bm25_stemming_without_pystemmer_says_how_to_get_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "Stemmer", None)  # as if PyStemmer were not installed
    with pytest.raises(UserError, match="pip install PyStemmer"):
        make_retriever("bm25", chunk_documents(_docs(), _word_tokenizer(), 200, 0), stemmer="english")


def test_hybrid_combines_both_rankings(cache, tiny_st_dir):
    embedder = Embedder(tiny_st_dir)
    chunks = chunk_documents(_docs(), embedder.tokenizer, chunk_tokens=200, overlap=0)
    hybrid = make_retriever("hybrid", chunks, embedder=embedder, rrf_k=60)
    (fused,) = hybrid.retrieve(["json.loads parses a string"], k=4)
    assert fused[0].chunk.doc_id == "json.md"
    (dense,), (lexical,) = hybrid.dense.retrieve(["json.loads parses a string"], 4), \
        hybrid.bm25.retrieve(["json.loads parses a string"], 4)
    ranks = {h.chunk.id: h.rank for h in dense}, {h.chunk.id: h.rank for h in lexical}
    for hit in fused:
        expected = sum(1 / (60 + r[hit.chunk.id]) for r in ranks if hit.chunk.id in r)
        assert hit.score == pytest.approx(expected)
    assert hybrid.build_stats["dense"]["chunks"] == len(chunks)


def test_unknown_kind_and_bad_k(cache):
    with pytest.raises(KeyError, match="Did you mean 'bm25'"):
        make_retriever("bm24", [])
    chunks = chunk_documents(_docs(), _word_tokenizer(), 200, 0)
    with pytest.raises(UserError, match="top-k"):
        make_retriever("bm25", chunks).retrieve(["x"], k=0)
    with pytest.raises(UserError, match="no chunks"):
        make_retriever("bm25", [])


def _word_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    backend.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


@pytest.mark.integration
def test_minilm_finds_the_document_by_meaning(cache):
    docs = [Document("bake", "Mix flour, eggs and sugar, then bake the cake in the oven for forty minutes."),
            Document("football", "The striker scored twice in the last ten minutes and the home side won the "
                                 "championship."),
            Document("rates", "The central bank raised interest rates again to bring inflation down."),
            Document("json", FILES["json.md"])]
    embedder = Embedder("minilm-l6")
    chunks = chunk_documents(docs, embedder.tokenizer, chunk_tokens=128, overlap=16)
    retriever = make_retriever("dense", chunks, embedder=embedder)
    hits = retriever.retrieve(["Who won the soccer match?", "How do I turn text into a dictionary?",
                               "Why did borrowing get more expensive?"], k=2)
    assert [q[0].chunk.doc_id for q in hits] == ["football", "json", "rates"]
    assert make_retriever("dense", chunks, embedder=embedder).build_stats["reused_index"] is True
