"""Set-up costs that do not depend on the cache: reruns on a warm cache are charged what the first run paid, and tool
set-up (a model built into the cache) stays out of every row's time and $."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from lmtailor.augmentation.synthetic import generate_synthetic
from lmtailor.core.budget import Budget
from lmtailor.core.context import RunContext
from lmtailor.core.example import DatasetSplits, Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.measure.meter import Meter
from lmtailor.measure.pricing import Pricing
from lmtailor.measure.setup_cost import SetupCost
from lmtailor.models.cache import build_once
from lmtailor.runtime import Runtime
from lmtailor.strategies.rag import RagConfig, RagStrategy

# $3600 an hour is $1 a second: a second of time shows as a dollar
PRICING = Pricing(cpu_usd_per_hour=3600.0)


def test_charge_cached_adds_to_the_phase_the_time_and_the_set_up_dollars():
    cost = SetupCost("data", wall_s=2.0, cpu_s=3.0, tokens=100, examples=4, flops=1e6, api_requests=2,
                     api_input_tokens=50, api_output_tokens=10, api_usd=0.25)
    with Meter(pricing=PRICING) as meter:
        meter.charge_cached(cost, source="synthetic rows abc")
    record = meter.record()
    data = record["phases"]["data"]
    assert data["wall_s"] == pytest.approx(2.0, abs=0.01) and data["cpu_s"] == pytest.approx(3.0, abs=0.05)
    assert (data["tokens"], data["examples"], record["flops"]["data"]) == (100, 4, 1e6)
    # set-up $: 2 charged seconds at $1/s plus the teacher's $0.25 API bill; this run sent nothing for it
    assert record["usd"]["train"] == pytest.approx(2.25, abs=0.01)
    assert record["api"]["data"]["usd"] == 0.25 and record["api"]["data"]["usd_spent_this_run"] == 0.0
    assert record["wall_s"] == pytest.approx(2.0, abs=0.05)  # the row's time includes the charged seconds
    (item,) = record["charged_from_cache"]["items"]
    assert item["source"] == "synthetic rows abc" and item["wall_s"] == 2.0
    assert record["machine"]["cores"] >= 1 and record["machine"]["other_cores_avg"] is not None


def test_an_entry_without_a_stored_cost_is_recorded_as_unknown():
    with Meter() as meter:
        meter.charge_cached(None, source="old cache entry", phase="index")
    assert meter.record()["charged_from_cache"]["unknown"] == 1


def test_a_model_built_into_the_cache_is_tool_set_up_not_the_rows_load_time(tmp_path):
    def slow_build(folder: Path) -> None:
        time.sleep(0.3)
        (folder / "config.json").write_text("{}")

    with Meter(pricing=PRICING) as meter:
        with meter.phase("load"):
            build_once(tmp_path / "models" / "converted", slow_build)
    record = meter.record()
    # the 0.3 s build is kept out of the load phase, the row's time and its $ ($1 a second would show it)
    assert record["phases"]["load"]["wall_s"] < 0.15 and record["wall_s"] < 0.15
    assert record["usd"]["total"] < 0.15
    (item,) = record["tooling"]["items"]
    assert item["what"] == "built converted into the model cache" and item["wall_s"] >= 0.3
    with Meter(pricing=PRICING) as again:  # a cache hit: nothing built, nothing recorded
        build_once(tmp_path / "models" / "converted", slow_build)
    assert again.record()["tooling"] is None


# --- synthetic rows on a warm cache ------------------------------------------------------------------------------

class _SlowTeacher:
    """A teacher whose every batch takes 0.1 s, so the first run's set-up time is large enough to compare."""

    ref = "slow-teacher"

    def identity(self) -> str:
        return "slow-v1"

    def parameter_count(self) -> int:
        return 1000

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def truncate(self, text: str, max_tokens: int) -> str:
        return " ".join(text.split()[:max_tokens])

    def complete(self, prompts, sampling):
        from lmtailor.augmentation.synthetic_teacher import Completion

        time.sleep(0.1)
        return [Completion(f"Input: a brand new review number {i} of the place\nOutput: pos", prompt_tokens=20,
                           completion_tokens=12) for i, _ in enumerate(prompts)]


def test_synthetic_rows_from_the_cache_are_charged_what_the_teacher_cost(tmp_path):
    from lmtailor.augmentation.synthetic import SyntheticConfig

    task = TaskSpec("sentiment", "classification", "Label the review.", ("pos", "neg"))
    train = [Example(f"tr-{i}", f"a real review of the restaurant number {i}", "pos" if i % 2 else "neg")
             for i in range(4)]
    cfg = SyntheticConfig(teacher="slow-teacher", rows=2, seeds_per_prompt=2, batch_size=1, max_attempts=4,
                          balance_labels=False, seed=3)
    with Meter(pricing=PRICING) as first:
        generate_synthetic(task, train, [], cfg, _SlowTeacher(), first, cache_dir=tmp_path)
    with Meter(pricing=PRICING) as second:
        again = generate_synthetic(task, train, [], cfg, _SlowTeacher(), second, cache_dir=tmp_path)
    assert again.stats["cached"] is True
    one, two = first.record(), second.record()
    # the same set-up seconds, tokens and FLOPs as the first run (stored rounded to 0.1 ms)
    assert one["phases"]["data"]["wall_s"] >= 0.1
    assert two["phases"]["data"]["wall_s"] == pytest.approx(one["phases"]["data"]["wall_s"], abs=0.002)
    assert two["phases"]["data"]["tokens"] == one["phases"]["data"]["tokens"] > 0
    assert two["flops"]["data"] == pytest.approx(one["flops"]["data"])
    assert two["usd"]["train"] == pytest.approx(one["usd"]["train"], abs=0.002)
    (item,) = two["charged_from_cache"]["items"]
    assert item["source"].startswith("synthetic rows ") and one["charged_from_cache"] is None
    stored = json.loads((next(tmp_path.iterdir()) / "manifest.json").read_text())["setup_cost"]
    assert stored["wall_s"] == pytest.approx(one["phases"]["data"]["wall_s"], abs=0.001)


