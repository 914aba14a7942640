"""What every fine-tuning backend shares (TRL SFT, Seq2SeqTrainer, the classifier Trainer): the Trainer arguments,
the progress bar, and the end of a run (final validation, save, optimizer state dropped).

One place decides what the library defaults get wrong for honest measurement: precision always follows the
runtime (TRL and ``dtype="auto"`` would switch on bf16, ~12x slower on CPUs that emulate it), no trackers, real
(non-padding) tokens counted for the meter, progress bars on; and the engine's settings (``training/engine.py``):
resumable checkpoints every ``checkpoint_steps``, early stopping on the validation loss, length-grouped batches.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from transformers.trainer_callback import ProgressCallback

from lmtailor.core.training_loop import TrainingLoop
from lmtailor.distributed import on_main
from lmtailor.errors import UserError
from lmtailor.runtime import Runtime
from lmtailor.training.checkpoint import optimizer_state_bytes
from lmtailor.training.engine import as_engine_trainer
from lmtailor.training.recovery import finish_checkpoints, run_training

log = logging.getLogger("lmtailor")


def _checkpoint_args(cfg: TrainingLoop, eval_strategy: str) -> dict[str, Any]:
    """When checkpoints are written and which are kept; with early stopping, one at every evaluation.

    Early stopping keeps the best weights through transformers' ``load_best_model_at_end``, which can only load a
    checkpoint that exists, so it needs the save and evaluation cadences to match (``TrainingArguments`` refuses
    anything else): a checkpoint is then written at each evaluation and ``checkpoint_steps`` is not used. The best
    checkpoint is kept beside the ``keep_checkpoints`` newest.
    """
    patience = cfg.early_stopping_patience
    if patience is None:
        return dict(save_strategy="steps", save_steps=cfg.checkpoint_steps, save_total_limit=cfg.keep_checkpoints)
    if eval_strategy == "no":
        raise UserError("early_stopping_patience stops on the validation loss, but there is none: it needs "
                        "validation rows and eval_strategy epoch or steps (it is 'no' or the validation split is "
                        "empty); set eval_strategy or remove early_stopping_patience")
    log.info("early stopping after %d evaluations without a lower validation loss; a checkpoint is written at every "
             "evaluation (%s) so the best weights can be restored, instead of every checkpoint_steps", patience,
             f"every {cfg.eval_steps} steps" if eval_strategy == "steps" else "every epoch")
    cadence = dict(save_strategy="steps", save_steps=cfg.eval_steps) if eval_strategy == "steps" else dict(
        save_strategy="epoch")
    return dict(**cadence, save_total_limit=cfg.keep_checkpoints, load_best_model_at_end=True,
                metric_for_best_model="eval_loss", greater_is_better=False,
                restore_callback_states_from_checkpoint=True)  # the patience counter survives a resume


def common_training_args(cfg: TrainingLoop, runtime: Runtime, seed: int, output_dir: Path, has_eval: bool,
                         learning_rate: float) -> dict[str, Any]:
    """Keyword arguments for ``TrainingArguments`` and its subclasses (``SFTConfig``, ``Seq2SeqTrainingArguments``)."""
    eval_strategy = cfg.eval_strategy if has_eval else "no"
    on_cpu = runtime.device == "cpu"
    return dict(
        output_dir=str(output_dir),
        seed=seed,
        data_seed=seed,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps if cfg.max_steps is not None else -1,
        learning_rate=learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        warmup_steps=cfg.warmup_ratio,  # transformers 5 dropped warmup_ratio: a float < 1 here is a ratio
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=runtime.precision == "bf16",
        fp16=runtime.precision == "fp16",
        use_cpu=on_cpu,
        # TRL defaults to gradient checkpointing (saves memory, costs ~20-30% time): off unless asked for. Set under
        # its transformers-5 name, which also keeps the deprecated ``gradient_checkpointing`` alias from warning.
        activation_checkpointing=cfg.gradient_checkpointing,
        eval_strategy=eval_strategy,
        eval_steps=cfg.eval_steps if eval_strategy == "steps" else None,
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        logging_first_step=True,  # the loss before learning anything: the baseline the log is read against
        include_num_input_tokens_seen="non_padding",  # real tokens trained on, for the meter and the FLOP estimate
        **_checkpoint_args(cfg, eval_strategy),  # resumable checkpoints; the artifact itself is saved by the strategy
        # Rows of similar length batched together (less padding); the engine draws the order from (seed, epoch).
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        report_to=[],
        disable_tqdm=False,
        dataloader_num_workers=0,  # rows are tokenized in memory: worker processes would only compete for the cores
        dataloader_pin_memory=not on_cpu,
    )


class LossInBarProgress(ProgressCallback):
    """Transformers' progress bar (rate, ETA), with the latest losses on the bar instead of a printed dict per log.

    The full log still reaches the run record through ``trainer.state.log_history`` and the run log via our logger.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        shown = {k: f"{logs[k]:.4g}" for k in ("loss", "eval_loss") if isinstance(logs.get(k), (int, float))}
        if shown and self.training_bar is not None:
            self.training_bar.set_postfix(shown, refresh=False)
        if shown:
            log.info("step %d: %s", state.global_step, ", ".join(f"{k} {v}" for k, v in shown.items()))


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameters; shared (tied) tensors are counted once."""
    params = list(model.parameters())  # parameters() yields each shared tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def use_loss_bar(trainer):
    """Swap the Trainer's progress bar for ``LossInBarProgress``; return the trainer."""
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(LossInBarProgress())
    return trainer


