"""The report's charts: matplotlib figures rendered to inline SVG strings, deterministic byte for byte.

Each chart function is a pure function of the run summary (``results_json.build_results``) and the row records,
and returns a ``Chart`` (SVG, caption, the plotted numbers as text lines for report.md) or None when the run has
no data for it; ``ABSENT`` says why, for the page to print instead. Figures are built on ``matplotlib.figure.Figure``
directly (never pyplot, whose global figure registry would leak state between charts) inside an ``rc_context``
with fixed settings, a fixed SVG hash salt and no date, so the same run always gives the same bytes.
The records also say what each group's strategy is (``report/traits.py``).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field

import matplotlib
from cycler import cycler
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lmtailor.report.analysis import break_even, compare_costs, cumulative_cost
from lmtailor.report.deployment import DeploymentConfig, monthly_cost, serving_of
from lmtailor.report.durations import human_duration
from lmtailor.report.selection import best_of, selection_split
from lmtailor.report.table_rows import TableRow, build_rows
from lmtailor.report.traits import group_traits
from lmtailor.strategies.traits import SPECTRUM

# Okabe-Ito: readable by colour-blind readers and in grey print.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
RC = {
    "svg.hashsalt": "lmtailor-report",  # clip-path ids come from this salt, not from a random uuid
    "svg.fonttype": "none",  # text stays <text> (searchable, small); the browser's sans-serif draws it
    "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"], "font.size": 8.5,
    "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
    "axes.prop_cycle": cycler(color=PALETTE), "lines.linewidth": 1.6, "lines.markersize": 6,
    "figure.dpi": 100, "savefig.dpi": 100, "legend.fontsize": 7.5, "legend.frameon": False,
}
SIZE = (6.4, 3.6)  # inches

ABSENT = {
    "pareto": "no group finished with both a score and a cost",
    "learning_curves": "no trained strategy ran at several training-set sizes (set train_sizes on a trained strategy)",
    "memory": "no row recorded its peak memory or trainable parameters",
    "forgetting": "no trained row was probed for forgetting (only trained rows are, and only when they finish)",
    "break_even": "it needs a finished prompted baseline and a finished fine-tuned group with their costs",
}


@dataclass
class Chart:
    """One rendered chart: the inline SVG, a caption stating what it shows, and its numbers as text lines."""

    key: str
    title: str
    svg: str
    caption: str
    numbers: list[str] = field(default_factory=list)


def _svg(fig: Figure) -> str:
    """The figure as an ``<svg>`` element to inline in HTML: no XML prolog, no metadata block (it names the tool
    and its web site), no date."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    text = buf.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text[text.index("<svg"):], flags=re.S)
    return text.strip()


def _figure(ncols: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=SIZE, layout="constrained")
    FigureCanvasAgg(fig)  # Agg canvas for layout; savefig switches to the SVG backend for the output only
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _render(draw, ncols: int = 1) -> str:
    """Build and render one figure under the fixed settings, so no rcParam leaks in or out."""
    with matplotlib.rc_context(RC):
        fig, axes = _figure(ncols)
        draw(fig, axes)
        return _svg(fig)


def _decade_ticks(ax, largest: float, step: int, names: dict[int, str] | None = None, lowest: float = 0.0) -> None:
    """Ticks at 0 and every ``step``-th power of ten up to ``largest`` (and down to ``lowest`` when negative), so a
    log axis shows a few readable labels instead of one per decade."""
    def exps(value: float) -> list[int]:
        return list(range(step, max(1, len(str(int(abs(value))))) + step, step)) if abs(value) >= 1 else []

    label = lambda k: (names or {}).get(k, f"{10 ** k:,}")  # noqa: E731
    ticks = [-(10.0 ** k) for k in exps(lowest)[::-1]] + [0.0] + [10.0 ** k for k in exps(largest)]
    labels = ["-" + label(k) for k in exps(lowest)[::-1]] + ["0"] + [label(k) for k in exps(largest)]
    ax.set_xticks(ticks, labels)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1f}"


