"""The monthly cost of a deployment, payback and break-even in every sign case, and durations a person reads.

Every expected number is worked out by hand in the comment beside it.
"""

from __future__ import annotations

import textwrap

import pytest

from lmtailor.config import ConfigError, load_experiment
from lmtailor.report.analysis import break_even, compare_costs
from lmtailor.report.deployment import DeploymentConfig, Serving, monthly_cost, serving_of
from lmtailor.report.durations import human_duration
from lmtailor.report.recommend import recommendation
from lmtailor.tasks.held_out import ids_digest

# --- durations ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds, text", [
    (0.4, "less than a second"), (1, "1 second"), (45, "45 seconds"), (89, "89 seconds"),
    (12 * 60, "12 minutes"), (89 * 60, "89 minutes"), (3.2 * 3600, "3.2 hours"), (47 * 3600, "47.0 hours"),
    (4 * 86400, "4 days"), (400 * 86400, "400 days"), (3 * 365.25 * 86400, "3.0 years"),
])
def test_durations_are_printed_in_units_a_person_reads(seconds, text):
    assert human_duration(seconds) == text


# --- the four sign cases -----------------------------------------------------------------------------------------

def test_compare_costs_in_all_four_sign_cases():
    # dearer up front (+$10), cheaper per unit ($2 - $0.5 = $1.5 saved): pays back after 10 / 1.5 = 6.667 units
    c = compare_costs(10.0, 0.5, 0.0, 2.0)
    assert c.case == "pays_back" and c.crossing == pytest.approx(10 / 1.5)
    # dearer up front and dearer per unit: never
    assert compare_costs(10.0, 3.0, 0.0, 2.0).case == "never_pays_back"
    assert compare_costs(10.0, 2.0, 0.0, 2.0).case == "never_pays_back"  # no saving at all
    # cheaper (or equal) up front and cheaper (or equal) per unit: from the first request
    assert compare_costs(0.0, 1.0, 5.0, 2.0).case == "cheaper_throughout"
    assert compare_costs(5.0, 1.0, 5.0, 2.0).case == "cheaper_throughout"
    assert compare_costs(1.0, 2.0, 5.0, 2.0).case == "cheaper_throughout"
    assert compare_costs(5.0, 2.0, 5.0, 2.0).case == "same"
    assert compare_costs(5.0, 3.0, 5.0, 2.0).case == "dearer_throughout"
    # the issue's example: choice $0 + $0.03/1k against baseline $0.05 + $0.002/1k. The lines meet where
    # 0.03 n / 1000 = 0.05 + 0.002 n / 1000, n = 0.05 / 0.000028 = 1785.7 requests, and the choice is dearer after.
    c = compare_costs(0.0, 0.03 / 1000, 0.05, 0.002 / 1000)
    assert c.case == "dearer_after" and c.crossing == pytest.approx(1785.714, rel=1e-6)
    assert break_even(0.0, 0.03 / 1000, 0.05, 0.002 / 1000) == pytest.approx(c.crossing)


def _group(gid, strategy, mean, per_1k, train):
    label, model = gid.split(" | ")
    return {"id": gid, "label": label, "model": model, "strategy": strategy, "metric": "accuracy",
            "higher_is_better": True, "seeds": 3, "rows": [f"{label}__{model}__s0"], "failed": [],
            "score_mean": mean, "score_std": 0.01, "ci95": [mean - 0.02, mean + 0.02], "usd_train_mean": train,
            "usd_inference_per_1k_mean": per_1k}


def _recommend(choice: dict, base: dict, requests: int = 100_000) -> dict:
    # the floor keeps the baseline out, so the choice is chosen whatever it costs; the baseline is still named
    summary = {"groups": [choice, base], "pareto": {"metric": "accuracy"}}
    records = [{"row_id": r, "status": "ok"} for g in (choice, base) for r in g["rows"]]
    return recommendation(summary, records, {"quality_floor": 0.8, "requests_per_month": requests,
                                             "baseline": base["label"]})


def test_the_issues_example_is_cheaper_only_at_first_not_paying_for_itself():
    # choice $0 + $0.03/1k = $3/month at 100k; baseline $0.05 + $0.002/1k = $0.20/month. Cheaper up front by $0.05,
    # dearer by $2.80 a month: cheaper in total for 0.05 / 2.8 = 0.017857 months x 30.417 days = 0.5432 days = 13.0 h
    rec = _recommend(_group("zero-shot | api", "prompt", 0.9, 0.03, 0.0),
                     _group("lora | small", "finetune", 0.6, 0.002, 0.05))
    assert rec["choice"] == "zero-shot | api"
    text = rec["paragraph"]
    assert "pays for itself" not in text and rec["payback_days"] is None
    assert "$0.05 less up front but $2.80 more a month" in text
    assert "cheaper in total only for the first 13.0 hours, and dearer after that" in text


