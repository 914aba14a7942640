"""Honesty checks printed in the report: what the numbers can be trusted for, checked from the run directory.

Each check is ``{"check", "ok", "detail"}``. A check says what it looked at; where the records do not hold what a
check needs, it says "not verifiable from the record" and is not counted as passed (``ok`` False).
"""

from __future__ import annotations

import json
from pathlib import Path

NOT_VERIFIABLE = "not verifiable from the record"


def _check(name: str, ok: bool, detail: str) -> dict:
    return {"check": name, "ok": ok, "detail": detail}


def _ids(values: list) -> str:
    shown = ", ".join(map(str, values[:10]))
    return shown + (f" and {len(values) - 10} more" if len(values) > 10 else "")


def _extra_rows_files(run_dir: Path, record: dict) -> list[tuple[str, Path]]:
    """(kind, path) of the augmented / synthetic rows files a row trained on, as its details name them."""
    found = []
    for kind in ("augmented", "synthetic"):
        info = (record.get("details") or {}).get(kind)
        if not isinstance(info, dict):
            continue
        named = Path(info["rows_file"]) if info.get("rows_file") else None
        # The recorded path is absolute; a run directory that was moved still has the file under its own name.
        fallback = run_dir / kind / f"{record['row_id']}.jsonl"
        found.append((kind, named if named is not None and named.is_file() else fallback))
    return found


def _sources_of(path: Path) -> tuple[set[str], set[str]]:
    """The ids of the rows in a rows file and the ids of the real rows they were made from."""
    ids, sources = set(), set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        ids.add(str(row.get("id")))
        meta = row.get("meta") or {}
        if meta.get("source_id") is not None:
            sources.add(str(meta["source_id"]))
        sources.update(str(s) for s in meta.get("seed_ids") or [])
    return ids, sources


def _training_leak(run_dir: Path, splits: dict, records: list[dict]) -> dict:
    test = {str(i) for i in splits.get("test") or []}
    leaked: dict[str, list[str]] = {}
    looked = ["train", "validation"]
    for name in ("train", "validation"):
        hit = sorted(test & {str(i) for i in splits.get(name) or []})
        if hit:
            leaked[f"splits.json {name}"] = hit
    for size, ids in sorted((splits.get("learning_curve_subsets") or {}).items(), key=lambda kv: int(kv[0])):
        looked.append(f"learning-curve subset n={size}")
        hit = sorted(test & {str(i) for i in ids})
        if hit:
            leaked[f"learning-curve subset n={size}"] = hit
    unreadable = []
    extra_files = 0
    for record in records:
        for kind, path in _extra_rows_files(run_dir, record):
            if not path.is_file():
                unreadable.append(f"{record['row_id']} ({kind}: {path} is missing)")
                continue
            extra_files += 1
            ids, sources = _sources_of(path)
            hit = sorted(test & (ids | sources))
            if hit:
                leaked[f"{kind} rows of {record['row_id']}"] = hit
    what = (f"{len(test)} test ids against {', '.join(looked)}"
            + (f" and the rows and source ids of {extra_files} augmented/synthetic rows file(s)" if extra_files else ""))
    if leaked:
        return _check("test rows never seen in training", False,
                      f"checked {what}; test ids found in: "
                      + "; ".join(f"{where}: {_ids(ids)}" for where, ids in leaked.items()))
    if unreadable:
        return _check("test rows never seen in training", False,
                      f"checked {what}, no test id found; {NOT_VERIFIABLE} for {', '.join(unreadable)}")
    return _check("test rows never seen in training", True, f"checked {what} by row id: no test id found")


def _exemplars_and_retrieval(splits: dict, records: list[dict]) -> dict:
    test = {str(i) for i in splits.get("test") or []}
    uses = [r for r in records if r.get("strategy") in ("prompt", "rag") and r.get("status") == "ok"]
    if not uses:
        return _check("test rows never used as exemplars or retrieved", True, "no prompted or RAG row finished")
    problems, unknown, checked = [], [], []
    for r in uses:
        details = r.get("details") or {}
        if "exemplar_ids" not in details:
            unknown.append(f"{r['row_id']} (exemplars)")
        else:
            shown = {str(i) for i in details["exemplar_ids"]}
            by_row = details.get("exemplar_ids_by_row")  # exemplars: similar: each test row's own
            if isinstance(by_row, dict):
                shown |= {str(i) for ids in by_row.values() for i in ids}
            hit = sorted(test & shown)
            checked.append(f"{r['row_id']} ({len(shown)} distinct exemplars over {len(by_row)} rows)"
                           if isinstance(by_row, dict) else f"{r['row_id']} ({len(details['exemplar_ids'])} exemplars)")
            if hit:
                problems.append(f"{r['row_id']} used test rows as exemplars: {_ids(hit)}")
        if r.get("strategy") == "rag":
            retrieved = details.get("retrieved_doc_ids")
            if not isinstance(retrieved, dict):
                unknown.append(f"{r['row_id']} (retrieved documents)")
                continue
            docs = {str(d) for ds in retrieved.values() for d in ds}
            hit = sorted(test & docs)
            checked.append(f"{r['row_id']} ({len(docs)} distinct retrieved documents)")
            if hit:
                problems.append(f"{r['row_id']} retrieved documents with test row ids: {_ids(hit)}")
            # Ids only: a corpus document holding a test row's text under another id is invisible here.
    detail = "checked by id: " + ", ".join(checked) if checked else "nothing could be checked"
    if problems:
        detail += "; " + "; ".join(problems)
    if unknown:
        detail += f"; {NOT_VERIFIABLE} for {', '.join(unknown)}"
    if any(r.get("strategy") == "rag" for r in uses):
        detail += " (retrieval is checked by document id; the corpus leaves out the test rows' source documents " \
                  "when it is built, which the record does not list)"
    return _check("test rows never used as exemplars or retrieved", not problems and not unknown, detail)


