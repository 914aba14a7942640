"""The cost-benefit table's rows: one per strategy × model, aggregated over seeds, with the money format every
table of the report shares.

A pure function of result records. ``report/table.py`` lays the rows out; the findings (``report/findings.py``), the
extra-data section (``report/extra_data.py``), the charts and report.md build on them.
"""

from __future__ import annotations

import statistics
from collections import OrderedDict
from dataclasses import dataclass

from lmtailor.measure.meter import SETUP_PHASES
from lmtailor.report.extra_data_rows import step_ratio_note
from lmtailor.report.honesty import truncated_generations
from lmtailor.report.traits import traits_of


@dataclass
class TableRow:
    """One strategy × model line, aggregated over seeds."""

    label: str
    model: str
    metric: str
    score: float | None
    score_std: float | None
    seeds: int
    delta: float | None
    train_s: float
    infer_s_per_1k: float | None
    peak_rss_mb: float
    trainable: int | None
    total: int | None
    usd_train: float
    usd_per_1k: float | None
    status: str
    baseline_model: str | None = None  # whose zero-shot row the delta is against, when not this model's own
    retrieval: dict[str, float] | None = None  # recall@k and MRR of a retrieval row, averaged over seeds
    forgetting: dict | None = None  # change from the base model on the general probe, averaged over seeds
    training: dict | None = None  # seconds per step, optimizer state and saved artifact bytes of a trained row


def _primary(record: dict) -> tuple[str, float | None]:
    name = record.get("primary_metric")
    for m in record.get("metrics", []):
        if m["name"] == name:
            return name, m["value"]
    return name or "-", None


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def _retrieval(records: list[dict]) -> dict[str, float] | None:
    """Mean retrieval metrics (recall@k, mrr) of records that were scored on retrieval; None for other rows."""
    names = [m["name"] for m in records[0].get("metrics", []) if m["name"].startswith("recall@") or m["name"] == "mrr"]
    if not names:
        return None
    values = {n: _mean([next((m["value"] for m in r["metrics"] if m["name"] == n), None) for r in records])
              for n in names}
    return {n: v for n, v in values.items() if v is not None} or None


def _forgetting(records: list[dict]) -> dict | None:
    """Mean change from the base model on the general probe over the records that were probed; None when none was.

    ``ppl_pct`` is the relative perplexity change, ``acc_pts`` the accuracy change in points; ``note`` says why a
    probed row has neither (a failed probe, or a model the probe cannot measure).
    """
    probed = [r["forgetting"] for r in records if r.get("forgetting")]
    if not probed:
        return None
    out = {"ppl_pct": _mean([f.get("delta_perplexity_pct") for f in probed]),
           "acc_pts": _mean([f.get("delta_accuracy_pts") for f in probed]), "note": None}
    if out["ppl_pct"] is None and out["acc_pts"] is None:
        failed = next((f["error"] for f in probed if f.get("error")), None)
        out["note"] = (f"probe failed: {failed['type']}" if failed else
                       "n/a (no LM head)" if probed[0].get("tuned", {}).get("perplexity_note") else "n/a")
    return out


def _extra_data_note(records: list[dict]) -> str:
    """What extra training data a row really got (a teacher may write fewer usable rows than were asked for)."""
    notes = []
    for key, fmt in (("augmented", "+{made} augmented rows"), ("synthetic", "{kept}/{requested_rows} synthetic rows kept")):
        found = [d.get(key) or (d.get("finetune") or {}).get(key) for d in (r.get("details") or {} for r in records)]
        found = [f for f in found if f]
        if found:
            notes.append(" / ".join(fmt.format_map(f) for f in found))
    return "; ".join(notes)


def _training_footprint(records: list[dict]) -> dict | None:
    """What training a row cost beyond time and money, averaged over seeds: seconds per optimizer step, optimizer
    state bytes (AdamW keeps two moments per trainable weight) and the saved adapter or model on disk.

    None for rows that trained nothing. A strategy with a pre-training phase reports its fine-tuning phase's step.
    """
    if not records:
        return None
    details = [(r.get("details") or {}) for r in records]
    details = [d.get("finetune") if isinstance(d.get("finetune"), dict) else d for d in details]
    saved = [sum(b for name, b in (r.get("meter") or {}).get("artifact_bytes", {}).items()
                 if name in ("adapter", "model")) or None for r in records]
    out = {"s_per_step": _mean([d.get("seconds_per_step") for d in details]),
           "optimizer_bytes": _mean([d.get("optimizer_state_bytes") for d in details]),
           "peak_bytes": _mean([_training_peak(r.get("meter") or {}) for r in records]),
           "artifact_bytes": _mean(saved)}
    return out if any(v is not None for v in out.values()) else None


