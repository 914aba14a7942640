"""The cost-benefit numbers (data required, Pareto frontier, break-even, uncertainty) and results.json."""

from __future__ import annotations

import json

import pytest

from lmtailor.errors import UserError
from lmtailor.io import write_json_atomic
from lmtailor.report.analysis import (bootstrap_ci, break_even, cumulative_cost, data_required, excludes_zero, mean_std,
                                      paired_bootstrap_diff, pareto_frontier, payback_days)
from lmtailor.report.results_json import build_results, write_results


# --- data required -------------------------------------------------------------------------------------------

def test_data_required_reaches_95_percent_at_the_middle_size():
    # best 0.8; 95 % of it is 0.76: size 100 (0.78) reaches it, size 10 (0.5) does not
    assert data_required({10: 0.5, 100: 0.78, 1000: 0.8}) == 100


def test_data_required_counts_exactly_95_percent_despite_float_noise():
    assert data_required({1: 0.76, 2: 0.8}) == 1  # 0.95 * 0.8 is 0.7600000000000001 in floats


def test_data_required_lower_is_better_is_within_5_percent_above_the_lowest():
    # lowest loss 2.0; within 5 % above it is <= 2.1: size 100 (2.05) qualifies, size 10 (3.0) does not
    assert data_required({10: 3.0, 100: 2.05, 1000: 2.0}, higher_is_better=False) == 100
    assert data_required({10: 3.0, 100: 2.2, 1000: 2.0}, higher_is_better=False) == 1000


def test_data_required_empty_curve_and_bad_fraction():
    assert data_required({}) is None
    with pytest.raises(ValueError):
        data_required({1: 1.0}, fraction=0)


# --- Pareto frontier -------------------------------------------------------------------------------------------

def test_pareto_frontier_drops_the_two_dominated_points():
    points = [("D", 4.0, 0.9), ("A", 1.0, 0.5), ("C", 3.0, 0.6), ("B", 2.0, 0.7), ("E", 5.0, 0.85)]
    # C is beaten by B (cheaper, better), E by D
    assert pareto_frontier(points) == ["A", "B", "D"]


def test_pareto_frontier_ties():
    # identical points dominate neither one; same cost with lower quality is dominated
    assert pareto_frontier([("y", 1.0, 0.5), ("x", 1.0, 0.5), ("z", 1.0, 0.4)]) == ["x", "y"]
    with pytest.raises(ValueError, match="unique"):
        pareto_frontier([("a", 1.0, 0.5), ("a", 2.0, 0.6)])


# --- break-even ------------------------------------------------------------------------------------------------

def test_break_even_of_a_prompted_large_model_and_a_fine_tuned_small_one():
    # prompted: $0 up front, $0.002 a request; fine-tuned: $10 up front, $0.0005 a request
    # 0.002 n = 10 + 0.0005 n  ->  n = 10 / 0.0015 = 6666.67
    n = break_even(0.0, 0.002, 10.0, 0.0005)
    assert n == pytest.approx(20000 / 3)
    assert cumulative_cost(0.0, 0.002, n) == pytest.approx(cumulative_cost(10.0, 0.0005, n))
    assert cumulative_cost(10.0, 0.0005, 1000) == pytest.approx(10.5)
    # at 1000 requests a month: 6.667 months = 200 days of 30
    assert payback_days(0.0, 0.002, 10.0, 0.0005, requests_per_month=1000) == pytest.approx(200.0)


def test_break_even_never():
    assert break_even(0.0, 0.001, 5.0, 0.001) is None  # parallel
    assert break_even(1.0, 0.001, 1.0, 0.001) is None  # identical: no single crossing
    assert break_even(0.0, 1.0, 5.0, 2.0) is None  # b costs more up front and per request: crossed only at n = -5
    assert payback_days(0.0, 0.001, 5.0, 0.001, requests_per_month=100) is None
    assert break_even(2.0, 1.0, 2.0, 3.0) == 0.0


# --- uncertainty -------------------------------------------------------------------------------------------------

def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, None)
    with pytest.raises(ValueError):
        mean_std([])


