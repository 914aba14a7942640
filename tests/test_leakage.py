"""Leakage by content: every corpus (rag, continued pre-training, scratch, builtin:pydoc) leaves out what shows a
row to predict, task:train is retrieved as whole rows shown as worked examples, and the honesty checks verify it all
from the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtailor.core.budget import Budget
from lmtailor.core.context import RunContext
from lmtailor.core.example import DatasetSplits, Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.data.leakage import NORMALISATION, row_digest, rows_fingerprint
from lmtailor.measure.meter import Meter
from lmtailor.retrieval.corpus import Document
from lmtailor.retrieval.exclusion import exclude_held_out
from lmtailor.runtime import Runtime

LONG_INPUT = "The quick brown fox jumps over the lazy dog while the farmer sleeps."
GEN = TaskSpec("sum", "generation", "Summarize.")
CLS = TaskSpec("mod", "classification", "Which module?", labels=("os", "re"))
QA = TaskSpec("qa", "qa", "Answer.")


def _ctx(tmp_path: Path, test: list[Example], task: TaskSpec = GEN, train: list[Example] | None = None,
         model: str = "tiny-llama", budget: Budget | None = None) -> RunContext:
    train = train if train is not None else [Example(f"t{i}", f"training input {i}", f"answer {i}") for i in range(4)]
    return RunContext(task=task, data=DatasetSplits(train=train, validation=[], test=test), model_ref=model,
                      budget=budget or Budget(max_input_tokens=32, max_new_tokens=4, eval_batch_size=4), seed=0,
                      meter=Meter(), out_dir=tmp_path, runtime=Runtime("cpu", "fp32", "test"), base_dir=tmp_path)


def _folder(tmp_path: Path, docs: dict[str, str]) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir(exist_ok=True)
    for name, text in docs.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


# --- the rule: contains an input, equals (or, for generation, contains) an answer -------------------------------------

def test_a_document_containing_a_test_input_is_left_out_whatever_its_case_and_spacing():
    test = [Example("x1", LONG_INPUT, "A fox jumps over a dog.")]
    copy = "Intro.\n\nTHE QUICK brown fox   jumps over the lazy dog while the farmer sleeps!\nMore."
    docs = [Document("copy.md", copy),
            Document("near.md", "The quick brown fox jumps over the lazy cat while the farmer sleeps."),
            Document("answer.md", "a fox jumps over a dog"),  # equals the answer, once normalised
            Document("other.md", "Nothing to see here.")]
    kept, record = exclude_held_out(docs, test, "generation")
    assert [d.id for d in kept] == ["near.md", "other.md"]  # one word changed is no copy
    assert record["excluded"] == {"contains_test_input": {"count": 1, "documents": [["copy.md", "x1"]]},
                                  "equals_test_target": {"count": 1, "documents": [["answer.md", "x1"]]}}
    assert (record["documents"], record["kept"], record["checked_rows"]) == (4, 2, 1)
    assert record["normalisation"] == NORMALISATION
    assert record["rows_fingerprint"] == rows_fingerprint([("x1", row_digest(test[0]))])


def test_short_texts_leave_out_only_documents_that_equal_them():
    # "I loved it." is 3 words: inside ordinary prose it is no evidence of a leak; a document that IS it is.
    test = [Example("x1", "I loved it.", "positive")]
    docs = [Document("review", "Honestly, I loved it. The ending too."), Document("same", "i loved it")]
    kept, record = exclude_held_out(docs, test, "generation")
    assert [d.id for d in kept] == ["review"] and record["excluded"]["equals_test_input"]["count"] == 1


def test_answers_are_looked_for_as_the_task_type_says():
    summary = "Return the number of objects in the permanent generation."
    docs = [Document("gc.get_freeze_count", f"gc.get_freeze_count\n\n{summary}"),
            Document("os.getcwd", "os.getcwd\n\nReturn a unicode string representing the current working directory."),
            Document("label", "os")]
    row = Example("x1", "What does gc.get_freeze_count return?", summary)
    # generation: the summary copied into a document is the answer
    kept, _ = exclude_held_out(docs, [row], "generation")
    assert [d.id for d in kept] == ["os.getcwd", "label"]
    # qa: the answer phrase belongs in the document the question is about (pydoc-qa's gold document stays)
    kept, _ = exclude_held_out(docs, [row], "qa")
    assert [d.id for d in kept] == ["gc.get_freeze_count", "os.getcwd", "label"]
    kept, record = exclude_held_out(docs, [Example("x2", "Which module defines getcwd?", "os")], "qa")
    assert [d.id for d in kept] == ["gc.get_freeze_count", "os.getcwd"]  # only a document that IS the answer
    # classification: a label ("os") is every document's vocabulary, never evidence; not even by equality
    kept, record = exclude_held_out(docs, [Example("x3", "Return a unicode string.", "os")], "classification")
    assert len(kept) == 3 and record["rules"]["target"] == "not checked (labels)"


# --- every corpus: rag, continued pre-training, scratch, builtin:pydoc ----------------------------------------------

def test_rag_corpus_folder_leaves_out_a_document_holding_a_test_input(tmp_path):
    from lmtailor.strategies.rag import corpus_documents

    _folder(tmp_path, {"a.md": f"Some notes.\n{LONG_INPUT.upper()}\n", "b.md": "Unrelated text about cats."})
    ctx = _ctx(tmp_path, [Example("x1", LONG_INPUT, "A fox.")])
    docs, record = corpus_documents(ctx, "docs", "text", None, "rag")
    assert [d.id for d in docs] == ["b.md"]
    assert record["source"] == "docs" and record["excluded"]["contains_test_input"]["documents"] == [["a.md", "x1"]]


@pytest.mark.parametrize("strategy", ["continued-pretraining", "scratch"])
def test_pretraining_corpora_leave_out_test_inputs_and_answers(tmp_path, strategy):
    from lmtailor.strategies.continued_pretraining import ContinuedPretrainingConfig, load_pretraining_corpus
    from lmtailor.strategies.scratch import ScratchConfig

    summary = "Suspend execution of the calling thread for the given number of seconds."
    _folder(tmp_path, {"input.txt": f"Copied: {LONG_INPUT}", "answer.txt": f"time.sleep\n\n{summary}\n\nMore.",
                       "keep.txt": "A paragraph of domain text to pre-train on."})
    cfg = (ContinuedPretrainingConfig(name=strategy, method="full", corpus="docs") if strategy != "scratch"
           else ScratchConfig(name=strategy, corpus="docs"))
    ctx = _ctx(tmp_path, [Example("x1", LONG_INPUT, "A fox."), Example("x2", "time.sleep(secs)", summary)])
    texts, record = load_pretraining_corpus(ctx, cfg, strategy)
    assert texts == ["A paragraph of domain text to pre-train on."]
    assert record["excluded"]["contains_test_input"]["documents"] == [["input.txt", "x1"]]
    assert record["excluded"]["contains_test_target"]["documents"] == [["answer.txt", "x2"]]


def test_pydoc_twins_of_a_test_rows_document_are_left_out(tmp_path, monkeypatch):
    """The demo's twins: posix.posix_spawn/posix_spawnp differ only by `true`/`True`; ast.AsyncFunctionDef and
    ast.FunctionDef have one docstring once their names are masked; ast.stmt lists AsyncFunctionDef's signature.
    Each twin's first line names the module the test row asks for."""
    from lmtailor.data import pydoc_module
    from lmtailor.data.pydoc_module import PydocModuleOptions, mask_docstring
    from lmtailor.strategies.rag import corpus_documents

    def obj(module: str, name: str, doc: str) -> dict:
        return {"id": f"{module}.{name}", "module": module, "qualname": name, "name": name, "kind": "function",
                "doc": doc}

    spawn = "Execute the program specified by path in a new process.\n\nIf the value is `{}` the flag is set."
    signature = "{}(identifier name, arguments args, stmt* body, expr* decorator_list)"
    objects = [obj("posix", "posix_spawn", spawn.format("true")), obj("posix", "posix_spawnp", spawn.format("True")),
               obj("ast", "AsyncFunctionDef", signature.format("AsyncFunctionDef")),
               obj("ast", "FunctionDef", signature.format("FunctionDef")),
               obj("ast", "stmt", "stmt = " + signature.format("AsyncFunctionDef") + "\n| Return(expr? value)"),
               obj("os", "getcwd", "Return a unicode string representing the current working directory.")]
    monkeypatch.setattr(pydoc_module, "extract_objects", lambda: objects)
    rows, stats = pydoc_module.build_rows(objects, PydocModuleOptions(min_examples_per_class=1, min_chars=10))
    assert stats["duplicates"] == 1  # FunctionDef's masked docstring is AsyncFunctionDef's: one row kept
    test = [e for e in rows if e.id in ("posix.posix_spawn", "ast.AsyncFunctionDef")]
    assert test[1].input == mask_docstring(objects[0]["doc"], "posix", "posix_spawn")
    docs, record = corpus_documents(_ctx(tmp_path, test, CLS), "builtin:pydoc", "text", None, "rag")
    assert [d.id for d in docs] == ["os.getcwd"]
    assert {k: v["documents"] for k, v in record["excluded"].items()} == {
        "source_doc": [["posix.posix_spawn", "posix.posix_spawn"], ["ast.AsyncFunctionDef", "ast.AsyncFunctionDef"]],
        "equals_test_input": [["ast.FunctionDef", "ast.AsyncFunctionDef"]],  # its masked view is the input
        "contains_test_source": [["ast.stmt", "ast.AsyncFunctionDef"]],  # holds the docstring before masking
        "contains_test_input": [["posix.posix_spawnp", "posix.posix_spawn"]]}


