"""A prompted row below the majority-class rate is named in the report, with the remedies it has not tried."""

from __future__ import annotations

from lmtailor.report.below_majority import below_majority_notes, majority_rate
from lmtailor.report.markdown_report import render_markdown_report
from lmtailor.report.html import render_html


def _rec(label: str, strategy: str, accuracy: float, config: dict | None = None, seed: int = 0,
         support: dict | None = None, predicted: dict | None = None) -> dict:
    return {"row_id": f"{label}__m__s{seed}", "label": label, "model": "m", "strategy": strategy, "seed": seed,
            "status": "ok", "config": {"name": strategy, **(config or {})},
            "task": {"name": "t", "type": "classification"}, "primary_metric": "accuracy",
            "metrics": [{"name": "accuracy", "value": accuracy, "higher_is_better": True}],
            "score_details": {"per_class": {k: {"support": v} for k, v in (support or {}).items()},
                              "prediction_counts": predicted or {}}}


# 200 test rows: a 63, b 50, c 47, d 40 -> the most common label's share is 63 / 200 = 0.315
SUPPORT = {"a": 63, "b": 50, "c": 47, "d": 40}


def test_without_a_baseline_row_the_test_sets_most_common_label_is_the_floor():
    records = [_rec("zero-shot", "prompt", 0.175, {"shots": 0}, support=SUPPORT),
               _rec("8-shot", "prompt", 0.045, {"shots": 8}, support=SUPPORT, predicted={"c": 102, "d": 87, "b": 11}),
               _rec("8-shot similar", "prompt", 0.40, {"shots": 8, "exemplars": "similar"}, support=SUPPORT)]
    rate, source = majority_rate(records)
    assert rate == 0.315 and "share ('a', 63 of 200 test rows" in source
    notes = below_majority_notes(records)
    assert len(notes) == 2  # 0.40 is above 0.315
    assert notes[0].startswith("**zero-shot on m scores 0.175, below the majority-class rate 0.315**")
    # zero-shot has no exemplars to choose: the remedy is to add some
    assert "`calibrate: true`" in notes[0] and "exemplars (`shots`, with `exemplars: similar`)" in notes[0]
    assert "Its answers fall on 3 labels (most: 'c' 102, 'd' 87 of 200)." in notes[1]
    assert "`exemplars: similar`" in notes[1] and "fine-tuning" in notes[1]


def test_the_baseline_row_is_preferred_and_remedies_already_tried_are_not_offered():
    records = [_rec("majority class", "baseline", 0.30, support=SUPPORT),
               # seeds average: (0.25 + 0.33) / 2 = 0.29 < 0.30
               _rec("4-shot similar, calibrated", "prompt", 0.25,
                    {"shots": 4, "exemplars": "similar", "calibrate": True}, support=SUPPORT),
               _rec("4-shot similar, calibrated", "prompt", 0.33,
                    {"shots": 4, "exemplars": "similar", "calibrate": True}, seed=1, support=SUPPORT),
               _rec("lora", "finetune", 0.10, support=SUPPORT)]  # not a prompted row: never named here
    assert majority_rate(records) == (0.30, "the rate is the score of the majority-class baseline row (majority class)")
    [note] = below_majority_notes(records)
    assert "scores 0.290, below the majority-class rate 0.300" in note
    assert "calibrate" not in note.split("Remedies:")[1] and "similar" not in note.split("Remedies:")[1]
    assert note.endswith("Remedies: more shots or a larger model, fine-tuning (a `finetune` row).")


def test_rows_at_or_above_the_rate_and_other_task_types_say_nothing():
    assert below_majority_notes([_rec("zero-shot", "prompt", 0.315, {"shots": 0}, support=SUPPORT)]) == []
    gen = _rec("zero-shot", "prompt", 0.1, {"shots": 0})
    gen.update(task={"name": "t", "type": "generation"}, primary_metric="rougeL")
    assert majority_rate([gen]) is None and below_majority_notes([gen]) == []


def test_the_note_is_in_both_reports_cost_benefit_section(tmp_path):
    from test_report_html import _record, _run_dir

    from lmtailor.report.results_json import build_results, load_records

    # the report tests' records (zero-shot 0.5, few-shot 0.7, rag 0.6), with 2 test rows: b, b -> rate 1.0
    records = [_record("zero-shot__m1__s0", 0, "zero-shot", "prompt", 0.5, usd_train=0.0, per_1k=2.0, usd_total=0.2,
                       shots=0),
               _record("few-shot__m1__s0", 1, "few-shot", "prompt", 1.0, usd_train=0.0, per_1k=2.5, usd_total=0.5,
                       shots=4)]
    for r in records:
        r["task"] = {"name": "t", "type": "classification"}
        r["score_details"] = {"per_class": {"a": {"support": 0}, "b": {"support": 2}}}
    run = _run_dir(tmp_path, records)
    summary, loaded = build_results(run), load_records(run)
    md = render_markdown_report(summary, loaded, "r")
    section = md.split("## Cost-benefit by rung")[1].split("## Every configuration")[0]
    assert "- **zero-shot on m1 scores 0.500, below the majority-class rate 1.000**" in section
    assert "few-shot on m1" not in md.split("## Every configuration")[0]
    html = render_html(summary, loaded, "r")
    assert "<strong>zero-shot on m1 scores 0.500, below the majority-class rate 1.000</strong>" in html
    assert "<code>calibrate: true</code>" in html


def test_the_note_is_in_results_md_too():
    from test_table import _record

    from lmtailor.report.table import results_markdown

    record = _record("8-shot", "m", 0.045, shots=8)
    record.update(task={"name": "t", "type": "classification"},
                  score_details={"per_class": {k: {"support": v} for k, v in SUPPORT.items()}})
    assert "- **8-shot on m scores 0.045, below the majority-class rate 0.315**" in results_markdown([record])
