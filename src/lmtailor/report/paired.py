"""The report's one definition of noise: do two configurations differ on the same rows?

Two groups (a label on a model, over its seeds) are compared with a paired bootstrap of their per-row score
differences (``analysis.paired_bootstrap_diff``: rows resampled, and each group's seeds resampled as well), on the
test rows or the validation rows. They "differ" when the 95% interval of the difference excludes 0, else they are
"within noise"; "unknown" when the records cannot be paired (a seed without per-row scores, a metric that is not a
mean over rows, different rows). Every "differs" / "within noise" in the report, the findings, the recommendation
and ``lmtailor compare`` comes from ``compare_groups``.
"""

from __future__ import annotations

from lmtailor.report.analysis import excludes_zero, paired_bootstrap_diff

DIFFERS, WITHIN_NOISE, UNKNOWN = "differs", "within noise", "unknown"
SPLITS = ("test", "validation")
_DIGITS = 6  # as results.json: rounding keeps float-summation noise out of the text


def per_row(record: dict, split: str = "test") -> list[float] | None:
    """The record's per-row scores on its primary metric over ``split`` (in that split's row order), or None."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    details = (record.get("score_details") if split == "test" else
               ((record.get("validation") or {}).get("score_details")))
    scores = (details or {}).get("per_row")
    return [float(x) for x in scores] if scores else None


def rows_digest(record: dict, split: str = "test") -> str | None:
    """The digest of the ids of the rows ``record`` was scored on in ``split`` (which rows, in which order)."""
    if split == "test":
        return record.get("test_ids_sha256")
    return (record.get("validation") or {}).get("ids_sha256")


def _seed_lists(group: dict, records_by_id: dict[str, dict], split: str) -> tuple[list[list[float]] | None, str, set]:
    """The group's finished seeds' per-row lists, or None and why; and the row digests they were scored on."""
    ok = [records_by_id[r] for r in group.get("rows", []) if r in records_by_id
          and records_by_id[r].get("status") == "ok"]
    if not ok:
        return None, f"{group['id']} has no finished row", set()
    lists = [per_row(r, split) for r in ok]
    if any(x is None for x in lists):
        # a record written before they were kept, no rows of that split, or a metric that is not a mean over rows
        return None, f"{group['id']} has no per-row {split} scores", set()
    return lists, "", {rows_digest(r, split) for r in ok}


def compare_groups(group_a: dict, group_b: dict, records_by_id: dict[str, dict], split: str = "test",
                   records_by_id_b: dict[str, dict] | None = None) -> dict:
    """Paired comparison of ``group_a`` against ``group_b`` on ``split``: ``{"split", "difference" (A - B in the
    metric's units), "ci95", "verdict" (differs / within noise / unknown), "rows", "seeds", "note"}``.

    ``records_by_id``: the run's records by row id (``records_by_id_b`` for B when it comes from another run).
    Rows are matched by position within records whose row-id digests agree; anything else is "unknown".
    """
    out = {"split": split, "difference": None, "ci95": None, "verdict": UNKNOWN, "rows": None, "seeds": None,
           "note": ""}
    if group_a.get("metric") != group_b.get("metric"):
        out["note"] = "scored on different metrics"
        return out
    a, why_a, digests_a = _seed_lists(group_a, records_by_id, split)
    b, why_b, digests_b = _seed_lists(group_b, records_by_id_b if records_by_id_b is not None else records_by_id, split)
    if a is None or b is None:
        out["note"] = why_a or why_b
        return out
    digests = digests_a | digests_b
    if len(digests) != 1 or None in digests or len({len(x) for x in a + b}) != 1:
        out["note"] = f"scored on different {split} rows, so they cannot be paired"
        return out
    diff, low, high = paired_bootstrap_diff(a, b)
    out.update(difference=round(diff, _DIGITS), ci95=[round(low, _DIGITS), round(high, _DIGITS)],
               verdict=DIFFERS if excludes_zero((low, high)) else WITHIN_NOISE, rows=len(a[0]),
               seeds=[len(a), len(b)])
    out["note"] = (f"paired bootstrap over {len(a[0])} {split} rows"
                   + (f", seeds resampled ({len(a)} and {len(b)})" if max(len(a), len(b)) > 1 else ""))
    return out


def significantly_worse(group: dict, best: dict, records_by_id: dict[str, dict], split: str) -> bool | None:
    """Whether ``group`` scores significantly worse than ``best`` on ``split`` (direction-aware); None: unknown."""
    c = compare_groups(group, best, records_by_id, split)
    if c["verdict"] == UNKNOWN:
        return None
    worse = c["difference"] < 0 if best.get("higher_is_better", True) else c["difference"] > 0
    return c["verdict"] == DIFFERS and worse


def verdict_words(c: dict) -> str:
    """A short parenthesis for a table cell: what the paired test said about a difference."""
    if c["verdict"] == UNKNOWN:
        return f"(noise unknown: {c['note']})" if c["note"] else "(noise unknown)"
    low, high = c["ci95"]
    return f"({c['verdict']}: paired 95% CI {low * 100:+.1f} to {high * 100:+.1f} pts)"
