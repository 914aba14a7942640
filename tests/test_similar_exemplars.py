"""exemplars: similar picks each row's nearest training rows, never a test row or a test input's twin."""

from __future__ import annotations

import numpy as np
import pytest

from lmtailor.config import ConfigError, validate_experiment
from lmtailor.core.budget import Budget
from lmtailor.core.context import RunContext
from lmtailor.core.example import DatasetSplits, Example
from lmtailor.errors import UserError
from lmtailor.measure.meter import Meter
from lmtailor.retrieval.similar_exemplars import SimilarExemplars
from lmtailor.runtime import Runtime
from lmtailor.strategies.prompt import PromptConfig, PromptStrategy
from lmtailor.strategies.rag import RagConfig

# Hand-made unit vectors: "x" points along the first axis, "y" along the second, "xy" halfway between.
VECTORS = {"x": [1.0, 0.0], "x again": [1.0, 0.0], "y": [0.0, 1.0], "xy": [0.7071, 0.7071],
           "mostly x": [0.8, 0.6], "mostly y": [0.6, 0.8]}


class FakeEmbedder:
    def encode_queries(self, texts):
        return np.array([VECTORS[t] for t in texts], dtype=np.float32)


POOL = [Example("p0", "y", "b"), Example("p1", "x", "a"), Example("p2", "mostly x", "a"),
        Example("p3", "x again", "a"), Example("p4", "mostly y", "b")]


def test_the_nearest_rows_are_picked_nearest_last_and_ties_keep_the_split_order():
    index = SimilarExemplars(POOL, FakeEmbedder())
    picked = index.nearest(["x", "y"], 3)
    # query x: cosines p1 1.0, p3 1.0 (a tie: p1 comes first in the split), p2 0.8, p4 0.6, p0 0.0
    assert [e.id for e in picked[0]] == ["p2", "p3", "p1"]
    # query y: p0 1.0, p4 0.8, p2 0.6
    assert [e.id for e in picked[1]] == ["p2", "p4", "p0"]
    assert [e.id for e in picked.distinct()] == ["p2", "p3", "p1", "p4", "p0"]


def test_more_shots_than_the_pool_is_a_clear_error():
    with pytest.raises(UserError, match="shots=6 needs 6 training rows"):
        SimilarExemplars(POOL, FakeEmbedder()).nearest(["x"], 6)
    with pytest.raises(UserError, match="no training row to choose from"):
        SimilarExemplars([], FakeEmbedder())


def test_knobs_that_would_be_ignored_are_refused():
    with pytest.raises(ValueError, match="shots is 0"):
        PromptConfig(name="prompt", shots=0, exemplars="similar")
    with pytest.raises(ValueError, match="scoring: generate does not compute"):
        PromptConfig(name="prompt", calibrate=True, scoring="generate")
    with pytest.raises(ValueError, match="scoring: constrained does not compute"):
        RagConfig(name="rag", calibrate=True, scoring="constrained")
    raw = {"name": "x", "data": {"source": "builtin:pydoc-module"}, "models": ["tiny-llama"],
           "strategies": [{"name": "prompt", "shots": 0, "exemplars": "similar"}]}
    with pytest.raises(ConfigError, match=r"strategies\.0.*shots is 0"):
        validate_experiment(raw)


def test_labels_name_the_knobs_and_only_random_draws_use_the_seed():
    def strategy(**kw):
        return PromptStrategy(PromptConfig(name="prompt", **kw))

    assert strategy(shots=4, exemplars="similar", calibrate=True).label() == "4-shot similar, calibrated"
    assert strategy(shots=0, calibrate=True).label() == "zero-shot, calibrated"
    assert strategy(shots=4).uses_seed() and not strategy(shots=4, exemplars="similar").uses_seed()


TASK_ROWS = [("the red river", "red"), ("a green field", "green"), ("red sunset", "red"), ("green moss", "green"),
             ("a red rose", "red"), ("green leaves", "green"), ("red brick wall", "red"), ("green grass", "green")]


