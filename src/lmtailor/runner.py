"""Run an experiment: prepare data once, run every strategy × model × size × seed row in the meter, score, record.

A failed row is recorded as failed (with its error) and the run goes on; nothing overwrites another run.

Under several processes (``accelerate launch``, docs/DISTRIBUTED.md) every process runs every row the same way (the
Trainer shares the training out between them; each answers the whole test set), the main process alone writes the
run directory, and after each row the processes exchange their outcomes, so the record says what every one did.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import time
import traceback
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from lmtailor import distributed
from lmtailor.config import ConfigError, Experiment, dump_experiment, dump_experiment_as_written, load_experiment
from lmtailor.core.context import RunContext
from lmtailor.core.example import DatasetSplits
from lmtailor.core.task_spec import TaskSpec
from lmtailor.data.prepare import prepare_data, split_content
from lmtailor.data.splits import nested_subsets
from lmtailor.distributed_rows import agree_on_row, stop_if_out_of_step
from lmtailor.environment import describe_environment
from lmtailor.errors import TrainingInterrupted, UserError
from lmtailor.io import jsonl_text
from lmtailor.probing import forgetting
from lmtailor.measure.meter import Meter
from lmtailor.models import detect_family, family_name_of
from lmtailor.models.remote_code import check_remote_code
from lmtailor.remote.reference import is_remote
from lmtailor.remote.settings import API_FAMILY
from lmtailor.report.results_json import write_results
from lmtailor.report.table import write_results_markdown
from lmtailor.row_plan import PlannedRow, unique_row_id
from lmtailor.run_lock import RunLock
from lmtailor.rundir import RunDir, RunRecord
from lmtailor.rundir.layout import UnreadableRecord
from lmtailor.rundir.provenance import task_identity
from lmtailor.rundir.record import RecordTask
from lmtailor.runtime import Runtime, detect_runtime, set_threads
from lmtailor.strategies import STRATEGIES
from lmtailor.strategies.baseline import NO_MODEL, BaselineConfig
from lmtailor.strategies.controls import add_equal_steps_controls
from lmtailor.tasks import TASK_TYPES
from lmtailor.tasks.held_out import held_out_data, ids_digest, split_and_score
from lmtailor.unwritten_rows import restore_row, stash_row

log = logging.getLogger("lmtailor")


def plan_rows(exp: Experiment) -> list[PlannedRow]:
    """Expand the experiment's strategies into rows; row ids are unique and readable.

    The trivial baseline (strategies/baseline.py) is planned once, last, unless the strategies list it already or
    ``trivial_baseline`` is false; a strategy that runs no model is planned once, on no model.
    """
    rows: list[PlannedRow] = []
    seen: set[str] = set()
    configs = exp.strategy_configs()
    if exp.trivial_baseline and not any(cfg.name == "baseline" for cfg in configs):
        configs = configs + [BaselineConfig(name="baseline")]
    for cfg in configs:
        cls = STRATEGIES.get(cfg.name)
        for model in (cfg.models or exp.models) if cls(cfg).uses_model() else [NO_MODEL]:
            probe = cls(cfg)
            probe.traits()  # a strategy that declares none is refused here, before any row trains
            sizes = (getattr(cfg, "train_sizes", None) or [None]) if probe.uses_training_data() else [None]
            seeds = exp.seeds if probe.uses_seed() else exp.seeds[:1]
            for size in sizes:
                for seed in seeds:
                    row = PlannedRow("", cls(cfg), model, seed, size)
                    row.row_id, row.index = unique_row_id(row, seen), len(rows)
                    rows.append(row)
    return add_equal_steps_controls(rows)  # strategies/controls.py: extra-data rows vs the same steps without


def resolve_task(exp: Experiment, defaults: dict, splits: DatasetSplits) -> TaskSpec:
    """Combine the experiment's task block with the dataset's defaults; fail clearly on what is still missing."""
    cfg = exp.task
    task_type = cfg.type or defaults.get("type")
    if task_type is None:
        raise ConfigError("task.type is not set and the dataset has no default: set task.type to "
                         f"one of {', '.join(TASK_TYPES)}")
    instruction = cfg.instruction or defaults.get("instruction")
    if not instruction:
        raise ConfigError("task.instruction is not set: write the instruction every model should follow")
    labels = None
    if TASK_TYPES.get(task_type).output == "labels":
        labels = tuple(cfg.labels or defaults.get("labels") or sorted({e.target for e in splits.train}))
        check_two_labels(exp, labels, splits)
        unknown = sorted({e.target for e in splits.test} - set(labels))
        if unknown:
            raise ConfigError(f"test targets {unknown[:5]} are not in task.labels; add them or fix the data")
    return TaskSpec(cfg.name or defaults.get("name") or exp.name, task_type, instruction, labels)


def check_two_labels(exp: Experiment, labels: tuple[str, ...], splits: DatasetSplits) -> None:
    """Refuse a classification task with fewer than two labels (in ``task.labels`` or in the rows): every model
    would score accuracy 1.000 on it by always answering the one label, and the report would recommend one."""
    seen = sorted({e.target for e in (*splits.train, *splits.validation, *splits.test)})
    if exp.task.labels and len(set(exp.task.labels)) < 2:
        where, one = "task.labels", sorted(set(exp.task.labels))
    elif len(seen) < 2 or len(set(labels)) < 2:
        where, one = f"{splits.source}, field {exp.data.target_field!r}", seen
    else:
        return
    raise ConfigError(f"{where}: a classification task needs at least two labels, and this one has "
                      f"{len(one)} ({', '.join(map(repr, one)) or 'none'}): every answer would be right, so "
                      "every score would be 1.000. Add rows of the other labels, or set task.type: generation")


def _family(ref: str, trust_remote_code: bool = False) -> str | None:
    if is_remote(ref):  # an OpenAI-compatible endpoint: its weights and architecture are not ours to read
        return API_FAMILY
    try:
        return family_name_of(ref, trust_remote_code)
    except Exception:  # an unloadable model fails its row with the real error; the record just lacks a family
        return None


def run_row(row: PlannedRow, exp: Experiment, task: TaskSpec, splits: DatasetSplits, subsets: dict[int, list],
            runtime: Runtime, run_dir: Path, env: dict, base_dir: Path = Path(".")) -> dict:
    """Run one row inside the meter, score it with the evaluator on the test and the validation rows (the strategy
    answers both in one pass: tasks/held_out.py), write its record and predictions."""
    from transformers import set_seed

    data = held_out_data(splits if row.train_size is None else replace(splits, train=subsets[row.train_size]))
    meter = Meter(pricing=exp.pricing, hardware=runtime.hardware)
    ctx = RunContext(task=task, data=data, model_ref=row.model_ref, budget=exp.budget.to_budget(), seed=row.seed,
                     meter=meter, out_dir=RunDir(run_dir).artifacts_dir(row.row_id), runtime=runtime, log=log,
                     base_dir=base_dir, row_id=row.row_id, run_dir=run_dir, api=exp.api)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record = RunRecord(row_id=row.row_id, row_index=row.index, label=row.label,
                       strategy=row.strategy.config.name, config=row.strategy.config.model_dump(mode="json"),
                       traits=row.strategy.traits().to_record(),  # what the report reads, never the name
                       model=row.model_ref, seed=row.seed,
                       family=_family(row.model_ref, runtime.trust_remote_code) if row.strategy.uses_model() else None,
                       train_size=len(data.train),
                       train_size_requested=row.train_size, task=RecordTask(name=task.name, type=task.type),
                       test_rows=len(splits.test), test_ids_sha256=ids_digest([e.id for e in splits.test]),
                       status="failed")  # until it finishes
    predictions: list[str] | None = None
    output = None
    failed_at, checksum = None, None
    set_seed(row.seed)
    try:
        with meter:
            output = row.strategy.run(ctx)
        predictions = output.predictions
        if output.tuned is not None and distributed.is_distributed():  # did training keep the copies identical?
            checksum = distributed.weights_checksum(output.tuned[0])
        scored, validation = split_and_score(task, splits.test, splits.validation, predictions,
                                             output.retrieved_doc_ids, output.retrieval_k)
        record.update(status="ok", error=None, metrics=scored["metrics"], primary_metric=scored["primary_metric"],
                      score_details=scored["details"], validation=validation, details=output.details,
                      artifacts={k: str(Path(v).relative_to(run_dir)) if Path(v).is_relative_to(run_dir) else str(v)
                                 for k, v in output.artifacts.items()})
        if output.tuned is not None and exp.forgetting:  # after the meter: the probe is not the strategy's cost
            record.forgetting = probe_forgetting(output, row.model_ref, exp, runtime, run_dir)
    except TrainingInterrupted:  # not a failure: the checkpoint is saved and `run --resume` continues the row
        raise
    except Exception as e:  # a failed row is kept and shown as failed, never dropped
        failed_at = time.time()  # under several processes the first failure is the cause of the others
        log.error("row %s failed: %s: %s", row.row_id, type(e).__name__, e)
        record.update(status="failed", metrics=[], details={},
                      error={"type": type(e).__name__, "message": str(e), "traceback": traceback.format_exc()})
    record.update(meter=meter.record(), environment=env, started_at=started,
                  finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    del output  # with it the tuned model, when the probe did not take it: free before the next row loads one
    gc.collect()
    # Outside the try: every process gets here whatever happened in its row, so none waits for one that failed.
    record = RunRecord.model_validate(agree_on_row(record.as_dict(), predictions, checksum, failed_at))
    distributed.on_main(lambda: _write_row(run_dir, record, splits, predictions))
    return record.as_dict()


def _write_row(run_dir: Path, record: RunRecord, splits: DatasetSplits, predictions: list[str] | None) -> None:
    """The test predictions in predictions/<row>.jsonl, the validation ones in predictions/validation/, then the
    record (last: it marks the row finished). Files that cannot be written are kept beside the row's artifact and
    the run stops (unwritten_rows.py), so ``run --resume`` does not train the row again."""
    answers = {}
    if predictions is not None:
        n = len(splits.test)
        answers["test"] = jsonl_text(
            {"id": e.id, "target": e.target, "prediction": p} for e, p in zip(splits.test, predictions))
        if splits.validation:
            answers["validation"] = jsonl_text(
                {"id": e.id, "target": e.target, "prediction": p} for e, p in zip(splits.validation, predictions[n:]))
    run = RunDir(run_dir)
    files = run.row_files(record, answers)
    try:
        run.write_files(files)
    except OSError as e:
        raise stash_row(run_dir, record.row_id, files, e) from e


def _error(e: Exception) -> dict:
    return {"type": type(e).__name__, "message": str(e), "traceback": traceback.format_exc()}


def base_probe(ref: str, runtime: Runtime, exp: Experiment, run_dir: Path) -> dict:
    """The forgetting probe of the base model ``ref``: computed once per run, kept in ``probes/<model>.json``."""
    run = RunDir(run_dir)
    path = run.probe_path(ref)
    if path.is_file():
        cached = run.read_json(path)
        if cached.get("model") == ref:
            return cached
        path = run.probe_path(ref, hashlib.sha256(ref.encode()).hexdigest()[:8])  # slug clash
        if path.is_file():
            return run.read_json(path)
    log.info("forgetting probe of the base model %s (once per run)", ref)
    result = forgetting.probe_model_ref(ref, runtime, exp.budget.to_budget())
    if distributed.is_main_process():  # every process probes (no one waits on another); one writes
        run.write_json(path, result)
    return result


def probe_forgetting(output, base_ref: str, exp: Experiment, runtime: Runtime, run_dir: Path) -> dict:
    """Probe the tuned model of ``output`` and its base model; record both and the change. Takes the tuned model
    out of ``output`` and frees it after its probe, before the base model is loaded, so only one is in memory.

    A probe that fails leaves its error here and the row stands: the row's result does not depend on the probe.
    """
    started = time.perf_counter()
    result: dict = {"base_model": base_ref}
    model, tokenizer = output.tuned
    output.tuned = None
    try:
        result["tuned"] = forgetting.probe(model, tokenizer, detect_family(model.config), runtime,
                                           exp.budget.to_budget())
    except Exception as e:  # noqa: BLE001 - recorded; the row's own result is already complete
        log.error("forgetting probe of the tuned model failed: %s: %s", type(e).__name__, e)
        result["error"] = {"probe": "tuned", **_error(e)}
    finally:
        del model, tokenizer
        gc.collect()
    if "error" not in result:
        try:
            result["base"] = base_probe(base_ref, runtime, exp, run_dir)
        except Exception as e:  # noqa: BLE001 - as above
            log.error("forgetting probe of the base model %s failed: %s: %s", base_ref, type(e).__name__, e)
            result["error"] = {"probe": "base", **_error(e)}
    if "error" not in result:
        result.update(forgetting.forgetting_change(result["base"], result["tuned"]))
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def new_run_dir(exp: Experiment, out_dir: Path | None) -> Path:
    """Create a fresh run directory; runs never overwrite each other."""
    return RunDir.create(Path(out_dir or exp.output_dir), exp.name).path


def _attach_log_file(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(RunDir(run_dir).log, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("lmtailor", "transformers", "peft", "trl"):
        logging.getLogger(name).addHandler(handler)
    logger = logging.getLogger("lmtailor")
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler


def load_resumable(run_dir: Path) -> tuple[Experiment, Path]:
    """The experiment and base directory of an earlier run, for ``run_experiment(..., resume_dir=run_dir)``."""
    run = RunDir(run_dir)
    if not run.experiment.is_file() or not run.run_meta.is_file():
        raise UserError(f"{run_dir} is not a resumable run directory: it has no {run.experiment.name} and "
                        f"{run.run_meta.name} (written at the start of every run by `lmtailor run`); pass the "
                        "directory `lmtailor run` printed")
    return load_experiment(run.experiment), run.base_dir()


def _finished_records(run_dir: Path, rows: list[PlannedRow]) -> dict[str, dict]:
    """Records of rows that already finished ok in ``run_dir``: a resumed run keeps them and skips those rows.

    A failed row is run again (its error may have been the interruption's doing, or fixed since).
    """
    run = RunDir(run_dir)
    digest, task = run.test_digest(), task_identity(run.read_task())
    done = {}
    for row in rows:
        restore_row(run_dir, row.row_id)  # a finished row whose record could not be written (unwritten_rows.py)
        path = run.record_path(row.row_id)
        if path.is_file():  # read as the report reads it: a damaged or foreign record is named, not skipped
            record = run.read_record(path, digest, task)
            if record.status == "ok":
                done[row.row_id] = record.as_dict()
    _check_other_records(run, {row.row_id for row in rows}, digest, task)
    return done


def _check_other_records(run: RunDir, planned: set[str], digest: str | None, task: dict | None) -> None:
    """Records beside the planned rows' are summarised after every row too: refuse a foreign one before training, not
    after the first row (one that cannot be read is left to the report, which names it)."""
    for path in run.record_files():
        if path.stem in planned:
            continue
        try:
            run.read_record(path, digest, task)
        except UnreadableRecord:
            continue


def _open_run(exp: Experiment, rows: list[PlannedRow], base_dir: Path, out_dir: Path | None,
              resume_dir: Path | None, lock: RunLock) -> tuple[Path, dict[str, dict]]:
    """The run directory, locked (run_lock.py), and the records of rows an earlier part of the run finished (main
    process only). A new run is locked before its resume files exist, so no ``--resume`` can start it twice."""
    if resume_dir is not None:
        lock.acquire(Path(resume_dir))  # before reading what finished: another process may be finishing rows
        return Path(resume_dir), _finished_records(Path(resume_dir), rows)
    run_dir = new_run_dir(exp, out_dir)
    lock.acquire(run_dir)
    RunDir(run_dir).write_start(dump_experiment_as_written(exp), base_dir)
    return run_dir, {}


def _write_run_files(run_dir: Path, exp: Experiment, task: TaskSpec, split_record: dict, resuming: bool) -> None:
    """The experiment as run, the splits and the task (main process only)."""
    if resuming:
        _check_same_splits(run_dir, split_record)
    RunDir(run_dir).write_run_files(dump_experiment(exp), split_record, {
        "name": task.name, "type": task.type, "instruction": task.instruction, "labels": task.labels})


def _prepare(exp: Experiment, rows: list[PlannedRow], base_dir: Path
             ) -> tuple[DatasetSplits, TaskSpec, dict[int, list], dict]:
    """The data and the task, once for every row: (splits, task, learning-curve subsets, the splits record)."""
    prepared = prepare_data(exp.data, exp.task.type or "", base_dir)  # before any model is loaded
    for w in prepared.warnings:
        log.warning(w)
    splits = prepared.splits
    task = resolve_task(exp, prepared.task_defaults, splits)
    sizes = sorted({r.train_size for r in rows if r.train_size is not None})
    subsets = dict(zip(sizes, nested_subsets(splits.train, sizes, exp.data.seed))) if sizes else {}
    log.info("task %s (%s): %d train / %d validation / %d test rows%s", task.name, task.type, len(splits.train),
             len(splits.validation), len(splits.test), f", {len(task.labels)} labels" if task.labels else "")
    split_record = {"source": splits.source, "seed": exp.data.seed, **splits.ids(),
                    "learning_curve_subsets": {str(k): [e.id for e in v] for k, v in subsets.items()},
                    "warnings": prepared.warnings, "dropped_duplicates": prepared.dropped_duplicates,
                    "content": split_content(splits)}
    return splits, task, subsets, split_record


def run_experiment(exp: Experiment, base_dir: Path, out_dir: Path | None = None,
                   resume_dir: Path | None = None) -> Path:
    """Run every row of ``exp``; returns the run directory holding config, splits, results, predictions, log, table.

    ``resume_dir``: continue that earlier run of the same experiment in place: rows with an ok result are kept,
    the others run again, and a row whose training left a complete checkpoint resumes from it (training/common.py).
    Under several processes the main one creates (or reopens) the run directory and tells the others.
    """
    runtime = detect_runtime(exp.runtime.precision, exp.runtime.device, exp.runtime.trust_remote_code)
    set_threads(exp.runtime.threads)
    precision_note = distributed.align_launcher_precision(runtime.precision)
    distributed.setup(cpu=runtime.hardware == "cpu")  # before any model loads; a no-op in one process
    rows = plan_rows(exp)

    check_remote_code([r.model_ref for r in rows], exp.runtime.trust_remote_code)  # before a run directory exists
    lock = RunLock()  # taken by the main process only; the others follow it
    run_dir, done = distributed.on_main(lambda: _open_run(exp, rows, base_dir, out_dir, resume_dir, lock))
    with distributed.rank_logging():
        handler = _attach_log_file(run_dir) if distributed.is_main_process() else None
        try:
            log.info("%s: %s", "resuming run" if resume_dir is not None else "run directory", run_dir)
            if distributed.is_distributed():
                log.info("%d processes (this is rank 0, the one that writes the run directory)",
                         distributed.world_size())
            if done:
                log.info("%d of %d rows already finished; running the other %d", len(done), len(rows),
                         len(rows) - len(done))
            log.info("runtime: %s", runtime.describe())
            if precision_note:
                log.warning(precision_note)
            splits, task, subsets, split_record = _prepare(exp, rows, base_dir)
            distributed.check_same(ids_digest([json.dumps(split_record, sort_keys=True)]), "the data splits")
            distributed.on_main(lambda: _write_run_files(run_dir, exp, task, split_record, resume_dir is not None))
            env = {**describe_environment(runtime), "world_size": distributed.world_size()}
            records = []
            for i, row in enumerate(rows, 1):
                if row.row_id in done:
                    log.info("[%d/%d] %s: finished in the earlier run, kept", i, len(rows), row.row_id)
                    records.append(done[row.row_id])
                    continue
                log.info("[%d/%d] %s on %s (seed %d)", i, len(rows), row.label, row.model_ref, row.seed)
                t0 = time.perf_counter()
                records.append(run_row(row, exp, task, splits, subsets, runtime, run_dir, env, base_dir))
                log.info("[%d/%d] %s: %s in %.1fs", i, len(rows), row.row_id, records[-1]["status"],
                         time.perf_counter() - t0)
                # Rewritten after every row, so an interrupted run still leaves the table of what finished, and
                # the machine-readable summary (`lmtailor report` rebuilds it byte for byte from results/).
                distributed.on_main(lambda: (write_results_markdown(run_dir, records, exp.name),
                                             write_results(run_dir)))
                stop_if_out_of_step(records[-1], run_dir)
            # The cost-benefit report (report.html, report.md), once at the end: its charts take a second or two.
            distributed.on_main(lambda: _write_reports(run_dir, exp))
        finally:
            lock.release()
            if handler is not None:
                for name in ("lmtailor", "transformers", "peft", "trl"):
                    logging.getLogger(name).removeHandler(handler)
                handler.close()
    return run_dir


def _write_reports(run_dir: Path, exp: Experiment) -> None:
    """report.html and report.md; a report that cannot be drawn is logged, and the run's results stand."""
    from lmtailor.report.build import write_run_reports

    try:
        path = write_run_reports(run_dir, exp.name, exp.report)
    except Exception as e:  # noqa: BLE001 - results/ and results.md are written; `lmtailor report` can retry
        log.error("the report could not be written: %s: %s (rebuild it with `lmtailor report %s`)",
                  type(e).__name__, e, run_dir)
        return
    log.info("report: %s", path)


def _check_same_splits(run_dir: Path, split_record: dict) -> None:
    """A resumed run must see the data the first part saw; a changed data file would mix two experiments."""
    before = RunDir(run_dir).read_splits()
    if before is None:
        return
    changed = [k for k in ("train", "validation", "test") if before.get(k) != split_record.get(k)]
    if changed:
        raise UserError(f"cannot resume {run_dir}: the {', '.join(changed)} split(s) differ from the earlier part of "
                        "the run (the data file changed?); restore the data or start a new run")
