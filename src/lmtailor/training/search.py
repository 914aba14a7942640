"""Hyperparameter search of a fine-tuning row with Optuna: trials trained on the training rows, scored on the
validation rows, the best trial's settings returned for the final training.

Each trial fine-tunes a fresh copy of the loaded model (``copy.deepcopy``: PEFT wraps a model in place) with the
trial's settings, through the finetune strategy's own ``_train``, in a scratch directory removed afterwards. The
trial's context holds the training and validation rows only: the test rows cannot reach a trial. The sampler is
Optuna's TPE seeded with the row's seed, so the same run tries the same settings; every trial trains with the row's
seed too, so the final training with the chosen settings repeats the best trial (exactly, measured, for IA3 and
prompt tuning; a method with dropout, LoRA, ended within 1% of its best trial's validation loss, its random draws
shifted by the trials' extra evaluations). A median pruner stops a trial whose
validation loss, taken ``evaluations_per_epoch`` times an epoch, is worse than the median of earlier trials at the
same step. A trial whose loss turns non-finite is recorded as failed and the search goes on.

``lmtailor run --resume`` of a row that stopped mid-search runs its search again from the first trial (the trials
leave no checkpoints to continue from).
"""

from __future__ import annotations

import copy
import gc
import logging
import math
import shutil
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from lmtailor.core.example import DatasetSplits
from lmtailor.core.training_loop import TrainingLoop
from lmtailor.errors import UserError
from lmtailor.measure.meter import Meter
from lmtailor.tasks.evaluator import evaluate
from lmtailor.training.search_space import INT_SETTINGS, Range, is_set, resolve_space

if TYPE_CHECKING:
    import optuna

    from lmtailor.core.context import RunContext
    from lmtailor.core.task_spec import TaskSpec

log = logging.getLogger("lmtailor")
PRUNER_STARTUP_TRIALS = 2  # complete trials before the median means anything; Optuna's default (5) exceeds small runs


@dataclass
class SearchOutcome:
    """What a search found: the chosen settings, the final config they make, and every trial for the record."""

    chosen: dict[str, Any]
    config: TrainingLoop  # the row's config (a fine-tuning config) with the chosen settings
    trials: list[dict[str, Any]]
    metric: str
    direction: str
    space: dict[str, Any]
    best_trial: int
    settings: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The search for the run record's details (JSON-ready)."""
        return {"metric": self.metric, "direction": self.direction, "space": self.space, "chosen": self.chosen,
                "best_trial": self.best_trial, "trials": self.trials, **self.settings,
                "sampler": "optuna TPESampler (seeded with the row's seed)",
                "final_training": "retrained on the training rows with the chosen settings and the row's seed"}


class PruneOnValidationLoss(TrainerCallback):
    """Report each validation loss to the Optuna trial; stop training when the pruner says so."""

    def __init__(self, trial: "optuna.Trial") -> None:
        self.trial = trial
        self.pruned_at: int | None = None
        self.reported: set[int] = set()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is None or state.global_step in self.reported:
            return
        self.reported.add(state.global_step)
        self.trial.report(float(loss), step=state.global_step)
        if self.trial.should_prune():
            self.pruned_at = state.global_step
            control.should_training_stop = True


def trial_config(cfg: TrainingLoop, params: dict[str, Any]) -> TrainingLoop:
    """The row's config (of its own class) with ``params`` set (``method.<name>`` inside the method block) and no
    search, validated like any config. A searched LoRA rank keeps alpha = 2 r unless alpha is set or searched."""
    values = cfg.model_dump(exclude_unset=True)
    method = dict(values.get("method") or {"name": cfg.method.name})
    for key, value in params.items():
        if key.startswith("method."):
            method[key.removeprefix("method.")] = value
        else:
            values[key] = value
    if "method.r" in params and "method.alpha" not in params and not is_set(cfg, "method.alpha"):
        method["alpha"] = 2 * int(params["method.r"])
    values["method"] = method
    values.pop("search", None)
    return type(cfg).model_validate(values)


def _suggest(trial: "optuna.Trial", space: dict[str, Any]) -> dict[str, Any]:
    params = {}
    for key, dim in space.items():
        if isinstance(dim, Range) and key in INT_SETTINGS:
            params[key] = trial.suggest_int(key, math.ceil(dim.low), math.floor(dim.high), log=dim.log)
        elif isinstance(dim, Range):
            params[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.log)
        else:
            params[key] = trial.suggest_categorical(key, list(dim))
    return params


def _with_evaluation_steps(cfg: TrainingLoop, train_rows: int, per_epoch: int) -> TrainingLoop:
    """The trial config evaluating ``per_epoch`` times an epoch: the points the pruner judges it at."""
    steps_per_epoch = max(1, math.ceil(train_rows / (cfg.batch_size * cfg.gradient_accumulation_steps)))
    every = max(1, steps_per_epoch // per_epoch)
    return cfg.model_copy(update={"eval_strategy": "steps", "eval_steps": every})


def _space_record(space: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.model_dump() if isinstance(v, Range) else list(v)) for k, v in sorted(space.items())}


