"""`lmtailor run` with a "large general model" behind `lmtailor serve`, started as a real process on loopback.

The prompted and RAG rows ask the server through the openai:MODEL@URL backend; the fine-tuned row trains locally.
Checks the API rows' bill (the responses' usage × pricing.api_models), the report's cost row, and that a second
identical run is answered from the response cache without one request reaching the server.
"""

from __future__ import annotations

import json
import random
import textwrap

import pytest

from lmtailor.cli import main
from lmtailor.serve.process import ServerProcess

LABELS = ["red", "green", "blue"]


def _chat_requests(server: ServerProcess) -> int:
    """Chat completions the server has answered so far (its log has one line per request)."""
    return sum("/v1/chat/completions" in line for line in server.log().splitlines())


@pytest.fixture(scope="module")
def served(tiny_llama_dir):
    with ServerProcess(tiny_llama_dir, ["--model-name", "big", "--precision", "fp32"]) as server:
        yield server


@pytest.fixture()
def experiment(tmp_path, served, tiny_st_dir):
    rng = random.Random(0)
    words = "the a of one two river stone cloud quiet bright small old".split()
    with (tmp_path / "rows.jsonl").open("w") as f:
        for i in range(60):
            label = LABELS[i % 3]
            f.write(json.dumps({"text": " ".join(rng.choices(words, k=5)) + f" {label}", "colour": label}) + "\n")
    api = f"openai:big@{served.base_url}"
    exp = tmp_path / "exp.yaml"
    exp.write_text(textwrap.dedent(f"""
        name: api colours
        task: {{type: classification, instruction: "Which colour word does the text contain?"}}
        data: {{source: rows.jsonl, input_field: text, target_field: colour, max_test: 9}}
        models: ["{api}"]
        strategies:
          - {{name: prompt, shots: 0}}
          - {{name: prompt, shots: 2}}
          - {{name: rag, corpus: "task:train", retriever: bm25, k: 2, embedder: "{tiny_st_dir}",
              chunk_tokens: 32, chunk_overlap: 8}}
          - {{name: finetune, method: lora, max_steps: 2, batch_size: 4, models: [tiny-llama]}}
        budget: {{max_input_tokens: 48, max_seq_len: 96, max_new_tokens: 8}}
        pricing:
          api_models: {{big: {{input_usd_per_1m: 0.15, output_usd_per_1m: 0.60}}}}
        api: {{key_env: LMTAILOR_TEST_NO_KEY, max_concurrency: 4, max_retries: 1}}
        forgetting: false
    """))
    return exp


def _records(run_dir):
    return {r["label"]: r for r in (json.loads(p.read_text()) for p in (run_dir / "results").glob("*.json"))}


def test_api_rows_are_billed_from_usage_and_a_rerun_sends_nothing(experiment, served, tmp_path):
    assert main(["run", str(experiment), "--out", str(tmp_path / "first")]) == 0
    (run_dir,) = (tmp_path / "first").iterdir()
    records = _records(run_dir)
    assert {r["status"] for r in records.values()} == {"ok"}, {k: r.get("error") for k, r in records.items()}
    sent = _chat_requests(served)
    # every row answers the 9 test rows and the validation rows (scored too, to choose on): one request each
    answered = 9 + len(json.loads((run_dir / "splits.json").read_text())["validation"])
    assert answered > 9
    for label in ("zero-shot", "2-shot", "RAG bm25 k=2"):
        r = records[label]
        assert r["family"] == "api"
        api = r["meter"]["api"]["inference"]
        assert api["requests"] == api["sent"] == answered and api["input_tokens"] > 0 and api["output_tokens"] > 0
        assert api["usd"] == pytest.approx((api["input_tokens"] * 0.15 + api["output_tokens"] * 0.60) / 1e6)
        # $ per 1k stays per request: the bill over every answered row
        assert r["meter"]["usd"]["inference_per_1k"] == pytest.approx(api["usd"] / answered * 1000)
        inference = r["details"]["inference"]
        assert inference["mode"] == "constrained" and inference["unparseable"] == 0  # the server kept to the enum
    assert sent >= 3 * answered
    local = records[next(k for k in records if k.startswith("LoRA"))]
    assert local["meter"]["api"] is None and local["family"] == "decoder-only"
    report = (run_dir / "report.md").read_text()
    assert "zero-shot" in report and "openai:big@" in report

    assert main(["run", str(experiment), "--out", str(tmp_path / "second")]) == 0
    (again_dir,) = (tmp_path / "second").iterdir()
    again = _records(again_dir)
    assert _chat_requests(served) == sent  # not one request reached the server
    for label in ("zero-shot", "2-shot", "RAG bm25 k=2"):
        first, second = records[label]["meter"]["api"]["inference"], again[label]["meter"]["api"]["inference"]
        assert second["sent"] == 0 and second["cache_hits"] == answered and second["usd_spent_this_run"] == 0
        assert second["usd"] == pytest.approx(first["usd"])  # the configuration costs the same; this run paid $0
        assert again[label]["metrics"] == records[label]["metrics"]


def test_an_endpoint_writes_synthetic_rows_and_its_bill_is_a_set_up_cost(experiment, served, tmp_path):
    api = f"openai:big@{served.base_url}"
    overrides = ["strategies=[{name: finetune, method: lora, max_steps: 1, batch_size: 4, models: [tiny-llama], "
                 f"synthetic: {{teacher: '{api}', rows: 4, max_attempts: 6, max_new_tokens: 24}}}}]"]
    args = ["run", str(experiment), "--out", str(tmp_path / "runs")]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    records = _records(run_dir)
    assert records.pop("baseline")["strategy"] == "baseline"  # the trivial baseline every run adds
    (control,) = [k for k in records if "control for" in k]  # the equal-steps control (strategies/controls.py)
    assert records.pop(control)["meter"]["api"] is None  # trained on the original rows: no teacher, no bill
    (record,) = records.values()
    assert record["status"] == "ok", record.get("error")
    synthetic = record["details"]["synthetic"]
    assert synthetic["teacher"] == api
    data = record["meter"]["api"]["data"]  # the teacher's requests: paid once, before training
    assert 1 <= data["requests"] == data["sent"] <= 6 and data["input_tokens"] > 0
    assert record["meter"]["api"].get("inference") is None
    assert record["meter"]["usd"]["train"] >= data["usd"] > 0
