"""The numbers behind the cost-benefit report: data required, the Pareto frontier, break-even and uncertainty
(a bootstrap interval of a mean, and the paired bootstrap of a difference that is the report's one test of noise).

Pure functions of plain numbers, no I/O: the report calls them on values taken from result records.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np

# Float noise (0.95 * 0.8 != 0.76 exactly) must not decide whether a size "reaches" a threshold.
_TOLERANCE = 1e-12


def data_required(curve: dict[int, float], fraction: float = 0.95, higher_is_better: bool = True) -> int | None:
    """The smallest training-set size whose score reaches ``fraction`` of the best score on ``curve``.

    "Reaching a fraction of the best" means being within ``(1 - fraction) * |best|`` of the best score, on the
    right side: for a higher-is-better metric ``score >= best - (1 - fraction) * |best|`` (that is
    ``score >= 0.95 * best`` when the best is positive); for a lower-is-better metric (a loss, a perplexity)
    ``score <= best + (1 - fraction) * |best|`` (within 5 % above the lowest). The size holding the best score
    always qualifies, so a non-empty curve always has an answer. Returns None for an empty curve.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if not curve:
        return None
    best = max(curve.values()) if higher_is_better else min(curve.values())
    slack = (1 - fraction) * abs(best) + _TOLERANCE
    reached = [size for size, score in curve.items()
               if (score >= best - slack if higher_is_better else score <= best + slack)]
    return min(reached)


def pareto_frontier(points: list[tuple[str, float, float]]) -> list[str]:
    """The ids of the ``(id, cost, quality)`` points no other point dominates, cheapest first.

    A point is dominated when another costs no more and scores no less, and is strictly better on one of the
    two. Exact ties (same cost and quality) dominate neither one, so both stay on the frontier. Quality is
    higher-is-better: negate a lower-is-better metric before calling. Ties in cost are ordered by id.
    """
    ids = [p[0] for p in points]
    if len(set(ids)) != len(ids):
        raise ValueError(f"point ids must be unique, got {sorted(i for i in set(ids) if ids.count(i) > 1)}")
    for pid, cost, quality in points:
        if not (math.isfinite(cost) and math.isfinite(quality)):
            raise ValueError(f"point {pid!r} has a non-finite cost or quality ({cost}, {quality})")
    frontier = [p for p in points
                if not any(c <= p[1] and q >= p[2] and (c < p[1] or q > p[2]) for _, c, q in points)]
    return [pid for pid, _, _ in sorted(frontier, key=lambda p: (p[1], p[0]))]


def cumulative_cost(fixed: float, per_request: float, requests: float) -> float:
    """The total cost after ``requests`` requests: a one-time cost plus a cost per request."""
    if requests < 0:
        raise ValueError(f"requests must be >= 0, got {requests}")
    return fixed + per_request * requests


def break_even(fixed_a: float, per_request_a: float, fixed_b: float, per_request_b: float) -> float | None:
    """The number of requests at which the cumulative costs of options a and b are equal.

    Each option costs ``fixed + per_request * n`` after n requests (fixed: training, index building; per
    request: inference). Returns None when the lines never cross at n >= 0: parallel lines (identical lines
    included: there is no single crossing), or lines that crossed before the first request. Returns 0.0 when
    they start equal and then part.
    """
    slope = per_request_a - per_request_b
    if slope == 0:
        return None
    n = (fixed_b - fixed_a) / slope
    return n if n >= 0 else None


def payback_days(fixed_a: float, per_request_a: float, fixed_b: float, per_request_b: float,
                 requests_per_month: float, days_per_month: float = 30.0) -> float | None:
    """Days until the two options' cumulative costs cross at ``requests_per_month`` requests a month.

    Only the crossing: which option is cheaper after it (whether the dearer one up front pays back, or the cheaper
    one up front becomes the dearer) is ``compare_costs``'s answer. None when they never cross (see ``break_even``).
    """
    if requests_per_month <= 0:
        raise ValueError(f"requests_per_month must be > 0, got {requests_per_month}")
    n = break_even(fixed_a, per_request_a, fixed_b, per_request_b)
    return None if n is None else n / requests_per_month * days_per_month


@dataclass(frozen=True)
class CostComparison:
    """How a choice's cumulative cost ``fixed + rate × t`` compares with a baseline's as t (requests or months) grows.

    ``case``:
    - ``cheaper_throughout``: no dearer up front and no dearer per unit, one of them strictly cheaper;
    - ``same``: the same up front and per unit;
    - ``pays_back``: dearer up front, cheaper per unit: cheaper in total from ``crossing`` on;
    - ``never_pays_back``: dearer up front and no cheaper per unit: dearer in total at every volume;
    - ``dearer_after``: cheaper up front, dearer per unit: cheaper in total only until ``crossing``;
    - ``dearer_throughout``: the same up front and dearer per unit.
    ``crossing``: where the totals meet (units of ``t``), for ``pays_back`` and ``dearer_after``; else None.
    """

    case: str
    crossing: float | None
    extra_fixed: float  # the choice's one-time cost minus the baseline's
    saving_per_unit: float  # the baseline's rate minus the choice's