def _validation_score(ctx: "RunContext", task: "TaskSpec", cfg: TrainingLoop, model,
                      tokenizer) -> tuple[float, bool]:
    """The task's main metric on the validation rows (and whether higher is better), answered by the trial model."""
    from lmtailor.inference.predict import predict
    from lmtailor.training.peft_methods import serve

    model, _ = serve(model, ctx.runtime.dtype)
    # a scratch meter: the search's answering time is in the search phase's wall time, its tokens are not the row's
    # per-request inference cost
    predictions, _ = predict(model.eval(), tokenizer, task, ctx.data.validation, (), ctx.budget, Meter(),
                             mode=cfg.scoring, progress_desc="search: validation")
    result = evaluate(task, ctx.data.validation, predictions)
    metric = next(m for m in result["metrics"] if m["name"] == result["primary_metric"])
    return float(metric["value"]), bool(metric["higher_is_better"])


def run_search(strategy, ctx: "RunContext", task: "TaskSpec", model, tokenizer,
               family: str) -> SearchOutcome:
    """Search the row's settings on its training and validation rows; return the chosen ones and every trial.

    ``strategy``: the fine-tuning strategy of the row; a trial trains through ``type(strategy)(trial
    config).train_once`` (its own code path, so a trial trains exactly as the final training will)."""
    import optuna

    from lmtailor.training.common import summarize_log
    from lmtailor.training.engine import NonFiniteTraining

    cfg = strategy.config
    search = cfg.search
    assert search is not None
    if not ctx.data.validation:
        raise UserError(f"{strategy.label()}: search scores trials on the validation rows, but the validation split "
                        "is empty; set data.max_validation (or the split sizes) so there are some")
    space = resolve_space(cfg, family)
    # By construction, no trial sees a test row: its context holds the training and validation rows only.
    trial_ctx = replace(ctx, data=DatasetSplits(train=list(ctx.data.train), validation=list(ctx.data.validation),
                                                test=[]))
    root = ctx.out_dir / "search"
    shutil.rmtree(root, ignore_errors=True)  # a resumed row searches again from the first trial
    by_score = search.metric == "validation_score"
    direction = {"value": None}
    records: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        started = time.perf_counter()
        params = _suggest(trial, space)
        entry: dict[str, Any] = {"number": trial.number, "params": params}
        records.append(entry)
        trial_cfg = _with_evaluation_steps(trial_config(cfg, params), len(ctx.data.train),
                                           search.evaluations_per_epoch)
        tuner = type(strategy)(trial_cfg)
        pruner = PruneOnValidationLoss(trial)
        copy_of_model = copy.deepcopy(model)
        out = replace(trial_ctx, out_dir=root / f"trial-{trial.number}")
        try:
            trained = tuner.train_once(out, task, copy_of_model, tokenizer, family, callbacks=[pruner])
            entry["steps"] = int(trained.state.global_step)
            val_loss = summarize_log(trained.state.log_history)["val_loss"]
            entry["validation_loss"] = None if val_loss is None else float(val_loss)
            if pruner.pruned_at is not None:
                entry.update(state="pruned", value=entry["validation_loss"])
                raise optuna.TrialPruned(f"validation loss above the median at step {pruner.pruned_at}")
            if by_score:
                value, higher = _validation_score(trial_ctx, task, trial_cfg, trained.model, tokenizer)
                direction["value"] = direction["value"] if direction["value"] is not None else higher
                entry["validation_score"] = value
                value = -value if higher else value  # the study minimizes
            else:
                value = float(val_loss) if val_loss is not None else math.inf
            entry.update(state="complete", value=entry.get("validation_score", value))
            return value
        except NonFiniteTraining as e:
            entry.update(state="failed", value=None, reason=str(e).splitlines()[0])
            raise
        finally:
            entry["seconds"] = round(time.perf_counter() - started, 3)
            del copy_of_model
            shutil.rmtree(out.out_dir, ignore_errors=True)
            gc.collect()
            ctx.log.info("%s: search trial %d %s: %s -> %s", strategy.label(), trial.number, entry.get("state"),
                         _fmt_params(params), entry.get("value"))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=0)
              if search.pruning else optuna.pruners.NopPruner())
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=ctx.seed),
                                pruner=pruner)
    study.optimize(objective, n_trials=search.trials, catch=(NonFiniteTraining,),
                   timeout=search.timeout_minutes * 60 if search.timeout_minutes else None)
    shutil.rmtree(root, ignore_errors=True)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        states = ", ".join(f"trial {r['number']} {r.get('state')}" for r in records)
        raise UserError(f"{strategy.label()}: no search trial finished ({states}); widen or move search.space "
                        "(e.g. lower learning rates), raise search.trials, or set search.pruning: false")
    best = study.best_trial
    chosen = dict(best.params)
    higher = bool(direction["value"]) if by_score else False
    ctx.log.info("%s: search chose %s (trial %d of %d, %s %.4g)", strategy.label(), _fmt_params(chosen),
                 best.number, len(records), search.metric, -best.value if higher else best.value)
    return SearchOutcome(chosen=chosen, config=trial_config(cfg, chosen), trials=records, metric=search.metric,
                         direction="higher" if higher else "lower", space=_space_record(space),
                         best_trial=best.number,
                         settings={"trials_asked": search.trials, "pruning": search.pruning,
                                   "timeout_minutes": search.timeout_minutes,
                                   "evaluations_per_epoch": search.evaluations_per_epoch})


def _fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(params.items()))
