"""The report's recommendation, its uncertainty intervals over test rows and its honesty checks, on hand-made runs."""

from __future__ import annotations

import json

import pytest

from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.io import write_json_atomic
from lmtailor.report.analysis import bootstrap_ci
from lmtailor.report.honesty import honesty_checks
from lmtailor.report.paired import compare_groups
from lmtailor.report.recommend import recommendation
from lmtailor.report.results_json import build_results, load_records
from lmtailor.tasks.evaluator import evaluate
from lmtailor.tasks.held_out import ids_digest

# --- per-row scores from the evaluator ---------------------------------------------------------------------------


def _rows(targets, meta=None):
    return [Example(str(i), f"in {i}", t, (meta or [{}] * len(targets))[i]) for i, t in enumerate(targets)]


def test_evaluator_keeps_each_test_rows_primary_score_in_order():
    task = TaskSpec("t", "classification", "x", ("a", "b"))
    scored = evaluate(task, _rows(["a", "b", "b"]), ["a", "a", "b"])
    assert scored["details"]["per_row"] == [1.0, 0.0, 1.0]
    qa = TaskSpec("q", "qa", "x")
    rows = _rows(["x", "x", "bdb", "42"], [{"answers": ["Paris", "City of Paris"]}] * 2 + [{}, {}])
    scored = evaluate(qa, rows, ["the city of paris", "Paris France", "bdb.", ""])
    assert scored["details"]["per_row"] == pytest.approx([1.0, 2 / 3, 1.0, 0.0])  # as in test_scorers, by hand
    assert scored["metrics"][0]["value"] == pytest.approx(sum(scored["details"]["per_row"]) / 4)


def test_generation_per_row_rouge_l_averages_to_the_metric():
    task = TaskSpec("g", "generation", "x")
    refs, preds = ["the cat sat on the mat", "hello world", "a b c d"], ["the cat sat", "hello world", "x"]
    scored = evaluate(task, _rows(refs), preds)
    per_row = scored["details"]["per_row"]
    assert per_row[1] == 1.0 and per_row[2] == 0.0
    # "the cat sat" against 6 words: LCS 3, precision 1, recall 1/2 -> F 2/3
    assert per_row[0] == pytest.approx(2 / 3)
    assert scored["metrics"][0]["name"] == "rougeL" and scored["metrics"][0]["value"] == pytest.approx(5 / 9)


# --- bootstrap CI in results.json --------------------------------------------------------------------------------

def _record(row_id, index, label, score, per_row=None, seed=0, model="m1", status="ok", strategy="finetune",
            details=None):
    ok = status == "ok"
    return {
        "row_id": row_id, "row_index": index, "label": label, "strategy": strategy, "model": model, "seed": seed,
        "train_size": 4, "train_size_requested": None, "status": status,
        "error": None if ok else {"type": "ValueError", "message": "loss is nan at step 3\nmore", "traceback": "T"},
        "metrics": [{"name": "accuracy", "value": score, "higher_is_better": True}] if ok else [],
        "primary_metric": "accuracy" if ok else None,
        "score_details": ({"n": len(per_row), "per_row": per_row} if per_row is not None else {"n": 4}),
        "test_ids_sha256": ids_digest(["x1", "x2", "x3", "x4"]),  # _run_dir's test rows
        "details": details or {},
        "meter": {"wall_s": 1.0, "usd": {"train": 0.0, "total": 0.01, "inference_per_1k": 0.001}, "machine": QUIET},
    }


QUIET = {"cores": 2, "other_cores_avg": 0.05, "busy_threshold_cores": 0.5, "loadavg_end": [1.0, 1.0, 1.0]}


def with_digests(splits: dict, same: dict[str, str] | None = None) -> dict:
    """``splits`` with the content record a run writes: every row its own digest, unless ``same`` maps an id to
    the id whose content it repeats."""
    from lmtailor.data.leakage import NORMALISATION

    same = same or {}
    digests = {k: {i: f"digest-of-{same.get(i, i)}" for i in splits[k]} for k in ("train", "validation", "test")}
    return {**splits, "content": {"normalisation": NORMALISATION, "digests": digests}}


