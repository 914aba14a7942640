"""The cost-benefit table: a pure function of result records, rendered as Markdown and in the terminal."""

from __future__ import annotations

import statistics
from collections import OrderedDict
from dataclasses import dataclass

from lmtailor.measure.meter import SETUP_PHASES
from lmtailor.report.below_majority import below_majority_notes
from lmtailor.report.cost_notes import cost_notes
from lmtailor.report.honesty import truncated_generations


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
    return record.get("strategy") == "prompt" and record.get("config", {}).get("shots", 0) == 0


def build_rows(records: list[dict]) -> list[TableRow]:
    """Group records by (label, model), average over seeds, and compare with the zero-shot baseline of that model."""
    from lmtailor.report.extra_data import step_ratio_note  # it builds on this module's rows
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


def _fmt_params(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def _fmt_duration(s: float | None) -> str:
    if s is None:
        return "-"
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.1f} s"


def fmt_usd(v: float | None) -> str:
    return "-" if v is None else f"${v:.4f}" if v < 1 else f"${v:,.2f}"


HEADERS = ["approach", "model", "metric", "Δ vs zero-shot", "train / index time", "inference / 1k",
           "peak memory", "trainable params", "$ train", "$ / 1k inferences", "status"]
RETRIEVAL_HEADER = "retrieval"  # shown after the metric when any row retrieved
FORGETTING_HEADER = "forgetting"  # shown after the delta when any row was probed for forgetting
TRAINING_HEADER = "step · optimizer · train peak · saved"  # shown after trainable params when any row trained


def headers(rows: list[TableRow]) -> list[str]:
    """The table's columns: ``HEADERS``, plus the retrieval column when some row has retrieval metrics and the
    forgetting column when some row was probed for forgetting."""
    columns = list(HEADERS)
    if any(r.training for r in rows):
        columns.insert(columns.index("trainable params") + 1, TRAINING_HEADER)
    if any(r.forgetting for r in rows):
        columns.insert(columns.index("Δ vs zero-shot") + 1, FORGETTING_HEADER)
    if any(r.retrieval for r in rows):
        columns.insert(3, RETRIEVAL_HEADER)
    return columns


def _fmt_retrieval(metrics: dict[str, float] | None) -> str:
    if not metrics:
        return "-"
    return " · ".join(f"{'MRR' if name == 'mrr' else name} {value:.3f}" for name, value in metrics.items())


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return f"{n:.0f} B"


def _fmt_training(t: dict | None) -> str:
    if not t:
        return "-"
    step = "-" if t["s_per_step"] is None else f"{t['s_per_step']:.2g} s/step"
    return (f"{step} · {_fmt_bytes(t['optimizer_bytes'])} · {_fmt_bytes(t['peak_bytes'])} · "
            f"{_fmt_bytes(t['artifact_bytes'])}")


def _fmt_forgetting(change: dict | None) -> str:
    if not change:
        return "-"
    if change["note"]:
        return change["note"]
    parts = []
    if change["ppl_pct"] is not None:
        parts.append(f"ppl {change['ppl_pct']:+.1f}%")
    if change["acc_pts"] is not None:
        parts.append(f"acc {change['acc_pts']:+.1f} pts")
    return " · ".join(parts)


def _api_usage(record: dict) -> dict | None:
    """The inference-phase API usage of a row whose model is an openai:MODEL@URL endpoint (None for local rows)."""
    return ((record.get("meter") or {}).get("api") or {}).get("inference")


def _api_cache_note(records: list[dict]) -> str:
    """Say so when an API row's answers came from the response cache: its time is then the cache's, not the
    endpoint's (its $ is still the price of the answers)."""
    usages = [u for u in map(_api_usage, records) if u]
    hits, requests = sum(u["cache_hits"] for u in usages), sum(u["requests"] for u in usages)
    return f"{hits}/{requests} answers from the response cache" if hits else ""


def _cut_answers_note(records: list[dict]) -> str:
    """Say how many generated answers ran out of ``max_new_tokens`` (scored as cut), over the row's seeds."""
    # a row answers its test and validation rows in one pass, and the count covers both
    counts = [(c, (r.get("test_rows") or 0) + ((r.get("validation") or {}).get("rows") or 0)) for r in records
              if (c := truncated_generations(r.get("details") or {})) is not None]
    cut, answers = sum(c for c, _ in counts), sum(n for _, n in counts)
    return f"{cut}/{answers} answers cut at max_new_tokens" if cut else ""


