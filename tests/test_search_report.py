"""The report's hyperparameter-search section and honesty check, on hand-made records (no model)."""

from __future__ import annotations

from lmtailor.report.search_section import search_parity_check, search_tables

SEARCH = {
    "metric": "validation_loss", "direction": "lower", "best_trial": 1,
    "chosen": {"learning_rate": 0.0123, "lora_r": 8},
    "trials": [
        {"number": 0, "params": {"learning_rate": 0.0004, "lora_r": 4}, "validation_loss": 1.5, "value": 1.5,
         "state": "complete", "steps": 24, "seconds": 3.0},
        {"number": 1, "params": {"learning_rate": 0.0123, "lora_r": 8}, "validation_loss": 0.75, "value": 0.75,
         "state": "complete", "steps": 24, "seconds": 3.2},
        {"number": 2, "params": {"learning_rate": 0.3, "lora_r": 32}, "validation_loss": 9.0, "value": 9.0,
         "state": "pruned", "steps": 6, "seconds": 0.8},
    ],
}


def _record(row_id: str, strategy: str = "finetune", search: dict | None = None, status: str = "ok") -> dict:
    ok = status == "ok"
    return {"row_id": row_id, "row_index": 0, "label": row_id.split("__")[0], "strategy": strategy,
            "status": status, "model": "m", "seed": 0, "train_size": 4, "train_size_requested": None,
            "error": None if ok else {"type": "ValueError", "message": "m", "traceback": "T"},
            "metrics": [{"name": "accuracy", "value": 0.5, "higher_is_better": True}] if ok else [],
            "primary_metric": "accuracy" if ok else None, "score_details": {"n": 4},
            "meter": {"wall_s": 1.0, "usd": {"train": 0.0, "total": 0.01, "inference_per_1k": 0.001}},
            "details": {"search": search} if search else {}}


def test_trial_table_and_chosen_values():
    (table,) = search_tables([_record("lora-searched__m__s0", search=SEARCH), _record("lora__m__s0")])
    assert table.row_id == "lora-searched__m__s0"
    assert "chose learning_rate 0.0123, lora_r 8 (trial 1" in table.summary
    assert "3 trials (2 complete, 1 pruned, 0 failed)" in table.summary
    assert table.columns == ["trial", "learning_rate", "lora_r", "validation loss", "state", "steps", "time"]
    assert table.rows[1] == ["1 (chosen)", "0.0123", "8", "0.7500", "complete", "24", "3.2 s"]
    assert table.rows[2][0] == "2" and table.rows[2][4] == "pruned"


def test_trial_table_shows_the_validation_score_when_it_chose():
    by_score = {**SEARCH, "metric": "validation_score", "direction": "higher",
                "trials": [{**t, "validation_score": s} for t, s in zip(SEARCH["trials"], (0.5, 0.625, None))]}
    (table,) = search_tables([_record("lora-searched__m__s0", search=by_score)])
    assert table.columns[3:5] == ["validation loss", "validation score"]
    assert table.rows[1][3:5] == ["0.7500", "0.6250"] and table.rows[2][4] == "-"
    assert "best validation score, higher is better" in table.summary


def test_failed_searched_row_has_no_table():
    assert search_tables([_record("x__m__s0", search=SEARCH, status="failed")]) == []


def test_honesty_flags_searched_against_hand_set_and_names_the_rows():
    records = [_record("lora-searched__m__s0", search=SEARCH), _record("ia3__m__s0"),
               _record("zs__m__s0", strategy="prompt")]
    check = search_parity_check(records)
    assert check is not None and not check["ok"]
    assert "(lora-searched__m__s0)" in check["detail"] and "(ia3__m__s0)" in check["detail"]
    assert "prompted rows (zs__m__s0) are not searched" in check["detail"]


def test_honesty_passes_when_every_trained_row_was_searched_and_is_absent_without_search():
    all_searched = [_record("a__m__s0", search=SEARCH), _record("b__m__s0", strategy="scratch", search=SEARCH)]
    check = search_parity_check(all_searched)
    assert check["ok"] and "every trained row was searched (a__m__s0, b__m__s0)" in check["detail"]
    assert search_parity_check([_record("a__m__s0"), _record("zs__m__s0", strategy="prompt")]) is None


def test_reports_show_the_section_only_for_searched_runs():
    """The sections report.md and report.html add after the detail table."""
    from lmtailor.report.html import _search
    from lmtailor.report.markdown_report import _search_lines

    searched = [_record("lora-searched__m__s0", search=SEARCH)]
    md = "\n".join(_search_lines(searched))
    assert "## Hyperparameter search" in md and "| 1 (chosen) | 0.0123 | 8 | 0.7500 |" in md
    html = _search(searched)
    assert html.startswith('<section id="search">') and "1 (chosen)" in html
    assert _search_lines([_record("lora__m__s0")]) == [] and _search([_record("lora__m__s0")]) == ""


def test_honesty_checks_of_a_run_include_the_flag(tmp_path):
    from lmtailor.report.honesty import honesty_checks

    records = [_record("lora-searched__m__s0", search=SEARCH), _record("ia3__m__s0")]
    checks = {c["check"]: c for c in honesty_checks(tmp_path, records)}
    flag = checks["trained rows tuned alike (all searched, or all hand-set)"]
    assert not flag["ok"] and "ia3__m__s0" in flag["detail"]
    assert "trained rows tuned alike (all searched, or all hand-set)" not in {
        c["check"] for c in honesty_checks(tmp_path, [_record("ia3__m__s0")])}
