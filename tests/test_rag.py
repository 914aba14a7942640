"""The rag strategy: passages numbered within the budget, no test row in the corpus, retrieval scored, index reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtailor.core.budget import Budget
from lmtailor.core.context import RunContext
from lmtailor.core.example import DatasetSplits, Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.errors import UserError
from lmtailor.measure.meter import Meter
from lmtailor.retrieval.base import Hit
from lmtailor.retrieval.chunking import Chunk
from lmtailor.retrieval.context import assemble_context, with_passages
from lmtailor.runtime import Runtime
from lmtailor.strategies import STRATEGIES
from lmtailor.strategies.rag import RagConfig, RagStrategy, task_documents
from lmtailor.tasks.evaluator import evaluate

DOCS = {
    "json.loads": "json.loads parses a JSON document from a string and returns a Python object.",
    "os.getcwd": "os.getcwd returns the current working directory as a string.",
    "math.sqrt": "math.sqrt returns the square root of a number; it raises ValueError for negative input.",
    "time.sleep": "time.sleep suspends the calling thread for the given number of seconds.",
}
QA = TaskSpec("docs-qa", "qa", "Answer from the documentation.")


def _hit(doc_id: str, text: str, rank: int) -> Hit:
    return Hit(Chunk(f"{doc_id}#0", doc_id, 0, text, 0, len(text)), 1.0 / rank, rank)


@pytest.fixture(scope="module")
def llama_tokenizer(tiny_llama_dir):
    from lmtailor.models import load_tokenizer

    return load_tokenizer(str(tiny_llama_dir))


def _tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_passages_are_numbered_best_first_and_whole_when_they_fit(llama_tokenizer):
    hits = [_hit("b", "second best passage", 1), _hit("a", "third", 2)]
    ctx = assemble_context(hits, llama_tokenizer, max_tokens=200)
    assert ctx.text == "[1] b: second best passage\n[2] a: third"
    assert ctx.doc_ids == ["b", "a"] and (ctx.cut, ctx.dropped) == (0, 0)
    prompt = with_passages(ctx, "What is best?")
    assert prompt.startswith("Passages:\n[1] b:") and prompt.endswith("Question: What is best?")


def test_passages_beyond_the_budget_are_cut_then_dropped_and_counted(llama_tokenizer):
    long = " ".join(f"word{i}" for i in range(200))
    hits = [_hit("a", "short first passage", 1), _hit("b", long, 2), _hit("c", long, 3), _hit("d", "tiny", 4)]
    ctx = assemble_context(hits, llama_tokenizer, max_tokens=80)
    assert _tokens(llama_tokenizer, ctx.text) <= 80  # the budget holds for the text the model sees
    assert ctx.doc_ids == ["a", "b"]  # b cut to fit; c and d left out (no room after the cut)
    assert (ctx.cut, ctx.dropped) == (1, 2)
    assert ctx.text.splitlines()[1].endswith("…")
    tiny = assemble_context(hits, llama_tokenizer, max_tokens=10)  # too little room for a useful cut
    assert (tiny.cut, tiny.dropped, tiny.doc_ids, tiny.text) == (0, 4, [], "")


def test_task_corpus_holds_training_rows_only_and_no_test_input():
    train = [Example("t1", "alpha", "A"), Example("t2", "beta", "B"), Example("t3", "shared text", "C")]
    test = [Example("x1", "shared text", "C")]
    docs = task_documents(train, test)
    assert [d.id for d in docs] == ["t1", "t2"]  # t3 has a test row's input: it would answer that row
    assert docs[0].text == "alpha\nAnswer: A"
    with pytest.raises(RuntimeError, match="share ids"):
        task_documents([Example("x1", "other", "A")], test)


def _corpus(tmp_path: Path) -> Path:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in DOCS.items()))
    return path


def _ctx(tmp_path: Path, model: str, test: list[Example], task: TaskSpec = QA) -> RunContext:
    train = [Example(f"t{i}", f"question {i}", f"answer {i}") for i in range(4)]
    return RunContext(task=task, data=DatasetSplits(train=train, validation=[], test=test), model_ref=model,
                      budget=Budget(max_input_tokens=32, max_new_tokens=4, eval_batch_size=4), seed=0, meter=Meter(),
                      out_dir=tmp_path, runtime=Runtime("cpu", "fp32", "test"), base_dir=tmp_path)


QUESTIONS = [
    Example("q1", "What does json.loads return?", "a Python object", {"gold_doc": "json.loads"}),
    Example("q2", "What does math.sqrt raise?", "ValueError", {"gold_doc": "math.sqrt"}),
    Example("q3", "What does time.sleep do?", "suspends the calling thread", {"gold_doc": "time.sleep"}),
]


def test_rag_bm25_retrieves_the_gold_documents_and_is_scored(tiny_llama_dir, tmp_path, one_torch_thread):
    _corpus(tmp_path)
    ctx = _ctx(tmp_path, str(tiny_llama_dir), QUESTIONS)
    cfg = RagConfig(name="rag", corpus="docs.jsonl", id_field="id", retriever="bm25", k=2, chunk_tokens=64,
                    chunk_overlap=8, max_context_tokens=96)
    with ctx.meter:
        out = RagStrategy(cfg).run(ctx)
    assert len(out.predictions) == 3
    assert [ids[0] for ids in out.retrieved_doc_ids] == ["json.loads", "math.sqrt", "time.sleep"]
    assert out.details["retrieved_doc_ids"]["q2"][0] == "math.sqrt"
    assert out.details["index"]["documents"] == 4 and out.details["context"]["passages_dropped"] == 0
    record = ctx.meter.record()
    assert record["phases"]["index"]["wall_s"] > 0 and record["phases"]["inference"]["examples"] == 3
    scored = evaluate(QA, ctx.data.test, out.predictions, out.retrieved_doc_ids, out.retrieval_k)
    metrics = {m["name"]: m["value"] for m in scored["metrics"]}
    assert metrics["recall@2"] == 1.0 and metrics["mrr"] == 1.0 and "f1" in metrics
    assert scored["primary_metric"] == "f1"


def test_retrieval_metrics_by_hand():
    # q1: gold at rank 2 -> RR 1/2; q2: gold not retrieved -> 0; q3 has no gold document -> not scored.
    rows = [Example("q1", "x", "y", {"gold_doc": "a"}), Example("q2", "x", "y", {"gold_doc": "b"}),
            Example("q3", "x", "y")]
    scored = evaluate(QA, rows, ["y", "y", "y"], [["c", "a"], ["c", "d"], ["a"]], k=2)
    metrics = {m["name"]: m["value"] for m in scored["metrics"]}
    assert metrics["recall@2"] == pytest.approx(0.5) and metrics["mrr"] == pytest.approx(0.25)
    assert scored["details"]["retrieval"]["rows_without_gold"] == 1
    none = evaluate(QA, rows[2:], ["y"], [["a"]], k=1)
    assert [m["name"] for m in none["metrics"]] == ["f1", "exact_match"]
    assert none["details"]["retrieval"]["scored"] is False


def test_documents_a_test_row_was_made_from_are_left_out(tiny_llama_dir, tmp_path, one_torch_thread):
    _corpus(tmp_path)
    # A summary task made from os.getcwd's docstring: retrieving that docstring would copy the answer.
    row = Example("os.getcwd", "os.getcwd() -> str", "returns the current working directory",
                  {"source_doc": "os.getcwd"})
    ctx = _ctx(tmp_path, str(tiny_llama_dir), [row], TaskSpec("sum", "generation", "Summarize."))
    cfg = RagConfig(name="rag", corpus="docs.jsonl", id_field="id", retriever="bm25", k=4, chunk_tokens=64,
                    chunk_overlap=8)
    with ctx.meter:
        out = RagStrategy(cfg).run(ctx)
    assert out.details["index"]["documents"] == 3
    assert "os.getcwd" not in out.retrieved_doc_ids[0]


def test_dense_index_is_reused_on_the_second_run(tiny_llama_dir, tiny_st_dir, tmp_path, monkeypatch,
                                                 one_torch_thread):
    monkeypatch.setenv("LMTAILOR_CACHE", str(tmp_path / "cache"))
    _corpus(tmp_path)
    cfg = RagConfig(name="rag", corpus="docs.jsonl", id_field="id", retriever="hybrid", embedder=tiny_st_dir,
                    k=2, chunk_tokens=32, chunk_overlap=4)
    builds = []
    for _ in range(2):
        ctx = _ctx(tmp_path, str(tiny_llama_dir), QUESTIONS[:1])
        with ctx.meter:
            out = RagStrategy(cfg).run(ctx)
        builds.append(out.details["index"]["build"]["dense"])
    assert not builds[0]["reused_index"] and builds[0]["embedded"] == builds[0]["chunks"] > 0
    assert builds[1]["reused_index"] and builds[1]["embedded"] == 0 and builds[1]["embed_s"] == 0.0


def test_rag_prompts_an_encoder_decoder_model(tmp_path, one_torch_thread):
    _corpus(tmp_path)
    ctx = _ctx(tmp_path, "tiny-t5", QUESTIONS[:2])
    cfg = RagConfig(name="rag", corpus="docs.jsonl", id_field="id", retriever="bm25", k=1, chunk_tokens=64,
                    chunk_overlap=8)
    with ctx.meter:
        out = RagStrategy(cfg).run(ctx)
    assert len(out.predictions) == 2 and out.details["scoring"] == "generate"


def test_bad_configurations_are_clear_errors(tiny_st_dir, tmp_path):
    with pytest.raises(ValueError, match="chunk_overlap"):
        RagConfig(name="rag", chunk_tokens=16, chunk_overlap=16)
    _corpus(tmp_path)
    too_long = RagConfig(name="rag", corpus="docs.jsonl", id_field="id", embedder=tiny_st_dir, chunk_tokens=200)
    with pytest.raises(UserError, match="chunk_tokens=200 does not fit"):
        RagStrategy(too_long).run(_ctx(tmp_path, "tiny-llama", QUESTIONS[:1]))
    with pytest.raises(UserError, match="task:train"):
        RagStrategy(RagConfig(name="rag", corpus="task:test")).run(_ctx(tmp_path, "tiny-llama", QUESTIONS[:1]))
    assert STRATEGIES.get("rag") is RagStrategy


def test_lmtailor_run_scores_retrieval_and_compares_architectures(tmp_path, one_torch_thread, capsys):
    from lmtailor.cli import main

    _corpus(tmp_path)
    questions = {"json.loads": "What does json.loads parse?", "os.getcwd": "What does os.getcwd return?",
                 "math.sqrt": "What does math.sqrt raise for negative input?",
                 "time.sleep": "What does time.sleep suspend?"}
    rows = [{"q": q + (" " + "again " * i), "a": "x", "doc": doc} for i in range(5) for doc, q in questions.items()]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "exp.yaml").write_text(
        "name: tiny rag\n"
        "task: {type: qa, instruction: Answer.}\n"
        "data: {source: qa.jsonl, input_field: q, target_field: a, gold_doc_field: doc, max_test: 6}\n"
        "models: [tiny-llama, tiny-t5]\n"
        "strategies:\n"
        "  - {name: prompt, shots: 0}\n"
        "  - {name: rag, corpus: docs.jsonl, id_field: id, retriever: bm25, k: 2, chunk_tokens: 64, chunk_overlap: 8}\n"
        "budget: {max_input_tokens: 32, max_new_tokens: 3}\n")
    assert main(["run", str(tmp_path / "exp.yaml"), "--out", str(tmp_path / "runs")]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    records = [json.loads(p.read_text()) for p in (run_dir / "results").glob("*.json")]
    assert {r["status"] for r in records} == {"ok"} and len(records) == 5  # 2 models x 2, and the baseline
    rag = [r for r in records if r["strategy"] == "rag"]
    assert {r["family"] for r in rag} == {"decoder-only", "encoder-decoder"}
    for r in rag:  # BM25 finds each question's document by its name: the hand-checkable answer is 1.0
        metrics = {m["name"]: m["value"] for m in r["metrics"]}
        assert metrics["recall@2"] == 1.0 and metrics["mrr"] == 1.0
    table = (run_dir / "results.md").read_text()
    assert "| retrieval |" in table and "recall@2 1.000 · MRR 1.000" in table
    assert "Which architecture did best" in table and "encoder-decoder" in table


def test_rag_with_similar_exemplars_and_calibration(tiny_llama_dir, tiny_st_dir, tmp_path, one_torch_thread):
    _corpus(tmp_path)
    task = TaskSpec("which-module", "classification", "Which module?", ("json", "math", "time"))
    test = [Example("q1", "parse a JSON string", "json"), Example("q2", "square root", "math")]
    ctx = _ctx(tmp_path, str(tiny_llama_dir), test, task)
    ctx.data.train = [Example("t0", "load JSON text", "json"), Example("t1", "sqrt of two", "math"),
                      Example("t2", "sleep a while", "time"), Example("t3", "square root", "math")]  # t3: q2's twin
    cfg = RagConfig(name="rag", corpus="docs.jsonl", id_field="id", retriever="bm25", k=1, chunk_tokens=32,
                    chunk_overlap=4, embedder=tiny_st_dir, shots=2, exemplars="similar", calibrate=True)
    strategy = RagStrategy(cfg)
    assert strategy.label() == "RAG bm25 k=1, 2-shot similar, calibrated" and not strategy.uses_seed()
    with ctx.meter:
        out = strategy.run(ctx)
    by_row = out.details["exemplar_ids_by_row"]
    assert set(by_row) == {"q1", "q2"} and all(len(v) == 2 and "t3" not in v for v in by_row.values())
    calibration = out.details["inference"]["calibration"]
    # three content-free prompts per distinct exemplar list (two rows: two lists, unless both chose the same)
    assert calibration["content_free_prompts"] == 3 * len({tuple(v) for v in by_row.values()})
    assert set(out.predictions) <= {"json", "math", "time"}