def _save_pretrained(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)  # safetensors is the default of both PEFT and Transformers
    tokenizer.save_pretrained(path)
    return path


def train_and_save(trainer, cfg: TrainingLoop, tokenizer, out_dir: Path, artifact_name: str,
                   save: Callable[[Any, Any, Path], Path] = _save_pretrained) -> tuple[Any, str, Path]:
    """Train (resuming from the last complete checkpoint, if any); end with a validation score; save the adapter or
    model as ``out_dir/artifact_name`` (the method's artifact kind); drop the optimizer state and the checkpoints.

    Returns (trainer state, artifact name, artifact path). The state also carries ``optimizer_state_bytes`` (the
    optimizer's tensors, measured before they are dropped) and ``seconds_per_step`` (mean per optimizer step, this
    process). ``max_steps`` can end training mid-epoch, so a final evaluation runs unless the last step already had
    one on the weights being saved (early stopping restores the best weights: they are evaluated again).
    Raises ``TrainingInterrupted`` after SIGINT/SIGTERM, with a checkpoint saved (``training/recovery.py``).
    """
    from transformers import EarlyStoppingCallback

    trainer = as_engine_trainer(trainer)
    has_early_stopping = any(isinstance(cb, EarlyStoppingCallback) for cb in trainer.callback_handler.callbacks)
    if cfg.early_stopping_patience is not None and not has_early_stopping:
        trainer.add_callback(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    state = run_training(trainer)
    best = state.best_model_checkpoint if trainer.args.load_best_model_at_end else None
    restored_best = best is not None and state.best_global_step != state.global_step
    if restored_best:
        log.info("early stopping: kept the weights of step %d (validation loss %.4g)", state.best_global_step,
                 state.best_metric)
    evaluated = any("eval_loss" in e and e.get("step") == state.global_step for e in state.log_history)
    if trainer.eval_dataset is not None and cfg.eval_strategy != "no" and (restored_best or not evaluated):
        trainer.evaluate()
    name = artifact_name
    # Only the main process writes the artifact; the others get its path or its error (on_main), so none waits at a
    # later collective for a main process that failed to save.
    path = on_main(lambda: save(trainer.model, tokenizer, Path(out_dir) / name))
    state.optimizer_state_bytes = optimizer_state_bytes(trainer.optimizer)
    state.seconds_per_step = trainer.engine.seconds_per_step
    # The optimizer state (2x the trainable weights) is not needed for inference; the model and the log are.
    trainer.optimizer = trainer.lr_scheduler = None
    trainer.accelerator.free_memory()
    finish_checkpoints(trainer)  # the artifact is saved: the checkpoints have done their job
    return state, name, path


def summarize_log(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """Split the Trainer's ``log_history`` into the training-loss log, the validation log and the final summary."""
    train_log, eval_log, summary = [], [], {}
    for entry in log_history:
        if "loss" in entry:
            train_log.append({k: entry[k] for k in ("step", "epoch", "loss", "learning_rate", "grad_norm",
                                                    "mean_token_accuracy") if k in entry})
        elif "eval_loss" in entry:
            eval_log.append({k: entry[k] for k in ("step", "epoch", "eval_loss", "eval_mean_token_accuracy",
                                                   "eval_accuracy")
                             if k in entry})
        elif "train_runtime" in entry:
            summary = entry
    return {
        "train_log": train_log,
        "eval_log": eval_log,
        "first_train_loss": train_log[0]["loss"] if train_log else None,
        "last_train_loss": train_log[-1]["loss"] if train_log else None,
        "mean_train_loss": summary.get("train_loss"),
        "val_loss": eval_log[-1]["eval_loss"] if eval_log else None,
        "train_runtime_s": summary.get("train_runtime"),
    }