def _run_dir(tmp_path, records, splits=None):
    write_json_atomic(tmp_path / "task.json", {"name": "t", "type": "classification", "instruction": "x",
                                               "labels": ["a", "b"]})
    write_json_atomic(tmp_path / "splits.json", splits or with_digests({
        "source": "d.jsonl", "seed": 0, "train": ["t1", "t2", "t3"], "validation": ["v1"],
        "test": ["x1", "x2", "x3", "x4"], "learning_curve_subsets": {"2": ["t1", "t2"]}}))
    for r in records:
        write_json_atomic(tmp_path / "results" / f"{r['row_id']}.json", r)
    return tmp_path


def test_build_results_puts_a_bootstrap_ci_over_seed_averaged_test_rows(tmp_path):
    run = _run_dir(tmp_path, [
        _record("ft__m1__s0", 0, "ft", 0.75, [1.0, 0.0, 1.0, 1.0], seed=0),
        _record("ft__m1__s1", 1, "ft", 0.75, [1.0, 1.0, 0.0, 1.0], seed=1),
        _record("perfect__m1__s0", 2, "perfect", 1.0, [1.0, 1.0, 1.0, 1.0]),
        _record("old__m1__s0", 3, "old", 0.5),  # written before per-row scores were kept
    ])
    groups = {g["id"]: g for g in build_results(run)["groups"]}
    ft = groups["ft | m1"]
    # the two seeds averaged per test row: [1, 0.5, 0.5, 1]
    expected = bootstrap_ci([1.0, 0.5, 0.5, 1.0])
    assert ft["ci95"] == [round(expected[0], 6), round(expected[1], 6)]
    assert 0.5 <= ft["ci95"][0] < 0.75 < ft["ci95"][1] <= 1.0
    assert ft["seeds"] == 2 and "4 test rows" in ft["ci_note"] and "2 seeds" in ft["ci_note"]
    assert groups["perfect | m1"]["ci95"] == [1.0, 1.0]
    old = groups["old | m1"]
    assert old["ci95"] is None and old["ci_note"].startswith("missing")
    by_id = {r["row_id"]: r for r in load_records(run)}
    # perfect - ft per row, seeds averaged: [0, 0.5, 0.5, 0]; 4 rows and 2 seeds: resamples often draw the rows
    # where both seeds agree with "perfect", so 0 is inside the interval
    c = compare_groups(groups["perfect | m1"], ft, by_id)
    assert c["verdict"] == "within noise" and c["difference"] == 0.25 and c["ci95"][0] == 0.0
    assert c["rows"] == 4 and c["seeds"] == [1, 2]
    assert compare_groups(old, ft, by_id)["verdict"] == "unknown"
    assert "no per-row test scores" in compare_groups(old, ft, by_id)["note"]


# --- the recommendation --------------------------------------------------------------------------------------------

def _group(gid, strategy, mean, ci, per_1k, train, failed=(), rows=None):
    label, model = gid.split(" | ")
    return {"id": gid, "label": label, "model": model, "strategy": strategy, "metric": "accuracy",
            "higher_is_better": True, "seeds": 3, "rows": rows or [f"{label}__{model}__s0"], "failed": list(failed),
            "score_mean": mean, "score_std": 0.01, "ci95": ci, "usd_train_mean": train,
            "usd_inference_per_1k_mean": per_1k}


def _summary(*groups):
    return {"groups": list(groups), "pareto": {"metric": "accuracy"}}


BIG = _group("zero-shot | big", "prompt", 0.80, [0.75, 0.85], per_1k=2.0, train=0.0)
SMALL = _group("lora | small", "finetune", 0.82, [0.78, 0.86], per_1k=0.5, train=10.0)
RAG = _group("rag | big", "rag", 0.90, [0.88, 0.92], per_1k=3.0, train=1.0)


def _records(*groups):
    # the report reads what a group's strategy is from its records (report/traits.py)
    return [{"row_id": r, "status": "ok", "strategy": g["strategy"]} for g in groups for r in g["rows"]]


