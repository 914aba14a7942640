"""Corpora (folder, JSONL, builtin:pydoc) with errors that name the file and line, and token chunking."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from lmtailor.errors import UserError
from lmtailor.retrieval import CorpusError, Document, chunk_documents, load_corpus
from lmtailor.retrieval.corpus import html_to_text


@pytest.fixture(scope="module")
def word_tokenizer() -> PreTrainedTokenizerFast:
    """One token per whitespace-separated word, so chunk boundaries can be checked by hand."""
    vocab = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(40)}}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


def _words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


# --- chunking ---------------------------------------------------------------------------------------------------

def test_chunks_overlap_and_ids_by_hand(word_tokenizer):
    doc = Document("a.txt", _words(10))
    chunks = chunk_documents([doc], word_tokenizer, chunk_tokens=4, overlap=1)
    assert [c.text for c in chunks] == ["w0 w1 w2 w3", "w3 w4 w5 w6", "w6 w7 w8 w9"]
    assert [c.id for c in chunks] == ["a.txt#0", "a.txt#1", "a.txt#2"]
    assert [c.position for c in chunks] == [0, 1, 2]
    assert all(c.doc_id == "a.txt" for c in chunks)
    # The window that reaches the last token ends the document: no trailing chunk inside the previous one.
    assert chunk_documents([Document("b", _words(11))], word_tokenizer, 4, 1)[-1].text == "w9 w10"


def test_short_document_is_one_chunk_and_empty_text_none(word_tokenizer):
    chunks = chunk_documents([Document("s", "  w1 w2  "), Document("e", "   ")], word_tokenizer, 8, 2)
    assert [(c.id, c.text, c.start_char, c.end_char) for c in chunks] == [("s#0", "w1 w2", 2, 7)]


def test_no_overlap_partitions_the_tokens(word_tokenizer):
    chunks = chunk_documents([Document("d", _words(7))], word_tokenizer, chunk_tokens=3, overlap=0)
    assert [c.text for c in chunks] == ["w0 w1 w2", "w3 w4 w5", "w6"]


def test_chunks_are_exact_substrings_with_a_subword_tokenizer(tiny_bert_dir):
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    text = ("Ünïcode café — déjà vu.\n\nThe quick brown fox jumps over the lazy dog; "
            "numbers 2024-12-31 appear.\t") * 6
    docs = [Document("x", text), Document("y", "tiny")]
    chunks = chunk_documents(docs, tok, chunk_tokens=16, overlap=5)
    offsets = [o for o in tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
               if o[1] > o[0]]
    x = [c for c in chunks if c.doc_id == "x"]
    assert len(x) > 3
    for i, c in enumerate(x):
        assert c.text == text[c.start_char:c.end_char]
        assert c.start_char == offsets[i * 11][0]  # step = chunk_tokens - overlap
    assert x[-1].end_char == offsets[-1][1]
    assert x[1].start_char < x[0].end_char  # consecutive windows overlap
    assert [c.id for c in chunks if c.doc_id == "y"] == ["y#0"]


@pytest.mark.parametrize("size, overlap", [(4, 4), (4, 5), (0, 0), (4, -1)])
def test_chunking_rejects_bad_sizes(word_tokenizer, size, overlap):
    with pytest.raises(UserError, match="chunk"):
        chunk_documents([Document("a", "w1")], word_tokenizer, size, overlap)


def test_chunking_needs_a_fast_tokenizer():
    with pytest.raises(UserError, match="fast tokenizer"):
        chunk_documents([Document("a", "w1")], SimpleNamespace(is_fast=False), 4, 1)


# --- corpora ----------------------------------------------------------------------------------------------------

def test_folder_corpus_reads_text_markdown_html(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("alpha text")
    (tmp_path / "sub" / "b.md").write_text("# Beta\n\nbody")
    (tmp_path / "c.html").write_text("<html><head><title>Gamma</title><style>p{}</style></head><body><p>One "
                                     "&amp; two</p><script>var x=1;</script><p>three</p></body></html>")
    (tmp_path / "notes.csv").write_text("ignored")
    (tmp_path / ".hidden.txt").write_text("ignored")
    (tmp_path / "empty.txt").write_text("  \n")
    docs = load_corpus(".", base_dir=tmp_path)
    assert [d.id for d in docs] == ["a.txt", "c.html", "sub/b.md"]
    html = docs[1]
    assert html.text == "Gamma\n\nOne & two\n\nthree"
    assert html.meta["format"] == "html"
    assert docs[2].text == "# Beta\n\nbody"


def test_html_to_text_drops_scripts_and_keeps_paragraphs():
    assert html_to_text("<div>a<b>b</b></div><noscript>x</noscript><ul><li>c</li><li>d</li></ul>") == "ab\n\nc\n\nd"


def test_empty_folder_and_missing_source_are_named(tmp_path):
    (tmp_path / "data.csv").write_text("x")
    with pytest.raises(CorpusError, match=r"has no .* files \(found: \.csv\)"):
        load_corpus(str(tmp_path), base_dir=Path("/"))
    with pytest.raises(CorpusError, match="no such folder or file"):
        load_corpus("nowhere", base_dir=tmp_path)
    with pytest.raises(CorpusError, match="must be JSONL"):
        load_corpus("data.csv", base_dir=tmp_path)


def test_jsonl_corpus_ids_and_meta(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"body": "first", "key": 7, "lang": "en"}) + "\n\n"
                    + json.dumps({"body": "second", "key": "b"}) + "\n")
    docs = load_corpus("docs.jsonl", tmp_path, text_field="body", id_field="key")
    assert [(d.id, d.text) for d in docs] == [("7", "first"), ("b", "second")]
    assert docs[0].meta["lang"] == "en" and docs[0].meta["line"] == 1
    assert [d.id for d in load_corpus("docs.jsonl", tmp_path, text_field="body")] == ["docs.jsonl:1", "docs.jsonl:3"]


@pytest.mark.parametrize("second_line, message", [
    ('{"text": "x", ', r"docs\.jsonl:2: not valid JSON"),
    ('["text"]', r"docs\.jsonl:2: each line must be a JSON object"),
    ('{"body": "x", "id": "b"}', r"docs\.jsonl:2: no 'text' field \(fields: body, id\)"),
    ('{"text": "x"}', r"docs\.jsonl:2: no 'id' field"),
    ('{"text": 3, "id": "b"}', r"docs\.jsonl:2: field 'text' must be a string"),
    ('{"text": "x", "id": "a"}', r"docs\.jsonl:2: id 'a' was already used on line 1"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, second_line, message):
    (tmp_path / "docs.jsonl").write_text('{"text": "ok", "id": "a"}\n' + second_line + "\n")
    with pytest.raises(CorpusError, match=message):
        load_corpus("docs.jsonl", tmp_path, id_field="id")


def test_exclusion_keeps_test_rows_out(tmp_path):
    for name in "abc":
        (tmp_path / f"{name}.txt").write_text(f"doc {name}")
    docs = load_corpus(str(tmp_path), tmp_path, exclude_ids={"a.txt"}, exclude=lambda d: d.text.endswith("c"))
    assert [d.id for d in docs] == ["b.txt"]
    with pytest.raises(CorpusError, match="no documents left"):
        load_corpus(str(tmp_path), tmp_path, exclude=lambda d: True)


def test_unknown_builtin_suggests_the_nearest(tmp_path):
    with pytest.raises(KeyError, match="Did you mean 'pydoc'"):
        load_corpus("builtin:pydocs", tmp_path)


def test_builtin_pydoc_documents(monkeypatch, tmp_path):
    objects = [{"id": "json.loads", "module": "json", "qualname": "loads", "kind": "function",
                "doc": "Deserialize s to a Python object."},
               {"id": "json.JSONDecoder.decode", "module": "json", "qualname": "JSONDecoder.decode",
                "kind": "method", "doc": "Return the Python representation of s."},
               {"id": "x.y", "module": "x", "qualname": "y", "kind": "function", "doc": "  "}]
    monkeypatch.setattr("lmtailor.data.pydoc_module.extract_objects", lambda: objects)
    docs = load_corpus("builtin:pydoc", tmp_path, exclude_ids={"json.loads"})
    assert [(d.id, d.text) for d in docs] == [("json.JSONDecoder.decode",
                                               "json.JSONDecoder.decode\n\nReturn the Python representation of s.")]
    # views: the docstring masked as pydoc-module masks inputs, for the leakage check (nothing to mask here)
    assert docs[0].meta == {"module": "json", "qualname": "JSONDecoder.decode", "kind": "method",
                            "views": ["Return the Python representation of s."]}