def test_bootstrap_ci_of_a_constant_list_is_the_constant():
    assert bootstrap_ci([0.7] * 10) == (0.7, 0.7)


def test_bootstrap_ci_of_a_known_list_contains_the_mean_and_is_seeded():
    scores = [0.0, 1.0] * 25  # mean 0.5, standard error sqrt(0.25 / 50) = 0.0707: 95 % CI about 0.5 ± 0.14
    low, high = bootstrap_ci(scores)
    assert 0.3 < low < 0.5 < high < 0.7
    assert high - low == pytest.approx(2 * 1.96 * 0.0707, abs=0.05)
    assert bootstrap_ci(scores) == (low, high)
    assert bootstrap_ci(scores, confidence=0.5)[1] - bootstrap_ci(scores, confidence=0.5)[0] < high - low


def test_paired_bootstrap_calls_30_of_48_against_22_of_48_a_difference_the_intervals_miss():
    # A is right on rows 0-29, B on rows 0-21: B never wins a row. Per-row differences: eight 1s and forty 0s, mean
    # 8/48 = 0.1667, standard error sqrt((1/6)(5/6)/48) = 0.0538, so about 0.167 ± 0.105 = [0.06, 0.27].
    a = [1.0] * 30 + [0.0] * 18
    b = [1.0] * 22 + [0.0] * 26
    diff, low, high = paired_bootstrap_diff([a], [b])
    assert diff == pytest.approx(8 / 48)
    assert 0.04 <= low <= 0.085 and 0.25 <= high <= 0.29  # each a whole number of rows: 3/48 and 13/48 here
    assert excludes_zero((low, high))
    # the unpaired 95% intervals of the two means (0.625 ± 0.137 and 0.458 ± 0.141) overlap: the old rule missed it
    (lo_a, hi_a), (lo_b, hi_b) = bootstrap_ci(a), bootstrap_ci(b)
    assert lo_a < hi_b
    assert paired_bootstrap_diff([a], [b]) == (diff, low, high)  # seeded: the same bytes in results.json
    # the other way round: the mirror interval
    assert paired_bootstrap_diff([b], [a])[0] == pytest.approx(-8 / 48)


def test_paired_bootstrap_of_identical_rows_is_exactly_zero_and_within_noise():
    rows = [1.0, 0.0, 1.0, 0.0, 1.0]
    assert paired_bootstrap_diff([rows], [rows]) == (0.0, 0.0, 0.0)
    assert not excludes_zero((0.0, 0.0))
    assert excludes_zero((-0.3, -0.1)) and not excludes_zero((-0.1, 0.2))


def test_paired_bootstrap_resamples_seeds_so_seed_noise_widens_the_interval():
    # B: 10 of 20 rows right. A's two seeds: one right on all 20 rows, one on the same 10 as B. Averaging the seeds
    # per row first gives A - B = 0.5 on 10 rows and 0 on 10: a narrow interval around 0.25, clear of 0. Resampling
    # seeds as well, a resample that draws the weak seed twice has A = B exactly (difference 0): that happens for a
    # quarter of the resamples, so the 2.5 % quantile is 0 and the seeds' disagreement is not hidden.
    b = [1.0] * 10 + [0.0] * 10
    strong, weak = [1.0] * 20, list(b)
    diff, low, high = paired_bootstrap_diff([strong, weak], [b])
    assert diff == pytest.approx(0.25)
    assert low == 0.0 and not excludes_zero((low, high))
    averaged = [(x + y) / 2 for x, y in zip(strong, weak)]
    _, low_avg, _ = paired_bootstrap_diff([averaged], [b])
    assert low_avg > 0.1  # what the seed-averaged rows alone would have said


def test_paired_bootstrap_refuses_rows_that_do_not_pair():
    with pytest.raises(ValueError, match="same non-zero number of rows"):
        paired_bootstrap_diff([[1.0, 0.0]], [[1.0]])
    with pytest.raises(ValueError, match="at least one seed"):
        paired_bootstrap_diff([], [[1.0]])


# --- results.json ------------------------------------------------------------------------------------------------

