"""The loop around ``trainer.train()``: resume from the last complete checkpoint, stop cleanly on SIGINT/SIGTERM,
and recover from CUDA out-of-memory by shrinking the micro-batch.

``run_training(trainer)`` takes an engine trainer (``training/engine.py``). It continues from the newest checkpoint
in ``args.output_dir`` whose manifest verifies (refusing one written with other settings), installs signal handlers
only while training, and when CUDA runs out of memory halves the micro-batch and doubles gradient accumulation (the
rows per optimizer step stay the same) and continues from the last checkpoint, or from the start, down to a
micro-batch of one row.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import torch
from transformers import set_seed

from lmtailor.errors import TrainingInterrupted, UserError
from lmtailor.rundir import RunDir
from lmtailor.training import checkpoint as ckpt
from lmtailor.training.engine import EngineState

log = logging.getLogger("lmtailor")

# Settings a checkpoint must share with the run that continues it: anything else would mix two trainings.
_MUST_MATCH = ("seed", "data_seed", "learning_rate", "num_train_epochs", "max_steps", "lr_scheduler_type",
               "warmup_steps", "weight_decay", "max_grad_norm", "optim", "train_sampling_strategy")


@contextlib.contextmanager
def stop_on_signals(engine: EngineState):
    """While training, SIGINT/SIGTERM ask for a checkpoint at the end of the current step and a clean stop; a second
    signal stops at once. The previous handlers are restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be installed from the main thread
        return

    def request_stop(signum, frame):
        if engine.stop_signal is not None:
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} received twice: stopping without a checkpoint")
        engine.stop_signal = signum
        log.warning("%s received: saving a checkpoint at the end of this step, then stopping (send it again to stop "
                    "at once, without one)", signal.Signals(signum).name)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, request_stop)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def _check_same_settings(trainer, checkpoint: Path) -> None:
    """Refuse to continue a checkpoint written with other training settings (a changed config, other data)."""
    path = checkpoint / ckpt.TRAINING_ARGS
    if not path.is_file():
        return
    saved = json.loads(path.read_text(encoding="utf-8"))
    now = trainer._args_record()
    changed = [f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in _MUST_MATCH if saved.get(k) != now.get(k)]
    for key in ("train_rows", "effective_batch"):
        if saved.get("lmtailor", {}).get(key) != now["lmtailor"][key]:
            changed.append(f"{key} {saved.get('lmtailor', {}).get(key)!r} -> {now['lmtailor'][key]!r}")
    if changed:
        raise UserError(f"{checkpoint} was written with other training settings ({'; '.join(changed)}); a run "
                        f"continues only with the settings and data it started with. Delete {checkpoint.parent} to "
                        "start this training over")


def resume_point(trainer) -> Path | None:
    """The checkpoint to continue from: the newest complete one in ``args.output_dir`` (scratch leftovers removed)."""
    if trainer.args.save_strategy == "no":
        return None
    directory = Path(trainer.args.output_dir)
    if trainer.args.should_save:
        ckpt.remove_scratch(directory)
    found = ckpt.last_complete_checkpoint(directory)
    if found is not None:
        _check_same_settings(trainer, found)
    return found


class _StartingWeights:
    """A CPU copy of the trainable weights before training, to start over after an out-of-memory error that struck
    before the first checkpoint. Taken on CUDA only: elsewhere there is no CUDA out-of-memory to recover from."""

    def __init__(self, model) -> None:
        self.weights = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}

    def restore(self, model) -> None:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in self.weights:
                    param.copy_(self.weights[name])


def _snapshot_wanted(model) -> bool:
    return any(p.is_cuda for p in model.parameters())


