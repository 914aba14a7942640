"""report.html and report.md: every chart drawn (or its absence explained), failed rows kept, frontier and break-even
marked with hand-computed values, self-contained and deterministic."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from lmtailor.config import ReportConfig
from lmtailor.io import write_json_atomic
from lmtailor.report.charts import ABSENT
from lmtailor.report.html import render_html, write_report
from lmtailor.report.markdown_report import cost_benefit_rows, render_markdown_report
from lmtailor.report.results_json import build_results, load_records
from lmtailor.tasks.held_out import ids_digest

CHARTS = ["pareto", "learning_curves", "memory", "forgetting", "break_even"]
TRAINED_ONLY = ["learning_curves", "forgetting", "break_even"]


def _record(row_id: str, index: int, label: str, strategy: str, score: float | None, *, usd_train: float,
            per_1k: float, usd_total: float, seed: int = 0, size: int | None = None, shots: int | None = None,
            trainable: int = 0) -> dict:
    ok = score is not None
    trained = strategy == "finetune"
    return {
        "schema_version": 1, "row_id": row_id, "row_index": index, "label": label, "strategy": strategy,
        "config": {"name": strategy, **({"shots": shots} if shots is not None else {})},
        "model": "m1", "seed": seed, "train_size": size or 40, "train_size_requested": size,
        "status": "ok" if ok else "failed",
        "error": None if ok else {"type": "RuntimeError", "message": "loss <nan> at step 3", "traceback": "..."},
        "metrics": [{"name": "accuracy", "value": score, "higher_is_better": True}] if ok else [],
        "primary_metric": "accuracy" if ok else None, "details": {},
        "meter": {"wall_s": 2.0, "peak_rss_bytes": 2**30, "phases": {"train": {"wall_s": 60.0 if trained else 0.0}},
                  "peak_rss_bytes_by_phase": {"train": 3 * 2**30} if trained else {},
                  "trainable_params": trainable if ok else None, "total_params": 1000,
                  "inference_latency_s_per_example": 0.01,
                  "usd": {"train": usd_train, "total": usd_total, "inference_per_1k": per_1k}},
        "forgetting": {"delta_perplexity_pct": 12.5, "delta_accuracy_pts": -2.0} if trained and ok else None,
    }


PROMPTED = [
    # zero-shot: $0 up front, $2 per 1k requests; few-shot: $0 + $2.5 per 1k
    _record("zero-shot__m1__s0", 0, "zero-shot", "prompt", 0.5, usd_train=0.0, per_1k=2.0, usd_total=0.2, shots=0),
    _record("few-shot__m1__s0", 1, "few-shot", "prompt", 0.7, usd_train=0.0, per_1k=2.5, usd_total=0.5, shots=4),
    _record("rag__m1__s0", 2, "rag", "rag", 0.6, usd_train=0.5, per_1k=3.0, usd_total=1.0),
]
TRAINED = [
    _record("finetune-n-10__m1__s0", 3, "finetune n=10", "finetune", 0.6, usd_train=4.0, per_1k=0.5, usd_total=5.0,
            size=10, trainable=100),
    _record("finetune-n-10__m1__s1", 4, "finetune n=10", "finetune", 0.7, usd_train=4.0, per_1k=0.5, usd_total=5.0,
            seed=1, size=10, trainable=100),
    # best fine-tuned: $10 up front, $0.5 per 1k
    _record("finetune-n-20__m1__s0", 5, "finetune n=20", "finetune", 0.8, usd_train=10.0, per_1k=0.5, usd_total=12.0,
            size=20, trainable=100),
    _record("lora__m1__s0", 6, "lora", "finetune", None, usd_train=0.0, per_1k=0.0, usd_total=0.0),
]


TEST_DIGEST = ids_digest(["4", "5"])  # the digest of the test rows _run_dir writes to splits.json


def _run_dir(path, records):
    write_json_atomic(path / "task.json", {"name": "t", "type": "classification", "instruction": "x",
                                           "labels": ["a", "b"]})
    write_json_atomic(path / "splits.json", {"source": "d.jsonl", "seed": 0, "train": ["1", "2"],
                                             "validation": ["3"], "test": ["4", "5"],
                                             "learning_curve_subsets": {"10": ["1"], "20": ["1", "2"]}})
    for r in records:
        write_json_atomic(path / "results" / f"{r['row_id']}.json", r)
    return path


class _Page(HTMLParser):
    """Collects, per <figure id>, its SVG elements (with the ids of enclosing <g>s), captions and absence notes."""

    def __init__(self):
        super().__init__()
        self.figures: dict[str, dict] = {}
        self.figure = None
        self.groups: list[str | None] = []
        self.in_caption = False
        self.refs: list[str] = []
        self.text: list[str] = []
        self.failed_tr_cells: list[list[str]] = []
        self.tr_failed = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for name in ("href", "xlink:href", "src"):
            if name in a:
                self.refs.append(a[name])
        if tag == "figure":
            self.figure = self.figures.setdefault(a["id"], {"elements": [], "caption": "", "absent": ""})
        elif self.figure is not None and tag == "g":
            self.groups.append(a.get("id"))
        elif self.figure is not None:
            self.figure["elements"].append((tag, tuple(g for g in self.groups if g)))
        if tag == "figcaption":
            self.in_caption = True
        if tag == "tr":
            self.tr_failed = a.get("class") == "failed"
            if self.tr_failed:
                self.failed_tr_cells.append([])

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag == "g" and self.figure is not None:
            self.groups.pop()

    def handle_endtag(self, tag):
        if tag == "figure":
            self.figure = None
        elif tag == "g" and self.figure is not None:
            self.groups.pop()
        elif tag == "figcaption":
            self.in_caption = False
        elif tag == "tr":
            self.tr_failed = False

    def handle_data(self, data):
        self.text.append(data)
        if self.figure is not None:
            self.figure["caption" if self.in_caption else "absent"] += data
        if self.tr_failed:
            self.failed_tr_cells[-1].append(data)


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


@pytest.fixture
def full_run(tmp_path):
    return _run_dir(tmp_path, PROMPTED + TRAINED)


def test_every_chart_is_an_svg_with_paths_and_markers(full_run):
    text = render_html(build_results(full_run), load_records(full_run), "demo <run>")
    page = _parse(text)
    for key in CHARTS:
        fig = page.figures[f"chart-{key}"]
        tags = [t for t, _ in fig["elements"]]
        assert tags.count("svg") == 1 and tags.count("path") > 3, key
        assert fig["caption"].strip(), key
    for key in ("pareto", "learning_curves", "break_even"):  # the charts with point markers
        assert "use" in [t for t, _ in page.figures[f"chart-{key}"]["elements"]], key
    assert "<title>demo &lt;run&gt;</title>" in text  # titles are escaped


def test_pareto_chart_marks_the_frontier(full_run):
    summary = build_results(full_run)
    # few-shot (0.7 for $0.5) dominates rag (0.6 for $1) and finetune n=10 (0.65 for $5)
    assert summary["pareto"]["frontier"] == ["zero-shot | m1", "few-shot | m1", "finetune n=20 | m1"]
    fig = _parse(render_html(summary, load_records(full_run), "r")).figures["chart-pareto"]
    markers = [t for t, groups in fig["elements"] if "pareto-frontier" in groups and t == "use"]
    dominated = [t for t, groups in fig["elements"] if "pareto-dominated" in groups and t == "use"]
    assert len(markers) == 3 and len(dominated) == 2
    assert "zero-shot | m1, few-shot | m1, finetune n=20 | m1" in fig["caption"]


def test_break_even_caption_states_the_hand_computed_crossing(full_run):
    summary, records = build_results(full_run), load_records(full_run)
    # best prompted (few-shot): $0 + $0.0025 a request; best fine-tuned (n=20): $10 + $0.0005 a request
    # 0.0025 n = 10 + 0.0005 n  ->  n = 5000; at 100,000 requests a month (of 730 hours) that is 36.5 hours
    caption = _parse(render_html(summary, records, "r")).figures["chart-break_even"]["caption"]
    assert "cross at 5,000 requests, about 36.5 hours at 100,000 requests a month" in caption
    assert "past that, finetune n=20 | m1 is cheaper in total" in caption
    # the experiment's baseline: zero-shot at $0.002 a request -> 10 / 0.0015 = 6,667 requests; at 1,000 a month
    # that is 6.667 months x 730 h = 4,867 h = 202.8 days
    cfg = ReportConfig(baseline="zero-shot", requests_per_month=1000)
    caption = _parse(render_html(summary, records, "r", report_cfg=cfg)).figures["chart-break_even"]["caption"]
    assert "cross at 6,667 requests, about 203 days at 1,000 requests a month" in caption


def test_break_even_cheaper_up_front_but_dearer_per_request_is_not_called_a_payback(tmp_path):
    # the case: the fine-tuned side is $0 + $0.03/1k, the prompted baseline $0.05 + $0.002/1k; the lines
    # cross at 0.05 / 0.000028 = 1,786 requests and the fine-tuned side is the dearer one after that
    base = _record("zs__m1__s0", 0, "zs", "prompt", 0.5, usd_train=0.05, per_1k=0.002, usd_total=0.1, shots=0)
    tuned = _record("ft__m1__s0", 1, "ft", "finetune", 0.9, usd_train=0.0, per_1k=0.03, usd_total=0.1, trainable=5)
    run = _run_dir(tmp_path, [base, tuned])
    caption = _parse(render_html(build_results(run), load_records(run), "r")).figures["chart-break_even"]["caption"]
    assert "cross at 1,786 requests" in caption
    assert "ft | m1 is cheaper up front, and zs | m1 is cheaper in total past that" in caption


def test_break_even_that_never_crosses_says_so(tmp_path):
    # the fine-tuned model costs more per request too: it never catches up
    tuned = _record("ft__m1__s0", 3, "ft", "finetune", 0.9, usd_train=1.0, per_1k=5.0, usd_total=2.0, trainable=5)
    run = _run_dir(tmp_path, PROMPTED + [tuned])
    caption = _parse(render_html(build_results(run), load_records(run), "r")).figures["chart-break_even"]["caption"]
    assert "never cross" in caption and "few-shot | m1" in caption


def test_failed_row_is_shown_as_failed_with_its_error(full_run):
    page = _parse(render_html(build_results(full_run), load_records(full_run), "r"))
    assert any(cells[0] == "lora" and any(c.startswith("failed 1/1: RuntimeError") for c in cells)
               for cells in page.failed_tr_cells)
    assert "lora__m1__s0 failed: RuntimeError: loss <nan> at step 3" in "".join(page.text)


def test_cost_benefit_table_has_one_best_row_per_rung(full_run):
    rows = {r.rung: r.cells for r in cost_benefit_rows(build_results(full_run), load_records(full_run))}
    assert list(rows) == ["prompt", "rag", "finetune"]
    assert rows["prompt"][1] == "few-shot | m1" and rows["prompt"][6] == "4 exemplars"
    assert rows["prompt"][7] == "accuracy 0.700 (1 seed)"
    assert rows["prompt"][8] == "+20.0 pts (noise unknown: few-shot | m1 has no per-row test scores)"
    # the n=20 curve reaches 0.8; 95 % of it is 0.76, which n=10 (0.65) misses: data required 20 (these version-1
    # records have no validation scores, so on the test means)
    assert rows["finetune"][1] == "finetune n=20 | m1" and rows["finetune"][6] == "20 examples (95 % of best, on test)"
    assert rows["finetune"][2] == "$10.00" and rows["finetune"][3] == "$0.5000" and rows["finetune"][4] == "1.0 min"


def _scored_rows(record: dict, test: list[float], validation: list[float]) -> dict:
    """``record`` as version 2: per-row scores on the 2 test rows and the 1 validation row."""
    return {**record, "schema_version": 2, "test_ids_sha256": TEST_DIGEST,
            "metrics": [{"name": "accuracy", "value": sum(test) / len(test), "higher_is_better": True}],
            "score_details": {"per_row": test},
            "validation": {"rows": 1, "ids_sha256": "v", "primary_metric": "accuracy",
                           "metrics": [{"name": "accuracy", "value": validation[0], "higher_is_better": True}],
                           "score_details": {"per_row": validation}}}


def test_cost_benefit_rows_choose_each_rung_on_validation_and_start_with_the_trivial_baseline(tmp_path):
    # few-shot scores best on test (1.0 against zero-shot's 0.5) but worse on validation (0 against 1): the prompt
    # rung's configuration is zero-shot, reported with its test score
    records = [_scored_rows(PROMPTED[0], [1.0, 0.0], [1.0]), _scored_rows(PROMPTED[1], [1.0, 1.0], [0.0]),
               _scored_rows({**PROMPTED[0], "row_id": "baseline__none__s0", "row_index": 3, "label": "baseline",
                             "strategy": "baseline", "model": "none", "config": {"name": "baseline"}},
                            [0.0, 0.0], [0.0])]
    run = _run_dir(tmp_path, records)
    summary = build_results(run)
    rows = {r.rung: r.cells for r in cost_benefit_rows(summary, load_records(run))}
    assert list(rows) == ["baseline", "prompt"]
    assert rows["prompt"][1] == "zero-shot | m1" and rows["prompt"][7] == "accuracy 0.500 (1 seed)"
    assert rows["baseline"][6] == "none (a fixed rule)"
    text = render_markdown_report(summary, load_records(run), "r")
    assert "Configurations were chosen on the 1 validation rows; scores are on the 2 test rows." in text


def test_page_is_self_contained_and_deterministic(full_run):
    summary, records = build_results(full_run), load_records(full_run)
    rec = {"paragraph": "Use <finetune> on m1.", "evidence": ["finetune-n-20__m1__s0"],
           "what_would_change": ["At 10× the requests, finetune pays back in 2 days."]}
    honesty = [{"check": "test rows unseen", "ok": True, "detail": "0 overlaps"},
               {"check": "stand-in models", "ok": False, "detail": "m1 is a stand-in"}]
    first = render_html(summary, records, "r", recommendation=rec, honesty=honesty)
    assert render_html(summary, records, "r", recommendation=rec, honesty=honesty) == first
    page = _parse(first)
    assert page.refs and all(ref.startswith("#") for ref in page.refs)  # only links inside the page's SVGs
    assert all(url.startswith("#") for url in re.findall(r"url\(\s*['\"]?([^)'\"]*)", first))  # clip paths only
    assert "<script" not in first and "@import" not in first and "<link" not in first
    assert "Use &lt;finetune&gt; on m1." in first
    assert "<li>At 10× the requests, finetune pays back in 2 days.</li>" in first
    assert first.index('id="recommendation"') < first.index('id="cost-benefit"') < first.index('id="honesty"')
    assert "stand-in models" in "".join(page.text)


def test_without_trained_rows_the_trained_charts_say_why_they_are_absent(tmp_path):
    run = _run_dir(tmp_path, PROMPTED)
    page = _parse(render_html(build_results(run), load_records(run), "r"))
    for key in TRAINED_ONLY:
        fig = page.figures[f"chart-{key}"]
        assert "svg" not in [t for t, _ in fig["elements"]], key
        assert ABSENT[key] in fig["absent"], key
    for key in ("pareto", "memory"):
        assert "svg" in [t for t, _ in page.figures[f"chart-{key}"]["elements"]], key


def test_write_report_writes_html_and_markdown_with_the_same_numbers(full_run):
    path = write_report(full_run, title="r")
    assert path == full_run / "report.html" and path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    md = (full_run / "report.md").read_text(encoding="utf-8")
    assert md == render_markdown_report(build_results(full_run), load_records(full_run), "r")
    assert "| finetune | finetune n=20 \\| m1 | $10.00 |" in md
    assert "cross at 5,000 requests" in md
    assert "**lora__m1__s0 failed**: RuntimeError: loss <nan> at step 3" in md
    assert "Recommendation" not in md and "Honesty" not in md  # omitted when not given


def test_delta_vs_zero_shot_is_called_a_difference_by_the_paired_test_only(tmp_path):
    """Δ vs zero-shot says what the paired bootstrap over the test rows says: differs, or within noise."""
    right = lambda k: [1.0] * k + [0.0] * (20 - k)  # noqa: E731 - right on the first k of 20 test rows
    def scored(record, k):
        return {**record, "test_ids_sha256": TEST_DIGEST, "score_details": {"per_row": right(k)},
                "metrics": [{"name": "accuracy", "value": k / 20, "higher_is_better": True}]}
    # zero-shot right on rows 0-9, few-shot on 0-11: two rows apart, and a resample misses both with probability
    # 0.9^20 = 12 %: the interval starts at 0. Fine-tuned on 0-17: eight rows apart, all one way: differs.
    records = [scored(PROMPTED[0], 10), scored(PROMPTED[1], 12), scored(TRAINED[2], 18)]
    run = _run_dir(tmp_path, records)
    rows = {r.rung: r.cells for r in cost_benefit_rows(build_results(run), load_records(run))}
    assert rows["prompt"][8].startswith("+10.0 pts (within noise: paired 95% CI +0.0 to +")
    assert rows["finetune"][8].startswith("+40.0 pts (differs: paired 95% CI +")