def format_rows(rows: list[TableRow]) -> list[list[str]]:
    """Turn table rows into display strings, one list per row in ``headers(rows)`` order."""
    columns = headers(rows)
    out = []
    for r in rows:
        score = "-" if r.score is None else f"{r.metric} {r.score:.3f}" + (f" ± {r.score_std:.3f}" if r.score_std is not None else "")
        if r.seeds > 1:
            score += f" ({r.seeds} seeds)"
        delta = "-" if r.delta is None else f"{r.delta * 100:+.1f} pts"
        if r.delta is not None and r.baseline_model:
            delta += f" (vs {r.baseline_model})"
        trainable = "0" if r.trainable == 0 else _fmt_params(r.trainable)
        if r.trainable and r.total:
            pct = 100 * r.trainable / r.total
            trainable += f" ({pct:.0f}%)" if pct >= 10 else f" ({pct:.2g}%)"
        cells = [r.label, r.model, score, delta, _fmt_duration(r.train_s) if r.train_s else "-",
                 _fmt_duration(r.infer_s_per_1k), f"{r.peak_rss_mb:,.0f} MB", trainable,
                 fmt_usd(r.usd_train) if r.train_s else "-", fmt_usd(r.usd_per_1k), r.status]
        if TRAINING_HEADER in columns:
            cells.insert(8, _fmt_training(r.training))  # right after "trainable params"
        if FORGETTING_HEADER in columns:
            cells.insert(4, _fmt_forgetting(r.forgetting))
        if RETRIEVAL_HEADER in columns:
            cells.insert(3, _fmt_retrieval(r.retrieval))
        out.append(cells)
    return out


def results_markdown(records: list[dict], title: str = "results") -> str:
    """The cost-benefit table as Markdown, with the facts a reader needs to trust it."""
    from lmtailor.report.extra_data import extra_data_findings
    from lmtailor.report.findings import architecture_findings  # findings builds on this module's rows

    table_rows = build_rows(records)
    rows, columns = format_rows(table_rows), headers(table_rows)
    lines = [f"# {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    if records:
        r0 = records[0]
        env = r0.get("environment", {})
        lines += ["", f"All rows are scored on the same {r0['test_rows']} test rows (ids digest "
                  f"`{r0['test_ids_sha256']}`, listed in `splits.json`).",
                  f"Hardware: {env.get('device', '?')}, {env.get('precision', '?')} ({env.get('precision_reason', '')}); "
                  f"$ at {fmt_usd(r0['meter']['usd']['rate_per_hour'])}/hour from the pricing table.",
                  "Δ vs zero-shot: difference in the metric from the same model's zero-shot row, in percentage points "
                  "(a model without one, such as an encoder classifier, is compared with the model named in brackets).",
                  "Inference / 1k: measured wall time per answered example × 1000 (batch as configured; each row "
                  "answers the test rows and the validation rows in one pass)."]
        if any(_api_usage(r) for r in records):
            lines.append("API rows (openai:MODEL@URL): $ / 1k inferences is the provider's bill for the tokens the "
                         "responses reported (usage × pricing.api_models), not this machine's time; inference / 1k is "
                         "the wall time of the requests (sent concurrently, api.max_concurrency); peak memory is "
                         "this client's, the model's is the provider's.")
        lines += cost_notes(records)  # tool set-up kept out, set-up charged from caches, unpriced API rows
        if TRAINING_HEADER in columns:
            lines.append("Step · optimizer · train peak · saved: mean wall time per optimizer step, the optimizer's "
                         "state in memory (AdamW: two moments per trainable weight, so it scales with the trainable "
                         "parameters), the peak memory while training (GPU memory on CUDA, else the process's RSS, "
                         "which includes the ~1 GB the libraries take before any model loads; the peak memory "
                         "column is the whole row's, inference included), and the trained artifact on disk (an "
                         "adapter, or the whole model for full fine-tuning).")
        if FORGETTING_HEADER in columns:
            lines.append(_forgetting_line(records))
        if RETRIEVAL_HEADER in columns:
            lines.append("Retrieval: recall@k and MRR of the documents retrieved for each test row against its gold "
                         "document, over the rows that name one; RAG rows' time includes building the index.")
        failed = [r for r in records if r.get("status") != "ok"]
        for r in failed:
            lines.append(f"- **{r['row_id']} failed**: {r['error']['type']}: {r['error']['message']}")
        lines += [f"- {note}" for note in below_majority_notes(records)]
        lines += [""] + architecture_findings(records) + extra_data_findings(records)
    return "\n".join(lines) + "\n"


def _forgetting_line(records: list[dict]) -> str:
    """What the forgetting column measures, with the probe's size (so a reader knows what one question is worth)."""
    base = next((r["forgetting"]["base"] for r in records if r.get("forgetting", {}).get("base", {}).get("items")),
                None)
    size = ""
    if base:
        sources = ", ".join(base.get("text_set", {}).get("sources", [])) or "none found"
        size = (f" ({base['passages']} passages from {sources}; {base['items']} questions, one question = "
                f"{100 / base['items']:.1f} pts)")
    return ("Forgetting: the trained model against its base model on a general probe set never used for training"
            f"{size}: relative change in perplexity on held-out general English text (up = forgot more; "
            "encoder-decoders: of each passage's second half given the first) and change in accuracy on general "
            "multiple-choice questions (arithmetic, number comparison, days, months, opposites), in points. "
            "Measured after training, outside the time and cost columns; encoder classifiers have no "
            "language-model head to probe (n/a).")


def results_rich_table(records: list[dict], title: str = "results"):
    """The same table for the terminal (rich)."""
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    table_rows = build_rows(records)
    for h in headers(table_rows):
        table.add_column(h, overflow="fold")
    for row in format_rows(table_rows):
        table.add_row(*row, style=None if row[-1] == "ok" else "red")
    return table