def test_pays_back_never_pays_back_and_cheaper_from_the_first_request_are_said_as_they_are():
    base = _group("zero-shot | big", "prompt", 0.6, 2.0, 0.0)  # $200/month at 100k
    # $10 more up front, $150 a month less: 10/150 months x 30.417 = 2.03 days
    pays = _recommend(_group("lora | small", "finetune", 0.9, 0.5, 10.0), base)
    assert "$10.00 more up front and saves $150 a month, so it pays for itself in 2 days" in pays["paragraph"]
    # $10 more up front and $100 a month more: never
    never = _recommend(_group("lora | small", "finetune", 0.9, 3.0, 10.0), base)
    assert "$10.00 more up front and $100 more a month, so it never pays back" in never["paragraph"]
    assert never["payback_days"] is None
    # nothing up front and $150 a month less
    free = _recommend(_group("rag | big", "rag", 0.9, 0.5, 0.0), base)
    assert "cheaper in total from the first request" in free["paragraph"] and free["payback_days"] == 0.0
    # a payback below a minute: $0.001 more up front, $150 a month less: 0.001/150 x 730 h x 3600 = 17.5 s
    quick = _recommend(_group("lora | small", "finetune", 0.9, 0.5, 0.001), base)
    assert "pays for itself in 18 seconds" in quick["paragraph"] and "0.0 hours" not in quick["paragraph"]


# --- the deployment model ----------------------------------------------------------------------------------------

CPU = Serving("self-hosted", "cpu", 0.10, 2.0, None)  # one instance answers 2 requests a second


def test_always_on_pays_for_instances_not_busy_seconds():
    # 100,000 requests a month = 100000 / (730 x 3600) = 0.0381 requests/s; peak 3x = 0.114/s < 2/s: 1 instance,
    # $0.10 x 730 h = $73 a month (busy seconds alone would be 100000 / 2 s = 13.9 h = $1.39)
    cost = monthly_cost(CPU, 100_000, DeploymentConfig())
    assert cost.instances == 1 and cost.usd == pytest.approx(73.0)
    assert cost.assumptions.startswith("1 always-on cpu instance at $0.10/h, 100,000 requests/month, peak 3x average")
    # 100M requests: 38.05/s average, 114.16/s at peak, / 2 per instance = 57.08 -> 58 instances = $4,234
    big = monthly_cost(CPU, 100_000_000, DeploymentConfig())
    assert big.instances == 58 and big.usd == pytest.approx(58 * 0.10 * 730)
    # two kept up whatever the traffic, at a stated price
    two = monthly_cost(CPU, 1_000, DeploymentConfig(min_instances=2, usd_per_hour=0.5))
    assert two.instances == 2 and two.usd == pytest.approx(2 * 0.5 * 730) and "$0.50/h" in two.assumptions


def test_scale_to_zero_pays_for_work_hours_times_the_peak_factor():
    # 100,000 requests / 2 per second = 50,000 s = 13.89 h of work; x 3 = 41.67 billed hours x $0.10 = $4.17
    cost = monthly_cost(CPU, 100_000, DeploymentConfig(mode="scale_to_zero", min_instances=0))
    assert cost.billed_hours == pytest.approx(100_000 / 2 / 3600 * 3) and cost.usd == pytest.approx(4.1667, 1e-4)
    assert "scale-to-zero cpu instances" in cost.assumptions
    assert monthly_cost(CPU, 0, DeploymentConfig(mode="scale_to_zero")).usd == 0.0


def test_api_rows_stay_tokens_times_price():
    api = Serving("api", "cpu", None, None, 0.0003)  # $0.30 per 1k requests
    cost = monthly_cost(api, 100_000, DeploymentConfig())
    assert cost.usd == pytest.approx(30.0) and "the API's bill" in cost.assumptions