# --- task:train: whole training rows, shown as worked examples -------------------------------------------------------

def test_task_train_rows_are_retrieved_whole_and_shown_as_worked_examples(tiny_llama_dir, tmp_path, monkeypatch,
                                                                          one_torch_thread):
    from lmtailor.prompting.formats import build_messages
    import importlib

    rag_module = importlib.import_module("lmtailor.strategies.rag")  # it asks its predictor through answer()
    from lmtailor.strategies.rag import RagConfig, RagStrategy

    # t0's input is 126 tiny-llama tokens, far longer than chunk_tokens=16: chunks would cut it from its answer.
    long_input = " ".join(f"socket{i} connect address port timeout" for i in range(6))
    train = [Example("t0", long_input, "Connect a socket."), Example("t1", "read a file from disk", "Read it."),
             Example("t2", "sort a list of numbers", "Sort it.")]
    test = [Example("x1", "socket0 connect address port", "Connect.")]
    seen = {}
    real = rag_module.answer

    def spy(predictor, request, meter):
        seen.update(task=request.task, rows=request.rows, exemplars=request.exemplars)
        return real(predictor, request, meter)

    monkeypatch.setattr(rag_module, "answer", spy)
    ctx = _ctx(tmp_path, test, GEN, train, str(tiny_llama_dir), Budget(max_input_tokens=160, max_new_tokens=4,
                                                                       eval_batch_size=4))
    cfg = RagConfig(name="rag", corpus="task:train", retriever="bm25", k=2, chunk_tokens=16, chunk_overlap=4,
                    max_context_tokens=400)
    with ctx.meter:
        out = RagStrategy(cfg).run(ctx)
    assert out.details["index"]["chunks"] == 3  # one chunk per training row, whatever its length
    assert out.retrieved_doc_ids[0][0] == "t0"
    (row,) = seen["rows"]
    assert row.input == test[0].input and seen["task"].instruction == GEN.instruction  # no passages block
    worked = row.meta["exemplars"]
    assert worked[-1] == Example("t0", long_input, "Connect a socket.")  # whole, nearest last, with its answer
    messages = build_messages(seen["task"], row.input, seen["exemplars"], row.meta)
    assert [m["role"] for m in messages] == ["user", "assistant"] * len(worked) + ["user"]
    assert messages[-3]["content"].endswith(long_input) and messages[-2]["content"] == "Connect a socket."
    assert not any("[1]" in m["content"] or "Passages" in m["content"] for m in messages)  # no retrieval markup
    assert out.details["context"]["shown_as"] == "worked examples"
    assert out.details["corpus_exclusions"]["source"] == "task:train" and len(out.predictions) == 1


