"""``results.json``: one deterministic summary of a run directory, rebuilt byte for byte from its records.

A pure function of ``results/*.json``, ``task.json`` and ``splits.json``: nothing time-dependent, keys sorted,
rows in plan order, derived floats rounded, so ``lmtailor report`` rebuilds the same bytes every time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from lmtailor.errors import UserError
from lmtailor.io import write_text_atomic
from lmtailor.report.analysis import bootstrap_ci, data_required, differs, mean_std, pareto_frontier

RESULTS_SUMMARY_VERSION = 1
DIGITS = 6  # derived numbers (means, std): enough for any metric, and free of float-summation noise in the text


def _num(x: float | None, digits: int | None = DIGITS) -> float | None:
    """A JSON-safe number: non-finite values become None (JSON has no NaN), derived ones are rounded."""
    if x is None or not math.isfinite(x):
        return None
    return round(x, digits) if digits is not None else x


def _read_json(path: Path, hint: str) -> dict:
    if not path.is_file():
        raise UserError(f"{path} is missing; {hint}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON (line {e.lineno}: {e.msg}); re-run that row or remove the file")


def load_records(run_dir: Path) -> list[dict]:
    """Every row record of ``run_dir/results``, in plan order (row_index, then row_id)."""
    folder = Path(run_dir) / "results"
    if not folder.is_dir():
        raise UserError(f"{folder} is missing: is {run_dir} a run directory written by `lmtailor run`?")
    records = []
    for path in sorted(folder.glob("*.json")):
        record = _read_json(path, "")
        missing = [k for k in ("row_id", "label", "model", "status") if k not in record]
        if missing:
            raise UserError(f"{path} lacks {missing}: it is not a row record of `lmtailor run`")
        records.append(record)
    return sorted(records, key=lambda r: (r.get("row_index", 0), r["row_id"]))


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
    return {
        "row_id": record["row_id"], "row_index": record.get("row_index"), "label": record["label"],
        "strategy": record.get("strategy"), "model": record["model"], "seed": record.get("seed"),
        "train_size": record.get("train_size"), "train_size_requested": record.get("train_size_requested"),
        "status": record["status"],
        "error": {"type": error.get("type"), "message": error.get("message")} if error else None,
        "primary_metric": name, "score": _num(value, None), "higher_is_better": higher,
        "metrics": {m["name"]: _num(m["value"], None) for m in record.get("metrics") or []},
        "usd_train": _num(usd.get("train"), None), "usd_total": _num(usd.get("total"), None),
        "usd_inference_per_1k": _num(usd.get("inference_per_1k"), None),
        "wall_s": _num(meter.get("wall_s"), None), "peak_rss_bytes": meter.get("peak_rss_bytes"),
    }


def _per_row(record: dict) -> list[float] | None:
    """The record's per-test-row scores on its primary metric (written by the evaluator), None in older records."""
    scores = (record.get("score_details") or {}).get("per_row")
    return [float(x) for x in scores] if scores else None


