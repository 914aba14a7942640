"""The report's recommendation, its uncertainty intervals over test rows and its honesty checks, on hand-made runs."""

from __future__ import annotations

import json

import pytest

from lmtailor.data.example import Example
from lmtailor.io import write_json_atomic
from lmtailor.report.analysis import bootstrap_ci
from lmtailor.report.honesty import honesty_checks
from lmtailor.report.recommend import recommendation
from lmtailor.report.results_json import build_results, same_or_different
from lmtailor.tasks import TaskSpec
from lmtailor.tasks.evaluator import evaluate

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
        "details": details or {},
        "meter": {"wall_s": 1.0, "usd": {"train": 0.0, "total": 0.01, "inference_per_1k": 0.001}},
    }


def _run_dir(tmp_path, records, splits=None):
    write_json_atomic(tmp_path / "task.json", {"name": "t", "type": "classification", "instruction": "x",
                                               "labels": ["a", "b"]})
    write_json_atomic(tmp_path / "splits.json", splits or {
        "source": "d.jsonl", "seed": 0, "train": ["t1", "t2", "t3"], "validation": ["v1"],
        "test": ["x1", "x2", "x3", "x4"], "learning_curve_subsets": {"2": ["t1", "t2"]}})
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
    assert same_or_different(ft, groups["perfect | m1"]) == "same"  # [0.5.., 1] touches 1.0: overlap
    assert same_or_different(old, ft) == "unknown"
    assert same_or_different({"ci95": [0.1, 0.2], "metric": "accuracy"},
                             {"ci95": [0.3, 0.4], "metric": "accuracy"}) == "different"


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
    return [{"row_id": r, "status": "ok"} for g in groups for r in g["rows"]]


def test_fine_tuned_small_model_meeting_the_floor_is_chosen_with_its_payback():
    target = {"quality_floor": 0.75, "requests_per_month": 100_000, "baseline": "zero-shot"}
    rec = recommendation(_summary(BIG, SMALL, RAG), _records(BIG, SMALL, RAG), target)
    # monthly: small 0.5/1000 * 1e5 = $50, big $200, rag $300. Payback of small's $10 against big:
    # 0.002 n = 10 + 0.0005 n -> n = 6666.67 requests = 6666.67 / 100000 * 30 = 2.0 days
    assert rec["choice"] == "lora | small"
    assert rec["monthly_usd"] == pytest.approx(50.0)
    assert rec["payback_days"] == pytest.approx(2.0)
    assert rec["baseline"] == "zero-shot | big"
    assert rec["evidence"] == ["lora__small__s0", "zero-shot__big__s0"]
    assert "$50.00/month" in rec["paragraph"] and "2.0 days" in rec["paragraph"]
    # at 10x requests: 6666.67 / 1e6 * 30 = 0.2 days = 4.8 hours; a floor raised to rag's 0.88 picks rag
    assert any("1,000,000 requests" in s and "still be lora | small" in s and "4.8 hours" in s
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


def test_without_a_floor_the_best_score_is_chosen_and_a_cheaper_overlapping_one_named():
    rec = recommendation(_summary(BIG, SMALL, RAG), _records(BIG, SMALL, RAG), None)
    assert rec["choice"] == "rag | big"  # the best mean (0.90); small's CI [0.78, 0.86] is below rag's [0.88, 0.92]
    close = _group("lora | mid", "finetune", 0.87, [0.85, 0.89], per_1k=1.0, train=5.0)
    rec = recommendation(_summary(BIG, SMALL, RAG, close), _records(BIG, SMALL, RAG, close), None)
    assert rec["choice"] == "rag | big"  # a wide interval is no reason to recommend the lower score
    (mid,) = [a for a in rec["alternatives"] if a["group"] == "lora | mid"]
    assert "not significantly" in mid["why_not"] and "costs less ($100/month)" in mid["why_not"]
    (small,) = [a for a in rec["alternatives"] if a["group"] == "lora | small"]
    assert small["why_not"] == "significantly worse than the best (CIs do not overlap, or no CI)"


# --- honesty checks ------------------------------------------------------------------------------------------------

def _by_name(checks):
    return {c["check"]: c for c in checks}


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
                         "inference": {"truncated_inputs": 1}}),
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
    cut = checks["inputs not truncated"]
    assert not cut["ok"] and cut["detail"].startswith("4 truncated texts")
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
