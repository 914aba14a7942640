"""``report.html``: the cost-benefit report as one self-contained page (inline CSS and SVG, no scripts, no fonts
or anything else fetched from the network), so it opens from disk anywhere.

A pure function of the run summary and records (plus the optional recommendation and honesty checks); every
piece of text from a record goes through ``html.escape``. The only markup not built here is matplotlib's SVG.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from lmtailor.report.charts import ABSENT, Chart, all_charts
from lmtailor.report.below_majority import below_majority_notes
from lmtailor.report.cost_notes import cost_notes
from lmtailor.report.extra_data import extra_data_findings
from lmtailor.report.markdown_report import (RUNG_HEADERS, chart_options, cost_benefit_rows, deployment_note,
                                             detail_table, failed_rows, render_markdown_report, selection_line)
from lmtailor.report.results_json import build_results, load_records
from lmtailor.report.search_section import search_tables
from lmtailor.rundir import RunDir

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 2rem auto;
       max-width: 72rem; padding: 0 1rem; color: #1a1a1a; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0 1rem; display: block; overflow-x: auto; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } tr.failed td { background: #fdecea; color: #8a1c1c; }
.recommendation { background: #eef6ee; border-left: 4px solid #2e7d32; padding: 0.75rem 1rem; }
figure { margin: 1rem 0 2rem; } figure svg { max-width: 100%; height: auto; }
figcaption, .absent { font-size: 0.9rem; color: #333; } .absent { font-style: italic; }
li.ok::marker { content: "✓ "; color: #2e7d32; } li.not-ok::marker { content: "✗ "; color: #c62828; }
"""

e = html.escape


