"""``results.json``: one deterministic summary of a run directory, rebuilt byte for byte from its records.

A pure function of ``results/*.json``, ``task.json`` and ``splits.json``: nothing time-dependent, keys sorted,
rows in plan order, derived floats rounded, so ``lmtailor report`` rebuilds the same bytes every time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from lmtailor.report import paired
from lmtailor.report.analysis import bootstrap_ci, data_required, mean_std, pareto_frontier
from lmtailor.report.selection import VALIDATION, selection_block
from lmtailor.rundir import RunDir

# 2: validation scores per row and group, the selection block, group costs over finished seeds only, learning
# curves' data required chosen on validation
RESULTS_SUMMARY_VERSION = 2
DIGITS = 6  # derived numbers (means, std): enough for any metric, and free of float-summation noise in the text


def _num(x: float | None, digits: int | None = DIGITS) -> float | None:
    """A JSON-safe number: non-finite values become None (JSON has no NaN), derived ones are rounded."""
    if x is None or not math.isfinite(x):
        return None
    return round(x, digits) if digits is not None else x


def load_records(run_dir: Path) -> list[dict]:
    """Every row record of ``run_dir/results`` as the report reads it (a dict), in plan order; each is checked,
    migrated to the current version, and refused when it is not the run's (``RunDir.read_record``)."""
    return [r.as_dict() for r in RunDir(run_dir).records()]


def _primary(record: dict) -> tuple[str | None, float | None, bool]:
    """(primary metric name, its value, higher_is_better) of a record; value None when it was not scored."""
    name = record.get("primary_metric")
    for m in record.get("metrics") or []:
        if m["name"] == name:
            return name, m["value"], bool(m.get("higher_is_better", True))
    return name, None, True


def _row(record: dict) -> dict:
    """One record, reduced to what the report shows; a failed row keeps its error type and message."""
    name, value, higher = _primary(record)
    meter = record.get("meter") or {}
    usd = meter.get("usd") or {}
    error = record.get("error")
    validation = record.get("validation") or {}
    _, val_value, _ = _primary(validation) if validation.get("metrics") else (None, None, True)
    return {
        "row_id": record["row_id"], "row_index": record.get("row_index"), "label": record["label"],
        "strategy": record.get("strategy"), "model": record["model"], "seed": record.get("seed"),
        "train_size": record.get("train_size"), "train_size_requested": record.get("train_size_requested"),
        "status": record["status"],
        "error": {"type": error.get("type"), "message": error.get("message")} if error else None,
        "primary_metric": name, "score": _num(value, None), "higher_is_better": higher,
        "validation_score": _num(val_value, None), "validation_rows": validation.get("rows"),
        "metrics": {m["name"]: _num(m["value"], None) for m in record.get("metrics") or []},
        "usd_train": _num(usd.get("train"), None), "usd_total": _num(usd.get("total"), None),
        "usd_inference_per_1k": _num(usd.get("inference_per_1k"), None),
        "wall_s": _num(meter.get("wall_s"), None), "peak_rss_bytes": meter.get("peak_rss_bytes"),
    }