def compare_costs(fixed_choice: float, rate_choice: float, fixed_base: float, rate_base: float) -> CostComparison:
    """Compare a choice with a baseline in all four sign cases of (up-front difference, per-unit difference).

    Differences within 1e-12 are taken as none, so float noise cannot flip a case.
    """
    extra = fixed_choice - fixed_base
    saving = rate_base - rate_choice
    extra = 0.0 if abs(extra) < _TOLERANCE else extra
    saving = 0.0 if abs(saving) < _TOLERANCE else saving
    if extra == 0 and saving == 0:
        return CostComparison("same", None, extra, saving)
    if extra == 0 and saving < 0:
        return CostComparison("dearer_throughout", None, extra, saving)
    if extra <= 0 and saving >= 0:
        return CostComparison("cheaper_throughout", None, extra, saving)
    if extra > 0 and saving > 0:
        return CostComparison("pays_back", extra / saving, extra, saving)
    if extra > 0:
        return CostComparison("never_pays_back", None, extra, saving)
    return CostComparison("dearer_after", extra / saving, extra, saving)  # both negative: a positive crossing


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (n - 1) of ``values``; the std is None for a single value."""
    if not values:
        raise ValueError("mean_std needs at least one value")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def bootstrap_ci(per_row_scores: list[float], confidence: float = 0.95, resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """A percentile-bootstrap confidence interval of the mean score over test rows, seeded and reproducible.

    Resamples the rows with replacement ``resamples`` times and takes the (1 - confidence) / 2 and
    (1 + confidence) / 2 quantiles of the resampled means. The ends are clipped to the range of the scores
    (a mean cannot leave it), so a constant list gives exactly ``(c, c)`` despite float rounding.
    """
    if not per_row_scores:
        raise ValueError("bootstrap_ci needs at least one score")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    scores = np.asarray(per_row_scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n = len(scores)
    chunk = max(1, 1_000_000 // n)  # bounds memory at ~8 MB of indices for large test sets
    means = np.concatenate([scores[rng.integers(0, n, size=(min(chunk, resamples - start), n))].mean(axis=1)
                            for start in range(0, resamples, chunk)])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    lo_bound, hi_bound = float(scores.min()), float(scores.max())
    return min(max(float(low), lo_bound), hi_bound), min(max(float(high), lo_bound), hi_bound)


def paired_bootstrap_diff(scores_a: list[list[float]], scores_b: list[list[float]], confidence: float = 0.95,
                          resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """The mean difference A - B of two configurations scored on the same rows, and a paired percentile-bootstrap
    confidence interval of it: ``(difference, low, high)``, seeded and reproducible.

    ``scores_a`` holds one list of per-row scores per seed of A (``scores_b`` likewise for B); every list has one
    score per row, in the same row order for A and B (the rows are matched, which is what makes it paired). Each
    resample draws the rows with replacement, and, independently for A and for B, its seeds with replacement; the
    statistic is (A's mean over the drawn seeds and rows) - (B's likewise). With one seed each, this is the
    ordinary paired bootstrap of per-row differences; with several, seed-to-seed variance widens the interval
    instead of being averaged away. A row on which A and B always agree adds nothing to the spread, which is why a
    paired interval can exclude 0 where the two unpaired intervals overlap.
    """
    if not scores_a or not scores_b:
        raise ValueError("paired_bootstrap_diff needs at least one seed on each side")
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or a.shape[1] == 0:
        raise ValueError(f"every seed must score the same non-zero number of rows, got {a.shape} and {b.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    (ka, n), kb = a.shape, b.shape[0]
    diffs = []
    chunk = max(1, 1_000_000 // n)  # bounds memory at a few MB of weights for large test sets
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        # resampling with replacement = multinomial counts; the mean over a resample is a weighted mean
        rows = rng.multinomial(n, np.full(n, 1 / n), size=size) / n  # (size, n)
        seeds_a = rng.multinomial(ka, np.full(ka, 1 / ka), size=size) / ka  # (size, ka)
        seeds_b = rng.multinomial(kb, np.full(kb, 1 / kb), size=size) / kb
        per_row = seeds_a @ a - seeds_b @ b  # (size, n): each resample's seed-averaged per-row difference
        diffs.append((per_row * rows).sum(axis=1))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(np.concatenate(diffs), [alpha, 1 - alpha])
    return float(a.mean() - b.mean()), float(low), float(high)


def excludes_zero(ci: tuple[float, float]) -> bool:
    """Whether a confidence interval of a difference excludes 0: the two sides differ beyond the noise."""
    low, high = sorted(ci)
    return low > 0 or high < 0