def test_fine_tuned_small_model_meeting_the_floor_is_chosen_with_its_payback():
    target = {"quality_floor": 0.75, "requests_per_month": 100_000, "baseline": "zero-shot"}
    rec = recommendation(_summary(BIG, SMALL, RAG), _records(BIG, SMALL, RAG), target)
    # These records carry no meter, so monthly cost falls back to $/1k x requests (no deployment to size):
    # small 0.5/1000 * 1e5 = $50, big $200, rag $300. Small's $10 more up front, saving $150 a month, pays back in
    # 10/150 months x (730 h / 24 = 30.42 days a month) = 2.028 days, printed "2 days" (48.7 hours).
    assert rec["choice"] == "lora | small"
    assert rec["monthly_usd"] == pytest.approx(50.0)
    assert rec["payback_days"] == pytest.approx(10 / 150 * 730 / 24)
    assert rec["baseline"] == "zero-shot | big"
    assert rec["evidence"] == ["lora__small__s0", "zero-shot__big__s0"]
    assert "$50.00/month" in rec["paragraph"] and "pays for itself in 2 days" in rec["paragraph"]
    assert "Evidence" not in rec["paragraph"]  # printed once, on its own line, by the report (rec["evidence"])
    # at 10x requests: saving $1,500 a month: 10/1500 x 30.42 days = 0.2028 days = 4.87 hours; a floor raised to
    # rag's 0.88 picks rag
    assert any("1,000,000 requests" in s and "still be lora | small" in s and "4.9 hours" in s
               for s in rec["what_would_change"])
    assert any("raised to 0.880" in s and "rag | big ($300/month)" in s for s in rec["what_would_change"])


def test_nothing_meets_the_floor_says_so_and_names_the_closest():
    rec = recommendation(_summary(BIG, SMALL, RAG), _records(BIG, SMALL, RAG), {"quality_floor": 0.95})
    assert rec["choice"] is None
    assert rec["paragraph"].startswith("Nothing meets the target") and "closest is rag | big" in rec["paragraph"]
    assert rec["evidence"] == ["rag__big__s0"]


def test_a_failed_group_is_never_chosen():
    broken = _group("full | small", "finetune", 0.99, [0.97, 1.0], per_1k=0.1, train=1.0,
                    failed=["full__small__s1"], rows=["full__small__s0", "full__small__s1"])
    rec = recommendation(_summary(BIG, SMALL, broken), _records(BIG, SMALL), {"quality_floor": 0.7})
    assert rec["choice"] == "lora | small"
    assert "full | small" in rec["paragraph"] and "a row failed" in rec["paragraph"]
    only_failed = recommendation(_summary(broken), [], {"quality_floor": 0.7})
    assert only_failed["choice"] is None


def test_the_budget_excludes_an_option():
    records = _records(BIG, SMALL, RAG)
    over = recommendation(_summary(BIG, SMALL, RAG), records, {"quality_floor": 0.85, "monthly_budget_usd": 250})
    assert over["choice"] is None and "budget" in over["paragraph"] and "rag | big" in over["paragraph"]
    within = recommendation(_summary(BIG, SMALL, RAG), records, {"quality_floor": 0.85, "monthly_budget_usd": 350})
    assert within["choice"] == "rag | big"
    cheap = recommendation(_summary(BIG, SMALL, RAG), records, {"quality_floor": 0.75, "monthly_budget_usd": 40})
    assert cheap["choice"] is None  # even the $50/month small model is over $40


def _scored(gid, strategy, test_rows, val_rows, per_1k, train):
    """A group and its one record, scored row by row on 20 test and 20 validation rows."""
    label, model = gid.split(" | ")
    row_id = f"{label}__{model}__s0"
    record = {"row_id": row_id, "status": "ok", "strategy": strategy, "test_ids_sha256": "t",
              "score_details": {"per_row": test_rows},
              "validation": {"ids_sha256": "v", "score_details": {"per_row": val_rows}}}
    group = _group(gid, strategy, sum(test_rows) / 20, list(bootstrap_ci(test_rows)), per_1k, train, rows=[row_id])
    group.update(validation_score_mean=sum(val_rows) / 20, validation_ci95=list(bootstrap_ci(val_rows)))
    return group, record


def _right(*rows):
    """Per-row accuracy on 20 rows: 1 on the rows named, 0 elsewhere."""
    return [1.0 if i in rows else 0.0 for i in range(20)]