def _stand_ins(records: list[dict]) -> dict:
    from lmtailor.models.sources import MODEL_ALIASES

    stand_in = {}
    for r in records:
        model = r.get("model")
        if model in MODEL_ALIASES and MODEL_ALIASES.get(model).source in ("embedded", "tiny"):
            stand_in.setdefault(model, []).append(r["row_id"])
    if not stand_in:
        return _check("models are the ones a user would deploy", True,
                      "no row ran on an embedded or tiny stand-in model")
    parts = [f"{m} ({MODEL_ALIASES.get(m).source}: {len(rows)} row{'s' if len(rows) > 1 else ''})"
             for m, rows in sorted(stand_in.items())]
    return _check("models are the ones a user would deploy", False,
                  "these rows ran on small stand-in models bundled with lmtailor, not on the models one would "
                  f"deploy; their quality and cost say little about larger ones: {', '.join(parts)}")


def _truncation(records: list[dict]) -> dict:
    lines, total = [], 0
    for r in records:
        d = r.get("details") or {}
        inference = d.get("inference") if isinstance(d.get("inference"), dict) else {}
        counts = {
            # prompt and rag repeat the test-input count at the top (rag's own cut, before predict); prefer it
            "test inputs": d.get("truncated_inputs", inference.get("truncated_inputs")) or 0,
            "exemplar inputs": inference.get("truncated_exemplar_inputs") or 0,
            "training inputs": (d.get("train_data") or {}).get("truncated_inputs") or 0,
            "training targets": (d.get("train_data") or {}).get("truncated_targets") or 0,
            "validation inputs": (d.get("validation_data") or {}).get("truncated_inputs") or 0,
            "validation targets": (d.get("validation_data") or {}).get("truncated_targets") or 0,
        }
        counts = {k: int(v) for k, v in counts.items() if isinstance(v, (int, float)) and v}
        if counts:
            total += sum(counts.values())
            lines.append(f"{r['row_id']}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    if not total:
        return _check("inputs not truncated", True,
                      "no record reports a truncated input or target (test, exemplar, training, validation)")
    return _check("inputs not truncated", False, f"{total} truncated texts: " + "; ".join(lines))


def _failures(records: list[dict]) -> dict:
    failed = [r for r in records if r.get("status") != "ok"]
    if not failed:
        return _check("every strategy finished", True, f"all {len(records)} rows finished")
    parts = []
    for r in failed:
        error = r.get("error") or {}
        message = (error.get("message") or "no message recorded").strip().splitlines()[0]
        parts.append(f"{r['row_id']} ({r.get('status')}): {error.get('type') or 'unknown error'}: {message}")
    return _check("every strategy finished", False,
                  f"{len(failed)} of {len(records)} rows failed and are shown as failed: " + "; ".join(parts))


def honesty_checks(run_dir: Path, records: list[dict]) -> list[dict]:
    """The report's honesty checks on ``run_dir`` (its ``splits.json`` and extra-rows files) and its ``records``."""
    run_dir = Path(run_dir)
    splits_path = run_dir / "splits.json"
    if splits_path.is_file():
        splits = json.loads(splits_path.read_text(encoding="utf-8"))
        leak = _training_leak(run_dir, splits, records)
        shown = _exemplars_and_retrieval(splits, records)
    else:
        leak = _check("test rows never seen in training", False, f"{NOT_VERIFIABLE}: {splits_path} is missing")
        shown = _check("test rows never used as exemplars or retrieved", False,
                       f"{NOT_VERIFIABLE}: {splits_path} is missing")
    return [leak, shown, _stand_ins(records), _truncation(records), _failures(records)]
