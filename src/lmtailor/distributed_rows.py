"""The end of each row under several processes: what every process did, in the row's one record.

After a row, every process sends its outcome to all the others (``agree_on_row``): the record then says whether the
row was ok everywhere, each process's error, steps, weight checksum and predictions digest, and the meter combined
over the processes. A failure that left the processes out of step stops the run (``stop_if_out_of_step``). In one
process both are no-ops. See docs/DISTRIBUTED.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from lmtailor import distributed
from lmtailor.measure.meter import combine_process_records

log = logging.getLogger("lmtailor")


def agree_on_row(record: dict, predictions: list[str] | None, checksum: float | None,
                 failed_at: float | None) -> dict:
    """Under several processes: exchange every process's outcome; the record becomes the row's over all of them.

    The row is ok only if it is ok on every process; its error is the earliest failure's (a process that failed
    first leaves the others to time out in a collective: their errors are consequences). The meter is combined
    (``combine_process_records``); ``distributed`` lists each process's status, error, optimizer steps, a checksum
    of its tuned weights and a digest of its predictions: they agree when training kept the copies identical (DDP).

    ``distributed.out_of_step``: every process failing with the same error is a failure they all met at the same
    point (bad data, a model that does not load): they are in step and the run goes on, as in one process. Any other
    failure (some processes only, or different errors) may have left a process inside a collective the others
    abandoned, so the training group can no longer be trusted: the run must stop (``stop_if_out_of_step``).
    """
    if not distributed.is_distributed():
        return record
    mine = {"rank": distributed.rank(), "status": record["status"], "error": record.get("error"),
            "failed_at": failed_at, "meter": record["meter"],
            "steps": (record.get("details") or {}).get("steps"), "weights_checksum": checksum,
            "predictions_sha256": _predictions_digest(predictions)}
    everyone = distributed.gather_objects(mine)
    failed = [p for p in everyone if p["status"] != "ok"]
    record["meter"] = combine_process_records([p["meter"] for p in everyone], _billed_units(record["meter"]))
    record["distributed"] = _processes_summary(everyone)
    if failed:
        first = min(failed, key=lambda p: p["failed_at"])
        record.update(status="failed", metrics=[], error={**first["error"], "rank": first["rank"]})
    reasons = {(p["error"]["type"], p["error"]["message"]) for p in failed}
    record["distributed"]["out_of_step"] = bool(failed) and (len(failed) < len(everyone) or len(reasons) > 1)
    _log_processes(record["row_id"], record["distributed"])
    return record


def stop_if_out_of_step(record: dict, run_dir: Path) -> None:
    """Raise ``ProcessesOutOfStep`` (on every process alike) when the row left the processes out of step."""
    if not record.get("distributed", {}).get("out_of_step"):
        return
    error = record["error"]
    each = "; ".join(f"rank {p['rank']}: {p['error'] or 'ok'}" for p in record["distributed"]["processes"])
    raise distributed.ProcessesOutOfStep(
        f"row {record['row_id']} failed on rank {error['rank']} first ({error['type']}: {error['message']}); the "
        f"processes failed at different points ({each}), so they can no longer be trusted to stay in step and the "
        "run stops here. The row's record has every process's error. Fix the cause, then `lmtailor run --resume "
        f"{run_dir}` under the same launcher runs it again")


def _processes_summary(everyone: list[dict]) -> dict:
    """The record's ``distributed`` block: what each process did, and whether their copies of the model agreed."""
    return {
        "world_size": len(everyone),
        "processes": [{"rank": p["rank"], "status": p["status"], "steps": p["steps"],
                       "weights_checksum": p["weights_checksum"], "predictions_sha256": p["predictions_sha256"],
                       "error": None if p["error"] is None else f"{p['error']['type']}: {p['error']['message']}"}
                      for p in everyone],
        "weights_agree": len({p["weights_checksum"] for p in everyone}) == 1,
        "predictions_agree": len({p["predictions_sha256"] for p in everyone}) == 1,
    }


def _log_processes(row_id: str, summary: dict) -> None:
    if not distributed.is_main_process():  # the main process reports for all of them
        return
    processes = summary["processes"]
    ranks = ", ".join(f"rank {p['rank']} {p['status']}" + (f" ({p['steps']} steps)" if p["steps"] is not None else "")
                      for p in processes)
    if any(p["status"] != "ok" for p in processes):
        log.info("%s on %d processes: %s", row_id, len(processes), ranks)
        for p in processes:
            if p["error"]:
                log.error("%s, rank %d: %s", row_id, p["rank"], p["error"])
        return
    agree = {k: "agree" if summary[f"{k}_agree"] else "DIFFER" for k in ("weights", "predictions")}
    log.info("%s on %d processes: %s; tuned weights %s, predictions %s", row_id, len(processes), ranks,
             agree["weights"], agree["predictions"])
    if "DIFFER" in agree.values():
        log.warning("%s: the processes' tuned weights or predictions differ (training did not keep the copies of the "
                    "model in sync, or the model is sharded: FSDP, ZeRO-3); the main process's predictions are "
                    "recorded", row_id)


def _billed_units(meter_record: dict) -> int:
    """What a multi-process row pays for: one GPU per process, or each CPU machine once."""
    return distributed.world_size() if meter_record["hardware"] == "cuda" else distributed.machines()


def _predictions_digest(predictions: list[str] | None) -> str | None:
    return None if predictions is None else hashlib.sha256(json.dumps(predictions).encode()).hexdigest()[:16]