# --- a dense index on a warm cache, through the rag rung ----------------------------------------------------------

DOCS = {"json.loads": "json.loads parses a JSON document into a Python object.",
        "math.sqrt": "math.sqrt returns the square root of x and raises ValueError for negative x.",
        "time.sleep": "time.sleep suspends execution of the calling thread for the given seconds."}


def _rag_ctx(tmp_path: Path, model: str) -> RunContext:
    train = [Example(f"t{i}", f"question {i}", f"answer {i}") for i in range(4)]
    test = [Example("q1", "What does json.loads return?", "a Python object")]
    return RunContext(task=TaskSpec("qa", "qa", "Answer."), data=DatasetSplits(train=train, validation=[], test=test),
                      model_ref=model, budget=Budget(max_input_tokens=32, max_new_tokens=4, eval_batch_size=4),
                      seed=0, meter=Meter(pricing=PRICING), out_dir=tmp_path,
                      runtime=Runtime("cpu", "fp32", "test"), base_dir=tmp_path)


def test_a_reused_dense_index_charges_its_first_embedding_to_every_row(tiny_llama_dir, tiny_st_dir, tmp_path,
                                                                       monkeypatch, one_torch_thread):
    monkeypatch.setenv("LMTAILOR_CACHE", str(tmp_path / "cache"))
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in DOCS.items()))
    cfg = RagConfig(name="rag", corpus="docs.jsonl", id_field="id", retriever="dense", embedder=tiny_st_dir, k=2,
                    chunk_tokens=16, chunk_overlap=2)
    runs = []
    for _ in range(2):
        ctx = _rag_ctx(tmp_path, str(tiny_llama_dir))
        with ctx.meter:
            out = RagStrategy(cfg).run(ctx)
        runs.append((out.details["index"]["build"], ctx.meter.record()))
    (built, first), (reused, second) = runs
    assert not built["reused_index"] and reused["reused_index"] and reused["embedded"] == 0
    assert first["charged_from_cache"] is None
    # the second row is charged the first one's embedding seconds (stored rounded to 0.1 ms in the manifest)
    (item,) = second["charged_from_cache"]["items"]
    assert item["phase"] == "index" and item["wall_s"] == pytest.approx(built["embed_s"], abs=0.001)
    assert built["embed_s"] > 0 and second["phases"]["index"]["wall_s"] >= item["wall_s"]


def test_a_hub_download_is_tool_set_up(monkeypatch):
    import huggingface_hub

    from lmtailor.models.loading import download_hub_model

    calls = []
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: None)
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, allow_patterns: (calls.append(allow_patterns), time.sleep(0.2)))
    with Meter(pricing=PRICING) as meter:
        with meter.phase("load"):
            download_hub_model("org/model")
    record = meter.record()
    assert record["phases"]["load"]["wall_s"] < 0.1 and record["usd"]["total"] < 0.1
    assert record["tooling"]["items"][0]["what"] == "downloaded org/model from the Hugging Face Hub"
    assert "*.safetensors" in calls[0] and "*.py" not in calls[0]  # no code without trust_remote_code


def test_a_gguf_conversion_is_kept_out_of_the_first_rows_load_and_dollars(tmp_path, monkeypatch):
    from lmtailor.models.gguf_cache import ensure_converted

    monkeypatch.setenv("LMTAILOR_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "model.gguf"
    source.write_bytes(b"GGUF")

    def convert(gguf: Path, out: Path) -> None:  # stands in for transformers' dequantization
        time.sleep(0.3)
        (out / "config.json").write_text("{}")

    rows = []
    for _ in range(2):  # the first row converts, the second finds the converted copy
        with Meter(pricing=PRICING) as meter:
            with meter.phase("load"):
                ensure_converted("m", "ab" * 32, lambda scratch: source, convert=convert)
        rows.append(meter.record())
    first, second = rows
    assert first["tooling"]["items"][0]["wall_s"] >= 0.3 and second["tooling"] is None
    # $1 a second: the 0.3 s conversion would show as $0.30 in the first row's total
    assert first["usd"]["total"] < 0.15 and first["phases"]["load"]["wall_s"] < 0.15
    assert abs(first["phases"]["load"]["wall_s"] - second["phases"]["load"]["wall_s"]) < 0.15