def test_prompt_run_with_similar_exemplars_never_shows_a_test_row(tiny_llama_dir, tiny_st_dir, tmp_path,
                                                                  one_torch_thread):
    from lmtailor.core.task_spec import TaskSpec
    from lmtailor.retrieval.embedding import Embedder

    task = TaskSpec("colour", "classification", "Which colour?", ("red", "green"))
    train = [Example(f"t{i}", text, label) for i, (text, label) in enumerate(TASK_ROWS)]
    # x1 repeats training row t2's input: t2 must never be shown (the test row's twin)
    test = [Example("x0", "red roof", "red"), Example("x1", "red sunset", "red"), Example("x2", "green hill", "green")]
    ctx = RunContext(task=task, data=DatasetSplits(train=train, validation=[], test=test),
                     model_ref=str(tiny_llama_dir), budget=Budget(), seed=0, meter=Meter(), out_dir=tmp_path,
                     runtime=Runtime("cpu", "fp32", "test"))
    cfg = PromptConfig(name="prompt", shots=3, exemplars="similar", embedder=tiny_st_dir, calibrate=True)
    with ctx.meter:
        out = PromptStrategy(cfg).run(ctx)
    by_row = out.details["exemplar_ids_by_row"]
    assert list(by_row) == ["x0", "x1", "x2"] and all(len(ids) == 3 for ids in by_row.values())
    used = {i for ids in by_row.values() for i in ids}
    assert "t2" not in used and not used & {"x0", "x1", "x2"}
    assert out.details["exemplar_ids"] == sorted(used)  # what the honesty check reads
    # the picks are the nearest by the embedder's cosine, nearest last
    pool = [e for e in train if e.id != "t2"]
    emb = Embedder(tiny_st_dir)
    sims = emb.encode_queries([e.input for e in test]) @ emb.encode_queries([e.input for e in pool]).T
    for row, s in zip(test, sims):
        nearest = [pool[j].id for j in np.argsort(-s, kind="stable")[:3]][::-1]
        assert by_row[row.id] == nearest
    assert ctx.meter.phases["index"].wall_s > 0  # the pool was embedded as set-up
    assert out.details["inference"]["calibration"]["content_free_prompts"] == 9  # three prompts of their own per row
    assert set(out.predictions) <= {"red", "green"}


def test_calibrating_an_api_model_is_refused_before_any_request(tmp_path):
    from lmtailor.core.task_spec import TaskSpec

    task = TaskSpec("colour", "classification", "Which colour?", ("red", "green"))
    rows = [Example("t0", "red", "red")]
    ctx = RunContext(task=task, data=DatasetSplits(train=rows, validation=[], test=[Example("x", "a", "red")]),
                     model_ref="openai:gpt-x@http://127.0.0.1:9/v1", budget=Budget(), seed=0, meter=Meter(),
                     out_dir=tmp_path, runtime=Runtime("cpu", "fp32", "test"))
    with pytest.raises(UserError, match="calibrate: true needs every label's likelihood"):
        PromptStrategy(PromptConfig(name="prompt", calibrate=True)).run(ctx)


def test_validate_refuses_calibrating_an_api_model():
    raw = {"name": "x", "data": {"source": "builtin:pydoc-module"},
           "models": ["tiny-llama", "openai:gpt-x@http://127.0.0.1:9/v1"],
           "strategies": [{"name": "prompt", "calibrate": True}],
           "pricing": {"api_models": {"gpt-x": {"input_usd_per_1m": 0.15, "output_usd_per_1m": 0.6}}}}
    with pytest.raises(ConfigError, match=r"strategies\.0\.calibrate: true needs every label's likelihood"):
        validate_experiment(raw)
    raw["strategies"][0]["models"] = ["tiny-llama"]
    assert validate_experiment(raw).strategies[0].calibrate


def test_validate_refuses_a_backend_that_cannot_answer_an_api_model():
    """backend: transformers used to be the default and still sent openai: models to the API; now it would open
    the reference as a local model, so an explicit one beside an endpoint is refused before the run."""
    raw = {"name": "x", "data": {"source": "builtin:pydoc-module"},
           "models": ["tiny-llama", "openai:gpt-x@http://127.0.0.1:9/v1"],
           "strategies": [{"name": "prompt", "backend": "transformers"}],
           "pricing": {"api_models": {"gpt-x": {"input_usd_per_1m": 0.15, "output_usd_per_1m": 0.6}}}}
    with pytest.raises(ConfigError, match=r"strategies\.0\.backend: transformers cannot answer openai:gpt-x"):
        validate_experiment(raw)
    raw["strategies"][0].pop("backend")
    assert validate_experiment(raw).strategies[0].backend is None
