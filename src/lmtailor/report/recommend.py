"""The recommendation at the top of the report: which configuration to use for the user's target, and why.

The target (``report:`` in the experiment, ``config.ReportConfig``) is a quality floor, a monthly budget and the
expected requests per month. The rules, in order:

1. Only groups (a label on a model, over its seeds) scored on the report's headline metric whose every row
   finished are candidates: a group with a failed row is never recommended. The trivial baseline row
   (strategies/baseline.py) is a candidate only when no other group beats it by the paired test.
2. Quality is judged on the validation rows (report/selection.py: on the test rows, said so in the paragraph, when
   some candidate has no validation score). With a floor, a group meets it when its *conservative* quality does:
   the lower end of its bootstrap CI over validation rows (the upper end for a lower-is-better metric), or its mean
   when it has no CI; the paragraph then says whether the chosen group's test interval confirms it. Without a floor,
   a group qualifies when it is not significantly worse than the group with the best validation score by the paired
   bootstrap (report/paired.py; when the pair cannot be tested, only groups scoring as well as the best qualify).
3. Money. Monthly cost: for a self-hosted group, the instances its measured throughput needs at the requests per
   month, under ``report.deployment`` (always-on or scale-to-zero, peak-to-average load; ``report/deployment.py``);
   for an API group, its measured bill per request × requests per month. The assumptions are printed next to the
   number. Training (and index building) is paid once: it is reported apart, with how it compares with the
   baseline over time (``analysis.compare_costs``: pays back, never pays back, cheaper from the start, or cheaper
   only at first). Groups whose monthly cost exceeds the budget are out.
4. With a floor, the choice is the cheapest qualifying group per month (ties: better validation score, then id);
   without one, the qualifying group with the best validation score within the budget (ties: cheaper, then id).
   Scores printed are test scores: chosen on validation, reported on test.
"""

from __future__ import annotations

from typing import Any

from lmtailor.report.analysis import compare_costs
from lmtailor.report.deployment import DeploymentConfig, group_serving, instance_capacity, monthly_cost
from lmtailor.report.durations import DAY, human_duration
from lmtailor.report.paired import DIFFERS, UNKNOWN, compare_groups, significantly_worse
from lmtailor.report.selection import VALIDATION, best_of, selection_score, selection_sentence, selection_split
from lmtailor.report.traits import group_traits


def _target(target: Any, name: str, default: Any = None) -> Any:
    """A target field from a ReportConfig, a dict, or None."""
    if target is None:
        return default
    if isinstance(target, dict):
        return target.get(name, default)
    return getattr(target, name, default)


def _usd(x: float | None) -> str:
    if x is None:
        return "an unknown amount"
    if abs(x) >= 100:
        return f"${x:,.0f}"
    if abs(x) >= 1:
        return f"${x:,.2f}"
    return f"${x:.3g}"