def _run(*scored):
    summary = {"groups": [g for g, _ in scored], "pareto": {"metric": "accuracy"},
               "splits": {"validation": 20, "test": 20}}
    return summary, [r for _, r in scored]


# Validation: rag right on rows 0-17 (0.90), mid on 0-16 (0.85: one row less, within noise of rag: the paired
# differences are one 1 and nineteen 0s), small and big on 0-9 (0.50: eight rows below rag on every one: differs).
# Test: mid scores best (0.95) — but the choice is made on validation.
RAG_V = _scored("rag | big", "rag", _right(*range(17)), _right(*range(18)), per_1k=3.0, train=1.0)
MID_V = _scored("lora | mid", "finetune", _right(*range(19)), _right(*range(17)), per_1k=1.0, train=5.0)
SMALL_V = _scored("lora | small", "finetune", _right(*range(10)), _right(*range(10)), per_1k=0.5, train=10.0)
BIG_V = _scored("zero-shot | big", "prompt", _right(*range(10)), _right(*range(10)), per_1k=2.0, train=0.0)


def test_without_a_floor_the_best_validation_score_is_chosen_and_a_cheaper_one_within_noise_named():
    rec = recommendation(*_run(BIG_V, SMALL_V, RAG_V, MID_V), None)
    # mid's test score (0.95) beats rag's (0.85), but choosing on test would report a winner's score: rag's
    # validation score (0.90) is the best, so rag is chosen and its test score reported
    assert rec["choice"] == "rag | big"
    assert "accuracy 0.850" in rec["paragraph"]
    assert rec["paragraph"].endswith("Configurations were chosen on the 20 validation rows; scores are on the 20 "
                                     "test rows.")
    (mid,) = [a for a in rec["alternatives"] if a["group"] == "lora | mid"]
    assert mid["why_not"].startswith("scores lower on the validation rows (0.850 vs 0.900), not significantly, and "
                                     "costs less ($100/month)")
    (small,) = [a for a in rec["alternatives"] if a["group"] == "lora | small"]
    assert small["why_not"] == "significantly worse than the best (paired test), or untestable against it"


def test_without_validation_scores_the_choice_is_made_on_test_and_says_so():
    summary, records = _run(BIG_V, SMALL_V, RAG_V, MID_V)
    summary["groups"] = [{**g, "validation_score_mean": None, "validation_ci95": None} for g in summary["groups"]]
    summary["splits"] = {"validation": 0, "test": 20}
    rec = recommendation(summary, records, None)
    assert rec["choice"] == "lora | mid"  # the best test score, and the report says what that means
    assert "chosen on the 20 test rows, because the run has no validation rows" in rec["paragraph"]
    assert "optimistic" in rec["paragraph"]


def test_with_a_floor_quality_is_judged_on_validation_and_the_test_rows_confirm_or_not():
    # floor 0.6: the validation CI lower ends are about 0.75 (rag, mid) and 0.3 (small, big): rag and mid qualify,
    # mid is cheaper per month ($100 vs $300)
    rec = recommendation(*_run(BIG_V, SMALL_V, RAG_V, MID_V), {"quality_floor": 0.6})
    assert rec["choice"] == "lora | mid"
    assert "the floor holds there too" in rec["paragraph"]
    # floor 0.75: rag's validation lower end (18/20: about 0.75) and mid's (17/20: about 0.70)
    low_rag = RAG_V[0]["validation_ci95"][0]
    rec = recommendation(*_run(BIG_V, SMALL_V, RAG_V, MID_V), {"quality_floor": low_rag})
    assert rec["choice"] == "rag | big"
    test_low = RAG_V[0]["ci95"][0]  # rag's test rows: 17/20, a lower end below the validation one
    assert test_low < low_rag and "the test rows do not confirm the floor" in rec["paragraph"]