def test_serving_is_read_from_the_records():
    local = {"row_id": "a", "status": "ok", "meter": {
        "hardware": "cpu", "usd": {"rate_per_hour": 0.1},
        "phases": {"inference": {"examples": 48, "wall_s": 24.0}}}}  # 48 rows in 24 s: 2 requests/s
    assert serving_of([local]) == Serving("self-hosted", "cpu", 0.1, 2.0, None)
    api = {"row_id": "b", "status": "ok", "meter": {
        "hardware": "cpu", "usd": {"rate_per_hour": 0.1}, "phases": {"inference": {"examples": 100, "wall_s": 5.0}},
        "api": {"inference": {"requests": 100, "usd": 0.3, "unpriced_models": []}}}}
    assert serving_of([api]).usd_per_request == pytest.approx(0.003)
    assert serving_of([{**local, "status": "failed"}]) is None


def test_the_recommendation_prints_the_deployment_next_to_the_number():
    group = _group("lora | small", "finetune", 0.9, 0.001, 1.0)
    record = {"row_id": "lora__small__s0", "status": "ok", "meter": {
        "hardware": "cpu", "usd": {"rate_per_hour": 0.1}, "phases": {"inference": {"examples": 48, "wall_s": 24.0}}}}
    rec = recommendation({"groups": [group], "pareto": {"metric": "accuracy"}}, [record], None)
    assert rec["monthly_usd"] == pytest.approx(73.0)
    assert ("$73.00/month (1 always-on cpu instance at $0.10/h, 100,000 requests/month, peak 3x average"
            in rec["paragraph"])


def test_the_deployment_block_is_validated(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent("""
        name: t
        data: {source: rows.jsonl}
        models: [tiny-llama]
        strategies: [{name: prompt}]
        report: {deployment: {mode: always_on, min_instances: 0}}
    """))
    with pytest.raises(ConfigError, match="report.deployment: always_on needs min_instances >= 1"):
        load_experiment(path)
    path.write_text(path.read_text().replace("mode: always_on, min_instances: 0", "mode: scale_to_zero, "
                                                                                   "peak_to_average: 2"))
    assert load_experiment(path).report.deployment.peak_to_average == 2


# --- the command line --------------------------------------------------------------------------------------------

def _cli_record(row_id, index, label, strategy, score, train_usd, examples, wall):
    return {"schema_version": 1, "row_id": row_id, "row_index": index, "label": label, "strategy": strategy,
            "config": {"name": strategy, "shots": 0}, "model": "m1", "seed": 0, "train_size": 4,
            "train_size_requested": None, "status": "ok", "error": None, "test_rows": examples,
            "test_ids_sha256": ids_digest(["2"]), "environment": {}, "details": {}, "primary_metric": "accuracy",
            "metrics": [{"name": "accuracy", "value": score, "higher_is_better": True}],
            "meter": {"hardware": "cpu", "wall_s": wall, "peak_rss_bytes": 2**30, "trainable_params": 0,
                      "total_params": 10, "inference_latency_s_per_example": wall / examples,
                      "phases": {"inference": {"examples": examples, "wall_s": wall, "tokens": 0, "cpu_s": wall}},
                      "usd": {"rate_per_hour": 0.1, "train": train_usd, "total": train_usd,
                              "inference_per_1k": 0.1 * wall / examples * 1000 / 3600}}}


def test_lmtailor_report_takes_the_deployment_from_the_command_line(tmp_path):
    from lmtailor.cli import main
    from lmtailor.io import write_json_atomic

    write_json_atomic(tmp_path / "task.json", {"name": "t", "type": "classification", "instruction": "x",
                                               "labels": ["a", "b"]})
    write_json_atomic(tmp_path / "splits.json", {"source": "d", "seed": 0, "train": ["1"], "validation": [],
                                                 "test": ["2"]})
    # 48 test rows in 24 s: 2 requests a second per instance
    write_json_atomic(tmp_path / "results" / "zs.json", _cli_record("zs", 0, "zs", "prompt", 0.9, 0.0, 48, 24.0))
    assert main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    # always-on by default: 1 instance x $0.10 x 730 h
    assert "$73.00 (1 always-on cpu instance)" in md and "at least 1" in md
    assert main(["report", str(tmp_path), "--deployment", "scale_to_zero", "--instance-usd-per-hour", "1.0"]) == 0
    md = (tmp_path / "report.md").read_text()
    # 100,000 / 2 per s = 13.89 h of work x peak 3 = 41.67 billed hours x $1 = $41.67
    assert "$41.67 (scale-to-zero, 41.7 h billed)" in md and "scale-to-zero instances" in md
    results = (tmp_path / "results.json").read_bytes()
    assert main(["report", str(tmp_path), "--peak-to-average", "2"]) == 0
    assert (tmp_path / "results.json").read_bytes() == results  # the summary does not depend on the target