def _q(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _days(d: float) -> str:
    return human_duration(d * DAY)


def _conservative(g: dict) -> float:
    """The end of the group's selection CI (validation, else test) on the bad side, or its selection score when it
    has no CI."""
    ci = g.get("selection_ci95", g.get("ci95"))
    if ci is None:
        return g.get("selection_score", g["score_mean"])
    return ci[0] if g["higher_is_better"] else ci[1]


def _chosen_by(g: dict) -> float:
    """The score the quality rules choose by: the validation mean (``_annotate``), else the test mean."""
    return g.get("selection_score", g["score_mean"])


def _annotate(groups: list[dict], records: list[dict], split: str) -> list[dict]:
    """Copies of ``groups`` with what the quality rules read: ``selection_split``, ``selection_score`` and
    ``selection_ci95`` (on ``split``), ``worse_than_best`` (the paired test against the best on ``split``; None: untestable) and, for the
    trivial baseline, ``beaten_by`` (the groups significantly better than it)."""
    by_id = {r["row_id"]: r for r in records}
    out = [dict(g, selection_split=split, selection_score=selection_score(g, split),
                selection_ci95=g.get("validation_ci95") if split == VALIDATION else g.get("ci95")) for g in groups]
    best = best_of(out, split)
    for g in out:
        g["worse_than_best"] = False if g is best else significantly_worse(g, best, by_id, split)
        if _fixed_rule(g):
            g["beaten_by"] = [o["id"] for o in out if not _fixed_rule(o) and significantly_worse(g, o, by_id, split)]
    return out


def _fixed_rule(g: dict) -> bool:
    """Whether the group is the trivial baseline's (a floor that uses no data: ``_with_serving`` attached traits)."""
    return g.get("_traits") is not None and g["_traits"].fixed_rule


def _better(a: float, b: float, higher: bool) -> bool:
    """Whether ``a`` is at least as good as ``b``."""
    return a >= b if higher else a <= b


def _cost(g: dict, requests: float):
    """The group's ``MonthlyCost`` under the deployment ``recommendation`` attached (``_serving``), or None for a
    group without one (a summary given without its records): then the busy-time $ per 1k x requests."""
    if g.get("_serving") is None:
        return None
    return monthly_cost(g["_serving"], requests, g["_deployment"])


def _monthly(g: dict, requests: float) -> float | None:
    cost = _cost(g, requests)
    if cost is not None:
        return cost.usd
    per_1k = g.get("usd_inference_per_1k_mean")
    return None if per_1k is None else per_1k / 1000 * requests


def _assumptions(g: dict, requests: float) -> str:
    """What the group's monthly cost assumes, in words ("" when it is the busy-time estimate)."""
    cost = _cost(g, requests)
    return f" ({cost.assumptions})" if cost is not None else ""


# A one-time difference below a cent is below what any bill shows: it is stated, but never called a reason.
NEGLIGIBLE_USD = 0.01


def _against_baseline(choice: dict, baseline: dict | None, by_id: dict[str, dict]) -> str:
    """The chosen group's test score against the baseline's, by the report's one test of noise (the paired
    bootstrap over the test rows), in a sentence; "" when there is no other baseline or the pair is untestable."""
    if baseline is None or baseline is choice:
        return ""
    c = compare_groups(choice, baseline, by_id, "test")
    if c["verdict"] == UNKNOWN:
        return f" Against the baseline on the test rows: the difference cannot be tested ({c['note']})."
    low, high = c["ci95"]
    gap = (f" On the test rows it scores {c['difference'] * 100:+.1f} pts against the baseline (paired 95% CI "
           f"{low * 100:+.1f} to {high * 100:+.1f} pts)")
    if c["verdict"] == DIFFERS:
        return gap + ": a difference beyond the noise."
    return gap + f": within the noise, so these {c['rows']} rows do not tell the two apart on quality."


def _hours_per_month(g: dict) -> float:
    return g["_deployment"].hours_per_month if g.get("_deployment") is not None else 730.0


def _eligible(summary: dict) -> tuple[str | None, list[dict]]:
    """The headline metric and the groups on it whose every row finished with a score."""
    metric = (summary.get("pareto") or {}).get("metric")
    groups = [g for g in summary.get("groups", []) if g.get("metric") == metric and g.get("score_mean") is not None
              and not g.get("failed")]
    return metric, groups


def _meets_quality(groups: list[dict], floor: float | None) -> list[dict]:
    """The groups good enough: meeting the floor, or (no floor) not significantly worse than the best; a trivial
    baseline that another group beats never is."""
    groups = [g for g in groups if not g.get("beaten_by")]
    if not groups:
        return []
    higher = groups[0]["higher_is_better"]
    if floor is not None:
        return [g for g in groups if _better(_conservative(g), floor, higher)]
    best = max(groups, key=lambda g: _chosen_by(g) if higher else -_chosen_by(g))
    return [g for g in groups if g is best or g.get("worse_than_best") is False
            or _chosen_by(g) == _chosen_by(best)]


def _pick(groups: list[dict], floor: float | None, budget: float | None, requests: float) -> tuple[dict | None, dict]:
    """The chosen group (None if nothing qualifies) and why the others were left out (group id -> reason)."""
    why: dict[str, str] = {}
    quality_ok = _meets_quality(groups, floor)
    for g in groups:
        if g not in quality_ok:
            why[g["id"]] = (f"the trivial baseline, beaten by {', '.join(g['beaten_by'])} (paired test)"
                            if g.get("beaten_by") else "below the quality floor" if floor is not None
                            else "significantly worse than the best (paired test), or untestable against it")
    affordable = []
    for g in quality_ok:
        monthly = _monthly(g, requests)
        if monthly is None:
            why[g["id"]] = "its inference cost was not measured"
        elif budget is not None and monthly > budget:
            why[g["id"]] = f"over the budget ({_usd(monthly)}/month)"
        else:
            affordable.append(g)
    if not affordable:
        return None, why
    higher = affordable[0]["higher_is_better"]
    quality = (lambda g: -_chosen_by(g)) if higher else (lambda g: _chosen_by(g))
    if floor is None:
        # No floor stated: the best validation score within the budget. A cheaper row the paired test cannot tell
        # from it is not called worse, and is named as the alternative, but a wide interval over a few dozen rows
        # must not turn "not shown to be worse" into the recommendation.
        choice = min(affordable, key=lambda g: (quality(g), _monthly(g, requests), g["id"]))
        for g in affordable:
            if g is not choice:
                cheaper = _monthly(g, requests) < _monthly(choice, requests)
                lower = (f"scores lower on the {g.get('selection_split', 'test')} rows ({_q(_chosen_by(g))} vs "
                         f"{_q(_chosen_by(choice))})")
                why[g["id"]] = (f"{lower}, not significantly, and costs less ({_usd(_monthly(g, requests))}/month): "
                                "the choice if cost matters more than the point estimate" if cheaper else lower)
        return choice, why
    choice = min(affordable, key=lambda g: (_monthly(g, requests), quality(g), g["id"]))
    for g in affordable:
        if g is not choice:
            why[g["id"]] = f"costs more per month ({_usd(_monthly(g, requests))})"
    return choice, why


def _baseline(groups: list[dict], all_groups: list[dict], label: str | None) -> tuple[dict | None, str]:
    """The group to compare with: the named label's best group, else the best prompted group."""
    if label:
        named = [g for g in all_groups if g["label"] == label and g.get("score_mean") is not None]
        if named:
            higher = named[0]["higher_is_better"]
            return max(named, key=lambda g: _chosen_by(g) if higher else -_chosen_by(g)), "the stated baseline"
        note = f"the stated baseline {label!r} has no finished row; "
    else:
        note = ""
    prompted = [g for g in groups if (t := g.get("_traits")) is not None and t.use == "prompted"
                and t.place == "prompting"]
    if not prompted:
        return None, note + "no prompted row to compare with"
    higher = prompted[0]["higher_is_better"]
    return (max(prompted, key=lambda g: _chosen_by(g) if higher else -_chosen_by(g)),
            note + "the best prompted row")


def _describe(g: dict, requests: float) -> str:
    ci = f" (95% CI {_q(g['ci95'][0])}-{_q(g['ci95'][1])})" if g.get("ci95") else " (no CI: per-row scores missing)"
    seeds = "" if g.get("seeds", 0) >= 3 else f", {g.get('seeds')} seed{'s' if g.get('seeds') != 1 else ''}"
    unpriced = " [unpriced: its API is billed $0 on purpose]" if (g.get("_serving") and g["_serving"].unpriced) \
        else ""
    return (f"{g['metric']} {_q(g['score_mean'])}{ci}{seeds}, {_usd(_monthly(g, requests))}/month"
            f"{_assumptions(g, requests) or f' at {requests:,.0f} requests'}, "
            f"{_usd(g.get('usd_train_mean') or 0.0)} one-time{unpriced}")


def _payback(choice: dict, baseline: dict | None, requests: float) -> tuple[float | None, str]:
    """How ``choice`` compares with ``baseline`` over time at ``requests`` a month, and the sentence saying it.

    The comparison is per month: each costs its one-time $ plus its monthly $ (which, for always-on instances, is
    paid whatever the volume). The days returned: 0 when the choice is never dearer in total, the days until it
    has paid back its extra one-time cost when it does, None otherwise (never pays back, or cheaper only at first).
    """
    if baseline is None or baseline is choice:
        return None, ""
    monthly_c, monthly_b = _monthly(choice, requests), _monthly(baseline, requests)
    if monthly_c is None or monthly_b is None:
        return None, ""
    fixed_c, fixed_b = choice.get("usd_train_mean") or 0.0, baseline.get("usd_train_mean") or 0.0
    c = compare_costs(fixed_c, monthly_c, fixed_b, monthly_b)
    against = (f"Against the baseline {baseline['id']} ({_usd(fixed_b)} one-time, {_usd(monthly_b)}/month at "
               f"{requests:,.0f} requests)")
    days_per_month = _hours_per_month(choice) / 24
    if c.case == "same":
        return 0.0, f"{against} it costs the same up front and per month."
    if c.case == "cheaper_throughout":
        return 0.0, (f"{against} it costs no more up front and no more per month, so it is cheaper in total from "
                     "the first request.")
    if c.case == "dearer_throughout":
        return None, (f"{against} it costs the same up front and {_usd(-c.saving_per_unit)} more a month, so it "
                      "is dearer in total from the first month.")
    if c.case == "never_pays_back" and c.saving_per_unit == 0 and c.extra_fixed < NEGLIGIBLE_USD:
        # "never pays back" is true of a fraction of a cent, and misleads: no bill shows that difference
        return None, (f"{against} it costs the same a month and {_usd(c.extra_fixed)} more once, less than a cent: "
                      "in practice the two cost the same.")
    if c.case == "never_pays_back":
        more = "no less" if c.saving_per_unit == 0 else f"{_usd(-c.saving_per_unit)} more"
        return None, (f"{against} it costs {_usd(c.extra_fixed)} more up front and {more} a month, so it never "
                      "pays back.")
    days = c.crossing * days_per_month
    if c.case == "pays_back":
        return days, (f"{against} it costs {_usd(c.extra_fixed)} more up front and saves "
                      f"{_usd(c.saving_per_unit)} a month, so it pays for itself in {_days(days)}.")
    return None, (f"{against} it costs {_usd(-c.extra_fixed)} less up front but {_usd(-c.saving_per_unit)} more "
                  f"a month: it is cheaper in total only for the first {_days(days)}, and dearer after that.")


def _confirmed(choice: dict, floor: float | None, split: str) -> str:
    """With a floor met on the validation rows: whether the chosen group's test interval meets it too."""
    if floor is None or split != VALIDATION or choice.get("ci95") is None:
        return ""
    higher = choice["higher_is_better"]
    end = choice["ci95"][0] if higher else choice["ci95"][1]
    return (f" On the test rows its 95% interval's {'lower' if higher else 'upper'} end is {_q(end)}: "
            + ("the floor holds there too." if _better(end, floor, higher)
               else f"the test rows do not confirm the floor of {_q(floor)}."))


def recommendation(summary: dict, records: list[dict], target: Any) -> dict:
    """The recommendation for ``target`` (a ``ReportConfig``, a dict with its fields, or None) from
    ``summary`` (``results_json.build_results``) and the run's ``records``.

    Returns ``{"paragraph", "choice" (group id or None), "evidence" (row ids), "alternatives", "what_would_change",
    "baseline", "monthly_usd", "payback_days"}``.
    """
    floor = _target(target, "quality_floor")
    budget = _target(target, "monthly_budget_usd")
    requests = float(_target(target, "requests_per_month", 100_000) or 0)
    summary = _with_serving(summary, records, _target(target, "deployment") or DeploymentConfig())
    metric, groups = _eligible(summary)
    split = selection_split(groups)
    groups = _annotate(groups, records, split)
    annotated = {g["id"]: g for g in groups}
    all_groups = [annotated.get(g["id"], g) for g in summary.get("groups", [])]
    splits = summary.get("splits") or {}
    chosen_on = " " + selection_sentence(split, splits.get("validation") or 0, splits.get("test") or 0) \
        if splits else ""
    failed = [g["id"] for g in all_groups if g.get("failed")]
    failed_note = (f" Not considered because a row failed: {', '.join(failed)}." if failed else "")
    result: dict = {"choice": None, "evidence": [], "alternatives": [], "what_would_change": [], "baseline": None,
                    "monthly_usd": None, "payback_days": None, "metric": metric}
    if not groups:
        result["paragraph"] = "No configuration finished with a score, so there is nothing to recommend." + failed_note
        return result
    higher = groups[0]["higher_is_better"]
    target_words = (f"{metric} {'at least' if higher else 'at most'} {_q(floor)}" if floor is not None
                    else f"the best {metric}" + (" within the budget" if budget is not None else ""))
    target_words += f", {requests:,.0f} requests a month" + (f", at most {_usd(budget)} a month" if budget is not None
                                                           else "")
    choice, why = _pick(groups, floor, budget, requests)
    baseline, baseline_how = _baseline(groups, all_groups, _target(target, "baseline"))
    result["baseline"] = baseline["id"] if baseline else None
    finished_ids = {r["row_id"] for r in records if r.get("status") == "ok"}

    if choice is None:
        quality_ok = _meets_quality(groups, floor)
        if not quality_ok:
            closest = max(groups, key=lambda g: _conservative(g) if higher else -_conservative(g))
            reason = (f"no configuration reaches {metric} {_q(floor)} (judged by the {split} CI's "
                      f"{'lower' if higher else 'upper'} end where there is one)")
        else:
            costed = [g for g in quality_ok if _monthly(g, requests) is not None]
            closest = min(costed, key=lambda g: (_monthly(g, requests), g["id"])) if costed else quality_ok[0]
            reason = "every configuration good enough costs more than the budget" if costed else \
                "the inference cost of the configurations good enough was not measured"
        result["evidence"] = [r for r in closest["rows"] if r in finished_ids]
        result["paragraph"] = (f"Nothing meets the target ({target_words}): {reason}. The closest is "
                               f"{closest['id']}: {_describe(closest, requests)}.{failed_note}{chosen_on}")
        result["alternatives"] = [{"group": g["id"], "why_not": why.get(g["id"], "")} for g in groups]
        return result

    monthly = _monthly(choice, requests)
    days, payback_text = _payback(choice, baseline, requests)
    result.update(choice=choice["id"], monthly_usd=monthly, payback_days=days,
                  monthly_assumptions=_assumptions(choice, requests).strip(" ()") or None)
    evidence = [r for r in choice["rows"] if r in finished_ids]
    if baseline is not None and baseline is not choice:
        evidence += [r for r in baseline["rows"] if r in finished_ids]
    result["evidence"] = evidence
    result["alternatives"] = [{"group": g["id"], "score_mean": g["score_mean"], "ci95": g.get("ci95"),
                               "monthly_usd": _monthly(g, requests), "usd_train": g.get("usd_train_mean"),
                               "why_not": why.get(g["id"], "")} for g in groups if g is not choice]
    baseline_text = (f" Baseline ({baseline_how}): {baseline['id']}, {_describe(baseline, requests)}."
                     if baseline is not None and baseline is not choice else
                     f" It is also the baseline ({baseline_how})." if baseline is choice else f" ({baseline_how}.)")
    # the evidence rows are printed once, on their own line after the paragraph (result["evidence"])
    versus = _against_baseline(choice, baseline, {r["row_id"]: r for r in records})
    result["paragraph"] = (f"For the target ({target_words}), use {choice['label']} on {choice['model']}: "
                           f"{_describe(choice, requests)}.{baseline_text}{versus} {payback_text}"
                           f"{failed_note}{_confirmed(choice, floor, split)}"
                           f"{chosen_on}").replace("  ", " ").strip()
    result["what_would_change"] = _what_would_change(groups, choice, baseline, floor, budget, requests, why)
    return result


def _with_serving(summary: dict, records: list[dict], deployment: DeploymentConfig | dict) -> dict:
    """A copy of ``summary`` whose groups carry their serving facts (``_serving``) and the deployment, so that
    ``_monthly`` prices them as deployed, and their strategy's traits (``_traits``, ``report/traits.py``); the
    caller's summary (written to results.json) is left as it is."""
    if isinstance(deployment, dict):
        deployment = DeploymentConfig.model_validate(deployment)
    serving = group_serving(summary.get("groups", []), records)
    traits = group_traits(summary.get("groups", []), records)
    groups = [{**g, "_serving": serving.get(g["id"]), "_deployment": deployment, "_traits": traits[g["id"]]}
              for g in summary.get("groups", [])]
    return {**summary, "groups": groups}


def _what_would_change(groups: list[dict], choice: dict, baseline: dict | None, floor: float | None,
                       budget: float | None, requests: float, why: dict[str, str]) -> list[str]:
    """Plain sentences: the answer at 10x the requests, with a higher floor, with a larger budget."""
    out = []
    higher = choice["higher_is_better"]
    more = requests * 10
    if more > 0:
        other, _ = _pick(groups, floor, budget, more)
        if other is None:
            out.append(f"At {more:,.0f} requests a month nothing would fit the budget.")
        else:
            days, text = _payback(other, baseline, more)
            same = "still" if other is choice else "instead"
            out.append(f"At {more:,.0f} requests a month (10x) the choice would {same} be {other['id']} "
                       f"({_usd(_monthly(other, more))}/month)." + (f" {text}" if text else ""))
    capacity = _capacity_sentence(choice, baseline)
    if capacity:
        out.append(capacity)
    level = _conservative(choice)
    better = sorted({_conservative(g) for g in groups if _conservative(g) != level and _better(_conservative(g), level,
                                                                                               higher)},
                    reverse=higher)
    if better:
        nxt = better[-1]
        other, _ = _pick(groups, nxt, budget, requests)
        out.append(f"If the quality floor were raised to {_q(nxt)} (the next configuration's level), the choice "
                   "would be " + (f"{other['id']} ({_usd(_monthly(other, requests))}/month)." if other is not None
                                  else "none: nothing that good fits the budget."))
    over = [g for g in groups if why.get(g["id"], "").startswith("over the budget")]
    if over:
        best = max(over, key=lambda g: g["score_mean"] if higher else -g["score_mean"])
        out.append(f"A budget of {_usd(_monthly(best, requests))} a month would also allow {best['id']} "
                   f"({best['metric']} {_q(best['score_mean'])}).")
    return out


def _capacity_sentence(choice: dict, baseline: dict | None) -> str:
    """For always-on self-hosted groups: the monthly volume one instance carries at the stated peak, for the
    choice and the baseline. Two rows on one instance each cost the same a month however far apart their
    throughputs are; this says where that stops."""
    parts = []
    for g in (choice, baseline):
        if g is None or (g is baseline and baseline is choice):
            continue
        cap = instance_capacity(g["_serving"], g["_deployment"]) if g.get("_serving") is not None else None
        if cap is not None:
            parts.append(f"{_volume(cap)} a month for {g['id']}")
    if not parts:
        return ""
    dep = (choice.get("_deployment") or DeploymentConfig())
    return (f"One always-on instance carries up to {' and '.join(parts)} (at peak {dep.peak_to_average:g}x the "
            "average, from the measured throughput); beyond that each needs another instance.")


def _volume(n: float) -> str:
    """A request count a person reads: 1.28M, 102M, 45,000."""
    if n >= 1e9:
        return f"{n / 1e9:.3g}B"
    if n >= 1e6:
        return f"{n / 1e6:.3g}M"
    return f"{n:,.0f}"
