"""``lmtailor compare RUN_A RUN_B ...``: several runs' configurations side by side, in one Markdown table.

Each run is summarised from its own records (``results_json.build_results``), so runs made before ``results.json``
existed compare too. A configuration (label on a model) that also ran in the first run is tested against it with
the report's one test of noise, the paired bootstrap over the test rows (report/paired.py) — only when both runs
scored the same test rows; runs scored on different test rows are not comparable number for number, and the table
says so instead of silently lining them up. Within each run, a record scored on other test rows or on another task
than the run's own is refused (rundir/provenance.py), so every run's numbers are its own.

Runs whose tasks differ (``task.json``: name, type, instruction, labels — what the models were asked and how they
were scored) are refused, naming both runs and each field that differs: their scores measure different things.
"""

from __future__ import annotations

from pathlib import Path

from lmtailor.errors import UserError
from lmtailor.report.paired import UNKNOWN, compare_groups
from lmtailor.report.results_json import build_results, load_records
from lmtailor.rundir import RunDir

TASK_FIELDS = ("name", "type", "instruction", "labels")  # everything task.json holds


def _test_digest(run_dir: Path, records: list[dict]) -> str | None:
    """The digest of the run's test-row ids: from splits.json (every record agrees with it, load_records checks), else
    from its first record (None when the run has neither)."""
    digest = RunDir(run_dir).test_digest()
    if digest is not None:
        return digest
    return records[0].get("test_ids_sha256") if records else None


def check_same_task(runs: list[tuple[Path, dict]]) -> None:
    """Refuse runs whose task definitions differ from the first run's, naming both runs and the fields."""
    first_dir, first = runs[0][0], runs[0][1]["task"]
    for run_dir, summary in runs[1:]:
        task = summary["task"]
        differ = [f"{k}: {first.get(k)!r} in {first_dir.name}, {task.get(k)!r} in {run_dir.name}" for k in TASK_FIELDS
                  if first.get(k) != task.get(k)]
        if differ:
            raise UserError(f"cannot compare {first_dir} and {run_dir}: their tasks differ (task.json: "
                            f"{'; '.join(differ)}), so their scores measure different things. Compare runs of one "
                            "task, or run the experiment again with the same task block")


def _score(g: dict) -> str:
    if g.get("score_mean") is None:
        return "failed" if g.get("failed") else "-"
    text = f"{g['metric']} {g['score_mean']:.3f}"
    if g.get("ci95"):
        text += f" [{g['ci95'][0]:.3f}, {g['ci95'][1]:.3f}]"
    elif g.get("score_std") is not None:
        text += f" ± {g['score_std']:.3f}"
    return text + f" ({g['seeds']} seed{'s' if g['seeds'] != 1 else ''})"


def _usd(v: float | None) -> str:
    return "-" if v is None else f"${v:.4f}" if v < 1 else f"${v:,.2f}"


def _vs_first(group: dict, records: dict[str, dict], first: tuple[Path, dict, dict], same_rows: bool) -> str:
    """The paired test of ``group`` against the same configuration in the first run, as a table cell."""
    first_dir, first_summary, first_records = first
    twin = next((g for g in first_summary["groups"] if g["id"] == group["id"]), None)
    if twin is None or group.get("score_mean") is None or twin.get("score_mean") is None:
        return ""
    if not same_rows:
        return "not paired: different test rows"
    c = compare_groups(group, twin, records, "test", first_records)
    if c["verdict"] == UNKNOWN:
        return f"unknown: {c['note']}"
    low, high = c["ci95"]
    return f"{c['difference'] * 100:+.1f} pts, {c['verdict']} (paired 95% CI {low * 100:+.1f} to {high * 100:+.1f})"


def compare_markdown(run_dirs: list[Path]) -> str:
    """One table of every (label, model) group of every run: score with its interval, seeds, costs, and the paired
    test against the same configuration in the first run."""
    runs = [(Path(d), build_results(Path(d))) for d in run_dirs]
    check_same_task(runs)
    records = {d: {r["row_id"]: r for r in load_records(d)} for d, _ in runs}
    digests = {d.name: _test_digest(d, list(records[d].values())) for d, _ in runs}
    lines = [f"# compare: {', '.join(d.name for d, _ in runs)}", ""]
    if len(set(digests.values())) > 1:
        lines.append("**Different test rows**: these runs were scored on different test sets (test id digests "
                     + ", ".join(f"{name} `{digest}`" for name, digest in digests.items())
                     + "), so a difference between runs mixes the configurations with the data.")
    else:
        lines.append(f"Every run was scored on the same test rows (test id digest `{next(iter(digests.values()))}`).")
    same_rows = len(set(digests.values())) == 1 and None not in digests.values()
    first = (runs[0][0], runs[0][1], records[runs[0][0]])
    lines += ["Intervals are bootstrap 95% intervals over test rows where the records hold per-row scores, else "
              "± the standard deviation over seeds. Whether a configuration differs from the same one in the first "
              f"run ({runs[0][0].name}) is the paired bootstrap over the test rows (seeds resampled too): "
              + ("the runs share their test rows." if same_rows else "not tested, the runs do not share their test "
                                                                    "rows."), "",
              f"| run | approach | model | score | $ train | $ / 1k inferences | Pareto frontier | vs {runs[0][0].name} |",
              "|---|---|---|---|---|---|---|---|"]
    for run_dir, summary in runs:
        for g in summary["groups"]:
            vs = "" if run_dir == runs[0][0] else _vs_first(g, records[run_dir], first, same_rows)
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in (
                run_dir.name, g["label"], g["model"], _score(g), _usd(g.get("usd_train_mean")),
                _usd(g.get("usd_inference_per_1k_mean")), "yes" if g.get("on_frontier") else "", vs)) + " |")
    return "\n".join(lines) + "\n"
