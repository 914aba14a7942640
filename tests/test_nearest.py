"""The nearest-neighbour floor: a vote of the k nearest training rows (labels) or the nearest row's answer (text),
never a test row or a test input's twin, scored like every row and shown among the floors of the report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmtailor.config import validate_experiment
from lmtailor.core.budget import Budget
from lmtailor.core.context import RunContext
from lmtailor.core.example import DatasetSplits, Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.errors import UserError
from lmtailor.measure.meter import Meter
from lmtailor.runtime import Runtime
from lmtailor.strategies.nearest import NearestConfig, NearestStrategy, vote

# Hand-made unit vectors: "x" along the first axis, "y" along the second.
VECTORS = {"x": [1.0, 0.0], "x again": [1.0, 0.0], "y": [0.0, 1.0], "mostly x": [0.8, 0.6],
           "mostly y": [0.6, 0.8], "q-x": [0.98, 0.199], "q-y": [0.199, 0.98], "q-mid": [0.74, 0.67]}


class FakeEmbedder:
    def __init__(self, ref):
        self.ref = ref
        self.model = torch.nn.Linear(2, 3)  # 9 parameters: what the row serves beside nothing else

    def encode_queries(self, texts):
        return np.array([VECTORS[t] for t in texts], dtype=np.float32)


TRAIN = [Example("p0", "y", "b"), Example("p1", "x", "a"), Example("p2", "mostly x", "a"),
         Example("p3", "x again", "a"), Example("p4", "mostly y", "b")]


def _ctx(task_type, test, tmp_path, train=TRAIN):
    labels = ("a", "b") if task_type == "classification" else None
    return RunContext(task=TaskSpec("t", task_type, "?", labels), model_ref="fake-embedder", budget=Budget(), seed=0,
                      data=DatasetSplits(train=train, validation=[], test=test), meter=Meter(), out_dir=tmp_path,
                      runtime=Runtime("cpu", "fp32", "test"))


def test_the_vote_counts_neighbours_and_a_tie_goes_to_the_nearest():
    rows = lambda *targets: [Example(str(i), "", t) for i, t in enumerate(targets)]  # noqa: E731
    assert vote(rows("a", "b", "b")) == "b"
    assert vote(rows("b", "a", "a", "b")) == "b"  # 2-2: b's nearest row (first) is closer


def test_labels_are_a_vote_of_the_k_nearest_and_text_copies_the_nearest(tmp_path, monkeypatch):
    monkeypatch.setattr("lmtailor.retrieval.embedding.Embedder", FakeEmbedder)
    test = [Example("t0", "q-x", "a"), Example("t1", "q-y", "b"), Example("t2", "q-mid", "a")]
    ctx = _ctx("classification", test, tmp_path)
    with ctx.meter:
        out = NearestStrategy(NearestConfig(name="nearest", k=3)).run(ctx)
    # q-x: cosines p1 .98, p3 .98, p2 .903, p4 .707, p0 .199: the 3 nearest p1, p3, p2 all say a
    # q-y: p0 .98, p4 .903, p2 .707: b, b, a -> b
    # q-mid: p2 .994, p4 .980, p1 .74: a, b, a -> a
    assert out.predictions == ["a", "b", "a"]
    assert out.details["exemplar_ids_by_row"] == {"t0": ["p1", "p3", "p2"], "t1": ["p0", "p4", "p2"],
                                                  "t2": ["p2", "p4", "p1"]}
    assert out.details["exemplar_ids"] == ["p0", "p1", "p2", "p3", "p4"]
    assert ctx.meter.phases["index"].wall_s > 0 and ctx.meter.phases["inference"].examples == 3
    assert ctx.meter.total_params == 9 and ctx.meter.trainable_params == 0
    # a generation task answers with the nearest row's target
    gen = _ctx("generation", [Example("t0", "q-y", "b")], tmp_path)
    with gen.meter:
        assert NearestStrategy(NearestConfig(name="nearest")).run(gen).predictions == ["b"]


def test_a_test_inputs_twin_is_never_a_neighbour_and_bad_k_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("lmtailor.retrieval.embedding.Embedder", FakeEmbedder)
    # the test row's input is p1's: p1 leaves the pool, so its nearest are p3 (the same vector) and p2
    ctx = _ctx("classification", [Example("t0", "x", "a")], tmp_path)
    with ctx.meter:
        out = NearestStrategy(NearestConfig(name="nearest", k=2)).run(ctx)
    assert out.details["exemplar_ids_by_row"] == {"t0": ["p3", "p2"]}
    with pytest.raises(UserError, match="k=3 is for label tasks"):
        NearestStrategy(NearestConfig(name="nearest", k=3)).run(_ctx("generation", [Example("t", "y", "b")],
                                                                     tmp_path))
    # the test input "y" is p0's: 4 usable training rows
    with pytest.raises(UserError, match="k=9 needs 9 training rows, but 4 are usable"):
        NearestStrategy(NearestConfig(name="nearest", k=9)).run(_ctx("classification", [Example("t", "y", "b")],
                                                                     tmp_path))


def test_nearest_runs_end_to_end_with_a_real_embedder_and_is_a_floor_in_the_report(tiny_st_dir, tmp_path):
    """A run with a real (tiny) sentence-transformers embedder: the row is planned once (no seed), scored, named
    in the honesty checks, and shown among the floors of the cost-benefit table."""
    import json

    from lmtailor.report.markdown_report import cost_benefit_rows
    from lmtailor.report.results_json import build_results, load_records
    from lmtailor.runner import plan_rows, run_experiment

    rows = [{"input": f"{c} item {i}", "target": c} for i in range(12) for c in ("red", "green")]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {"name": "nn", "data": {"source": str(data), "seed": 0, "validation_fraction": 0.25, "test_fraction": 0.25},
           "task": {"type": "classification", "labels": ["red", "green"], "instruction": "Which colour?"}, "models": [tiny_st_dir],
           "seeds": [0, 1], "strategies": [{"name": "nearest", "k": 3}], "forgetting": False}
    exp = validate_experiment(raw)
    assert [r.row_id.split("__")[0] for r in plan_rows(exp)] == ["3-nearest", "baseline"]
    run_dir = run_experiment(exp, tmp_path, tmp_path / "runs")
    records = load_records(run_dir)
    (nn,) = [r for r in records if r["strategy"] == "nearest"]
    assert nn["status"] == "ok" and nn["validation"] is not None
    splits = json.loads((run_dir / "splits.json").read_text())
    assert not set(nn["details"]["exemplar_ids"]) & set(splits["test"])
    summary = build_results(run_dir)
    rungs = [r.cells[0] for r in cost_benefit_rows(summary, records)]
    assert rungs[:2] == ["baseline", "nearest"]
    honesty = (run_dir / "results.md").read_text()
    assert "3-nearest" in honesty
