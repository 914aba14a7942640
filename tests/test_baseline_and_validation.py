"""The trivial baseline row, its place in every plan, and every row scored on the validation rows as well."""

from __future__ import annotations

import logging

import pytest

from lmtailor.config import validate_experiment
from lmtailor.core.context import RunContext
from lmtailor.core.example import DatasetSplits, Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.measure.meter import Meter
from lmtailor.runner import plan_rows
from lmtailor.strategies.baseline import BaselineConfig, BaselineStrategy, first_sentence, majority_label
from lmtailor.tasks.held_out import held_out_data, ids_digest, split_and_score

CLASSES = TaskSpec("t", "classification", "Which?", ("red", "green", "blue"))
SUMMARY = TaskSpec("s", "generation", "Summarise.", None)


def _ex(i, text, target):
    return Example(str(i), text, target)


def _ctx(task, splits, tmp_path):
    return RunContext(task=task, data=held_out_data(splits), model_ref="none", budget=None, seed=0,
                      meter=Meter(), out_dir=tmp_path, runtime=None, log=logging.getLogger("t"))


def test_majority_label_counts_training_rows_and_breaks_ties_by_the_label_order():
    train = [_ex(1, "", "blue"), _ex(2, "", "green"), _ex(3, "", "blue"), _ex(4, "", "green"), _ex(5, "", "red")]
    # blue 2, green 2, red 1: a tie between blue and green goes to the one listed first in the labels (green)
    assert majority_label(train, ("red", "green", "blue")) == "green"
    assert majority_label(train + [_ex(6, "", "blue")], ("red", "green", "blue")) == "blue"
    with pytest.raises(ValueError, match="needs training rows"):
        majority_label([], None)


def test_first_sentence_stops_at_a_full_stop_or_a_blank_line_and_is_cut_to_n_words():
    assert first_sentence("Return the sum. Then more.", 20) == "Return the sum."
    assert first_sentence("Return the sum\n    of two numbers.\n\nMore.", 20) == "Return the sum of two numbers."
    assert first_sentence("Summary line\n\nDetails follow here.", 20) == "Summary line"
    assert first_sentence("one two three four five", 3) == "one two three"
    assert first_sentence("v1.2 is out. Next.", 20) == "v1.2 is out."  # a dot inside a word ends nothing


def test_classification_baseline_answers_the_majority_class_for_test_and_validation_rows(tmp_path):
    splits = DatasetSplits(train=[_ex(1, "a", "red"), _ex(2, "b", "blue"), _ex(3, "c", "blue")],
                           validation=[_ex(4, "d", "red")], test=[_ex(5, "e", "blue"), _ex(6, "f", "green")])
    ctx = _ctx(CLASSES, splits, tmp_path)
    with ctx.meter:
        out = BaselineStrategy(BaselineConfig(name="baseline")).run(ctx)
    assert out.predictions == ["blue", "blue", "blue"]  # two test rows, then the validation row
    assert out.details["kind"] == "majority-class" and "'blue'" in out.details["rule"]
    record = ctx.meter.record()
    assert record["phases"]["inference"]["examples"] == 3 and record["total_params"] == 0
    scored, validation = split_and_score(CLASSES, splits.test, splits.validation, out.predictions)
    assert scored["metrics"][0]["value"] == 0.5 and scored["details"]["per_row"] == [1.0, 0.0]
    assert validation["metrics"][0]["value"] == 0.0 and validation["rows"] == 1
    assert validation["ids_sha256"] == ids_digest(["4"])


def test_generation_baseline_answers_each_inputs_first_sentence(tmp_path):
    splits = DatasetSplits(train=[_ex(1, "x", "y")], validation=[],
                           test=[_ex(2, "Open a file. Returns a handle.", "Open a file.")])
    ctx = _ctx(SUMMARY, splits, tmp_path)
    with ctx.meter:
        out = BaselineStrategy(BaselineConfig(name="baseline", max_words=2)).run(ctx)
    assert out.predictions == ["Open a"] and out.details["kind"] == "first-sentence"
    scored, validation = split_and_score(SUMMARY, splits.test, splits.validation, out.predictions)
    assert validation is None  # no validation rows: no validation block, the report chooses on test and says so


def test_split_and_score_refuses_a_strategy_that_answered_only_the_test_rows():
    splits = DatasetSplits(train=[], validation=[_ex(4, "d", "red")], test=[_ex(5, "e", "blue")])
    with pytest.raises(ValueError, match="1 predictions for 2 rows \\(1 test \\+ 1 validation\\)"):
        split_and_score(CLASSES, splits.test, splits.validation, ["blue"])