def test_the_trivial_baseline_is_chosen_only_when_nothing_beats_it():
    trivial = _scored("baseline | none", "baseline", _right(*range(10)), _right(*range(10)), per_1k=0.0, train=0.0)
    # rag beats it on validation (eight rows, never losing one): out, though it is free and meets a 0.2 floor
    # (10/20 right: a validation CI lower end of about 0.3, as zero-shot's)
    rec = recommendation(*_run(trivial, RAG_V, BIG_V), {"quality_floor": 0.2})
    assert rec["choice"] == "zero-shot | big"
    (why,) = [a["why_not"] for a in rec["alternatives"] if a["group"] == "baseline | none"]
    assert why == "the trivial baseline, beaten by rag | big (paired test)"
    # against zero-shot alone, which scores the same rows: nothing beats it, and it is the cheapest
    rec = recommendation(*_run(trivial, BIG_V), {"quality_floor": 0.2})
    assert rec["choice"] == "baseline | none"


# --- honesty checks ------------------------------------------------------------------------------------------------

def _by_name(checks):
    return {c["check"]: c for c in checks}


def test_honesty_checks_flag_rows_timed_on_a_busy_machine(tmp_path):
    # other processes used 1.3 cores on average while the first row ran: above the 0.5-core threshold
    busy = _record("ft__m1__s0", 0, "ft", 0.5)
    busy["meter"]["machine"] = {**QUIET, "other_cores_avg": 1.3, "loadavg_end": [3.1, 2.0, 1.0]}
    quiet = _record("zs__m1__s0", 1, "zs", 0.5, strategy="prompt")
    old = _record("old__m1__s0", 2, "old", 0.5)
    del old["meter"]["machine"]  # written before machine load was recorded
    checks = _by_name(honesty_checks(_run_dir(tmp_path, [busy, quiet]), [busy, quiet]))
    check = checks["timings taken on an otherwise idle machine"]
    assert not check["ok"] and "ft__m1__s0 (1.30 cores, load 3.1 on 2 cores)" in check["detail"]
    assert "zs__m1__s0" not in check["detail"] and "inflated" in check["detail"]
    checks = _by_name(honesty_checks(_run_dir(tmp_path, [quiet, old]), [quiet, old]))
    check = checks["timings taken on an otherwise idle machine"]
    assert not check["ok"] and "not verifiable from the record for old__m1__s0" in check["detail"]
    check = _by_name(honesty_checks(_run_dir(tmp_path, [quiet]), [quiet]))["timings taken on an otherwise idle machine"]
    assert check["ok"] and "at most 0.05 cores" in check["detail"]


def test_honesty_checks_pass_on_a_clean_run(tmp_path):
    records = [_record("ft__hub-org/model__s0", 0, "ft", 0.5, model="hub-org/model"),
               _record("zs__hub-org/model__s0", 1, "zs", 0.5, model="hub-org/model", strategy="prompt",
                       details={"exemplar_ids": ["t1"], "truncated_inputs": 0})]
    checks = _by_name(honesty_checks(_run_dir(tmp_path, records), records))
    assert all(c["ok"] for c in checks.values()), checks
    assert "4 test ids" in checks["test rows never seen in training"]["detail"]


def test_honesty_checks_flag_a_leaked_test_id_and_name_the_rest(tmp_path):
    splits = {"source": "d", "seed": 0, "train": ["t1", "t2"], "validation": ["v1"], "test": ["x1", "x2"],
              "learning_curve_subsets": {"1": ["x2"]}}
    augmented = tmp_path / "augmented" / "ft__tiny-llama__s0.jsonl"
    augmented.parent.mkdir(parents=True)
    augmented.write_text(json.dumps({"id": "x1~eda0", "input": "i", "target": "a",
                                     "meta": {"origin": "augmented", "source_id": "x1"}}) + "\n")
    records = [
        _record("ft__tiny-llama__s0", 0, "ft", 0.5, model="tiny-llama",
                details={"augmented": {"rows_file": "/moved/away.jsonl"},
                         "train_data": {"truncated_inputs": 3, "truncated_targets": 0},
                         "inference": {"truncated_inputs": 1, "truncated_generations": 2}}),
        _record("zs__tiny-llama__s0", 1, "zs", 0.5, model="tiny-llama", strategy="prompt"),
        _record("bad__hub-org/model__s0", 2, "bad", None, model="hub-org/model", status="failed"),
    ]
    checks = _by_name(honesty_checks(_run_dir(tmp_path, records, splits), records))
    leak = checks["test rows never seen in training"]
    assert not leak["ok"] and "learning-curve subset n=1: x2" in leak["detail"]
    assert "augmented rows of ft__tiny-llama__s0: x1" in leak["detail"]
    shown = checks["test rows never used as exemplars or retrieved"]
    assert not shown["ok"] and "not verifiable from the record" in shown["detail"]
    stand_in = checks["models are the ones a user would deploy"]
    assert not stand_in["ok"] and "tiny-llama (tiny: 2 rows)" in stand_in["detail"]
    assert "hub-org/model" not in stand_in["detail"]
    cut = checks["inputs and answers not truncated"]
    # 1 test input + 3 training inputs + 2 answers cut at max_new_tokens
    assert not cut["ok"] and cut["detail"].startswith("6 truncated texts")
    assert "2 answers cut at max_new_tokens" in cut["detail"]
    failed = checks["every strategy finished"]
    assert not failed["ok"] and "bad__hub-org/model__s0 (failed): ValueError: loss is nan at step 3" in failed["detail"]