def _mean_of(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return _num(mean_std(present)[0]) if present else None


def _confidence(ok: list[dict], per_row: dict[str, list[float] | None], split: str = "test"
                ) -> tuple[list[float] | None, str]:
    """A 95 % percentile-bootstrap CI of the mean over ``split`` rows, and a sentence saying what it rests on.

    With several seeds each test row's score is first averaged over the seeds, so the interval reflects the
    test rows' spread, not seed noise counted as extra rows. No interval (and the reason) when any finished
    seed lacks per-row scores (records written before they were kept) or the seeds scored different test sets.
    """
    if not ok:
        return None, "no finished row to compute an interval from"
    lists = [per_row.get(r["row_id"]) for r in ok]
    if any(x is None for x in lists):
        return None, "missing: the record has no per-test-row scores (written before they were kept, or the " \
                     "metric is not a mean over rows)"
    if len({len(x) for x in lists}) != 1:
        return None, "missing: the seeds scored different numbers of test rows"
    averaged = [sum(col) / len(col) for col in zip(*lists)]
    low, high = bootstrap_ci(averaged)
    seeds = f"averaged over {len(ok)} seeds per row" if len(ok) > 1 else "1 seed"
    return [_num(low), _num(high)], f"bootstrap 95% CI over {len(averaged)} {split} rows ({seeds})"


def _validation_mean(ok: list[dict]) -> float | None:
    """The mean validation score over the finished seeds, or None unless every one of them has one."""
    if not ok or any(r["validation_score"] is None for r in ok):
        return None
    return _num(mean_std([r["validation_score"] for r in ok])[0])


def _group(key: str, rows: list[dict], per_row: dict[str, list[float] | None],
           validation_per_row: dict[str, list[float] | None]) -> dict:
    """One (label, model) line: mean and std over the seeds that finished, how many did, and a CI over test rows;
    its validation mean (what choices are made on) and its costs, both over the finished seeds only, like the
    scores (a failed seed's partial cost is no cost of the configuration)."""
    ok = [r for r in rows if r["status"] == "ok" and r["score"] is not None]
    mean, std = mean_std([r["score"] for r in ok]) if ok else (None, None)
    ci, ci_note = _confidence(ok, per_row)
    validation_mean = _validation_mean(ok)
    val_ci = _confidence(ok, validation_per_row, "validation")[0] if validation_mean is not None else None
    return {
        "id": key, "label": rows[0]["label"], "model": rows[0]["model"], "strategy": rows[0]["strategy"],
        "metric": ok[0]["primary_metric"] if ok else None,
        "higher_is_better": ok[0]["higher_is_better"] if ok else None,
        "seeds": len(ok), "seeds_planned": len(rows), "rows": [r["row_id"] for r in rows],
        "ci95": ci, "ci_note": ci_note,
        "failed": [r["row_id"] for r in rows if r["status"] != "ok"],
        "score_mean": _num(mean), "score_std": _num(std),
        "validation_score_mean": validation_mean, "validation_ci95": val_ci,
        "validation_rows": ok[0]["validation_rows"] if ok else None,
        "usd_train_mean": _mean_of([r["usd_train"] for r in ok]),
        "usd_total_mean": _mean_of([r["usd_total"] for r in ok]),
        "usd_inference_per_1k_mean": _mean_of([r["usd_inference_per_1k"] for r in ok]),
        "wall_s_mean": _mean_of([r["wall_s"] for r in ok]),
    }


def _groups(rows: list[dict], records: list[dict]) -> list[dict]:
    per_row = {r["row_id"]: paired.per_row(r, "test") for r in records}
    validation_per_row = {r["row_id"]: paired.per_row(r, "validation") for r in records}
    by_key: dict[str, list[dict]] = {}
    for r in rows:  # rows are in plan order, so groups are too
        by_key.setdefault(f"{r['label']} | {r['model']}", []).append(r)
    return [_group(k, v, per_row, validation_per_row) for k, v in by_key.items()]


def _curve_label(row: dict) -> str:
    """The strategy's label without the learning-curve size the planner appended (" n=100")."""
    suffix = f" n={row['train_size_requested']}"
    return row["label"][: -len(suffix)] if row["label"].endswith(suffix) else row["label"]


def _learning_curves(rows: list[dict]) -> list[dict]:
    """Per trained strategy and model: mean score per training-set size and the data required (95 % of best).

    The data required is chosen on the validation means when every point has one (``data_required_on``), and on the
    test means otherwise: a size picked for its test score would report that score with a winner's optimism."""
    by_key: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["train_size_requested"] is not None and r["status"] == "ok" and r["score"] is not None:
            by_key.setdefault((_curve_label(r), r["model"]), []).append(r)
    curves = []
    for (label, model), recs in by_key.items():
        sizes = sorted({r["train_size"] for r in recs})
        points = []
        for size in sizes:
            at = [r for r in recs if r["train_size"] == size]
            mean, std = mean_std([r["score"] for r in at])
            points.append({"train_size": size, "score_mean": _num(mean), "score_std": _num(std),
                           "validation_score_mean": _validation_mean(at), "seeds": len(at)})
        higher = recs[0]["higher_is_better"]
        on = VALIDATION if all(p["validation_score_mean"] is not None for p in points) else "test"
        key = "validation_score_mean" if on == VALIDATION else "score_mean"
        curves.append({"label": label, "model": model, "metric": recs[0]["primary_metric"],
                       "higher_is_better": higher, "points": points, "data_required_on": on,
                       "data_required": data_required({p["train_size"]: p[key] for p in points},
                                                      higher_is_better=higher)})
    return curves


def _pareto(groups: list[dict]) -> dict:
    """Quality against total cost (mean USD of the whole row) over groups of the most common primary metric."""
    scored = [g for g in groups if g["score_mean"] is not None and g["usd_total_mean"] is not None]
    metrics = sorted({g["metric"] for g in scored})
    if not scored:
        return {"metric": None, "cost": "usd_total_mean", "frontier": []}
    metric = max(metrics, key=lambda m: sum(g["metric"] == m for g in scored))  # ties: first name in sort order
    same = [g for g in scored if g["metric"] == metric]
    points = [(g["id"], g["usd_total_mean"], g["score_mean"] if g["higher_is_better"] else -g["score_mean"])
              for g in same]
    return {"metric": metric, "cost": "usd_total_mean", "frontier": pareto_frontier(points)}


def build_results(run_dir: Path) -> dict:
    """The deterministic summary of ``run_dir``: task, split sizes, rows (failed ones kept), groups over seeds,
    learning curves with data required, the quality-vs-cost Pareto frontier, and which split choices are made on
    (``selection``, see report/selection.py)."""
    run = RunDir(run_dir)
    task = run.read_json(run.task)
    splits = run.read_json(run.splits)
    records = load_records(run_dir)
    rows = [_row(r) for r in records]
    groups = _groups(rows, records)
    pareto = _pareto(groups)
    for g in groups:
        g["on_frontier"] = g["id"] in pareto["frontier"]
    sizes = {name: len(splits.get(name) or []) for name in ("train", "validation", "test")}
    headline = [g for g in groups if g["metric"] == pareto["metric"]]
    return {
        "summary_version": RESULTS_SUMMARY_VERSION,
        "task": task,
        "splits": {"source": splits.get("source"), "seed": splits.get("seed"),
                   **sizes,
                   "learning_curve_sizes": sorted(int(k) for k in splits.get("learning_curve_subsets") or {})},
        "rows": rows,
        "failed_rows": [r["row_id"] for r in rows if r["status"] != "ok"],
        "groups": groups,
        "learning_curves": _learning_curves(rows),
        "pareto": pareto,
        "selection": selection_block(headline, sizes["validation"], sizes["test"]),
    }


def render_results(summary: dict) -> str:
    """The exact text of ``results.json``: sorted keys, two-space indent, no NaN, one final newline."""
    return json.dumps(summary, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_results(run_dir: Path, summary: dict | None = None) -> Path:
    """Write ``run_dir/results.json`` atomically; the same run directory always gives the same bytes.

    ``summary``: ``build_results(run_dir)`` when the caller has it already (it reads every record)."""
    run = RunDir(run_dir)
    path = run.results_json
    run.write_text(path, render_results(summary if summary is not None else build_results(run_dir)))
    return path