def _smaller_micro_batch(batch: int) -> int:
    """Half the micro-batch, or the largest divisor below it, so batch x accumulation stays exactly the same."""
    if batch % 2 == 0:
        return batch // 2
    return next(d for d in range(batch // 2, 0, -1) if batch % d == 0)


def _recover_from_oom(trainer, error: BaseException, start: _StartingWeights | None) -> Path | None:
    """Shrink the micro-batch after an out-of-memory error; return the checkpoint to continue from (None: start)."""
    args = trainer.args
    batch = args.per_device_train_batch_size
    for cb in trainer.callback_handler.callbacks:  # the dead attempt's progress bar
        if getattr(cb, "training_bar", None) is not None:
            cb.training_bar.close()
            cb.training_bar = None
    trainer.model.zero_grad(set_to_none=True)
    trainer.optimizer = trainer.lr_scheduler = None
    trainer.engine.micro_losses.clear()
    trainer.accelerator.free_memory()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if batch <= 1:
        raise UserError(f"CUDA ran out of memory training with a micro-batch of 1 row (gradient accumulation "
                        f"{args.gradient_accumulation_steps}): the model and its optimizer state do not fit. Try "
                        "gradient_checkpointing: true, a shorter budget.max_seq_len, a PEFT method (lora) instead of "
                        f"full fine-tuning, or a smaller model. ({error})") from error
    smaller = _smaller_micro_batch(batch)
    factor = batch // smaller
    args.per_device_train_batch_size = smaller
    args.gradient_accumulation_steps *= factor
    trainer._train_batch_size = args.train_batch_size
    trainer.engine.oom_retries += 1
    found = ckpt.last_complete_checkpoint(Path(args.output_dir)) if args.save_strategy != "no" else None
    if found is None:
        if trainer.state.global_step > 0:
            if start is None:
                raise UserError("CUDA ran out of memory after some optimizer steps and before the first checkpoint, "
                                "and the starting weights were not kept; lower batch_size and run again") from error
            start.restore(trainer.model)
        set_seed(args.seed)
    log.warning("CUDA out of memory with a micro-batch of %d: retrying with %d and gradient accumulation %d (the "
                "same %d rows per optimizer step), from %s", batch, smaller, args.gradient_accumulation_steps,
                smaller * args.gradient_accumulation_steps, found.name if found else "the start")
    return found


def run_training(trainer) -> Any:
    """``trainer.train()`` with resume, signal handling and out-of-memory recovery; returns the ``TrainerState``.

    Raises ``TrainingInterrupted`` after SIGINT/SIGTERM (a checkpoint is saved), ``NonFiniteTraining`` on a NaN or
    infinite loss or gradient norm, ``CheckpointDiskFull`` when a checkpoint does not fit on the disk.
    """
    engine: EngineState = trainer.engine
    start = resume_point(trainer)
    snapshot = _StartingWeights(trainer.model) if start is None and _snapshot_wanted(trainer.model) else None
    while True:
        engine.resumed_from = start
        if start is not None:
            log.info("resuming from %s (step %d of an interrupted training)", start.name, ckpt.step_of(start))
        try:
            with stop_on_signals(engine):
                trainer.train(resume_from_checkpoint=str(start) if start is not None else None)
                if engine.stop_signal is not None and engine.stop_checkpoint is None:
                    trainer._save_checkpoint(trainer.model_wrapped, None)  # the signal came after the last step
            break
        except torch.cuda.OutOfMemoryError as e:
            start = _recover_from_oom(trainer, e, snapshot)
    if engine.stop_signal is not None:
        interrupted = TrainingInterrupted(_interrupted_message(trainer, engine))
        interrupted.checkpoint = engine.stop_checkpoint  # type: ignore[attr-defined]
        raise interrupted
    return trainer.state


def _interrupted_message(trainer, engine: EngineState) -> str:
    name = signal.Signals(engine.stop_signal).name
    where = engine.stop_checkpoint or ckpt.last_complete_checkpoint(Path(trainer.args.output_dir))
    saved = f"checkpoint saved in {where}" if where else "no checkpoint could be written, so it will start over"
    return (f"{name}: training stopped at step {trainer.state.global_step} of {trainer.state.max_steps}; {saved}. "
            f"Continue with: lmtailor run --resume {_run_dir_hint(where)}")


def _run_dir_hint(checkpoint: Path | None) -> str:
    """The run directory holding ``checkpoint`` (``RUN/artifacts/<row>/[phase/]checkpoints/checkpoint-N``)."""
    run_dir = RunDir.of_artifact(checkpoint) if checkpoint is not None else None
    return str(run_dir) if run_dir is not None else "RUN_DIR"


def finish_checkpoints(trainer) -> None:
    """After a successful training: the checkpoints are no longer needed (the artifact is saved), remove them."""
    if trainer.args.should_save and trainer.args.save_strategy != "no":
        ckpt.remove_all(Path(trainer.args.output_dir))
