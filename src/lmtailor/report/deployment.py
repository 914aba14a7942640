"""What serving a configuration costs per month: a deployment a cloud-cost engineer would recognise.

A self-hosted model is paid for while its machines are up, not per busy second. From a row's measured throughput
(test rows answered / inference wall time, one process at the run's ``budget.eval_batch_size``: the
requests per second one instance serves), the experiment's ``report.requests_per_month`` and
``report.deployment``:

- **always_on** (the default): enough instances for the peak, never fewer than ``min_instances`` (at least 1):
  ``instances = max(min_instances, ceil(peak / throughput))`` with ``peak = requests_per_month /
  (hours_per_month × 3600) × peak_to_average`` requests per second, and
  ``$/month = instances × $/h × hours_per_month``.
- **scale_to_zero**: instances run only while there is work, billed per second of uptime. The hours of work are
  ``requests_per_month / throughput / 3600``; instances sized for the bursts they serve run at about
  ``1 / peak_to_average`` of their capacity on average, so the billed hours are ``work hours × peak_to_average``
  (never more than always-on instances for the peak would run: ``ceil(peak / throughput) × hours_per_month`` is at
  least that), and ``$/month = billed hours × $/h``.

An API row is the provider's bill instead: its measured $ per request × requests per month, whatever the
deployment says. ``$/h`` is ``usd_per_hour`` when set, else the run's price for the row's hardware
(``pricing.cpu_usd_per_hour``…) as its record holds it.

``peak_to_average`` defaults to 3: traffic that follows people's working day puts several times the average load
on its busiest hours (a weekday's office hours carry most of the week's requests), and a service sized for the
average would queue then. Measure your own traffic and set it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmtailor.report.traits import traits_of

HOURS_PER_MONTH = 730.0  # 365.25 days × 24 hours / 12 months, rounded as cloud price sheets do


class DeploymentConfig(BaseModel):
    """How a self-hosted configuration would be served, for its monthly cost (``report.deployment``)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["always_on", "scale_to_zero"] = Field(
        "always_on", description="always_on: min_instances or more machines up all month; scale_to_zero: "
                                 "machines up only while serving, billed per second")
    usd_per_hour: float | None = Field(
        None, ge=0, description="$/hour of one serving instance (default: the run's pricing for the row's hardware)")
    min_instances: int = Field(1, ge=0, description="always_on: instances kept up however few requests come (>= 1)")
    peak_to_average: float = Field(
        3.0, ge=1, description="busiest-hour load over the month's average load; capacity is sized for the peak. "
                               "3: day-time traffic; set it from your own")
    hours_per_month: float = Field(HOURS_PER_MONTH, gt=0, description="hours in a billing month")

    @model_validator(mode="after")
    def _always_on_has_an_instance(self) -> "DeploymentConfig":
        if self.mode == "always_on" and self.min_instances < 1:
            raise ValueError("always_on needs min_instances >= 1 (use mode: scale_to_zero for none while idle)")
        return self


@dataclass(frozen=True)
class Serving:
    """What a group's records say about serving it: measured throughput and price, or an API bill per request."""

    kind: Literal["api", "self-hosted", "rule"]
    hardware: str
    usd_per_hour: float | None
    requests_per_s: float | None  # one instance, self-hosted rows
    usd_per_request: float | None  # API rows
    unpriced: tuple[str, ...] = ()  # API models billed $0 on purpose (pricing.api_models.<m>.unpriced)


@dataclass(frozen=True)
class MonthlyCost:
    """A group's cost per month at a volume, with the assumptions it rests on in words."""

    usd: float | None
    instances: int | None
    billed_hours: float | None
    assumptions: str


