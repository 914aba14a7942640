"""Recommendations by architecture: which model family did best on this task, at what cost, and whether the rule of
thumb held. A pure function of result records; every figure it prints comes from them.

Rows are the cost-benefit table's rows (``build_rows``: one per approach × model, averaged over seeds), so the seed
averaging exists once. A gap is called only when the report's one test of noise says so: the paired bootstrap of
per-test-row differences, seeds resampled too (report/paired.py), whose 95% interval must exclude 0. The trivial
baseline row has no model, so no family: it is left out here.

Each family's best row is chosen on the validation rows when every scored row has a validation score (as the
recommendation chooses, report/selection.py), and its test score is reported: choosing on the test rows would favour
the family that happened to run more rows (the maximum of several noisy test scores is biased upwards). Without
validation scores the choice falls back to the test rows, and the section says so.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from lmtailor.models.families import FAMILIES
from lmtailor.report.paired import DIFFERS, UNKNOWN, WITHIN_NOISE, compare_groups
from lmtailor.report.table_rows import TableRow, build_rows, fmt_usd
from lmtailor.report.traits import traits_of


@dataclass(frozen=True)
class Rule:
    """What the rule of thumb expects for one task type."""

    expects: str  # the family expected to win
    says: str  # the rule, as the user will read it
    cheaper_at_par_counts: bool = False  # a claim about cost: a tie won on price still bears it out


# The rule of thumb lmtailor's report checks, from the architecture slide quoted in issue 3 item 8 ("encoder-decoder
# for summarization/translation/QA/structured generation, decoder-only for open-ended generation/dialogue/code") and
# item 6 (encoder classifiers: "the smallest model in the table, and often the cheapest one that wins"); DESIGN.md
# ("The problem it solves") asks the question: encoder-decoder (T5, Flan-T5, BART) or decoder-only?
RULES_OF_THUMB: dict[str, Rule] = {
    "classification": Rule("encoder", "an encoder classifier is usually the cheapest model that wins",
                           cheaper_at_par_counts=True),
    "generation": Rule("encoder-decoder", "encoder-decoder for output determined by the input (summarization, "
                       "translation, structured generation); for open-ended generation, dialogue or code the slide "
                       "expects decoder-only instead"),
    "qa": Rule("encoder-decoder", "encoder-decoder for question answering"),
    # for a task type of open-ended generation / dialogue / code, once one is registered under this name
    "open-ended": Rule("decoder-only", "decoder-only for open-ended generation, dialogue and code"),
}

@dataclass
class _Best:
    family: str
    row: TableRow
    signed: float  # the test score, negated when lower is better, so that larger always means better
    chosen_by: float  # the same for the score it was chosen by (validation mean, else test)


def _validation_means(records: list[dict]) -> dict[tuple[str, str], float | None]:
    """Each (label, model)'s validation score on its primary metric, averaged over its finished seeds; None when a
    finished seed has none (no validation rows, or a record written before they were scored)."""
    values: dict[tuple[str, str], list[float | None]] = {}
    for r in records:
        if r.get("status") != "ok":
            continue
        block = r.get("validation") or {}
        value = next((m["value"] for m in block.get("metrics", []) if m["name"] == block.get("primary_metric")), None)
        values.setdefault((r["label"], r["model"]), []).append(value)
    return {k: (None if any(v is None for v in vs) else sum(vs) / len(vs)) for k, vs in values.items()}


def _cost_key(row: TableRow) -> tuple[float, float]:
    # The recurring cost decides (it grows with every request), then the one-time set-up.
    return (float("inf") if row.usd_per_1k is None else row.usd_per_1k, row.usd_train)


def _name(row: TableRow) -> str:
    return f"{row.label} on {row.model}"


def _score(row: TableRow) -> str:
    text = f"{row.score:.3f}" + (f" ± {row.score_std:.3f}" if row.score_std is not None else "")
    return text + (f" ({row.seeds} seeds)" if row.seeds > 1 else "")


def _usd(v: float | None) -> str:
    return "$0" if v == 0 else fmt_usd(v)


def _vs(a: float | None, b: float | None) -> str:
    """'$a vs $b (r×)', the ratio only when both are positive."""
    text = f"{_usd(a)} vs {_usd(b)}"
    if a is None or b is None or not (a > 0 and b > 0):
        return text
    ratio = a / b
    return text + (f" ({ratio:.2g}×)" if ratio < 10 else f" ({ratio:,.0f}×)")


def _costs(a: TableRow, b: TableRow) -> str:
    setup = ("no set-up cost for either" if a.usd_train == b.usd_train == 0
             else f"set-up {_vs(a.usd_train, b.usd_train)}")
    return f"{setup}; per 1k inferences {_vs(a.usd_per_1k, b.usd_per_1k)}"


def _pts(x: float) -> str:
    return f"{x * 100:.1f} pts"


class _Pairs:
    """The paired test between two table rows (approach × model groups) of one task's records."""

    def __init__(self, records: list[dict]) -> None:
        self.by_id = {r["row_id"]: r for r in records}
        self.rows: dict[tuple[str, str], list[str]] = {}
        for r in records:
            self.rows.setdefault((r["label"], r["model"]), []).append(r["row_id"])

    def compare(self, a: TableRow, b: TableRow) -> dict:
        """``report.paired.compare_groups`` of row ``a`` against row ``b`` on the test rows (difference a - b)."""
        group = lambda row: {"id": _name(row), "metric": row.metric, "rows": self.rows[(row.label, row.model)]}  # noqa: E731
        return compare_groups(group(a), group(b), self.by_id, "test")


