"""The training engine every fine-tuning backend shares: Hugging Face's Trainer loop made fault tolerant.

``engine_trainer_class(base)`` turns a Trainer class (TRL's ``SFTTrainer``, ``Seq2SeqTrainer``, ``Trainer``) into
one that

- writes its checkpoints atomically, without pickles, with a manifest written last (``training/checkpoint.py``),
  and reads them back the same way; a resumed run continues the same data order, RNG streams and log sums, so it
  ends where an uninterrupted run ends;
- stops at the first optimizer step whose loss or gradient norm is not finite (``torch.isfinite``, not a threshold),
  naming the step, the value and what to try;
- on SIGINT/SIGTERM (while ``recovery.run_training`` runs), saves a checkpoint at the end of the current step and stops;
- batches rows of similar length with an order fixed by the seed and the epoch (``group_by_length``), so resuming
  in a later epoch sees the same batches;
- times every optimizer step (``seconds_per_step`` for the report).

The loop around ``trainer.train()`` (resume, signal handlers, out-of-memory recovery) is ``training/recovery.py``.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.trainer_pt_utils import LengthGroupedSampler

from lmtailor import distributed
from lmtailor.errors import UserError
from lmtailor.models.safe_weights import check_safe_weights
from lmtailor.training import checkpoint as ckpt
from lmtailor.training.checkpoint_size import checkpoint_size

log = logging.getLogger("lmtailor")

# Counters some trainers keep beside the TrainerState (TRL's token count, the pre-training corpus tokens).
_EXTRA_COUNTERS = ("_total_train_tokens", "corpus_tokens_seen")


class NonFiniteTraining(UserError):
    """The loss or gradient norm of an optimizer step was NaN or infinite; training stopped before that update."""


class CheckpointDiskFull(UserError):
    """The disk filled up while a checkpoint was written; the scratch copy is gone, earlier checkpoints are intact."""


@dataclass
class EngineState:
    """What the engine tracks for one trainer beside the Trainer's own state."""

    stop_signal: int | None = None  # set by the SIGINT/SIGTERM handler
    stop_checkpoint: Path | None = None  # the checkpoint written because of it
    resumed_from: Path | None = None
    step_seconds: list[float] = field(default_factory=list)
    step_started: float | None = None
    micro_losses: list[torch.Tensor] = field(default_factory=list)
    oom_retries: int = 0  # times the micro-batch was shrunk after CUDA ran out of memory
    warned_sharded: bool = False

    @property
    def seconds_per_step(self) -> float | None:
        return sum(self.step_seconds) / len(self.step_seconds) if self.step_seconds else None