def _usd(x: float) -> str:
    return f"${x:.4g}"


def _direction(higher: bool | None) -> str:
    return "higher is better" if higher in (True, None) else "lower is better"


def _score_groups(summary: dict, metric: str | None) -> list[dict]:
    """Groups that finished with a score on ``metric`` (the run's main metric when None)."""
    metric = metric or summary.get("pareto", {}).get("metric")
    return [g for g in summary.get("groups", []) if g["score_mean"] is not None and g["metric"] == metric]


def best_group(groups: list[dict], split: str | None = None) -> dict | None:
    """The best of ``groups`` (direction-aware), chosen on ``split``'s scores: validation unless some of them has
    none (report/selection.py); ties: the first in plan order. Its test score is what the report shows, so a rung of
    many configurations does not report the best of them on the test rows."""
    found = [g for g in groups if g["score_mean"] is not None]
    return best_of(found, split or selection_split(found)) if found else None


# --- 1. quality vs total cost ------------------------------------------------------------------------------------

def pareto_chart(summary: dict) -> Chart | None:
    """Quality against total cost per group, the Pareto frontier joined and ringed (SVG group ``pareto-frontier``)."""
    pareto = summary.get("pareto") or {}
    groups = [g for g in _score_groups(summary, pareto.get("metric")) if g["usd_total_mean"] is not None]
    if not groups:
        return None
    frontier_ids = list(pareto.get("frontier") or [])
    by_id = {g["id"]: g for g in groups}
    front = [by_id[i] for i in frontier_ids if i in by_id]
    rest = [g for g in groups if g["id"] not in frontier_ids]
    metric, higher = groups[0]["metric"], groups[0]["higher_is_better"]

    def draw(fig, axes):
        ax = axes[0]
        if rest:
            ax.scatter([g["usd_total_mean"] for g in rest], [g["score_mean"] for g in rest], color="#999999",
                       label="dominated", zorder=2, gid="pareto-dominated")
        ax.plot([g["usd_total_mean"] for g in front], [g["score_mean"] for g in front], color=PALETTE[3],
                marker="D", label="Pareto frontier", zorder=3, gid="pareto-frontier")
        for g in groups:
            ax.annotate(g["id"], (g["usd_total_mean"], g["score_mean"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
        ax.set_xlabel("total cost per row, USD (set-up + answering the test and validation rows)")
        ax.set_ylabel(f"{metric} ({_direction(higher)})")
        ax.legend(loc="best")

    numbers = [f"{g['id']}: {metric} {_fmt(g['score_mean'])}, {_usd(g['usd_total_mean'])}"
               + (" (frontier)" if g["id"] in frontier_ids else "") for g in groups]
    caption = (f"Quality ({metric}) against total cost of each configuration. On the Pareto frontier (nothing is "
               f"both cheaper and better): {', '.join(frontier_ids) or 'none'}.")
    return Chart("pareto", "Quality vs total cost", _render(draw), caption, numbers)


# --- 2. learning curves ------------------------------------------------------------------------------------------

def learning_curves_chart(summary: dict, records: list[dict]) -> Chart | None:
    """Quality against training-set size, one line per trained strategy; groups that learn nothing from the
    training rows (prompted rows, the trivial baseline) as horizontal lines."""
    curves = summary.get("learning_curves") or []
    if not curves:
        return None
    metric, higher = curves[0]["metric"], curves[0]["higher_is_better"]
    curves = [c for c in curves if c["metric"] == metric]
    groups = _score_groups(summary, metric)
    traits = group_traits(groups, records)
    baselines = [g for g in groups if (t := traits[g["id"]]) is not None and not t.learns]

    def draw(fig, axes):
        ax = axes[0]
        for i, c in enumerate(curves):
            xs = [p["train_size"] for p in c["points"]]
            ys = [p["score_mean"] for p in c["points"]]
            err = [p["score_std"] or 0.0 for p in c["points"]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, color=PALETTE[i % len(PALETTE)],
                        label=f"{c['label']} | {c['model']}", gid=f"curve-{i}")
        for j, g in enumerate(baselines):
            ax.axhline(g["score_mean"], linestyle="--", linewidth=1.1, color=PALETTE[(len(curves) + j) % len(PALETTE)],
                       label=f"{g['id']} (no training)", gid=f"baseline-{j}")
        ax.set_xscale("log")
        ax.set_xlabel("training examples (log scale)")
        ax.set_ylabel(f"{metric} ({_direction(higher)})")
        ax.legend(loc="best")

    numbers = [f"{c['label']} | {c['model']}: " + ", ".join(f"n={p['train_size']} → {_fmt(p['score_mean'])}"
                                                           for p in c["points"])
               + f"; data required (95 % of best, on {c.get('data_required_on', 'test')}): {c['data_required']}"
               for c in curves]
    numbers += [f"{g['id']} (no training): {_fmt(g['score_mean'])}" for g in baselines]
    caption = (f"{metric} against the number of training examples (mean over seeds, bars: std); dashed lines are "
               "the prompted rows and the trivial baseline, which train nothing. Data required: the smallest size "
               "reaching 95 % of a curve's best score (on the validation rows, where every size has them) — " + "; ".join(f"{c['label']} | {c['model']}: {c['data_required']}"
                                                  for c in curves) + ".")
    return Chart("learning_curves", "Learning curves", _render(draw), caption, numbers)


# --- 3. memory and trainable parameters --------------------------------------------------------------------------

def _table_rows(records: list[dict]) -> list[TableRow]:
    return [r for r in build_rows(records) if r.seeds > 0]


def memory_chart(records: list[dict]) -> Chart | None:
    """Peak memory (the training phase's where the row trained) and trainable parameters, per finished group."""
    rows = [r for r in _table_rows(records) if r.peak_rss_mb or r.trainable is not None]
    if not rows:
        return None
    names = [f"{r.label} | {r.model}" for r in rows]
    peaks = [(r.training["peak_bytes"] / 2**20 if r.training and r.training["peak_bytes"] else r.peak_rss_mb)
             for r in rows]
    params = [r.trainable or 0 for r in rows]

    def draw(fig, axes):
        fig.set_size_inches(8.5, max(2.4, 0.35 * len(rows) + 1.2))
        y = list(range(len(rows)))[::-1]
        axes[0].barh(y, peaks, color=PALETTE[0], gid="memory-bars")
        axes[0].set_yticks(y, names)
        axes[0].set_title("peak memory (MB)")
        axes[1].barh(y, params, color=PALETTE[2], gid="params-bars")
        axes[1].set_yticks(y, [""] * len(rows))
        axes[1].set_xscale("symlog", linthresh=1)  # from 0 (prompted) through thousands (IA3) to billions (full)
        _decade_ticks(axes[1], max(params), step=3, names={0: "0", 3: "1K", 6: "1M", 9: "1B", 12: "1T"})
        axes[1].set_title("trainable parameters")

    numbers = [f"{n}: peak {p:,.0f} MB" + (" (training)" if r.training and r.training["peak_bytes"] else "")
               + f", trainable {r.trainable if r.trainable is not None else '-'}"
               for n, p, r in zip(names, peaks, rows)]
    caption = ("Peak memory per configuration (the training phase's peak for trained rows: GPU memory on CUDA, else "
               "the process's resident memory, which includes the libraries' own ~1 GB) and the number of trainable "
               "parameters (0 for prompted rows).")
    return Chart("memory", "Peak memory and trainable parameters", _render(draw, 2), caption, numbers)


# --- 4. forgetting -----------------------------------------------------------------------------------------------

def forgetting_chart(records: list[dict]) -> Chart | None:
    """Change from the base model on the general probe, per trained group: perplexity % and accuracy points."""
    rows = [r for r in _table_rows(records) if r.forgetting and not r.forgetting["note"]]
    if not rows:
        return None
    names = [f"{r.label} | {r.model}" for r in rows]
    ppl = [r.forgetting["ppl_pct"] or 0.0 for r in rows]
    acc = [r.forgetting["acc_pts"] or 0.0 for r in rows]

    def draw(fig, axes):
        fig.set_size_inches(8.5, max(2.4, 0.35 * len(rows) + 1.2))
        y = list(range(len(rows)))[::-1]
        axes[0].barh(y, ppl, color=PALETTE[3], gid="forgetting-ppl")
        axes[0].set_yticks(y, names)
        axes[0].set_xscale("symlog", linthresh=10)  # one broken method can be +7000 % next to a few %
        _decade_ticks(axes[0], max(ppl), step=2, lowest=min(min(ppl), 0.0))
        axes[0].set_title("Δ perplexity %, log scale")
        axes[1].barh(y, acc, color=PALETTE[0], gid="forgetting-acc")
        axes[1].set_yticks(y, [""] * len(rows))
        axes[1].set_title("Δ general accuracy (pts)")
        for ax in axes:
            ax.axvline(0, color="#333333", linewidth=0.8)

    numbers = [f"{n}: perplexity {_signed(r.forgetting['ppl_pct'])} %, accuracy {_signed(r.forgetting['acc_pts'])} pts"
               for n, r in zip(names, rows)]
    caption = ("Forgetting: each trained configuration against its base model on a general probe never used for "
               "training — relative change in perplexity on general text and change in general-question accuracy.")
    return Chart("forgetting", "Forgetting", _render(draw, 2), caption, numbers)


# --- 5. break-even -----------------------------------------------------------------------------------------------

def break_even_pair(summary: dict, records: list[dict], baseline_label: str | None = None
                    ) -> tuple[dict, dict] | None:
    """(prompted baseline group, best fine-tuned group) for the break-even, or None when either is missing.

    The baseline is the group labelled ``baseline_label`` (``report.baseline``; the best-scoring one when several
    models ran it; never a floor), else the best prompted group of the cheapest place on the spectrum that has one
    (prompting, then retrieval); the other side is the best fine-tuned group (any trained strategy when nothing was
    fine-tuned). Both need a training cost and an inference cost. ``records`` say what each group is.
    """
    groups = [g for g in _score_groups(summary, None)
              if g["usd_train_mean"] is not None and g["usd_inference_per_1k_mean"] is not None]
    traits = group_traits(groups, records)

    def of(uses: tuple[str, ...], place: str | None = None) -> list[dict]:
        """The groups whose strategy is used as ``uses`` says (at ``place``), in plan order."""
        return [g for g in groups if (t := traits[g["id"]]) is not None and t.use in uses and place in (None, t.place)]

    if baseline_label:
        base = best_group([g for g in of(("prompted", "trained")) if g["label"] == baseline_label])
    else:
        base = next((b for p in SPECTRUM if (b := best_group(of(("prompted",), p)))), None)
    tuned = best_group(of(("trained",), "fine-tuning")) or best_group(of(("trained",)))
    return (base, tuned) if base and tuned else None


def _side(group: dict, records: list[dict] | None, requests: float, deployment) -> tuple[float, float, str]:
    """(one-time $, $ per request, how the per-request $ was found) of one side of the break-even.

    With the records, the per-request $ is the group's monthly cost under the deployment (``report/deployment.py``)
    spread over the month's requests: for always-on instances a cost per month, so the lines hold at this volume
    only. Without them (or with nothing served), the measured $ per 1k requests."""
    fixed = group["usd_train_mean"]
    serving = serving_of([r for r in records if r.get("row_id") in set(group["rows"])]) if records else None
    if serving is not None and requests > 0:
        cost = monthly_cost(serving, requests, deployment or DeploymentConfig())
        if cost.usd is not None:
            return fixed, cost.usd / requests, (f"{_usd(fixed)} up front + {_usd(cost.usd)}/month "
                                                f"({cost.assumptions})")
    per_request = group["usd_inference_per_1k_mean"] / 1000
    return fixed, per_request, f"{_usd(fixed)} up front + {_usd(per_request * 1000)} per 1k requests"


def break_even_chart(summary: dict, requests_per_month: int = 100_000, baseline_label: str | None = None,
                     records: list[dict] | None = None, deployment=None) -> Chart | None:
    """Cumulative cost against requests served for the prompted baseline and the best fine-tuned group, with the
    crossing point (``analysis.break_even``) marked and the caption saying which is cheaper on each side of it
    (``analysis.compare_costs``: all four sign cases). ``records`` and ``deployment`` price self-hosted groups
    as deployed (``report/deployment.py``) and say what each group is: without them there is no pair."""
    pair = break_even_pair(summary, records or [], baseline_label)
    if pair is None:
        return None
    base, tuned = pair
    fa, pa, how_a = _side(base, records, requests_per_month, deployment)
    fb, pb, how_b = _side(tuned, records, requests_per_month, deployment)
    n = break_even(fa, pa, fb, pb)
    # three times the crossing shows both sides of it; with no crossing, a month of requests
    horizon = 3 * n if n else max(float(requests_per_month), 1.0)

    def draw(fig, axes):
        ax = axes[0]
        xs = [0.0, horizon]
        ax.plot(xs, [cumulative_cost(fa, pa, x) for x in xs], color=PALETTE[0], label=base["id"], gid="be-baseline")
        ax.plot(xs, [cumulative_cost(fb, pb, x) for x in xs], color=PALETTE[3], label=tuned["id"], gid="be-tuned")
        if n is not None:
            ax.plot([n], [cumulative_cost(fa, pa, n)], marker="o", color="#000000", linestyle="none",
                    label=f"break-even: {n:,.0f} requests", gid="be-crossing")
            ax.axvline(n, color="#000000", linestyle=":", linewidth=0.9)
        ax.set_xlabel("requests served")
        ax.set_ylabel("cumulative cost, USD")
        ax.legend(loc="best")

    lines = [f"{base['id']}: {how_a}", f"{tuned['id']}: {how_b}"]
    hours = getattr(deployment, "hours_per_month", 730.0)
    c = compare_costs(fb, pb, fa, pa)  # the fine-tuned group against the baseline
    when = ""
    if n is not None and requests_per_month:
        span = human_duration(n / requests_per_month * hours * 3600)
        when = f", about {span} at {requests_per_month:,} requests a month"
    if c.case == "pays_back":
        verdict = f"The lines cross at {n:,.0f} requests{when}: past that, {tuned['id']} is cheaper in total."
    elif c.case == "dearer_after":
        verdict = (f"The lines cross at {n:,.0f} requests{when}: {tuned['id']} is cheaper up front, and "
                   f"{base['id']} is cheaper in total past that.")
    elif c.case == "cheaper_throughout":
        verdict = (f"The lines never cross: {tuned['id']} costs no more up front and no more per request, so it "
                   "stays cheaper at every volume.")
    elif c.case == "same":
        verdict = "The two lines are the same: neither is cheaper at any volume."
    else:  # never_pays_back, dearer_throughout
        verdict = (f"The lines never cross: {base['id']} costs no more up front and no more per request, so it "
                   "stays cheaper at every volume.")
    caption = ("Cumulative cost (one-time training or set-up, then serving) of the prompted baseline "
               f"{base['id']} and the best fine-tuned configuration {tuned['id']} as requests grow. {verdict}")
    return Chart("break_even", "Break-even", _render(draw), caption, lines + [verdict])


# --- all charts ----------------------------------------------------------------------------------------------------

def all_charts(summary: dict, records: list[dict], requests_per_month: int = 100_000,
               baseline_label: str | None = None, deployment=None) -> list[tuple[str, Chart | None]]:
    """Every chart of the report in page order, as ``(key, chart or None)``; ``ABSENT[key]`` explains a None."""
    return [
        ("pareto", pareto_chart(summary)),
        ("learning_curves", learning_curves_chart(summary, records)),
        ("memory", memory_chart(records)),
        ("forgetting", forgetting_chart(records)),
        ("break_even", break_even_chart(summary, requests_per_month, baseline_label, records, deployment)),
    ]
