"""``lmtailor compare RUN_A RUN_B ...``: several runs' configurations side by side, in one Markdown table.

Each run is summarised from its own records (``results_json.build_results``), so runs made before ``results.json``
existed compare too. Runs scored on different test rows are not comparable number for number: the table says so
above the rows instead of silently lining them up.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmtailor.report.results_json import build_results


def _test_digest(run_dir: Path) -> str | None:
    """The test rows' ids digest every record of the run carries (None when the run has no record)."""
    for path in sorted((run_dir / "results").glob("*.json")):
        return json.loads(path.read_text(encoding="utf-8")).get("test_ids_sha256")
    return None


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


def compare_markdown(run_dirs: list[Path]) -> str:
    """One table of every (label, model) group of every run: score with its interval, seeds, costs, time."""
    runs = [(Path(d), build_results(Path(d))) for d in run_dirs]
    digests = {d.name: _test_digest(d) for d, _ in runs}
    lines = [f"# compare: {', '.join(d.name for d, _ in runs)}", ""]
    tasks = {s["task"].get("name") for _, s in runs}
    if len(tasks) > 1:
        lines.append(f"**Different tasks** ({', '.join(sorted(str(t) for t in tasks))}): the scores do not compare.")
    if len(set(digests.values())) > 1:
        lines.append("**Different test rows**: these runs were scored on different test sets (test id digests "
                     + ", ".join(f"{name} `{digest}`" for name, digest in digests.items())
                     + "), so a difference between runs mixes the configurations with the data.")
    else:
        lines.append(f"Every run was scored on the same test rows (test id digest `{next(iter(digests.values()))}`).")
    lines += ["Intervals are bootstrap 95% intervals over test rows where the records hold per-row scores, else "
              "± the standard deviation over seeds; overlapping intervals are not a difference.", "",
              "| run | approach | model | score | $ train | $ / 1k inferences | Pareto frontier |",
              "|---|---|---|---|---|---|---|"]
    for run_dir, summary in runs:
        for g in summary["groups"]:
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in (
                run_dir.name, g["label"], g["model"], _score(g), _usd(g.get("usd_train_mean")),
                _usd(g.get("usd_inference_per_1k_mean")), "yes" if g.get("on_frontier") else "")) + " |")
    return "\n".join(lines) + "\n"