def test_lmtailor_validate_refuses_an_unpriced_api_model(tmp_path, capsys):
    from lmtailor.cli import main

    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent("""
        name: t
        data: {source: rows.jsonl}
        models: ["openai:gpt-x@http://127.0.0.1:9/v1"]
        strategies: [{name: prompt}]
    """))
    assert main(["validate", str(path)]) == 2
    assert main(["run", str(path), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr()
    text = " ".join((err.out + err.err).split()).replace(": models.0", ":models.0")  # the terminal wraps lines
    assert "models.0: the API model 'gpt-x' has no price" in text and "gpt-x: {unpriced: true}" in text
    assert "gpt-x: {input_usd_per_1m: 0.15, output_usd_per_1m: 0.60}" in text
    assert not (tmp_path / "runs").exists()


def test_the_trivial_baseline_rule_costs_nothing_to_serve():
    """A fixed rule with no model (strategies/baseline.py) has no instance of its own: $0 a month, said so; were it
    priced as an always-on instance ($73 at the defaults) it could never be the cheapest row."""
    from lmtailor.report.deployment import DeploymentConfig, monthly_cost, serving_of

    serving = serving_of([{"row_id": "b", "strategy": "baseline", "status": "ok", "meter": {}}])
    cost = monthly_cost(serving, 100_000, DeploymentConfig())
    assert serving.kind == "rule" and cost.usd == 0.0 and "no model" in cost.assumptions
    assert serving_of([{"row_id": "b", "strategy": "baseline", "status": "failed", "meter": {}}]) is None


def test_one_instance_capacity_and_a_sub_cent_difference_is_not_called_a_reason():
    from lmtailor.report.deployment import instance_capacity

    # 2 requests/s x 730 h x 3600 s / peak 3 = 1,752,000 requests a month on one always-on instance; at exactly that
    # volume the sizing of monthly_cost still needs one instance, just above it two
    cap = instance_capacity(CPU, DeploymentConfig())
    assert cap == pytest.approx(1_752_000)
    assert monthly_cost(CPU, cap, DeploymentConfig()).instances == 1
    assert monthly_cost(CPU, cap * 1.001, DeploymentConfig()).instances == 2
    assert instance_capacity(CPU, DeploymentConfig(mode="scale_to_zero", min_instances=0)) is None
    assert instance_capacity(Serving("api", "cpu", None, None, 0.001), DeploymentConfig()) is None

    # Two self-hosted rows that both fit on one always-on instance cost $73 a month each; the choice costs $0.0008
    # more once. "Never pays back" would be true and misleading: the report says they cost the same in practice,
    # and says where one instance stops being enough for each (2 req/s: 1.75M; 40 req/s: 35.0M a month).
    def record(row_id, examples, wall, train_usd):
        return {"row_id": row_id, "status": "ok", "meter": {
            "hardware": "cpu", "usd": {"rate_per_hour": 0.1},
            "phases": {"inference": {"examples": examples, "wall_s": wall}}}}

    choice = _group("full | enc", "finetune", 0.9, 0.0002, 0.0009)
    base = _group("4-shot | dec", "prompt", 0.6, 0.02, 0.0001)
    records = [record("full__enc__s0", 80, 2.0, 0.0009), record("4-shot__dec__s0", 48, 24.0, 0.0001)]
    rec = recommendation({"groups": [choice, base], "pareto": {"metric": "accuracy"}}, records,
                         {"quality_floor": 0.8, "baseline": "4-shot"})
    assert rec["choice"] == "full | enc"
    assert "never pays back" not in rec["paragraph"]
    assert "it costs the same a month and $0.0008 more once, less than a cent: in practice the two cost the same" \
        in rec["paragraph"]
    assert any(s.startswith("One always-on instance carries up to 35M a month for full | enc and 1.75M a month "
                            "for 4-shot | dec") for s in rec["what_would_change"])
    # a difference of a dollar is a reason, and is still called what it is
    dearer = recommendation(
        {"groups": [dict(choice, usd_train_mean=1.0001), base], "pareto": {"metric": "accuracy"}}, records,
        {"quality_floor": 0.8, "baseline": "4-shot"})
    assert "$1.00 more up front and no less a month, so it never pays back" in dearer["paragraph"]
