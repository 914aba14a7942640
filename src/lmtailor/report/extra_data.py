"""Extra data against equal compute: a row trained on augmented or synthetic rows against its equal-steps control
(``strategies/controls.py``) and against the plain row, so the gain of the extra rows is told from the gain of the
longer training that more rows bring at the same ``epochs``.

A pure function of result records. Scores are the cost-benefit table's (``build_rows``: mean over seeds); steps are
the records' optimizer steps (a pre-training strategy's fine-tuning phase), averaged over the same seeds. Every gain
is read with the report's one test of noise (report/paired.py: the paired bootstrap over the test rows).
"""

from __future__ import annotations

import statistics

from lmtailor.report.extra_data_rows import (control_of, finetune_details, fmt_steps, label_model_groups,
                                             optimizer_steps, plain_twin, trained_on_extra_data)
from lmtailor.report.paired import compare_groups, verdict_words
from lmtailor.report.table_rows import TableRow, build_rows


def _rows_count(records: list[dict], key: str) -> float | None:
    values = [v for r in records if r.get("status") == "ok" and isinstance(v := finetune_details(r).get(key), int)]
    return statistics.fmean(values) if values else None


def _control_wanted(record: dict) -> bool:
    """Whether the row's config asked for an equal-steps control (some extra-data block without control: false)."""
    config = record.get("config") or {}
    block = config["finetune"] if isinstance(config.get("finetune"), dict) else config
    return any(isinstance(b := block.get(k), dict) and b.get("control", True) for k in ("augment", "synthetic"))


def _pts(a: float, b: float) -> str:
    return f"{(a - b) * 100:+.1f} pts"


def _noise(recs_a: list[dict], recs_b: list[dict], by_id: dict[str, dict]) -> str:
    """The report's one test of noise (the paired bootstrap over the test rows) on two groups, as a parenthesis."""
    group = lambda recs: {"id": recs[0]["label"], "metric": recs[0].get("primary_metric"),  # noqa: E731
                          "rows": [r["row_id"] for r in recs]}
    return verdict_words(compare_groups(group(recs_a), group(recs_b), by_id, "test"))


def extra_data_findings(records: list[dict]) -> list[str]:
    """Markdown lines: each extra-data row against its equal-steps control (or, without one, the step ratio to the
    plain row beside the gain); no lines when no row trained on extra data."""
    groups = label_model_groups(records)
    by_id = {r["row_id"]: r for r in records}
    table = {(r.label, r.model): r for r in build_rows(records)}
    controls = {(c["of_label"], key[1]): key for key, recs in groups.items() if (c := control_of(recs[0]))}
    lines = []
    for key, recs in groups.items():
        if not trained_on_extra_data(recs[0]):
            continue
        row = table.get(key)
        if row is None or row.score is None:
            continue
        lines.append("- " + _finding(row, recs, groups, table, controls.get(key), by_id))
    if not lines:
        return []
    return (["## Extra data against equal compute", "",
             "More training rows at the same epochs are also more optimizer steps; the control is the same row "
             "trained on the original rows only for the same number of steps.", ""] + lines + [""])


def _finding(row: TableRow, recs: list[dict], groups: dict, table: dict, control_key: tuple | None,
             by_id: dict[str, dict]) -> str:
    steps = optimizer_steps(recs)
    head = f"**{row.label}** ({row.metric} {row.score:.3f}, {fmt_steps(steps) if steps else '?'} optimizer steps)"
    twin_key = plain_twin(recs, groups)
    twin = table.get(twin_key) if twin_key else None
    twin_steps = optimizer_steps(groups[twin_key]) if twin_key else None
    control = table.get(control_key) if control_key else None
    if control is not None and control.score is not None:
        real = _rows_count(groups[control_key], "train_rows")
        text = (f"{head}: {_pts(row.score, control.score)} over its equal-steps control {control.label} "
                f"({control.score:.3f}, the same steps on {'the' if real is None else f'{real:.0f}'} original "
                f"rows) {_noise(recs, groups[control_key], by_id)}: the effect of the extra rows themselves")
        if twin is not None and twin.score is not None:
            text += (f"; {_pts(row.score, twin.score)} over {twin.label} ({twin.score:.3f}"
                     + (f", {fmt_steps(twin_steps)} steps" if twin_steps else "")
                     + f"), of which {_pts(control.score, twin.score)} is training longer "
                     + _noise(groups[control_key], groups[twin_key], by_id))
        return text + "."
    why = ("its control failed" if control_key else "its equal-steps control did not run" if _control_wanted(recs[0])
           else "its equal-steps control is off (control: false)")
    if twin is not None and twin.score is not None and steps and twin_steps:
        return (f"{head}: {_pts(row.score, twin.score)} over {twin.label} with {steps / twin_steps:.1f}x its "
                f"optimizer steps ({fmt_steps(steps)} vs {fmt_steps(twin_steps)}); {why}, so the gain mixes the "
                "extra rows and the longer training.")
    total, real = _rows_count(recs, "train_rows_total"), _rows_count(recs, "real_rows")
    rows = f" on {total:.0f} training rows ({real:.0f} original)" if total and real else ""
    return (f"{head}{rows}: no row trained on the original rows alone to compare with, and {why}; at the same "
            "epochs the extra rows also bring more optimizer steps.")