def _exp(**extra):
    return validate_experiment({"name": "e", "data": {"source": "rows.jsonl"}, "models": ["m1", "m2"],
                                "strategies": [{"name": "prompt", "shots": 0}], **extra})


def test_every_plan_ends_with_one_baseline_row_on_no_model_unless_listed_or_turned_off():
    rows = plan_rows(_exp())
    assert [(r.row_id, r.model_ref) for r in rows] == [("zero-shot__m1__s0", "m1"), ("zero-shot__m2__s0", "m2"),
                                                       ("baseline__none__s0", "none")]
    assert rows[-1].index == 2
    assert [r.row_id for r in plan_rows(_exp(trivial_baseline=False))] == ["zero-shot__m1__s0", "zero-shot__m2__s0"]
    # listed by the user (its own knobs): planned once, where it is listed, on no model even with several seeds
    listed = plan_rows(_exp(strategies=[{"name": "baseline", "max_words": 10}, {"name": "prompt", "shots": 0}],
                            seeds=[0, 1]))
    assert [r.row_id for r in listed] == ["baseline__none__s0", "zero-shot__m1__s0", "zero-shot__m2__s0"]
    assert listed[0].strategy.config.max_words == 10


def test_a_listed_baseline_is_not_refused_when_the_models_are_api_endpoints():
    exp = validate_experiment({"name": "e", "data": {"source": "rows.jsonl"}, "models": ["openai:gpt-x@http://h/v1"],
                               "strategies": [{"name": "prompt"}, {"name": "baseline"}],
                               "pricing": {"api_models": {"gpt-x": {"input_usd_per_1m": 0.15,
                                                                    "output_usd_per_1m": 0.6}}}})
    assert [r.model_ref for r in plan_rows(exp)] == ["openai:gpt-x@http://h/v1", "none"]


# --- `lmtailor report` on run directories of older record versions ------------------------------------------------

def _old_run(tmp_path, version):
    """A run directory as lmtailor wrote it before validation scoring: record schema_version ``version``."""
    from lmtailor.io import write_json_atomic

    write_json_atomic(tmp_path / "task.json", {"name": "t", "type": "classification", "instruction": "x",
                                               "labels": ["a", "b"]})
    write_json_atomic(tmp_path / "splits.json", {"source": "d.jsonl", "seed": 0, "train": ["1", "2"],
                                                 "validation": ["3"], "test": ["4", "5"],
                                                 "learning_curve_subsets": {}})
    for i, (label, score) in enumerate((("zero-shot", 0.5), ("few-shot", 1.0))):
        write_json_atomic(tmp_path / "results" / f"{label}__m1__s0.json", {
            "schema_version": version, "row_id": f"{label}__m1__s0", "row_index": i, "label": label,
            "strategy": "prompt", "config": {"name": "prompt", "shots": 4 * i}, "model": "m1", "seed": 0,
            "train_size": 2, "train_size_requested": None, "status": "ok", "error": None, "test_rows": 2,
            "test_ids_sha256": ids_digest(["4", "5"]), "primary_metric": "accuracy",
            "metrics": [{"name": "accuracy", "value": score, "higher_is_better": True}],
            "score_details": {"per_row": [1.0, 0.0] if score == 0.5 else [1.0, 1.0]}, "details": {},
            "environment": {}, "meter": {"wall_s": 1.0, "peak_rss_bytes": 1, "phases": {}, "trainable_params": 0,
                                         "total_params": 10, "inference_latency_s_per_example": 0.01,
                                         "usd": {"train": 0.0, "total": 0.01, "inference_per_1k": 0.1,
                                                 "rate_per_hour": 1.0}}})
    return tmp_path


def test_report_of_a_version_1_run_loads_and_says_choices_were_made_on_test(tmp_path):
    from lmtailor.cli import main

    run = _old_run(tmp_path, 1)
    assert main(["report", str(run)]) == 0
    text = (run / "report.md").read_text()
    assert ("Configurations were chosen on the 2 test rows, because some rows have no validation scores (records "
            "written by an older lmtailor") in text
    assert "optimistic" in text


def test_report_of_an_unknown_record_version_is_refused_naming_it(tmp_path, capsys):
    from lmtailor.cli import main

    run = _old_run(tmp_path, 99)
    assert main(["report", str(run)]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "is a row record of schema_version 99; this lmtailor reads versions 1, 2" in out
    assert "run the experiment again" in out
