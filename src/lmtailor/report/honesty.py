"""Honesty checks printed in the report: what the numbers can be trusted for, checked from the run directory.

Each check is ``{"check", "ok", "detail"}``. A check says what it looked at; where the records do not hold what a
check needs, it says "not verifiable from the record" and is not counted as passed (``ok`` False).

Leakage is checked by content as well as by id: ``splits.json`` holds a digest of every row's normalised request
(``data/leakage.py``), so a training, validation, exemplar or retrieved training row with a test row's input is
found under any id, and every corpus a row read records what it left out and a fingerprint of the rows it was
checked against (``retrieval/exclusion.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

from lmtailor.core.example import Example
from lmtailor.data.leakage import NORMALISATION, row_digest, rows_fingerprint
from lmtailor.measure.machine_load import BUSY_OTHER_CORES, machine_was_busy
from lmtailor.report.search_section import search_parity_check
from lmtailor.report.traits import traits_of
from lmtailor.rundir import RunDir

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
        fallback = RunDir(run_dir).extra_rows_path(kind, record["row_id"])
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


def _content(splits: dict) -> tuple[dict[str, dict[str, str]] | None, str]:
    """The rows' content digests by split from ``splits.json``, or None and why they cannot be used."""
    content = splits.get("content")
    if not isinstance(content, dict) or not isinstance(content.get("digests"), dict):
        return None, "splits.json holds no content digests (a run from before content checks): ids only"
    if content.get("normalisation") != NORMALISATION:
        return None, (f"splits.json's digests use normalisation {content.get('normalisation')!r}, not "
                      f"{NORMALISATION!r}")
    digests = content["digests"]
    missing = [k for k in ("train", "validation", "test") if set(digests.get(k) or {}) != set(splits.get(k) or [])]
    if missing:
        return None, f"splits.json's digests do not cover the {', '.join(missing)} ids"
    return digests, ""


def _same_content(ids, digests: dict[str, str], test: dict[str, str]) -> tuple[list[str], list[str]]:
    """(``id = test id`` for each of ``ids`` whose content is a test row's, ids whose content is not recorded)."""
    hits, unknown = [], []
    for i in ids:
        d = digests.get(str(i))
        if d is None:
            unknown.append(str(i))
        elif d in test:
            hits.append(f"{i} = {test[d]}")
    return hits, unknown