def test_honesty_checks_read_each_rows_similar_exemplars(tmp_path):
    # _run_dir's test ids include x1: a per-row list that shows it is caught even if the union missed it
    per_row = {"exemplar_ids": ["t1", "t2"], "exemplar_ids_by_row": {"a": ["t1", "t2"], "b": ["t2", "x1"]}}
    records = [_record("sim__hub-org/model__s0", 0, "sim", 0.5, model="hub-org/model", strategy="prompt",
                       details=per_row)]
    shown = _by_name(honesty_checks(_run_dir(tmp_path, records), records))["test rows never used as exemplars or "
                                                                          "retrieved"]
    assert not shown["ok"] and "used test rows as exemplars: x1" in shown["detail"]
    assert "3 distinct exemplars over 2 rows" in shown["detail"]


def test_the_recommendation_says_whether_the_choice_beats_the_baseline_beyond_the_noise():
    # The choice against the stated baseline by the paired bootstrap over the test rows, in the paragraph itself:
    # rag (17/20 on test) against zero-shot (10/20) differs: rag is right on 7 more rows and never wrong where
    # zero-shot is right. Rag, chosen on validation, against mid (19/20 on test) as the baseline: two rows apart,
    # which 20 rows cannot tell from noise.
    rec = recommendation(*_run(BIG_V, SMALL_V, RAG_V), {"baseline": "zero-shot"})
    assert rec["choice"] == "rag | big"
    assert "On the test rows it scores +35.0 pts against the baseline (paired 95% CI" in rec["paragraph"]
    assert "a difference beyond the noise" in rec["paragraph"]
    close = recommendation(*_run(RAG_V, MID_V), {"baseline": "lora"})
    assert close["choice"] == "rag | big"  # the best validation score; mid is the stated baseline
    assert "On the test rows it scores -10.0 pts against the baseline" in close["paragraph"]
    assert "within the noise, so these 20 rows do not tell the two apart on quality" in close["paragraph"]


def test_a_row_too_short_for_the_cpu_counters_is_not_called_busy():
    from lmtailor.measure.machine_load import TICK_S, counter_resolution_s, machine_was_busy

    # The trivial baseline runs 1 ms; one 10 ms tick of another process's work reads as 10 cores on average. On 2
    # cores the counters cannot resolve 2 ticks x (2 cores + this process) = 0.06 s, so 0.01 s of "other" is noise.
    assert counter_resolution_s(2) == pytest.approx(6 * TICK_S)
    short = {"cores": 2, "wall_s": 0.001, "other_cpu_s": 0.01, "other_cores_avg": 10.0, "busy_threshold_cores": 0.5}
    assert machine_was_busy(short) is False
    # a 10 s row beside a job that took one core (10 CPU-seconds) is busy; 4 CPU-seconds (0.4 cores) is not
    assert machine_was_busy({**short, "wall_s": 10.0, "other_cpu_s": 10.0, "other_cores_avg": 1.0}) is True
    assert machine_was_busy({**short, "wall_s": 10.0, "other_cpu_s": 4.0, "other_cores_avg": 0.4}) is False
    # records that kept only the average are judged by it, as before
    assert machine_was_busy({"other_cores_avg": 1.3, "busy_threshold_cores": 0.5}) is True
