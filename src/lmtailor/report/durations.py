"""Durations in the units a person reads: "45 seconds", "12 minutes", "3.2 hours", "4 days", "2.5 years"."""

from __future__ import annotations

MINUTE, HOUR, DAY, YEAR = 60.0, 3600.0, 86400.0, 365.25 * 86400.0


def _count(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}" + ("" if round(value) == 1 else "s")


def human_duration(seconds: float) -> str:
    """``seconds`` in the largest unit that keeps a readable number: under 90 seconds in seconds ("less than a
    second" below 1), then minutes (to 90 minutes), hours with one decimal (to 48 hours), whole days (to two
    years), and years with one decimal."""
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {seconds}")
    if seconds < 1:
        return "less than a second"
    if seconds < 90:
        return _count(seconds, "second")
    if seconds < 90 * MINUTE:
        return _count(seconds / MINUTE, "minute")
    if seconds < 48 * HOUR:
        return f"{seconds / HOUR:.1f} hours"
    if seconds < 2 * YEAR:
        return _count(seconds / DAY, "day")
    return f"{seconds / YEAR:,.1f} years"
