"""The report's hyperparameter-search section and honesty check: per searched row, the chosen values and the trial
table; and a flag where a searched row is compared with trained rows whose settings were set by hand.

Pure functions of the row records (``details["search"]``, written by ``training/search.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from lmtailor.report.traits import traits_of


@dataclass
class SearchTable:
    """One searched row: its label and id, the line naming the chosen values, and the trial table."""

    row_id: str
    label: str
    summary: str
    columns: list[str]
    rows: list[list[str]]


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _params(params: dict) -> str:
    return ", ".join(f"{k} {_value(v)}" for k, v in sorted(params.items()))


def _search_of(record: dict) -> dict | None:
    search = (record.get("details") or {}).get("search")
    return search if isinstance(search, dict) and search.get("trials") is not None else None


def search_tables(records: list[dict]) -> list[SearchTable]:
    """The searched rows that finished, in record order, each with its trial table."""
    tables = []
    for r in records:
        search = _search_of(r)
        if search is None or r.get("status") != "ok":
            continue
        trials = search["trials"]
        keys = sorted({k for t in trials for k in t.get("params", {})})
        metric = search.get("metric", "validation_loss").replace("_", " ")
        complete = sum(t.get("state") == "complete" for t in trials)
        pruned = sum(t.get("state") == "pruned" for t in trials)
        summary = (f"chose {_params(search.get('chosen') or {})} (trial {search.get('best_trial')}, best "
                   f"{metric}, {search.get('direction', 'lower')} is better) from {len(trials)} trials "
                   f"({complete} complete, {pruned} pruned, {len(trials) - complete - pruned} failed); scored "
                   "on the validation rows, the final model retrained with these values")
        scored = any(t.get("validation_score") is not None for t in trials)  # metric: validation_score
        rows = []
        for t in trials:
            params = t.get("params", {})
            best = " (chosen)" if t.get("number") == search.get("best_trial") else ""
            loss = t.get("validation_loss")
            rows.append([str(t.get("number")) + best] + [_value(params.get(k, "-")) for k in keys]
                        + ["-" if loss is None else f"{loss:.4f}"]
                        + (["-" if t.get("validation_score") is None else f"{t['validation_score']:.4f}"]
                           if scored else [])
                        + [str(t.get("state")), str(t.get("steps", "-")), f"{t.get('seconds', 0):.1f} s"])
        columns = (["trial"] + keys + ["validation loss"] + (["validation score"] if scored else [])
                   + ["state", "steps", "time"])
        tables.append(SearchTable(r["row_id"], r.get("label", r["row_id"]), summary, columns, rows))
    return tables


def search_parity_check(records: list[dict]) -> dict | None:
    """The honesty check "searched rows compared with hand-set ones": None when no row was searched."""
    ok_rows = [r for r in records if r.get("status") == "ok"]
    searched = [r["row_id"] for r in ok_rows if _search_of(r) is not None]
    if not searched:
        return None
    use = {r["row_id"]: t.use if (t := traits_of(r)) is not None else None for r in ok_rows}
    hand_set = [r["row_id"] for r in ok_rows if use[r["row_id"]] == "trained" and _search_of(r) is None]
    prompted = [r["row_id"] for r in ok_rows if use[r["row_id"]] == "prompted"]
    prompted_note = (f"; the prompted rows ({', '.join(prompted)}) are not searched either (their settings are "
                     "the ones written)") if prompted else ""
    name = "trained rows tuned alike (all searched, or all hand-set)"
    if hand_set:
        return {"check": name, "ok": False,
                "detail": f"{len(searched)} row(s) chose their settings by a search on the validation rows "
                          f"({', '.join(searched)}) and {len(hand_set)} trained row(s) used hand-set settings "
                          f"({', '.join(hand_set)}): part of a difference between them is the search, not the "
                          f"method; search those rows too for a fair comparison{prompted_note}"}
    return {"check": name, "ok": True,
            "detail": f"every trained row was searched ({', '.join(searched)}){prompted_note}"}
