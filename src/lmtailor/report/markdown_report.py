"""``report.md``: the cost-benefit report as text, and the section data report.html shares with it.

Pure functions of the run summary (``results_json.build_results``), the row records and the optional
recommendation and honesty checks: the same numbers as report.html, the charts given by caption and numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmtailor.report.below_majority import below_majority_notes
from lmtailor.report.charts import ABSENT, Chart, all_charts, best_group
from lmtailor.report.cost_notes import cost_notes
from lmtailor.report.deployment import DeploymentConfig, monthly_cost, serving_of
from lmtailor.report.extra_data import extra_data_findings
from lmtailor.report.paired import compare_groups, verdict_words
from lmtailor.report.search_section import search_tables
from lmtailor.report.selection import selection_sentence, selection_split
from lmtailor.report.table import TableRow, build_rows, fmt_usd, format_rows, headers
from lmtailor.report.traits import group_traits, rungs_in_order, traits_of
from lmtailor.rundir import RunDir
from lmtailor.strategies.traits import StrategyTraits

# "$ / month (as deployed)" is last so that the older columns keep their places
RUNG_HEADERS = ["rung", "best configuration", "$ train", "$ / 1k inferences", "train time", "inference / 1k",
                "data required", "metric (spread)", "Δ vs zero-shot", "$ / month (as deployed)"]


@dataclass
class RungRow:
    """The best configuration of one rung of the spectrum (one strategy kind), as display strings."""

    rung: str
    group_id: str
    cells: list[str]


def _duration(s: float | None) -> str:
    if not s:
        return "-"
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s"


def _spread(group: dict) -> str:
    """Mean ± std with the seed count; a single seed is stated, since it has no spread."""
    text = f"{group['metric']} {group['score_mean']:.3f}"
    if group["seeds"] > 1 and group["score_std"] is not None:
        return text + f" ± {group['score_std']:.3f} ({group['seeds']} seeds)"
    return text + f" ({group['seeds']} seed{'s' if group['seeds'] != 1 else ''})"


def _data_required(group: dict, traits: StrategyTraits, summary: dict, records: list[dict]) -> str:
    """Smallest training-set size reaching 95 % of the rung's best (from its learning curve), else what it used
    (``traits``: the group's)."""
    for curve in summary.get("learning_curves") or []:
        if curve["model"] == group["model"] and (group["label"] == curve["label"]
                                                 or group["label"].startswith(curve["label"] + " n=")):
            return f"{curve['data_required']} examples (95 % of best, on {curve.get('data_required_on', 'test')})"
    recs = [r for r in records if r["row_id"] in group["rows"]]
    if traits.use == "prompted":
        if "corpus" in traits.data:
            return "none trained (retrieval corpus)"
        return f"{traits.exemplars} exemplars" if traits.exemplars else "none (zero-shot)"
    if traits.fixed_rule:
        return "none (a fixed rule)"
    sizes = sorted({r.get("train_size") for r in recs if r.get("train_size") is not None})
    return f"{sizes[-1]} examples (one size run)" if sizes else "-"


def _zero_shot_group(groups: list[dict], records: list[dict], model: str) -> dict | None:
    """The zero-shot prompt group of ``model`` (the Δ column's reference), if it finished."""
    zero_shot_rows = {r["row_id"] for r in records if (t := traits_of(r)) is not None and t.zero_shot}
    return next((g for g in groups if g["model"] == model and set(g["rows"]) & zero_shot_rows), None)


def _per_month(group: dict, records: list[dict], report_cfg) -> str:
    """The group's $/month as deployed (``report/deployment.py``), with its instances in brief."""
    serving = serving_of([r for r in records if r.get("row_id") in set(group["rows"])])
    if serving is None:
        return "-"
    requests = report_cfg.requests_per_month if report_cfg is not None else 100_000
    deployment = report_cfg.deployment if report_cfg is not None else DeploymentConfig()
    cost = monthly_cost(serving, requests, deployment)
    if cost.usd is None:
        return "-"
    if serving.kind == "rule":
        how = "a fixed rule, no model"
    elif serving.kind == "api":
        how = "unpriced API: $0 on purpose" if serving.unpriced else "API bill"
    elif cost.instances is not None:
        how = f"{cost.instances} always-on {serving.hardware} instance{'s' if cost.instances != 1 else ''}"
    else:
        how = f"scale-to-zero, {cost.billed_hours:,.3g} h billed"
    return f"{fmt_usd(cost.usd)} ({how})"


def deployment_note(report_cfg) -> str:
    """The assumptions behind the "$ / month (as deployed)" column, in one sentence."""
    requests = report_cfg.requests_per_month if report_cfg is not None else 100_000
    d = report_cfg.deployment if report_cfg is not None else DeploymentConfig()
    rate = f"${d.usd_per_hour:.2f}/h" if d.usd_per_hour is not None else "the run's $/h for its hardware"
    mode = (f"always-on instances (at least {d.min_instances}), as many as the peak needs" if d.mode == "always_on"
            else "scale-to-zero instances, billed for their hours of work x the peak factor")
    return (f"$ / month (as deployed): at {requests:,} requests a month, a self-hosted configuration runs on {mode}, "
            f"at {rate}, with peak load {d.peak_to_average:g}x the average over {d.hours_per_month:g} hours a month; "
            "one instance serves what the row measured (test rows / inference time, at the run's "
            "budget.eval_batch_size). An API configuration costs its measured bill per request x requests. Set "
            "them in report.deployment. $ / 1k inferences is the machine's busy time only.")


def selection_line(summary: dict) -> str:
    """The report's one line on what configurations were chosen on and what their scores are measured on."""
    block = summary.get("selection")
    if block:
        return block["sentence"]
    splits = summary.get("splits") or {}
    metric = (summary.get("pareto") or {}).get("metric")
    groups = [g for g in summary.get("groups", []) if g.get("metric") == metric]
    return selection_sentence(selection_split(groups), splits.get("validation") or 0, splits.get("test") or 0)


def cost_benefit_rows(summary: dict, records: list[dict], report_cfg=None) -> list[RungRow]:
    """One row per rung that finished: its best group on the run's main metric (chosen on the validation rows,
    report/selection.py), with its test score, costs and data; rungs in the order of the spectrum, as the rows'
    strategies declare it (``report/traits.py``): the floors first (the trivial baseline, and the
    nearest-neighbour vote when the run has one).
    ``report_cfg`` (a ``ReportConfig``) sets the volume and deployment of the monthly cost.

    The Δ column's noise verdict is the paired bootstrap of the test rows (report/paired.py)."""
    metric = (summary.get("pareto") or {}).get("metric")
    groups = [g for g in summary.get("groups", []) if g["score_mean"] is not None and g["metric"] == metric]
    split = (summary.get("selection") or {}).get("split") or selection_split(groups)
    by_id = {r["row_id"]: r for r in records}
    table = {(r.label, r.model): r for r in build_rows(records)}
    traits = group_traits(groups, records)
    rows = []
    for rung in rungs_in_order(list(traits.values())):
        best = best_group([g for g in groups if (gt := traits[g["id"]]) is not None and gt.rung == rung], split)
        if best is None:
            continue
        t: TableRow | None = table.get((best["label"], best["model"]))
        delta = "-" if t is None or t.delta is None else f"{t.delta * 100:+.1f} pts"
        zero_shot = _zero_shot_group(groups, records, (t.baseline_model if t else None) or best["model"])
        if delta != "-" and zero_shot is not None and zero_shot is not best:
            # one definition of noise: the paired bootstrap over the test rows both were scored on
            delta += " " + verdict_words(compare_groups(best, zero_shot, by_id, "test"))
        train = _duration(t.train_s if t else None)  # "-" for a row that trained nothing
        rows.append(RungRow(rung, best["id"], [
            rung, best["id"],
            fmt_usd(best["usd_train_mean"]) if best["usd_train_mean"] else "$0",
            fmt_usd(best["usd_inference_per_1k_mean"]), train, _duration(t.infer_s_per_1k if t else None),
            _data_required(best, traits[best["id"]], summary, records), _spread(best), delta,
            _per_month(best, records, report_cfg)]))
    return rows


def detail_table(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Every strategy × model × data-size group (failed ones included, as failed): the columns and the cells."""
    rows = build_rows(records)
    return headers(rows), format_rows(rows)


def failed_rows(summary: dict) -> list[dict]:
    """The rows that failed, each with its error type and message (a failed row is reported, never dropped)."""
    return [r for r in summary.get("rows", []) if r["status"] != "ok"]


def _md_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    cell = lambda c: str(c).replace("|", "\\|").replace("\n", " ")  # noqa: E731 - a cell must stay on its line
    return (["| " + " | ".join(map(cell, columns)) + " |", "|" + "---|" * len(columns)]
            + ["| " + " | ".join(map(cell, r)) + " |" for r in rows])


def _chart_lines(key: str, chart: Chart | None) -> list[str]:
    if chart is None:
        return [f"### {key.replace('_', ' ')}", "", f"Not drawn: {ABSENT[key]}.", ""]
    return [f"### {chart.title}", "", chart.caption, ""] + [f"- {n}" for n in chart.numbers] + [""]


def render_markdown_report(summary: dict, records: list[dict], title: str, recommendation: dict | None = None,
                           honesty: list[dict] | None = None, report_cfg=None,
                           charts: list[tuple[str, Chart | None]] | None = None) -> str:
    """The report as Markdown: recommendation, cost-benefit table, detail table, failed rows, each chart's caption
    and numbers, honesty checks. ``report_cfg`` (a ``ReportConfig``) sets the break-even's baseline and volume;
    pass ``charts`` from ``all_charts`` to reuse charts already rendered for report.html."""
    if charts is None:
        charts = all_charts(summary, records, **chart_options(report_cfg))
    lines = [f"# {title}", ""]
    if recommendation:
        lines += ["## Recommendation", "", recommendation.get("paragraph", "")]
        if recommendation.get("evidence"):
            lines += ["", "Evidence: " + ", ".join(f"`{e}`" for e in recommendation["evidence"])]
        if recommendation.get("what_would_change"):
            lines += ["", "What would change the answer:", ""] + [f"- {w}" for w in recommendation["what_would_change"]]
        lines.append("")
    lines += ["## Cost-benefit by rung", "", "The best configuration of each rung of the spectrum that finished, and the "
              "trivial baseline (no model: the floor every score is read against). " + selection_line(summary), ""]
    rungs = cost_benefit_rows(summary, records, report_cfg)
    lines += _md_table(RUNG_HEADERS, [r.cells for r in rungs]) if rungs else ["No rung finished with a score."]
    below = below_majority_notes(records)
    if below:
        lines += [""] + [f"- {note}" for note in below]
    for note in [deployment_note(report_cfg), *cost_notes(records)]:
        lines += ["", note]
    columns, cells = detail_table(records)
    lines += ["", "## Every configuration", ""] + _md_table(columns, cells) + [""]
    for r in failed_rows(summary):
        error = r["error"] or {}
        lines.append(f"- **{r['row_id']} failed**: {error.get('type')}: {error.get('message')}")
    lines += [""] + extra_data_findings(records)  # gains of extra data against their equal-steps controls
    lines += _search_lines(records)
    lines += ["", "## Charts", ""]
    for key, chart in charts:
        lines += _chart_lines(key, chart)
    if honesty is not None:
        lines += ["## Honesty checks", ""]
        lines += [f"- {'✓' if c.get('ok') else '✗'} **{c.get('check')}**: {c.get('detail', '')}" for c in honesty]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _search_lines(records: list[dict]) -> list[str]:
    """The hyperparameter-search section: per searched row, the chosen values and every trial (none: no lines)."""
    tables = search_tables(records)
    if not tables:
        return []
    lines = ["", "## Hyperparameter search", ""]
    for t in tables:
        lines += [f"### {t.label}", "", f"`{t.row_id}` {t.summary}.", ""] + _md_table(t.columns, t.rows) + [""]
    return lines


def chart_options(report_cfg) -> dict:
    """The chart settings taken from the experiment's ``report:`` section (defaults when None)."""
    if report_cfg is None:
        return {}
    return {"requests_per_month": report_cfg.requests_per_month, "baseline_label": report_cfg.baseline,
            "deployment": report_cfg.deployment}


def write_markdown_report(run_dir: Path, summary: dict, records: list[dict], title: str, **kwargs) -> Path:
    """Write ``run_dir/report.md`` atomically; keyword arguments as for ``render_markdown_report``."""
    run = RunDir(run_dir)
    run.write_text(run.report_md, render_markdown_report(summary, records, title, **kwargs))
    path = run.report_md
    return path


__all__ = ["RungRow", "chart_options", "cost_benefit_rows", "detail_table", "failed_rows",
           "render_markdown_report", "write_markdown_report"]
