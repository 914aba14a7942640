"""``lmtailor data inspect``: split sizes, label balance and length statistics of prepared data."""

from __future__ import annotations

import statistics
from collections import Counter

from rich.text import Text

from lmtailor.data.prepare import PreparedData

SPLITS = ("train", "validation", "test")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A plain aligned text table (first column left-aligned, the rest right-aligned)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return [fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]


def length_stats(lengths: list[int]) -> list[str]:
    """min, median, mean, max of ``lengths`` as text ("-" for an empty list)."""
    if not lengths:
        return ["-"] * 4
    return [str(min(lengths)), f"{statistics.median(lengths):g}", f"{statistics.fmean(lengths):.1f}",
            str(max(lengths))]


def label_balance(prepared: PreparedData) -> list[list[str]]:
    """One row per label: count and share in each split."""
    parts = {n: getattr(prepared.splits, n) for n in SPLITS}
    counts = {n: Counter(e.target for e in rows) for n, rows in parts.items()}
    labels = sorted(set().union(*counts.values()), key=lambda t: (-counts["train"][t], t))
    table = []
    for label in labels:
        cells = [label]
        for n in SPLITS:
            total = len(parts[n])
            cells.append(f"{counts[n][label]} ({100 * counts[n][label] / total:.0f}%)" if total else "0")
        table.append(cells)
    return table


def inspect_data(prepared: PreparedData, task_type: str) -> Text:
    """A plain-text report (as a rich ``Text``, so labels in [brackets] print as they are)."""
    s = prepared.splits
    parts = {n: getattr(s, n) for n in SPLITS}
    lines = [f"source: {s.source}"]
    lines += [f"file: {f}" for f in prepared.source_files]
    lines += ["", *_table(["split", "rows"], [[n, str(len(rows))] for n, rows in parts.items()])]
    if task_type == "classification" or prepared.task_defaults.get("labels"):
        lines += ["", "label balance", *_table(["label", *SPLITS], label_balance(prepared))]
    stats = []
    for n, rows in parts.items():
        stats.append([f"{n} input", *length_stats([len(e.input) for e in rows])])
        stats.append([f"{n} target", *length_stats([len(e.target) for e in rows])])
    lines += ["", "lengths in characters", *_table(["", "min", "median", "mean", "max"], stats)]
    if prepared.warnings:
        lines += ["", "warnings:", *(f"- {w}" for w in prepared.warnings)]
    return Text("\n".join(lines))