def _record(row_id: str, index: int, label: str, strategy: str, score: float | None, usd_total: float,
            seed: int = 0, size: int | None = None) -> dict:
    ok = score is not None
    return {
        "schema_version": 1, "row_id": row_id, "row_index": index, "label": label, "strategy": strategy,
        "model": "m1", "seed": seed, "train_size": size or 40, "train_size_requested": size,
        "status": "ok" if ok else "failed",
        "error": None if ok else {"type": "RuntimeError", "message": "boom", "traceback": "Traceback ..."},
        "metrics": [{"name": "accuracy", "value": score, "higher_is_better": True}] if ok else [],
        "primary_metric": "accuracy" if ok else None, "details": {},
        "meter": {"wall_s": 1.5, "peak_rss_bytes": 1000, "phases": {},
                  "usd": {"train": usd_total / 2, "total": usd_total, "inference_per_1k": 0.001}},
        "started_at": "2025-01-01T00:00:00+00:00",
    }


@pytest.fixture
def run_dir(tmp_path):
    write_json_atomic(tmp_path / "task.json", {"name": "t", "type": "classification", "instruction": "x",
                                               "labels": ["a", "b"]})
    write_json_atomic(tmp_path / "splits.json", {"source": "d.jsonl", "seed": 0, "train": ["1", "2", "3"],
                                                 "validation": ["4"], "test": ["5", "6"],
                                                 "learning_curve_subsets": {"20": ["1"], "10": ["2"]}})
    records = [
        _record("prompt__m1__s0", 0, "prompt", "prompt", 0.5, 0.01),
        _record("finetune-n-10__m1__s0", 1, "finetune n=10", "finetune", 0.6, 0.05, seed=0, size=10),
        _record("finetune-n-10__m1__s1", 2, "finetune n=10", "finetune", 0.8, 0.05, seed=1, size=10),
        _record("finetune-n-20__m1__s0", 3, "finetune n=20", "finetune", 0.69, 0.08, seed=0, size=20),
        _record("finetune-n-20__m1__s1", 4, "finetune n=20", "finetune", None, 0.08, seed=1, size=20),
    ]
    for r in records:
        write_json_atomic(tmp_path / "results" / f"{r['row_id']}.json", r)
    return tmp_path


def test_build_results_summarises_rows_groups_curves_and_frontier(run_dir):
    out = build_results(run_dir)
    # plan order, not file-name order (the finetune files sort before prompt's)
    assert [r["row_id"] for r in out["rows"]][:2] == ["prompt__m1__s0", "finetune-n-10__m1__s0"]
    failed = out["rows"][4]
    assert failed["status"] == "failed" and failed["error"] == {"type": "RuntimeError", "message": "boom"}
    assert out["failed_rows"] == ["finetune-n-20__m1__s1"]
    assert out["splits"] == {"source": "d.jsonl", "seed": 0, "train": 3, "validation": 1, "test": 2,
                             "learning_curve_sizes": [10, 20]}
    groups = {g["id"]: g for g in out["groups"]}
    ft10 = groups["finetune n=10 | m1"]
    assert ft10["seeds"] == 2 and ft10["score_mean"] == 0.7 and ft10["score_std"] == pytest.approx(0.141421, abs=1e-6)
    ft20 = groups["finetune n=20 | m1"]
    assert ft20["seeds"] == 1 and ft20["score_std"] is None and ft20["failed"] == ["finetune-n-20__m1__s1"]
    # n=20 costs more than n=10 and scores less: dominated
    assert out["pareto"]["frontier"] == ["prompt | m1", "finetune n=10 | m1"]
    assert not ft20["on_frontier"] and ft10["on_frontier"]
    [curve] = out["learning_curves"]
    assert curve["label"] == "finetune" and [p["train_size"] for p in curve["points"]] == [10, 20]
    assert [p["score_mean"] for p in curve["points"]] == [0.7, 0.69]
    assert curve["data_required"] == 10  # 0.95 * best 0.7 = 0.665: the smallest size reaches it