def _mean_of(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return _num(mean_std(present)[0]) if present else None


def _confidence(ok: list[dict], per_row: dict[str, list[float] | None]) -> tuple[list[float] | None, str]:
    """A 95 % percentile-bootstrap CI of the mean over test rows, and a sentence saying what it rests on.

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
    return [_num(low), _num(high)], f"bootstrap 95% CI over {len(averaged)} test rows ({seeds})"


def _group(key: str, rows: list[dict], per_row: dict[str, list[float] | None]) -> dict:
    """One (label, model) line: mean and std over the seeds that finished, how many did, and a CI over test rows."""
    ok = [r for r in rows if r["status"] == "ok" and r["score"] is not None]
    mean, std = mean_std([r["score"] for r in ok]) if ok else (None, None)
    ci, ci_note = _confidence(ok, per_row)
    return {
        "id": key, "label": rows[0]["label"], "model": rows[0]["model"], "strategy": rows[0]["strategy"],
        "metric": ok[0]["primary_metric"] if ok else None,
        "higher_is_better": ok[0]["higher_is_better"] if ok else None,
        "seeds": len(ok), "seeds_planned": len(rows), "rows": [r["row_id"] for r in rows],
        "ci95": ci, "ci_note": ci_note,
        "failed": [r["row_id"] for r in rows if r["status"] != "ok"],
        "score_mean": _num(mean), "score_std": _num(std),
        "usd_train_mean": _mean_of([r["usd_train"] for r in rows]),
        "usd_total_mean": _mean_of([r["usd_total"] for r in rows]),
        "usd_inference_per_1k_mean": _mean_of([r["usd_inference_per_1k"] for r in rows]),
        "wall_s_mean": _mean_of([r["wall_s"] for r in rows]),
    }


def _groups(rows: list[dict], per_row: dict[str, list[float] | None]) -> list[dict]:
    by_key: dict[str, list[dict]] = {}
    for r in rows:  # rows are in plan order, so groups are too
        by_key.setdefault(f"{r['label']} | {r['model']}", []).append(r)
    return [_group(k, v, per_row) for k, v in by_key.items()]


def same_or_different(group_a: dict, group_b: dict) -> str:
    """"different" when the two groups' CIs are disjoint, "same" when they overlap (so they are not called
    different), "unknown" when either has no interval. Groups scored on different metrics are "unknown" too."""
    if group_a.get("ci95") is None or group_b.get("ci95") is None or group_a.get("metric") != group_b.get("metric"):
        return "unknown"
    return "different" if differs(tuple(group_a["ci95"]), tuple(group_b["ci95"])) else "same"


def _curve_label(row: dict) -> str:
    """The strategy's label without the learning-curve size the planner appended (" n=100")."""
    suffix = f" n={row['train_size_requested']}"
    return row["label"][: -len(suffix)] if row["label"].endswith(suffix) else row["label"]


def _learning_curves(rows: list[dict]) -> list[dict]:
    """Per trained strategy and model: mean score per training-set size and the data required (95 % of best)."""
    by_key: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["train_size_requested"] is not None and r["status"] == "ok" and r["score"] is not None:
            by_key.setdefault((_curve_label(r), r["model"]), []).append(r)
    curves = []
    for (label, model), recs in by_key.items():
        sizes = sorted({r["train_size"] for r in recs})
        points = []
        for size in sizes:
            mean, std = mean_std([r["score"] for r in recs if r["train_size"] == size])
            points.append({"train_size": size, "score_mean": _num(mean), "score_std": _num(std),
                           "seeds": sum(r["train_size"] == size for r in recs)})
        higher = recs[0]["higher_is_better"]
        curves.append({"label": label, "model": model, "metric": recs[0]["primary_metric"],
                       "higher_is_better": higher, "points": points,
                       "data_required": data_required({p["train_size"]: p["score_mean"] for p in points},
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
    learning curves with data required, and the quality-vs-cost Pareto frontier."""
    run_dir = Path(run_dir)
    hint = "it is written by `lmtailor run` at the start of a run"
    task = _read_json(run_dir / "task.json", hint)
    splits = _read_json(run_dir / "splits.json", hint)
    records = load_records(run_dir)
    rows = [_row(r) for r in records]
    groups = _groups(rows, {r["row_id"]: _per_row(r) for r in records})
    pareto = _pareto(groups)
    for g in groups:
        g["on_frontier"] = g["id"] in pareto["frontier"]
    return {
        "summary_version": RESULTS_SUMMARY_VERSION,
        "task": task,
        "splits": {"source": splits.get("source"), "seed": splits.get("seed"),
                   **{name: len(splits.get(name) or []) for name in ("train", "validation", "test")},
                   "learning_curve_sizes": sorted(int(k) for k in splits.get("learning_curve_subsets") or {})},
        "rows": rows,
        "failed_rows": [r["row_id"] for r in rows if r["status"] != "ok"],
        "groups": groups,
        "learning_curves": _learning_curves(rows),
        "pareto": pareto,
    }


def render_results(summary: dict) -> str:
    """The exact text of ``results.json``: sorted keys, two-space indent, no NaN, one final newline."""
    return json.dumps(summary, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_results(run_dir: Path, summary: dict | None = None) -> Path:
    """Write ``run_dir/results.json`` atomically; the same run directory always gives the same bytes.

    ``summary``: ``build_results(run_dir)`` when the caller has it already (it reads every record)."""
    path = Path(run_dir) / "results.json"
    write_text_atomic(path, render_results(summary if summary is not None else build_results(run_dir)))
    return path
