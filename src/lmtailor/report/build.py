"""Write a run's reports from its saved records: results.json, report.md and report.html, the same numbers in each.

The runner calls ``write_run_reports`` at the end of a run and ``lmtailor report`` calls it to rebuild them; both
read only the run directory, so a rebuild gives the same files (results.json byte for byte).
"""

from __future__ import annotations

from pathlib import Path

from lmtailor.config import ReportConfig, load_experiment
from lmtailor.report.honesty import honesty_checks
from lmtailor.report.recommend import recommendation
from lmtailor.report.results_json import build_results, load_records, write_results
from lmtailor.rundir import RunDir


def write_run_reports(run_dir: Path, title: str, target: ReportConfig | None = None) -> Path:
    """Write results.json, report.md and report.html in ``run_dir``; return the path of report.html.

    ``target``: the experiment's ``report:`` block (quality floor, budget, requests per month, baseline row).
    """
    from lmtailor.report.html import write_report

    target = target or ReportConfig()
    summary, records = build_results(run_dir), load_records(run_dir)
    write_results(run_dir, summary)
    return write_report(run_dir, title=title, report_cfg=target, summary=summary, records=records,
                        recommendation=recommendation(summary, records, target),
                        honesty=honesty_checks(run_dir, records))


def run_target(run_dir: Path) -> ReportConfig:
    """The ``report:`` block of the experiment a run directory was made with (defaults when it has none)."""
    path = RunDir(run_dir).experiment
    return load_experiment(path).report if path.is_file() else ReportConfig()