def _rows_file_digests(path: Path) -> list[tuple[str, str]]:
    """(id, content digest) of every row in an augmented / synthetic rows file."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out.append((str(row.get("id")), row_digest(Example(str(row.get("id")), str(row.get("input", "")), "",
                                                                row.get("meta") or {}))))
    return out


def _dropped_note(splits: dict) -> str:
    dropped = splits.get("dropped_duplicates") or {}
    parts = [f"{len(v)} {k} row(s) ({_ids([d.get('id') for d in v])})" for k, v in sorted(dropped.items()) if v]
    return f"; dropped before training for repeating a held-out input: {', '.join(parts)}" if parts else ""


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
    digests, why_not = _content(splits)
    test_content = {d: i for i, d in (digests or {}).get("test", {}).items()}
    if digests is not None:
        for name in ("train", "validation"):
            hit, _ = _same_content(splits.get(name) or [], digests[name], test_content)
            if hit:
                leaked[f"splits.json {name} (a test row's input under another id)"] = hit
    for record in records:
        for kind, path in _extra_rows_files(run_dir, record):
            if not path.is_file():
                unreadable.append(f"{record['row_id']} ({kind}: {path} is missing)")
                continue
            extra_files += 1
            ids, sources = _sources_of(path)
            hit = sorted(test & (ids | sources))
            hit += [f"{i} = {test_content[d]}" for i, d in _rows_file_digests(path) if d in test_content]
            if hit:
                leaked[f"{kind} rows of {record['row_id']}"] = hit
    what = (f"{len(test)} test ids against {', '.join(looked)}"
            + (f" and the rows and source ids of {extra_files} augmented/synthetic rows file(s)" if extra_files else "")
            + (" (by id and by normalised input)" if digests is not None else ""))
    if why_not:
        unreadable.append(f"content ({why_not})")
    if leaked:
        return _check("test rows never seen in training", False,
                      f"checked {what}; test rows found in: "
                      + "; ".join(f"{where}: {_ids(ids)}" for where, ids in leaked.items()) + _dropped_note(splits))
    if unreadable:
        return _check("test rows never seen in training", False,
                      f"checked {what}, no test row found; {NOT_VERIFIABLE} for {', '.join(unreadable)}"
                      + _dropped_note(splits))
    return _check("test rows never seen in training", True,
                  f"checked {what}: no test row found{_dropped_note(splits)}")


def _exemplars_and_retrieval(splits: dict, records: list[dict]) -> dict:
    test = {str(i) for i in splits.get("test") or []}
    # prompted rows (their exemplars) and floors answering with training rows (the nearest-neighbour vote records
    # its neighbours as exemplars)
    traits = {r["row_id"]: traits_of(r) for r in records}
    uses = [r for r in records if (t := traits[r["row_id"]]) is not None and r.get("status") == "ok"
            and (t.use == "prompted" or (t.use == "floor" and "training rows" in t.data))]

    def retrieves(r: dict) -> bool:  # a prompted row with a corpus: it retrieved documents too
        return "corpus" in traits[r["row_id"]].data and traits[r["row_id"]].use == "prompted"

    if not uses:
        return _check("test rows never used as exemplars or retrieved", True, "no prompted or RAG row finished")
    digests, why_not = _content(splits)
    # exemplars and task:train documents are training rows: their content is known from splits.json
    train = (digests or {}).get("train", {})
    test_content = {d: i for i, d in (digests or {}).get("test", {}).items()}
    problems, unknown, checked = [], [], []

    def by_content(row_id: str, what: str, ids) -> None:
        if digests is None:
            unknown.append(f"{row_id} ({what} by content: {why_not})")
            return
        hit, unseen = _same_content(ids, train, test_content)
        if hit:
            problems.append(f"{row_id} showed {what} with a test row's input: {_ids(hit)}")
        if unseen:
            unknown.append(f"{row_id} ({what} {_ids(unseen)}: not training rows, content unknown)")

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
            by_content(r["row_id"], "exemplars", details["exemplar_ids"])
        if retrieves(r):
            retrieved = details.get("retrieved_doc_ids")
            if not isinstance(retrieved, dict):
                unknown.append(f"{r['row_id']} (retrieved documents)")
                continue
            docs = sorted({str(d) for ds in retrieved.values() for d in ds})
            hit = sorted(test & set(docs))
            checked.append(f"{r['row_id']} ({len(docs)} distinct retrieved documents)")
            if hit:
                problems.append(f"{r['row_id']} retrieved documents with test row ids: {_ids(hit)}")
            if (r.get("config") or {}).get("corpus") == "task:train":  # retrieved training rows: by content too
                by_content(r["row_id"], "retrieved training rows", docs)
    detail = "checked by id and by normalised input: " + ", ".join(checked) if checked else "nothing could be checked"
    if problems:
        detail += "; " + "; ".join(problems)
    if unknown:
        detail += f"; {NOT_VERIFIABLE} for {', '.join(unknown)}"
    if any(retrieves(r) for r in uses):
        detail += " (documents of other corpora: see the corpora check)"
    return _check("test rows never used as exemplars or retrieved", not problems and not unknown, detail)


def _corpora(splits: dict, records: list[dict]) -> dict:
    """Every finished row that read a corpus recorded what it left out, checked against the test rows' content."""
    name = "corpora hold no test row's text"
    users = [r for r in records if (r.get("config") or {}).get("corpus") and r.get("status") == "ok"]
    if not users:
        return _check(name, True, "no row read a corpus (rag, continued pre-training, scratch)")
    digests, why_not = _content(splits)
    if digests is None:
        return _check(name, False, f"{NOT_VERIFIABLE}: {why_not}")
    # The rows a strategy predicts are the test rows, or the test and validation rows when both are scored.
    test = digests["test"]
    accepted = {rows_fingerprint([*test.items(), *digests["validation"].items()]): "test and validation rows",
                rows_fingerprint(test.items()): "test rows"}  # last: the name when there are no validation rows
    lines, unknown = [], []
    for r in users:
        record = (r.get("details") or {}).get("corpus_exclusions")
        if not isinstance(record, dict) or "rows_fingerprint" not in record:
            unknown.append(f"{r['row_id']} (no corpus_exclusions in its details)")
            continue
        if record.get("normalisation") != NORMALISATION:
            unknown.append(f"{r['row_id']} (normalisation {record.get('normalisation')!r})")
            continue
        against = accepted.get(record["rows_fingerprint"])
        if against is None:
            unknown.append(f"{r['row_id']} (its corpus was checked against {record.get('checked_rows')} rows that "
                           "are not this run's test rows)")
            continue
        excluded = record.get("excluded") or {}
        named = "; ".join(f"{v['count']} {k.replace('_', ' ')} (e.g. "
                          + ", ".join(f"{doc} ~ {row}" for doc, row in v["documents"][:3]) + ")"
                          for k, v in sorted(excluded.items()))
        lines.append(f"{r['row_id']}: {record.get('source', r['config']['corpus'])}, {record['kept']} of "
                     f"{record['documents']} documents kept after checking against the {against}"
                     + (f"; left out {named}" if named else "; none left out"))
    detail = "; ".join(lines) or "nothing could be checked"
    if unknown:
        detail += f"; {NOT_VERIFIABLE} for {', '.join(unknown)}"
    return _check(name, not unknown, detail)


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


def truncated_generations(details: dict) -> int | None:
    """How many of a row's generated answers were cut at ``max_new_tokens`` (None: the row generated no text, or its
    record predates the count). Pre-training strategies keep their answers' details under ``finetune``; records
    written before the count was renamed say ``hit_max_new_tokens``."""
    inference = details.get("inference")
    if not isinstance(inference, dict) and isinstance(details.get("finetune"), dict):
        inference = details["finetune"].get("inference")
    if not isinstance(inference, dict):
        return None
    value = inference.get("truncated_generations", inference.get("hit_max_new_tokens"))
    return int(value) if isinstance(value, (int, float)) else None


