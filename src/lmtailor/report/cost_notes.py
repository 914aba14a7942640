"""The lines under the cost-benefit table that say where a $ comes from: tool set-up kept out, set-up charged from
cache entries, API rows billed $0 on purpose. Pure functions of the row records."""

from __future__ import annotations

from lmtailor.report.durations import human_duration


def _meter(record: dict) -> dict:
    return record.get("meter") or {}


def tooling_note(records: list[dict]) -> str | None:
    """Tool set-up (model cache builds, downloads) the run did, shown once: it is in no row's time or $."""
    items = [(r["row_id"], item) for r in records for item in (_meter(r).get("tooling") or {}).get("items", [])]
    if not items:
        return None
    total = sum(item["wall_s"] for _, item in items)
    what = "; ".join(f"{item['what']} ({human_duration(item['wall_s'])}, during {row})" for row, item in items)
    return (f"Tool set-up, {human_duration(total)} in all, is kept out of every row's time and $ (a deployment "
            f"would not pay it): {what}.")


def charged_note(records: list[dict]) -> str | None:
    """Set-up found in a cache and charged to the rows that used it, so a rerun reports the first run's cost."""
    charged = [(r["row_id"], _meter(r).get("charged_from_cache")) for r in records]
    charged = [(row, c) for row, c in charged if c]
    if not charged:
        return None
    parts = [f"{row} {human_duration(c['wall_s'])}" for row, c in charged if c.get("wall_s")]
    unknown = [row for row, c in charged if c.get("unknown")]
    text = ("Set-up found in a cache (synthetic rows, a dense index's embeddings) is charged to every row that uses "
            "it at what it cost when it was made, so a rerun reports the same set-up cost"
            + (f": {', '.join(parts)}." if parts else "."))
    if unknown:
        text += (f" Not charged, because the cache entry predates stored costs (clear it under the cache "
                 f"directory to measure it again): {', '.join(unknown)}; their set-up time and $ are understated.")
    return text


def unpriced_note(records: list[dict]) -> str | None:
    """API rows whose model is billed $0 on purpose (``pricing.api_models.<m>.unpriced``)."""
    rows: dict[str, list[str]] = {}
    for r in records:
        for usage in (_meter(r).get("api") or {}).values():
            for model in usage.get("unpriced_models") or []:
                rows.setdefault(model, []).append(r["row_id"])
    if not rows:
        return None
    return "Unpriced: " + "; ".join(f"{', '.join(dict.fromkeys(ids))} use {m}, billed $0 on purpose "
                                    f"(pricing.api_models.{m}.unpriced), so their $ is not a price"
                                    for m, ids in sorted(rows.items())) + "."


def cost_notes(records: list[dict]) -> list[str]:
    """Every note that applies, in a fixed order."""
    return [n for n in (tooling_note(records), charged_note(records), unpriced_note(records)) if n]