def test_a_rows_own_worked_examples_follow_the_drawn_shots_in_every_layout():
    from lmtailor.prompting.formats import build_messages
    from lmtailor.prompting.seq2seq_format import source_text
    from lmtailor.remote.predict import _bodies

    shot, own = Example("s", "shared input", "S"), Example("t", "own input", "T")
    meta = {"exemplars": [own]}
    messages = build_messages(GEN, "the question", [shot], meta)
    assert [m["input"] for m in messages if m["role"] == "user"] == ["shared input", "own input", "the question"]
    assert [m["content"] for m in messages if m["role"] == "assistant"] == ["S", "T"]
    source = source_text(GEN, "the question", [shot], meta)  # encoder-decoders: Input/Answer pairs
    assert (source.index("Input: shared input\nAnswer: S") < source.index("Input: own input\nAnswer: T")
            < source.index("Input: the question\nAnswer:"))
    # an API model asked for a JSON label sees every exemplar, drawn or retrieved, answer in that JSON
    cls_own = Example("t", "own input", "re")
    rows = [Example("x", "the question", "os", {"exemplars": [cls_own]})]
    (body,), _ = _bodies(CLS, rows, ["the question"], [[]], ("os", "re"), "constrained", Budget())  # per-row shots
    assert [m["content"] for m in body["messages"] if m["role"] == "assistant"] == ['{"label": "re"}']