def _ci_pts(c: dict, sign: float = 1.0) -> str:
    """The paired interval of a difference in points, oriented by ``sign`` (-1 when lower is better)."""
    low, high = sorted((sign * c["ci95"][0], sign * c["ci95"][1]))
    return f"paired 95% CI {low * 100:+.1f} to {high * 100:+.1f} pts"


def _family_of(records: list[dict]) -> dict[tuple[str, str], str | None]:
    family_of: dict[tuple[str, str], str | None] = {}
    for r in records:
        if family_of.get((r["label"], r["model"])) is None:
            family_of[(r["label"], r["model"])] = r.get("family")
    return family_of


def _families(family_of: dict, rows: list[TableRow], hib: bool, chooser: dict[tuple[str, str], float] | None
              ) -> tuple[dict[str, _Best], list[str]]:
    """Each family's best row (the best score in ``chooser``, the validation means, else the test score; ties to
    the cheaper), and notes on the rows left out."""
    best: dict[str, _Best] = {}
    notes, unknown = [], []
    for row in rows:
        family = family_of.get((row.label, row.model))
        if row.score is None:
            notes.append(f"{_name(row)} is not compared: no seed finished ({row.status}).")
            continue
        if family is None:
            unknown.append(_name(row))
            continue
        # not a registered family: an API endpoint (remote.settings.API_FAMILY), whose architecture is not known, so
        # it cannot test an architecture rule
        if family not in FAMILIES:
            notes.append(f"{_name(row)} is an API endpoint of unknown architecture: compared by score and cost in "
                         "the table, not by family.")
            continue
        by = row.score if chooser is None else chooser[(row.label, row.model)]
        cand = _Best(family, row, row.score if hib else -row.score, by if hib else -by)
        cur = best.get(family)
        better = cur is None or cand.chosen_by > cur.chosen_by
        if better or (cand.chosen_by == cur.chosen_by and _cost_key(row) < _cost_key(cur.row)):
            best[family] = cand
    if unknown:
        notes.append(f"Not compared, their records do not say the model's family (written by an older lmtailor; "
                     f"run them again): {'; '.join(unknown)}.")
    return best, notes


def _verdict(rule: Rule | None, task_type: str, ranked: list[_Best], pairs: _Pairs, hib: bool) -> str:
    if rule is None:
        return f"- **Rule of thumb**: none recorded for task type `{task_type}`, so there is nothing to check."
    head = f"- **Rule of thumb** for {task_type}: {rule.says}. "
    mine = {b.family: b for b in ranked}.get(rule.expects)  # ranked holds one best row per family
    if mine is None:
        return head + f"This run **cannot tell**: it has no {rule.expects} row."
    other = next(b for b in ranked if b is not mine)
    diff = mine.signed - other.signed
    c = pairs.compare(mine.row, other.row)
    sign = 1.0 if hib else -1.0
    if c["verdict"] == UNKNOWN:
        return head + f"This run **cannot tell**: the two rows cannot be compared row by row ({c['note']})."
    if c["verdict"] == DIFFERS and diff > 0:
        return head + f"This run **agrees**: {rule.expects} beat {other.family} by {_pts(diff)} ({_ci_pts(c, sign)})."
    if c["verdict"] == DIFFERS:
        return head + (f"This run **disagrees**: {other.family} beat {rule.expects} by {_pts(-diff)} "
                       f"({_ci_pts(c, -sign)}).")
    at_par = f"{rule.expects} and {other.family} are within the noise ({_pts(abs(diff))}; {_ci_pts(c, sign)})"
    if rule.cheaper_at_par_counts and _cost_key(mine.row) < _cost_key(other.row):
        return head + f"This run **agrees**: {at_par}, and {rule.expects} is cheaper ({_costs(mine.row, other.row)})."
    return head + f"This run **cannot tell**: {at_par}."


