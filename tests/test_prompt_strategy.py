"""Exemplars come from the training split only, never from the test rows, and the draw is fixed by the seed."""

from __future__ import annotations

import pytest

from lmtailor.core.budget import Budget
from lmtailor.core.context import RunContext
from lmtailor.core.example import DatasetSplits, Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.errors import UserError
from lmtailor.measure.meter import Meter
from lmtailor.runtime import Runtime
from lmtailor.strategies.prompt import PromptConfig, PromptStrategy, draw_exemplars

TRAIN = [Example(f"t{i}", f"text {i}", ["a", "b", "c"][i % 3]) for i in range(30)]


def test_draw_is_fixed_by_the_seed_and_varies_with_it():
    first = draw_exemplars(TRAIN, 4, seed=1, distinct_targets=False)
    assert first == draw_exemplars(TRAIN, 4, seed=1, distinct_targets=False)
    assert any(draw_exemplars(TRAIN, 4, seed=s, distinct_targets=False) != first for s in range(2, 6))


def test_distinct_targets_cover_every_label_before_repeating():
    for seed in range(5):
        picked = draw_exemplars(TRAIN, 3, seed, distinct_targets=True)
        assert sorted(e.target for e in picked) == ["a", "b", "c"]
        assert len({e.target for e in draw_exemplars(TRAIN, 5, seed, distinct_targets=True)}) == 3


def test_rows_whose_input_is_a_test_input_are_never_exemplars():
    excluded = frozenset(e.input for e in TRAIN[:27])
    picked = draw_exemplars(TRAIN, 3, seed=0, distinct_targets=True, exclude_inputs=excluded)
    assert {e.id for e in picked} == {"t27", "t28", "t29"}


def test_more_shots_than_training_rows_is_a_clear_error():
    with pytest.raises(UserError, match="shots=40 needs 40 training rows"):
        draw_exemplars(TRAIN, 40, seed=0, distinct_targets=False)


def test_prompt_run_draws_exemplars_from_train_only(tiny_llama_dir, tmp_path):
    task = TaskSpec("abc", "classification", "Which letter?", ("a", "b", "c"))
    test = [Example(f"x{i}", f"text {i}", ["a", "b", "c"][i % 3]) for i in range(3)]  # same inputs as t0..t2
    data = DatasetSplits(train=TRAIN, validation=[], test=test)
    ctx = RunContext(task=task, data=data, model_ref=str(tiny_llama_dir), budget=Budget(), seed=0,
                     meter=Meter(), out_dir=tmp_path, runtime=Runtime("cpu", "fp32", "test"))
    with ctx.meter:
        out = PromptStrategy(PromptConfig(name="prompt", shots=3)).run(ctx)
    ids = out.details["exemplar_ids"]
    assert len(ids) == 3 and set(ids) <= {e.id for e in TRAIN} - {"t0", "t1", "t2"}
    assert len(out.predictions) == 3 and set(out.predictions) <= {"a", "b", "c"}
    assert out.details["scoring"] == "likelihood"


@pytest.mark.parametrize("ref", ["tiny-t5", "tiny-bart"])
def test_prompt_runs_encoder_decoder_models_in_their_own_format(ref, tmp_path):
    task = TaskSpec("abc", "classification", "Which letter?", ("a", "b", "c"))
    test = [Example(f"x{i}", f"text {i}", ["a", "b", "c"][i % 3]) for i in range(3)]
    ctx = RunContext(task=task, data=DatasetSplits(train=TRAIN, validation=[], test=test), model_ref=ref,
                     budget=Budget(), seed=0, meter=Meter(), out_dir=tmp_path, runtime=Runtime("cpu", "fp32", "t"))
    with ctx.meter:
        out = PromptStrategy(PromptConfig(name="prompt", shots=2)).run(ctx)
    assert len(out.predictions) == 3 and set(out.predictions) <= {"a", "b", "c"}
    assert ctx.meter.phases["inference"].tokens > 0


def test_prompting_an_encoder_is_a_clear_error(tmp_path):
    task = TaskSpec("abc", "classification", "Which letter?", ("a", "b", "c"))
    ctx = RunContext(task=task, data=DatasetSplits(train=TRAIN, validation=[], test=TRAIN[:2]), model_ref="tiny-bert",
                     budget=Budget(), seed=0, meter=Meter(), out_dir=tmp_path, runtime=Runtime("cpu", "fp32", "t"))
    with pytest.raises(UserError, match="no language-model head"):
        PromptStrategy(PromptConfig(name="prompt", shots=0)).run(ctx)
