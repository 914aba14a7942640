"""Prompted rows that score below the majority-class rate: the report says so and names the remedies.

Few-shot label scoring of a small model can collapse onto one or two labels and score below always answering the
most common class (issue 16, found item 7: 8-shot at 0.045 on a 7-class task whose majority class scored 0.315).
A reader of the table alone would take that row as the prompting rung's verdict; this note says it is a broken
prompt, not a measure of what prompting can do, and what to try.

The rate compared against, in order of preference:

1. the run's trivial baseline row (``strategy: baseline``: the training split's majority class, scored on the test
   rows like every row), when the run has one;
2. otherwise the most common label's share of the test rows, read from the per-class counts every classification
   record keeps (``score_details.per_class``). That is the best any one constant answer could score on these test
   rows, so it is an upper bound on the baseline row, and it is labelled as such.

A pure function of the records.
"""

from __future__ import annotations

from collections import OrderedDict

from lmtailor.report.traits import traits_of


def _prompted(record: dict) -> bool:
    return (traits := traits_of(record)) is not None and traits.use == "prompted"


def _fixed_rule(record: dict) -> bool:
    """The trivial baseline's row (a floor that uses no data: the majority class on a label task)."""
    return (traits := traits_of(record)) is not None and traits.fixed_rule


def _accuracy(record: dict) -> float | None:
    if record.get("status") != "ok" or record.get("primary_metric") != "accuracy":
        return None
    return next((m["value"] for m in record.get("metrics") or [] if m["name"] == "accuracy"), None)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def majority_rate(records: list[dict]) -> tuple[float, str] | None:
    """The majority-class rate on the test rows and where it comes from, or None when the run cannot tell."""
    baseline = [a for r in records if _fixed_rule(r) and (a := _accuracy(r)) is not None]
    if baseline:
        label = next(r["label"] for r in records if _fixed_rule(r))
        return _mean(baseline), f"the rate is the score of the majority-class baseline row ({label})"
    for r in records:
        per_class = (r.get("score_details") or {}).get("per_class")
        if r.get("task", {}).get("type") == "classification" and per_class:
            support = {label: c.get("support", 0) for label, c in per_class.items()}
            n = sum(support.values())
            if n:
                top = max(sorted(support), key=support.__getitem__)
                return support[top] / n, (f"the rate is the most common test label's share ({top!r}, {support[top]} "
                                           f"of {n} test rows: the best any single constant answer scores here)")
    return None


def _remedies(config: dict) -> str:
    shots, how = config.get("shots", 0), config.get("exemplars", "random")
    remedies = []
    if not config.get("calibrate"):
        remedies.append("`calibrate: true` (divides out the label prior the prompt carries)")
    if shots and how != "similar":
        remedies.append("`exemplars: similar` (each input shown its nearest training rows)")
    elif not shots:
        remedies.append("exemplars (`shots`, with `exemplars: similar`)")
    remedies += ["more shots or a larger model", "fine-tuning (a `finetune` row)"]
    return ", ".join(remedies)


def _answers(records: list[dict]) -> str:
    """How the row's answers spread over the labels (first seed), when the record has the counts."""
    counts = (records[0].get("score_details") or {}).get("prediction_counts") or {}
    n = sum(counts.values())
    if not counts or not n:
        return ""
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:2]
    shown = ", ".join(f"{label!r} {count}" for label, count in top)
    return f" Its answers fall on {len(counts)} label{'s' if len(counts) != 1 else ''} (most: {shown} of {n})."


def below_majority_notes(records: list[dict]) -> list[str]:
    """One sentence per prompted row (label × model, mean over seeds) whose accuracy is below the majority rate."""
    floor = majority_rate(records)
    if floor is None:
        return []
    rate, source = floor
    groups: OrderedDict[tuple[str, str], list[dict]] = OrderedDict()
    for r in records:
        if _prompted(r) and _accuracy(r) is not None:
            groups.setdefault((r["label"], r["model"]), []).append(r)
    notes = []
    for (label, model), recs in groups.items():
        score = _mean([_accuracy(r) for r in recs])
        if score is not None and score < rate:
            notes.append(f"**{label} on {model} scores {score:.3f}, below the majority-class rate {rate:.3f}**: "
                         f"{source}.{_answers(recs)} This prompt does worse than always giving one answer, so it is "
                         f"no measure of what the rung can do. Remedies: {_remedies(recs[0].get('config') or {})}.")
    return notes