def _task_findings(records: list[dict]) -> list[str]:
    task = records[0].get("task", {})
    name, task_type = task.get("name", "?"), task.get("type", "?")
    n = min((r.get("test_rows") or 0 for r in records), default=0)
    rows = build_rows(records)
    ok = next((r for r in records if r.get("status") == "ok"), None)
    metric = ok["primary_metric"] if ok else "-"
    hib = next((m.get("higher_is_better", True) for m in (ok or {}).get("metrics", []) if m["name"] == metric), True)
    family_of = _family_of(records)
    trivial = {(r["label"], r["model"]) for r in records if (t := traits_of(r)) is not None and t.fixed_rule}
    rows = [r for r in rows if (r.label, r.model) not in trivial]  # no model, no family: the floor is elsewhere
    validation = _validation_means(records)
    scored = [(r.label, r.model) for r in rows if r.score is not None]
    chooser = validation if scored and all(validation.get(k) is not None for k in scored) else None
    best, notes = _families(family_of, rows, hib, chooser)
    lines = [f"## Which architecture did best: `{name}` ({task_type}, {n} test rows)", ""]
    if best:
        lines += [f"| family | best row | {metric} | $ set-up | $ / 1k inferences |", "|---|---|---|---|---|"]
        ranked = sorted(best.values(), key=lambda b: (-b.chosen_by, _cost_key(b.row)))
        lines += [f"| {b.family} | {_name(b.row)} | {_score(b.row)} | {_usd(b.row.usd_train)} | "
                  f"{_usd(b.row.usd_per_1k)} |" for b in ranked]
        lines.append("")
    if len(best) < 2:
        ran = ", ".join(sorted(best)) or "none"
        lines.append(f"- Families with a scored row: {ran}. Comparing architectures needs rows from at least two "
                     "families (decoder-only, encoder-decoder, encoder): add a model of another family to the "
                     "strategies' `models`.")
        return lines + [f"- {note}" for note in notes] + [""]
    pairs = _Pairs(records)
    lines += _comparison(ranked, rows, family_of, hib, metric, pairs)
    lines.append(_verdict(RULES_OF_THUMB.get(task_type), task_type, ranked, pairs, hib))
    lines.append("- Cheaper means a lower $ per 1k inferences, then a lower set-up (training and index building).")
    lines.append("- Each family's best row was chosen on the validation rows; the scores are on the test rows."
                 if chooser is not None else "- Each family's best row was chosen on the test rows (not every row "
                 "has a validation score), so the best scores are optimistic.")
    return lines + [f"- {note}" for note in notes] + [""]


def _comparison(ranked: list[_Best], rows: list[TableRow], family_of: dict, hib: bool, metric: str,
                pairs: _Pairs) -> list[str]:
    """The winner against the runner-up family, the noise, and the cheapest row as good as the best."""
    lines = []
    win, second = ranked[0], ranked[1]
    gap = win.signed - second.signed
    c = pairs.compare(win.row, second.row)
    sign = 1.0 if hib else -1.0
    if c["verdict"] == DIFFERS and gap < 0:  # chosen on validation, beaten on test: the splits disagree
        lines.append(f"- **The validation and test rows disagree**: {win.family}'s best on the validation rows "
                     f"({_name(win.row)}) is beaten on the test rows by {second.family}'s ({_name(second.row)}) by "
                     f"{_pts(-gap)} of {metric} ({_ci_pts(c, -sign)}); {_costs(win.row, second.row)}.")
    elif c["verdict"] == DIFFERS:
        lines.append(f"- **{win.family} did best**: {_name(win.row)} beat {second.family}'s best ({_name(second.row)}) "
                     f"by {_pts(gap)} of {metric} ({_ci_pts(c, sign)}); {_costs(win.row, second.row)}.")
    else:
        noise = f"{_ci_pts(c, sign)}, within the noise" if c["verdict"] == WITHIN_NOISE else \
            f"the noise cannot be told: {c['note']}"
        lead = (f"{win.family} leads {second.family} by {_pts(gap)}" if gap >= 0 else
                f"{win.family} (best on the validation rows) trails {second.family} by {_pts(-gap)}")
        lines.append(f"- **No clear winner**: {lead} of {metric} on the test rows "
                     f"({noise}); {_costs(win.row, second.row)}.")
    lines.append("- Noise: a gap is called only when the 95% interval of the paired bootstrap over the test rows "
                 "(per-row differences, seeds resampled too) excludes 0.")
    # the cheapest row of any family that the paired test cannot tell from the best
    par = [r for r in rows if r.score is not None and family_of.get((r.label, r.model))
           and (r is win.row or pairs.compare(win.row, r)["verdict"] == WITHIN_NOISE)]
    cheapest = min(par, key=_cost_key)
    if cheapest is win.row:
        lines.append("- **Cheapest within the noise of the best**: the best row itself.")
    else:
        lines.append(f"- **Cheapest within the noise of the best**: {_name(cheapest)} "
                     f"({family_of[(cheapest.label, cheapest.model)]}), {metric} {_score(cheapest)}; "
                     f"{_costs(cheapest, win.row)} against the best.")
    return lines


def architecture_findings(records: list[dict]) -> list[str]:
    """Markdown lines per task: each family's best row, the winner and its cost, and the rule-of-thumb check."""
    by_task: OrderedDict[str, list[dict]] = OrderedDict()
    for r in records:
        by_task.setdefault(r.get("task", {}).get("name", "?"), []).append(r)
    lines: list[str] = []
    for recs in by_task.values():
        lines += _task_findings(recs)
    return lines