def test_worked_examples_beyond_the_budget_are_dropped_whole(tiny_llama_dir):
    from lmtailor.models import load_tokenizer
    from lmtailor.retrieval.base import Hit
    from lmtailor.retrieval.chunking import Chunk
    from lmtailor.retrieval.worked_examples import TURN_OVERHEAD_TOKENS, fit_worked_examples

    tok = load_tokenizer(str(tiny_llama_dir))
    rows = {"a": Example("a", "short input", "A"), "b": Example("b", " ".join(["long"] * 80), "B"),
            "c": Example("c", "tiny", "C")}
    hits = [Hit(Chunk(f"{i}#0", i, 0, rows[i].input, 0, 1), 1.0, r) for r, i in enumerate("abc", 1)]
    n = {k: len(tok(e.input, add_special_tokens=False)["input_ids"]) + len(tok(e.target, add_special_tokens=False)[
        "input_ids"]) + TURN_OVERHEAD_TOKENS for k, e in rows.items()}
    worked = fit_worked_examples(hits, rows, tok, max_tokens=n["a"] + n["c"] + 1, max_input_tokens=200)
    # b does not fit whole: it and every lower-ranked row are left out, never cut apart from their answers
    assert [e.id for e in worked.examples] == ["a"] and worked.dropped == 2 and worked.tokens == n["a"]


# --- the honesty checks verify content from the run directory ---------------------------------------------------------

def _splits(same: dict[str, str] | None = None) -> dict:
    same = same or {}
    ids = {"train": ["t1", "t2"], "validation": ["v1"], "test": ["x1", "x2"]}
    digests = {k: {i: f"d-{same.get(i, i)}" for i in v} for k, v in ids.items()}
    return {"source": "d", "seed": 0, **ids, "learning_curve_subsets": {},
            "content": {"normalisation": NORMALISATION, "digests": digests}}


def _record(row_id: str, strategy: str, details: dict, corpus: str | None = None) -> dict:
    config = {"name": strategy, **({"corpus": corpus} if corpus else {})}
    return {"row_id": row_id, "strategy": strategy, "status": "ok", "config": config, "model": "hub/m",
            "details": details}


def _checks(tmp_path: Path, splits: dict, records: list[dict]) -> dict:
    from lmtailor.report.honesty import honesty_checks

    (tmp_path / "splits.json").write_text(json.dumps(splits))
    return {c["check"]: c for c in honesty_checks(tmp_path, records)}