def serving_of(records: list[dict]) -> Serving | None:
    """The serving facts of a group's finished records (its seeds), None when none finished with an inference
    measurement. Throughput is the seeds' test rows over their inference wall time, summed."""
    if records and all((t := traits_of(r)) is not None and t.fixed_rule for r in records):
        # The trivial baseline (strategies/baseline.py) is a fixed rule with no model: it rides on whatever already
        # serves the application, so it is priced at $0, not at an always-on instance of its own.
        return Serving("rule", "cpu", None, None, None) if any(r.get("status") == "ok" for r in records) else None
    meters = [r.get("meter") or {} for r in records if r.get("status") == "ok"]
    meters = [m for m in meters if (m.get("phases") or {}).get("inference", {}).get("examples")]
    if not meters:
        return None
    api = [(m.get("api") or {}).get("inference") for m in meters]
    if all(api):
        requests = sum(a["requests"] for a in api)
        unpriced = tuple(sorted({u for a in api for u in a.get("unpriced_models") or []}))
        return Serving("api", meters[0].get("hardware", "cpu"), None, None,
                       sum(a["usd"] for a in api) / requests if requests else None, unpriced)
    examples = sum(m["phases"]["inference"]["examples"] for m in meters)
    wall = sum(m["phases"]["inference"]["wall_s"] for m in meters)
    rate = (meters[0].get("usd") or {}).get("rate_per_hour")
    return Serving("self-hosted", meters[0].get("hardware", "cpu"), rate, examples / wall if wall > 0 else None,
                   None)


def _usd(x: float) -> str:
    return f"${x:,.0f}" if x >= 100 else f"${x:,.2f}" if x >= 0.01 else f"${x:.3g}"


def monthly_cost(serving: Serving, requests_per_month: float, cfg: DeploymentConfig) -> MonthlyCost:
    """The monthly cost of serving ``requests_per_month`` requests as ``cfg`` describes (module docstring)."""
    volume = f"{requests_per_month:,.0f} requests/month"
    if serving.kind == "rule":
        return MonthlyCost(0.0, None, None, f"a fixed rule with no model: no serving instance of its own, {volume}")
    if serving.kind == "api":
        if serving.usd_per_request is None:
            return MonthlyCost(None, None, None, "the API's price per request was not measured")
        note = f"unpriced: {', '.join(serving.unpriced)} billed $0 on purpose" if serving.unpriced else \
            f"the API's bill, {_usd(serving.usd_per_request * 1000)} per 1k requests"
        return MonthlyCost(serving.usd_per_request * requests_per_month, None, None, f"{note}, {volume}")
    rate = cfg.usd_per_hour if cfg.usd_per_hour is not None else serving.usd_per_hour
    if rate is None or not serving.requests_per_s:
        return MonthlyCost(None, None, None, "its throughput or hourly price was not measured")
    peak = requests_per_month / (cfg.hours_per_month * 3600.0) * cfg.peak_to_average
    for_peak = math.ceil(peak / serving.requests_per_s - 1e-9)
    throughput = f"one instance serves {serving.requests_per_s:,.3g} requests/s as measured"
    if cfg.mode == "always_on":
        n = max(cfg.min_instances, for_peak)
        text = (f"{n} always-on {serving.hardware} instance{'s' if n != 1 else ''} at {_usd(rate)}/h, {volume}, "
                f"peak {cfg.peak_to_average:g}x average; {throughput}")
        return MonthlyCost(n * rate * cfg.hours_per_month, n, n * cfg.hours_per_month, text)
    work_hours = requests_per_month / serving.requests_per_s / 3600.0
    billed = work_hours * cfg.peak_to_average
    text = (f"scale-to-zero {serving.hardware} instances at {_usd(rate)}/h, {billed:,.3g} billed hours "
            f"= {work_hours:,.3g} h of work x peak {cfg.peak_to_average:g}, {volume}; {throughput}")
    return MonthlyCost(billed * rate, None, billed, text)


def instance_capacity(serving: Serving, cfg: DeploymentConfig) -> float | None:
    """Requests a month one always-on instance carries when the peak is ``peak_to_average`` times the average
    (``monthly_cost``'s sizing turned around), or None: not self-hosted, not always-on, or throughput unmeasured."""
    if serving.kind != "self-hosted" or cfg.mode != "always_on" or not serving.requests_per_s:
        return None
    return serving.requests_per_s * cfg.hours_per_month * 3600.0 / cfg.peak_to_average


def group_serving(groups: list[dict], records: list[dict]) -> dict[str, Serving]:
    """Each summary group's ``Serving``, by group id (groups with no inference measurement are left out)."""
    out = {}
    for g in groups:
        rows = set(g.get("rows") or [])
        serving = serving_of([r for r in records if r.get("row_id") in rows])
        if serving is not None:
            out[g["id"]] = serving
    return out