def _table(columns: list[str], rows: list[list[str]], row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{e(c)}</th>" for c in columns)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{e(row_classes[i])}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _recommendation(rec: dict | None) -> str:
    if not rec:
        return ""
    evidence = rec.get("evidence") or []
    ev = f"<p>Evidence: {', '.join(f'<code>{e(str(x))}</code>' for x in evidence)}</p>" if evidence else ""
    changes = rec.get("what_would_change") or []
    change = (f"<p>What would change the answer:</p><ul>{''.join(f'<li>{e(str(c))}</li>' for c in changes)}</ul>"
              if changes else "")
    return (f'<section id="recommendation" class="recommendation"><h2>Recommendation</h2>'
            f"<p>{e(rec.get('paragraph', ''))}</p>{ev}{change}</section>")


def _cost_benefit(summary: dict, records: list[dict], report_cfg=None) -> str:
    rungs = cost_benefit_rows(summary, records, report_cfg)
    table = _table(RUNG_HEADERS, [r.cells for r in rungs]) if rungs else "<p>No rung finished with a score.</p>"
    below = below_majority_notes(records)
    notes = "".join(f"<p>{e(n)}</p>" for n in [deployment_note(report_cfg), *cost_notes(records)])
    notes += ('<ul class="below-majority">' + "".join(f"<li>{_strong(note)}</li>" for note in below) + "</ul>"
              if below else "")
    return (f'<section id="cost-benefit"><h2>Cost-benefit by rung</h2><p>The best configuration of each rung of '
            f"the spectrum that finished, and the trivial baseline (no model: the floor every score is read "
            f"against); a score from fewer than 3 seeds says how many. {e(selection_line(summary))}</p>"
            f"{table}{notes}</section>")


def _strong(markdown: str) -> str:
    """A note's text escaped, its **bold** and `code` spans as HTML."""
    text = e(markdown)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _detail(summary: dict, records: list[dict]) -> str:
    columns, cells = detail_table(records)
    classes = ["" if row[-1] == "ok" or not row[-1].startswith("failed") else "failed" for row in cells]
    failed = failed_rows(summary)
    items = "".join(f'<li class="failed-row" data-row="{e(r["row_id"])}"><strong>{e(r["row_id"])} failed</strong>: '
                    f"{e(str((r['error'] or {}).get('type')))}: {e(str((r['error'] or {}).get('message')))}</li>"
                    for r in failed)
    failed_html = f"<h3>Failed rows</h3><ul>{items}</ul>" if failed else ""
    return (f'<section id="detail"><h2>Every configuration</h2>{_table(columns, cells, classes)}{failed_html}'
            "</section>")


def _extra_data(records: list[dict]) -> str:
    """Extra-data rows against their equal-steps controls (report/extra_data.py), when any row trained on extra data."""
    lines = extra_data_findings(records)
    if not lines:
        return ""
    items = "".join(f"<li>{e(line[2:].replace('**', ''))}</li>" for line in lines if line.startswith("- "))
    return (f'<section id="extra-data"><h2>{e(lines[0].lstrip("# "))}</h2><p>{e(lines[2])}</p><ul>{items}</ul>'
            "</section>")


def _search(records: list[dict]) -> str:
    tables = search_tables(records)
    if not tables:
        return ""
    parts = "".join(f'<h3>{e(t.label)}</h3><p><code>{e(t.row_id)}</code> {e(t.summary)}.</p>'
                    f"{_table(t.columns, t.rows)}" for t in tables)
    return f'<section id="search"><h2>Hyperparameter search</h2>{parts}</section>'


def _chart(key: str, chart: Chart | None) -> str:
    if chart is None:
        return (f'<figure id="chart-{e(key)}" class="chart-absent"><p class="absent">The '
                f"{e(key.replace('_', ' '))} chart is not drawn: {e(ABSENT[key])}.</p></figure>")
    return (f'<figure id="chart-{e(key)}"><h3>{e(chart.title)}</h3>{chart.svg}'
            f"<figcaption>{e(chart.caption)}</figcaption></figure>")


def _honesty(checks: list[dict] | None) -> str:
    if checks is None:
        return ""
    items = "".join(f'<li class="{"ok" if c.get("ok") else "not-ok"}"><strong>{e(str(c.get("check")))}</strong>: '
                    f"{e(str(c.get('detail', '')))}</li>" for c in checks)
    return f'<section id="honesty"><h2>Honesty checks</h2><ul>{items}</ul></section>'


def render_html(summary: dict, records: list[dict], title: str, recommendation: dict | None = None,
                honesty: list[dict] | None = None, report_cfg=None,
                charts: list[tuple[str, Chart | None]] | None = None) -> str:
    """The whole report page. ``recommendation`` (paragraph, evidence) and ``honesty`` (check, ok, detail) are
    omitted when None; ``report_cfg`` (a ``ReportConfig``) sets the break-even's baseline and monthly volume;
    ``charts`` reuses charts from ``all_charts`` (rendered here when None)."""
    if charts is None:
        charts = all_charts(summary, records, **chart_options(report_cfg))
    task = summary.get("task") or {}
    splits = summary.get("splits") or {}
    facts = (f"Task {task.get('name', '?')} ({task.get('type', '?')}); {splits.get('train', '?')} training, "
             f"{splits.get('validation', '?')} validation and {splits.get('test', '?')} test rows; every row is "
             "scored on the same test rows.")
    figures = "".join(_chart(k, c) for k, c in charts)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{e(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{e(title)}</h1><p>{e(facts)}</p>"
            + _recommendation(recommendation) + _cost_benefit(summary, records, report_cfg) + _detail(summary, records)
            + _extra_data(records)
            + _search(records)
            + f'<section id="charts"><h2>Charts</h2>{figures}</section>' + _honesty(honesty)
            + "</body></html>\n")


def write_report(run_dir: Path, title: str | None = None, recommendation: dict | None = None,
                 honesty: list[dict] | None = None, report_cfg=None, summary: dict | None = None,
                 records: list[dict] | None = None) -> Path:
    """Write ``run_dir/report.html`` and ``run_dir/report.md`` atomically, from the run's records (or the given
    summary and records), and return the HTML file's path. The charts are rendered once for both."""
    run_dir = Path(run_dir)
    summary = build_results(run_dir) if summary is None else summary
    records = load_records(run_dir) if records is None else records
    title = title or run_dir.name
    charts = all_charts(summary, records, **chart_options(report_cfg))
    run = RunDir(run_dir)
    path = run.report_html
    run.write_text(path, render_html(summary, records, title, recommendation, honesty, report_cfg, charts=charts))
    run.write_text(run.report_md, render_markdown_report(summary, records, title, recommendation, honesty,
                                                         report_cfg, charts=charts))
    return path