def _exclusions(splits: dict, rows: str = "test") -> dict:
    digests = splits["content"]["digests"]
    pairs = list(digests["test"].items()) + (list(digests["validation"].items()) if rows != "test" else [])
    return {"source": "docs", "normalisation": NORMALISATION, "rows_fingerprint": rows_fingerprint(pairs),
            "checked_rows": len(pairs), "documents": 5, "kept": 4,
            "excluded": {"contains_test_input": {"count": 1, "documents": [["a.md", "x1"]]}}}


def test_honesty_passes_and_names_what_each_corpus_left_out(tmp_path):
    splits = _splits()
    records = [_record("rag", "rag", {"exemplar_ids": ["t1"], "retrieved_doc_ids": {"x1": ["a.md"]},
                                      "corpus_exclusions": _exclusions(splits)}, corpus="docs"),
               _record("cpt", "continued-pretraining", {"corpus_exclusions": _exclusions(splits, "both")},
                       corpus="docs")]
    checks = _checks(tmp_path, splits, records)
    assert checks["test rows never seen in training"]["ok"], checks
    assert "by id and by normalised input" in checks["test rows never seen in training"]["detail"]
    corpora = checks["corpora hold no test row's text"]
    assert corpora["ok"] and "rag: docs, 4 of 5 documents kept after checking against the test rows" in corpora[
        "detail"]
    assert "left out 1 contains test input (e.g. a.md ~ x1)" in corpora["detail"]
    assert "against the test and validation rows" in corpora["detail"]


def test_honesty_fails_on_a_test_input_under_another_id(tmp_path):
    # t2 and v1 hold x1's content under their own ids; exemplar t2 is therefore a test row too
    splits = _splits({"t2": "x1", "v1": "x2"})
    splits["dropped_duplicates"] = {"train": [{"id": "t9", "same_input_as": "x2"}]}
    records = [_record("p", "prompt", {"exemplar_ids": ["t2"]}),
               _record("rag", "rag", {"exemplar_ids": [], "retrieved_doc_ids": {"x1": ["t2", "t1"]},
                                      "corpus_exclusions": _exclusions(splits)}, corpus="task:train")]
    checks = _checks(tmp_path, splits, records)
    leak = checks["test rows never seen in training"]
    assert not leak["ok"] and "splits.json train (a test row's input under another id): t2 = x1" in leak["detail"]
    assert "splits.json validation (a test row's input under another id): v1 = x2" in leak["detail"]
    assert "dropped before training for repeating a held-out input: 1 train row(s) (t9)" in leak["detail"]
    shown = checks["test rows never used as exemplars or retrieved"]
    assert not shown["ok"] and "p showed exemplars with a test row's input: t2 = x1" in shown["detail"]
    assert "rag showed retrieved training rows with a test row's input: t2 = x1" in shown["detail"]


def test_honesty_fails_loudly_when_it_cannot_verify(tmp_path):
    splits = _splits()
    elsewhere = {**_exclusions(splits), "rows_fingerprint": "0123456789abcdef", "checked_rows": 7}
    records = [_record("scratch", "scratch", {}, corpus="docs"),  # no exclusion record
               _record("rag", "rag", {"exemplar_ids": ["zz"], "retrieved_doc_ids": {},
                                      "corpus_exclusions": elsewhere}, corpus="docs")]
    checks = _checks(tmp_path, splits, records)
    corpora = checks["corpora hold no test row's text"]
    assert not corpora["ok"] and "not verifiable from the record" in corpora["detail"]
    assert "scratch (no corpus_exclusions in its details)" in corpora["detail"]
    assert "rag (its corpus was checked against 7 rows that are not this run's test rows)" in corpora["detail"]
    shown = checks["test rows never used as exemplars or retrieved"]
    assert not shown["ok"] and "rag (exemplars zz: not training rows, content unknown)" in shown["detail"]
    # a run directory from before content digests: ids alone are not enough
    old = {k: v for k, v in splits.items() if k != "content"}
    checks = _checks(tmp_path, old, records[:1])
    assert not checks["test rows never seen in training"]["ok"]
    assert "splits.json holds no content digests" in checks["test rows never seen in training"]["detail"]
    assert not checks["corpora hold no test row's text"]["ok"]