class EngineCallback(TrainerCallback):
    """Step timing, the stop request of a signal, and the log sums restored on resume."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.save_at_epoch_end = False

    def on_train_begin(self, args, state, control, **kwargs):
        engine = self.trainer.engine
        if engine.resumed_from is not None:
            self.trainer._restore_loop_state(engine.resumed_from)

    def on_epoch_begin(self, args, state, control, **kwargs):
        # A dataset that draws per-epoch randomness (pre-training noise) is told the epoch here: accelerate does it
        # for a fresh data loader but not for the one that skips the batches a resumed run already trained on.
        dataset = self.trainer.train_dataset
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(int(state.epoch or 0))

    def on_step_begin(self, args, state, control, **kwargs):
        self.trainer.engine.step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        engine = self.trainer.engine
        if engine.step_started is not None:
            engine.step_seconds.append(time.perf_counter() - engine.step_started)
            engine.step_started = None
        if self.trainer._stop_requested():
            control.should_save = control.should_training_stop = True
        elif state.global_step >= state.max_steps and not args.load_best_model_at_end:
            # Transformers saves at the last step; train_and_save writes the artifact right after, and the
            # checkpoints are deleted then: a full checkpoint here would be written only to be thrown away.
            control.should_save = False
        if control.should_save and args.eval_strategy == "epoch" and float(state.epoch or 0).is_integer():
            # The last step of an epoch: its evaluation comes after this step's save, so a run resumed from this
            # checkpoint would never have it. Save after it instead (on_epoch_end), as part of the epoch.
            control.should_save, self.save_at_epoch_end = False, True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.save_at_epoch_end:
            control.should_save, self.save_at_epoch_end = True, False
        return control


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Transformers' length-grouped order, drawn from a generator seeded by (seed, epoch) instead of the global RNG:
    the same batches in every run with that seed, whether it started in this epoch or resumed in it."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


def _is_peft(model) -> bool:
    return getattr(model, "peft_config", None) is not None and hasattr(model, "active_adapter")


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


class EngineMixin:
    """Checkpoint save/load hooks, finiteness checks and timing; mixed in front of a Trainer class."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.engine = EngineState()
        self.add_callback(EngineCallback(self))

    # --- stop requests ------------------------------------------------------------------------------------------

    def _stop_requested(self) -> bool:
        """Whether any process got SIGINT/SIGTERM: all processes must agree, or one would wait forever for another."""
        wanted = self.engine.stop_signal is not None
        if self.args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([int(wanted)], device=self.args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            wanted = bool(flag.item())
        return wanted

    # --- finiteness ---------------------------------------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.engine.micro_losses.append(loss.detach())  # checked once per optimizer step: one device sync, not many
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm)
        self._check_finite(grad_norm)
        return grad_norm

    def _check_finite(self, grad_norm) -> None:
        """Stop before ``optimizer.step()`` when this step's loss or gradient norm is NaN or infinite."""
        losses, self.engine.micro_losses = self.engine.micro_losses, []
        values = [torch.stack([v.float().reshape(()) for v in losses]).sum()] if losses else []
        if values and distributed.is_distributed():
            # every process must take the same decision (and word it the same): check the loss summed over them;
            # a NaN on any one makes the sum NaN. The gradient norm is already the synchronised gradients'.
            values = [torch.tensor(distributed.all_reduce_sum(float(values[0])), dtype=torch.float32)]
        # With fp16 loss scaling an infinite gradient norm is routine: the scaler skips that step and lowers the scale.
        check_norm = grad_norm is not None and getattr(self.accelerator, "scaler", None) is None
        if check_norm:
            values.append(torch.as_tensor(grad_norm, dtype=torch.float32, device=values[0].device if values else None))
        if not values or bool(torch.isfinite(torch.stack([v.reshape(()) for v in values])).all()):
            return
        loss = float(values[0]) if losses else None
        norm = float(grad_norm) if check_norm else None
        raise NonFiniteTraining(self._non_finite_message(loss, norm))

    def _non_finite_message(self, loss: float | None, norm: float | None) -> str:
        args, step = self.args, self.state.global_step + 1
        what = [f"{name} {value}" for name, value in (("loss", loss), ("gradient norm", norm))
                if value is not None and not math.isfinite(value)]
        precision = "bf16" if args.bf16 else ("fp16" if args.fp16 else "fp32")
        last = ckpt.last_complete_checkpoint(Path(args.output_dir))
        return (f"training stopped at optimizer step {step} (epoch {self.state.epoch or 0:.2f}): the "
                f"{' and the '.join(what) or 'loss'} is not a finite number, and the update would have corrupted the "
                f"weights. Try: a lower learning_rate (now {args.learning_rate:g}); precision: fp32 (now {precision}; "
                f"fp16 overflows easily); a lower max_grad_norm (now {args.max_grad_norm:g}); and check the training "
                "rows around this step for empty, extremely long or malformed texts. "
                + (f"The last complete checkpoint is {last}." if last else "No checkpoint was written before it."))

    def _run_epoch(self, *args, **kwargs):
        if self.state.global_step >= self.state.max_steps:
            # Resumed from a checkpoint of the last step (a signal came at the very end): nothing is left to train,
            # and the Trainer would otherwise run the rest of that epoch's batches past max_steps.
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    # --- data order ---------------------------------------------------------------------------------------------

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochSeededLengthGroupedSampler(sampler.batch_size, list(sampler.lengths), seed)
        return sampler

    # --- saving -------------------------------------------------------------------------------------------------

    def _save_checkpoint(self, model, trial) -> None:
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            if not self.engine.warned_sharded:
                log.warning("no checkpoint written: under DeepSpeed/FSDP the sharded states are written by those "
                            "libraries with pickle, which lmtailor does not write or load; the run cannot resume")
                self.engine.warned_sharded = True
            return
        self.store_flos()
        run_dir = Path(self._get_output_dir(trial=trial))
        step = self.state.global_step
        final, temp = run_dir / ckpt.checkpoint_name(step), ckpt.temp_dir_for(run_dir, step)
        main = self.args.should_save
        if main:
            shutil.rmtree(temp, ignore_errors=True)
            temp.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        # No barrier inside a try: a process whose write failed would skip it and leave the others waiting until
        # the timeout. Each phase ends with every process telling the others whether it failed (a sum: 0 = none).
        failure: BaseException | None = None
        try:
            self._write_checkpoint(temp, run_dir, step)
        except BaseException as e:  # noqa: BLE001 - re-raised below, after the other processes know
            failure = e
        failed = distributed.all_reduce_sum(int(failure is not None))
        if not failed and main:
            try:
                ckpt.write_manifest(temp, step)  # last: the completion marker
                ckpt.publish(temp, final)
            except BaseException as e:  # noqa: BLE001 - as above
                failure = e
            failed = int(failure is not None)
        failed = distributed.broadcast_object(failed)
        if failed:
            if main:  # never leave half a checkpoint behind; the earlier complete ones are untouched
                shutil.rmtree(temp, ignore_errors=True)
            if failure is None:
                raise UserError(f"checkpoint {step} in {run_dir} was not written: another process failed while "
                                "writing it (its error is in the run log); the previous checkpoint is intact")
            if isinstance(failure, OSError) and failure.errno == errno.ENOSPC:
                raise CheckpointDiskFull(self._disk_full_message(run_dir, step)) from failure
            raise failure
        self.accelerator.wait_for_everyone()
        if self.engine.stop_signal is not None:
            self.engine.stop_checkpoint = final
        if main:
            log.info("checkpoint saved: %s", final)
            best = [self.state.best_model_checkpoint] if self.state.best_model_checkpoint else []
            for path in ckpt.rotate(run_dir, max(1, self.args.save_total_limit or 1), protect=best):
                log.info("deleted older checkpoint %s (keep_checkpoints %s)", path.name, self.args.save_total_limit)

    def _write_checkpoint(self, temp: Path, run_dir: Path, step: int) -> None:
        """Every file of the checkpoint but the manifest (the model and optimizer by the main process only)."""
        if self.state.best_global_step:
            best = run_dir / ckpt.checkpoint_name(self.state.best_global_step)
            if self.state.best_global_step == step or best.is_dir():
                self.state.best_model_checkpoint = str(best)
        if self.args.should_save:
            self.accelerator.unwrap_model(self.model).save_pretrained(temp)  # safetensors + JSON config
            ckpt.save_optimizer(temp, self.optimizer)
            ckpt.save_json_state(temp / ckpt.SCHEDULER_JSON, self.lr_scheduler.state_dict())
            scaler = getattr(self.accelerator, "scaler", None)
            if scaler is not None:
                ckpt.save_json_state(temp / ckpt.SCALER_JSON, scaler.state_dict())
            (temp / ckpt.TRAINING_ARGS).write_text(json.dumps(self._args_record(), indent=1), encoding="utf-8")
        ckpt.save_state(temp, f"process-{self.args.process_index}", {"rng": ckpt.rng_state(),
                                                                      "loop": self._loop_state()})
        if self.args.should_save:
            for cb in [c for c in self.callback_handler.callbacks + [self.control] if isinstance(c, ExportableState)]:
                name = cb.__class__.__name__
                if isinstance(self.state.stateful_callbacks.get(name), list):
                    self.state.stateful_callbacks[name].append(cb.state())
                else:
                    self.state.stateful_callbacks[name] = cb.state()
            self.state.save_to_json(str(temp / ckpt.TRAINER_STATE))

    def _args_record(self) -> dict:
        record = json.loads(self.args.to_json_string())
        record["lmtailor"] = {"train_rows": len(self.train_dataset) if self.train_dataset is not None else None,
                              "effective_batch": self.args.per_device_train_batch_size
                              * self.args.gradient_accumulation_steps * max(1, self.args.world_size)}
        return record

    def _loop_state(self) -> dict:
        """The training loop's running sums between log entries, so a resumed run logs what an uninterrupted one
        logs (the Trainer would restart them at zero)."""
        state = {
            "tr_loss": float(self._tr_loss) if hasattr(self, "_tr_loss") else 0.0,
            "total_loss_scalar": getattr(self, "_total_loss_scalar", 0.0),
            "globalstep_last_logged": getattr(self, "_globalstep_last_logged", self.state.global_step),
            "initial_global_step": getattr(self, "_initial_global_step", 0),
            "initial_num_input_tokens_seen": int(getattr(self, "_initial_num_input_tokens_seen", 0)),
            "counters": {k: getattr(self, k) for k in _EXTRA_COUNTERS if isinstance(getattr(self, k, None), int)},
        }
        metrics = getattr(self, "_metrics", None)  # TRL's per-log averages (token accuracy, entropy)
        if isinstance(metrics, dict) and "train" in metrics:
            state["trl_train_metrics"] = {k: [float(x) for x in v] for k, v in metrics["train"].items()}
        return state

    def _restore_loop_state(self, checkpoint: Path) -> None:
        stem = f"process-{self.args.process_index}"
        if not ckpt.has_state(checkpoint, stem):
            return
        loop = ckpt.load_state(checkpoint, stem)["loop"]
        self._tr_loss = torch.tensor(loop["tr_loss"], device=self.args.device)
        self._total_loss_scalar = loop["total_loss_scalar"]
        self._globalstep_last_logged = loop["globalstep_last_logged"]
        self._initial_global_step = loop["initial_global_step"]
        self._initial_num_input_tokens_seen = loop["initial_num_input_tokens_seen"]
        for key, value in loop["counters"].items():
            setattr(self, key, value)
        if "trl_train_metrics" in loop and isinstance(getattr(self, "_metrics", None), dict):
            self._metrics["train"].clear()
            self._metrics["train"].update(loop["trl_train_metrics"])

    def _disk_full_message(self, run_dir: Path, step: int) -> str:
        peft = _is_peft(self.accelerator.unwrap_model(self.model))
        size = checkpoint_size(self, run_dir, peft)  # every file the checkpoint writes, in whole disk blocks
        free = shutil.disk_usage(run_dir).free if run_dir.exists() else 0
        previous = ckpt.complete_checkpoints(run_dir)
        kept = (f"the previous checkpoint {previous[-1].name} is intact" if previous
                else "there is no earlier checkpoint")
        parts = (f"{'adapter' if peft else 'model'} {_human_bytes(size.bytes('weights'))} + optimizer state "
                 f"{_human_bytes(size.bytes('optimizer'))} + RNG, trainer and scheduler state, config and manifest "
                 f"{_human_bytes(size.bytes() - size.bytes('weights') - size.bytes('optimizer'))}"
                 + (f", in {_human_bytes(size.block)} disk blocks" if size.block > 1 else ""))
        return (f"no space left on the device while writing the checkpoint of step {step} to {run_dir}: a checkpoint "
                f"needs about {_human_bytes(size.on_disk())} ({parts}) and {_human_bytes(free)} is free. The partial "
                f"checkpoint was removed and {kept}. Free some space (or put the run on a larger disk), lower "
                "keep_checkpoints or raise checkpoint_steps, then continue with `lmtailor run --resume RUN_DIR`.")

    # --- loading ------------------------------------------------------------------------------------------------

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        check_safe_weights(resume_from_checkpoint, "checkpoint")  # before transformers' fallback to a .bin
        model = model if model is not None else self.model
        adapter = Path(resume_from_checkpoint) / "adapter_model.safetensors"
        if _is_peft(model) and adapter.is_file():
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            result = set_peft_model_state_dict(model, load_file(str(adapter), device="cpu"),
                                               adapter_name=model.active_adapter)
            if getattr(result, "unexpected_keys", None):
                raise UserError(f"{resume_from_checkpoint} holds adapter weights this model does not have "
                                f"({', '.join(result.unexpected_keys[:3])}...): it was written by another setup; "
                                f"delete {Path(resume_from_checkpoint).parent} to start this training over")
            return None
        return super()._load_from_checkpoint(resume_from_checkpoint, model)  # safetensors model weights

    def _load_best_model(self) -> None:
        # The same safetensors loading as a resume: PEFT's own state-dict loader for adapters (transformers' path
        # through load_adapter fails for prompt-learning methods), the model's weights otherwise.
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_best_model()
        log.info("loading the best checkpoint %s (validation loss %s)", self.state.best_model_checkpoint,
                 self.state.best_metric)
        self._load_from_checkpoint(self.state.best_model_checkpoint)
        return None

    def _load_optimizer_and_scheduler(self, checkpoint):
        if checkpoint is None or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_optimizer_and_scheduler(checkpoint)
        if not ckpt.has_state(checkpoint, Path(ckpt.OPTIMIZER_JSON).stem):
            raise UserError(f"{checkpoint} has no optimizer state (optimizer.json); it is not an lmtailor checkpoint. "
                            f"Delete {Path(checkpoint).parent} to start this training over")
        self.optimizer.load_state_dict(ckpt.load_optimizer_state(checkpoint))
        self.lr_scheduler.load_state_dict(ckpt.load_json_state(Path(checkpoint) / ckpt.SCHEDULER_JSON))

    def _load_scaler(self, checkpoint):
        scaler = getattr(self.accelerator, "scaler", None)
        if checkpoint is not None and scaler is not None and (Path(checkpoint) / ckpt.SCALER_JSON).is_file():
            scaler.load_state_dict(ckpt.load_json_state(Path(checkpoint) / ckpt.SCALER_JSON))

    def _load_rng_state(self, checkpoint):
        if checkpoint is None:
            return
        stem = f"process-{self.args.process_index}"
        if not ckpt.has_state(checkpoint, stem):
            log.warning("%s has no RNG state for process %d (written with fewer processes?): dropout and sampling "
                        "after the resume will differ from an uninterrupted run", checkpoint, self.args.process_index)
            return
        ckpt.set_rng_state(ckpt.load_state(checkpoint, stem)["rng"])


@functools.lru_cache(maxsize=None)
def engine_trainer_class(base: type) -> type:
    """The Trainer class to instantiate in place of ``base`` (SFTTrainer, Seq2SeqTrainer, Trainer)."""
    if issubclass(base, EngineMixin):
        return base
    return type(f"Engine{base.__name__}", (EngineMixin, base), {"__doc__": f"{base.__name__} with lmtailor's "
                                                                             "checkpoints and fault handling."})


def as_engine_trainer(trainer):
    """``trainer`` itself when built from ``engine_trainer_class``; a trainer built from a plain Trainer class is
    given the engine's class in place (same instance, same state), so no training runs without it."""
    if not isinstance(trainer, EngineMixin):
        trainer.__class__ = engine_trainer_class(type(trainer))
        trainer.engine = EngineState()
        trainer.add_callback(EngineCallback(trainer))
    return trainer