def _training_peak(meter: dict) -> int | None:
    """Peak memory while training (pre-training included): GPU memory on CUDA, else the process's RSS."""
    by_phase = meter.get("cuda_peak_bytes_by_phase") or meter.get("peak_rss_bytes_by_phase") or {}
    peaks = [by_phase[p] for p in ("pretrain", "train") if by_phase.get(p)]
    return max(peaks) if peaks else None


def _is_zero_shot(record: dict) -> bool:
    return (traits := traits_of(record)) is not None and traits.zero_shot


def build_rows(records: list[dict]) -> list[TableRow]:
    """Group records by (label, model), average over seeds, and compare with the zero-shot baseline of that model."""
    groups: OrderedDict[tuple[str, str], list[dict]] = OrderedDict()
    for r in records:
        groups.setdefault((r["label"], r["model"]), []).append(r)
    baselines: dict[str, float] = {}
    for r in records:
        if _is_zero_shot(r) and r.get("status") == "ok":
            baselines.setdefault(r["model"], _primary(r)[1])
    # A model without a zero-shot row of its own (an encoder classifier) is compared with the first model's.
    fallback_model = next(iter(baselines), None)
    rows = []
    for (label, model), recs in groups.items():
        ok = [r for r in recs if r.get("status") == "ok"]
        scores = [_primary(r)[1] for r in ok]
        score = _mean(scores)
        std = statistics.stdev(scores) if len(scores) > 1 else None
        base_model = model if model in baselines else fallback_model
        base = baselines.get(base_model) if base_model is not None else None
        meters = [r["meter"] for r in ok] or [r["meter"] for r in recs]  # costs of finished seeds, like the score
        rows.append(TableRow(
            label=label, model=model, metric=_primary(recs[0])[0] if ok else "-", score=score, score_std=std,
            seeds=len(ok), delta=None if score is None or base is None or _is_zero_shot(recs[0]) else score - base,
            # set-up time: everything paid once before serving (extra data, index, pre-training, training)
            train_s=_mean([sum(m["phases"].get(p, {}).get("wall_s", 0.0) for p in SETUP_PHASES)
                           for m in meters]) or 0.0,
            infer_s_per_1k=_mean([m["inference_latency_s_per_example"] * 1000 if m["inference_latency_s_per_example"] else None for m in meters]),
            peak_rss_mb=(_mean([m["peak_rss_bytes"] for m in meters]) or 0) / 2**20,
            trainable=meters[0]["trainable_params"], total=meters[0]["total_params"],
            usd_train=_mean([m["usd"]["train"] for m in meters]) or 0.0,
            usd_per_1k=_mean([m["usd"]["inference_per_1k"] for m in meters]),
            baseline_model=base_model if base_model != model else None,
            retrieval=_retrieval(ok) if ok else None,
            forgetting=_forgetting(ok),
            training=_training_footprint(ok),
            status=("ok" if len(ok) == len(recs) else f"failed {len(recs) - len(ok)}/{len(recs)}: "
                    + next((r.get("error") or {}).get("type", "no error recorded") for r in recs
                           if r.get("status") != "ok"))
            + (f" ({note})" if (note := _extra_data_note(ok)) else "")
            + (f" ({note})" if (note := _api_cache_note(ok)) else "")
            + (f" ({note})" if (note := _cut_answers_note(ok)) else "")
            + (f" ({note})" if (note := step_ratio_note(ok, records)) else ""),
        ))
    return rows


def fmt_usd(v: float | None) -> str:
    return "-" if v is None else f"${v:.4f}" if v < 1 else f"${v:,.2f}"


def api_usage(record: dict) -> dict | None:
    """The inference-phase API usage of a row whose model is an openai:MODEL@URL endpoint (None for local rows)."""
    return ((record.get("meter") or {}).get("api") or {}).get("inference")


def _api_cache_note(records: list[dict]) -> str:
    """Say so when an API row's answers came from the response cache: its time is then the cache's, not the
    endpoint's (its $ is still the price of the answers)."""
    usages = [u for u in map(api_usage, records) if u]
    hits, requests = sum(u["cache_hits"] for u in usages), sum(u["requests"] for u in usages)
    return f"{hits}/{requests} answers from the response cache" if hits else ""


def _cut_answers_note(records: list[dict]) -> str:
    """Say how many generated answers ran out of ``max_new_tokens`` (scored as cut), over the row's seeds."""
    # a row answers its test and validation rows in one pass, and the count covers both
    counts = [(c, (r.get("test_rows") or 0) + ((r.get("validation") or {}).get("rows") or 0)) for r in records
              if (c := truncated_generations(r.get("details") or {})) is not None]
    cut, answers = sum(c for c, _ in counts), sum(n for _, n in counts)
    return f"{cut}/{answers} answers cut at max_new_tokens" if cut else ""