def test_write_results_is_byte_identical_and_independent_of_key_order(run_dir):
    first = write_results(run_dir).read_bytes()
    assert write_results(run_dir).read_bytes() == first
    path = run_dir / "results" / "prompt__m1__s0.json"
    record = json.loads(path.read_text())
    write_json_atomic(path, dict(reversed(list(record.items()))))  # same record, other key order
    assert write_results(run_dir).read_bytes() == first
    assert json.loads(first)["summary_version"] == 2 and b"Traceback" not in first


def test_build_results_errors_name_the_file(tmp_path, run_dir):
    with pytest.raises(UserError, match="task.json is missing"):
        build_results(tmp_path / "nowhere")
    (run_dir / "results" / "broken.json").write_text("{not json")
    with pytest.raises(UserError, match="broken.json"):
        build_results(run_dir)


def test_group_costs_average_the_finished_seeds_only(run_dir):
    # finetune n=20: seed 0 finished ($0.08 total, $0.04 train), seed 1 failed; give the failed one a different cost
    path = run_dir / "results" / "finetune-n-20__m1__s1.json"
    record = json.loads(path.read_text())
    record["meter"]["usd"] = {"train": 5.0, "total": 10.0, "inference_per_1k": 9.0}
    record["meter"]["wall_s"] = 99.0
    write_json_atomic(path, record)
    ft20 = {g["id"]: g for g in build_results(run_dir)["groups"]}["finetune n=20 | m1"]
    assert (ft20["usd_total_mean"], ft20["usd_train_mean"]) == (0.08, 0.04)
    assert ft20["usd_inference_per_1k_mean"] == 0.001 and ft20["wall_s_mean"] == 1.5


def _with_validation(record: dict, score: float) -> dict:
    return {**record, "schema_version": 2,
            "validation": {"rows": 1, "ids_sha256": "v", "primary_metric": "accuracy",
                           "metrics": [{"name": "accuracy", "value": score, "higher_is_better": True}],
                           "score_details": {"per_row": [score]}}}


def test_records_of_version_1_load_and_choices_fall_back_to_the_test_rows(run_dir):
    out = build_results(run_dir)  # the fixture's records are version 1: no validation scores
    assert out["selection"]["split"] == "test"
    assert out["selection"]["sentence"].startswith("Configurations were chosen on the 2 test rows, because some rows")
    assert out["learning_curves"][0]["data_required_on"] == "test"
    assert all(g["validation_score_mean"] is None for g in out["groups"])


def test_validation_scores_choose_the_data_required_and_the_selection_split(run_dir):
    # validation means: n=10 -> 0.5 (both seeds), n=20 -> 0.9. 95 % of 0.9 = 0.855: only n=20 reaches it on
    # validation, while on the test means (0.7 and 0.69) n=10 would be the answer.
    scores = {"prompt__m1__s0": 0.4, "finetune-n-10__m1__s0": 0.5, "finetune-n-10__m1__s1": 0.5,
              "finetune-n-20__m1__s0": 0.9, "finetune-n-20__m1__s1": 0.9}
    for row_id, score in scores.items():
        path = run_dir / "results" / f"{row_id}.json"
        write_json_atomic(path, _with_validation(json.loads(path.read_text()), score))
    out = build_results(run_dir)
    [curve] = out["learning_curves"]
    assert curve["data_required_on"] == "validation" and curve["data_required"] == 20
    assert [p["validation_score_mean"] for p in curve["points"]] == [0.5, 0.9]
    assert out["selection"] == {"split": "validation", "validation_rows": 1, "test_rows": 2, "sentence":
                                "Configurations were chosen on the 1 validation rows; scores are on the 2 test rows."}


def test_a_record_of_an_unknown_version_is_refused_naming_it(run_dir):
    path = run_dir / "results" / "prompt__m1__s0.json"
    write_json_atomic(path, {**json.loads(path.read_text()), "schema_version": 7})
    with pytest.raises(UserError, match=r"prompt__m1__s0.json is a row record of schema_version 7; this lmtailor "
                                        r"reads versions 1, 2"):
        build_results(run_dir)