def _truncation(records: list[dict]) -> dict:
    lines, total = [], 0
    for r in records:
        d = r.get("details") or {}
        inference = d.get("inference") if isinstance(d.get("inference"), dict) else {}
        counts = {
            # prompt and rag repeat the test-input count at the top (rag's own cut, before predict); prefer it
            # since record version 2 a row answers the validation rows in the same pass (tasks/held_out.py)
            ("test and validation inputs" if r.get("validation") else "test inputs"):
                d.get("truncated_inputs", inference.get("truncated_inputs")) or 0,
            "exemplar inputs": inference.get("truncated_exemplar_inputs") or 0,
            "training inputs": (d.get("train_data") or {}).get("truncated_inputs") or 0,
            "training targets": (d.get("train_data") or {}).get("truncated_targets") or 0,
            "validation inputs": (d.get("validation_data") or {}).get("truncated_inputs") or 0,
            "validation targets": (d.get("validation_data") or {}).get("truncated_targets") or 0,
            # an answer that ran out of max_new_tokens is scored as written, cut: raise budget.max_new_tokens
            "answers cut at max_new_tokens": truncated_generations(d) or 0,
        }
        counts = {k: int(v) for k, v in counts.items() if isinstance(v, (int, float)) and v}
        if counts:
            total += sum(counts.values())
            lines.append(f"{r['row_id']}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    if not total:
        return _check("inputs and answers not truncated", True,
                      "no record reports a truncated input or target (test, exemplar, training, validation) or a "
                      "generated answer cut at max_new_tokens")
    return _check("inputs and answers not truncated", False, f"{total} truncated texts: " + "; ".join(lines))


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


def _busy_machine(records: list[dict]) -> dict:
    """Rows timed while other processes loaded the machine (``measure/machine_load.py``): their time and $ are
    inflated by the others' work, not this configuration's."""
    name = "timings taken on an otherwise idle machine"
    busy, unknown, others = [], [], []
    for r in records:
        machine = (r.get("meter") or {}).get("machine")
        verdict = machine_was_busy(machine)
        if verdict is None:
            unknown.append(r["row_id"])
            continue
        others.append(machine["other_cores_avg"])
        if verdict:
            load = machine.get("loadavg_end")
            busy.append(f"{r['row_id']} ({machine['other_cores_avg']:.2f} cores"
                        + (f", load {load[0]:.1f} on {machine['cores']} cores" if load else "") + ")")
    if busy:
        return _check(name, False, f"{len(busy)} of {len(records)} rows were timed while other processes used more "
                      f"than {BUSY_OTHER_CORES:g} core on average: {'; '.join(busy)}. Their time and $ (set-up, "
                      "per 1k, per month) are inflated by that load; rerun them on an idle machine before acting on "
                      "those costs" + (f"; {NOT_VERIFIABLE} for {_ids(unknown)}" if unknown else ""))
    if unknown:
        return _check(name, False, f"{NOT_VERIFIABLE} for {_ids(unknown)} (no machine load recorded)")
    return _check(name, True, f"other processes used at most {max(others, default=0.0):.2f} cores on average while a "
                  f"row ran (busy above {BUSY_OTHER_CORES:g})")


def _data_warnings(splits: dict) -> dict:
    """The data warnings of the run (``splits.json``): rows dropped, labels too small to stratify, values read as
    text; shown in the report so that none of them stays in a log the reader never opens."""
    warnings = [str(w) for w in splits.get("warnings") or []]
    if not warnings:
        return _check("data read and split without warnings", True, "none in splits.json (rows dropped, values "
                      "read as text, labels too small to stratify would be listed here)")
    return _check("data read and split without warnings", False, f"{len(warnings)} warning(s), also in splits.json: "
                  + " | ".join(warnings))


def honesty_checks(run_dir: Path, records: list[dict]) -> list[dict]:
    """The report's honesty checks on ``run_dir`` (its ``splits.json`` and extra-rows files) and its ``records``."""
    run_dir = Path(run_dir)
    splits_path, splits = RunDir(run_dir).splits, RunDir(run_dir).read_splits()
    if splits is not None:
        leak = _training_leak(run_dir, splits, records)
        shown = _exemplars_and_retrieval(splits, records)
        corpora = _corpora(splits, records)
        notes = [_data_warnings(splits)]
    else:
        leak = _check("test rows never seen in training", False, f"{NOT_VERIFIABLE}: {splits_path} is missing")
        shown = _check("test rows never used as exemplars or retrieved", False,
                       f"{NOT_VERIFIABLE}: {splits_path} is missing")
        corpora = _check("corpora hold no test row's text", False, f"{NOT_VERIFIABLE}: {splits_path} is missing")
        notes = []
    checks = [leak, shown, corpora, *notes, _stand_ins(records), _truncation(records), _failures(records),
              _busy_machine(records)]
    parity = search_parity_check(records)  # only when a row was searched
    return checks + ([parity] if parity is not None else [])
