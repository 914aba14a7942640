"""The cost-benefit table: a pure function of result records, rendered as Markdown and in the terminal.

Its rows are built in ``report/table_rows.py``; this module lays them out, with the notes and findings under them.
"""

from __future__ import annotations

from pathlib import Path

from lmtailor.report.below_majority import below_majority_notes
from lmtailor.report.cost_notes import cost_notes
from lmtailor.report.extra_data import extra_data_findings
from lmtailor.report.findings import architecture_findings
from lmtailor.report.table_rows import TableRow, api_usage, build_rows, fmt_usd
from lmtailor.rundir import RunDir


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
        if any(api_usage(r) for r in records):
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


def write_results_markdown(run_dir: Path, records: list[dict], title: str) -> None:
    """``results.md``: the table of ``records``, written through the run directory (the run and `report` both)."""
    run = RunDir(run_dir)
    run.write_text(run.results_md, results_markdown(records, title=title))
