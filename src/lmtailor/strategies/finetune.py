"""Supervised fine-tuning of a model on the task's training rows, by any method of ``training/peft_methods.py``
(full, lora, dora, qlora, ia3, prefix, prompt-tuning, adapter, freeze, or any other PEFT method by name).

Rows are rendered with the same instruction format inference uses, the loss falls only on the answer (by default),
training runs through TRL's ``SFTTrainer`` (decoder-only), ``Seq2SeqTrainer`` (encoder-decoder) or a classifier
``Trainer`` (encoder), and the tuned model then answers the test rows zero-shot with that same format. The artifact
is saved as safetensors: an adapter (``adapter/``) or a whole model (``model/``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from lmtailor.augmentation.augment import AugmentConfig
from lmtailor.augmentation.synthetic import SyntheticConfig
from lmtailor.core.context import RunContext
from lmtailor.core.strategy_output import StrategyOutput
from lmtailor.core.task_spec import TaskSpec
from lmtailor.errors import UserError
from lmtailor.measure.meter import Meter, estimate_flops
from lmtailor.strategies.base import Strategy, StrategyConfig
from lmtailor.strategies.extra_data import extra_data_label, with_extra_rows
from lmtailor.strategies.traits import StrategyTraits, with_extra_data
from lmtailor.training.peft_methods import check_method_settings, finetune_method, method_label
from lmtailor.training.search_space import SearchConfig, check_search

if TYPE_CHECKING:
    from lmtailor.training.dataset import SFTRows

_LORA_FIELDS = ("lora_r", "lora_alpha", "lora_dropout", "target_modules")  # continued pre-training's LoRA knobs


class FinetuneConfig(StrategyConfig):
    """Knobs of a fine-tuning run. Settings of another method (e.g. LoRA knobs with ``method: full``) are an error,
    not silently ignored."""

    name: Literal["finetune"] = Field(description="registered strategy name")
    method: str = Field(
        description="full (every weight), lora, dora, qlora (LoRA on a 4-bit base, CUDA only), ia3, prefix, "
                    "prompt-tuning, adapter (bottleneck adapters), freeze (only the top trainable_layers layers and "
                    "the head), or any other PEFT method by its PEFT name (loha, lokr, vera, oft, boft, adalora, ...) "
                    "with its settings in peft_options; see training/peft_methods.py")
    peft_options: dict[str, Any] = Field(
        default_factory=dict, description="extra settings passed as they are to the method's PEFT config class, e.g. "
                                          "{use_rslora: true} for lora or {r: 8, alpha: 16} for loha")
    num_virtual_tokens: int = Field(
        20, ge=1, description="prefix / prompt-tuning: number of trained virtual tokens")
    trainable_layers: int = Field(
        2, ge=1, description="freeze: how many of the top transformer layers train (with the head and final norm)")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop when the validation loss has not improved for this many evaluations "
                                "(needs eval_strategy epoch or steps); the best checkpoint's weights are kept")
    group_by_length: bool = Field(
        False, description="batch rows of similar length together (less padding, a little less randomness)")
    padding_free: bool | None = Field(
        None, description="decoder-only: concatenate each batch's rows into one sequence without padding; "
                          "position ids restart per row so no row attends to another. Unset: on for decoder-only "
                          "models with batch_size > 1 and a method without virtual tokens, once the loaded model "
                          "is checked to keep rows apart (else padded, with a warning); true: on (an error if the "
                          "check fails); false: each batch padded to its longest row")
    checkpoint_steps: int = Field(
        500, ge=1, description="write a resumable checkpoint every this many optimizer steps (and on SIGINT/SIGTERM); "
                               "`lmtailor run --resume RUN_DIR` continues from the last complete one")
    keep_checkpoints: int = Field(
        1, ge=1, description="how many complete checkpoints to keep (older ones are deleted once a newer one is whole)")
    epochs: float = Field(1.0, gt=0, description="passes over the training rows (fractions allowed)")
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps (overrides epochs)")
    learning_rate: float | None = Field(
        None, gt=0, description="peak AdamW learning rate (default per method and family, e.g. lora 2e-4, full "
                                "5e-5, ia3 3e-3, prompt-tuning 3e-2; sources in training/peft_methods.py)")
    batch_size: int = Field(8, ge=1, description="rows per forward/backward pass")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="passes per optimizer step (effective batch = batch_size x this)")
    warmup_ratio: float = Field(
        0.05, ge=0, lt=1, description="fraction of the steps spent warming the learning rate up linearly")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (the update is scaled by alpha / r)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None, description="modules that get adapters: names, 'all-linear', or unset for PEFT's architecture default")
    with_instruction: bool = Field(
        True, description="show the task instruction (and label list) in training and test prompts; false trains "
                          "and answers on the bare input, a shorter prompt the tuned model no longer needs: cheaper "
                          "to train and to serve")
    completion_only_loss: bool = Field(
        True, description="train on the answer tokens only (false: on the whole prompt too)")
    instruction_format: Literal["chat", "alpaca", "plain"] = Field(
        "chat", description="how rows are laid out for training and for answering: chat (messages through the "
                            "model's chat template, the plain template when it has none), alpaca (### Instruction / "
                            "### Input / ### Response) or plain (INSTRUCTION: ... RESPONSE: ...)")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, ~25% slower")
    train_sizes: list[int] | None = Field(
        None, description="learning curve: one row per training-set size (nested subsets of the training split)")
    eval_strategy: Literal["epoch", "steps", "no"] = Field(
        "epoch", description="when to compute the validation loss: each epoch, every eval_steps steps, or never")
    eval_steps: int | None = Field(
        None, ge=1, description="steps between validation losses (with eval_strategy: steps)")
    logging_steps: int = Field(5, ge=1, description="steps between training-loss log entries")
    augment: AugmentConfig | None = Field(
        None, description="add augmented copies of the training rows (EDA, paraphrase, back-translation); the row "
                          "is labelled e.g. 'LoRA + 4× EDA'")
    synthetic: SyntheticConfig | None = Field(
        None, description="add rows a teacher model writes from the training rows (self-instruct, filtered); the "
                          "row is labelled e.g. 'LoRA + 256 synthetic'")
    scoring: Literal["likelihood", "constrained", "generate"] | None = Field(
        None, description="how test answers are produced (default: likelihood for classification, generate otherwise)")
    search: SearchConfig | None = Field(
        None, description="hyperparameter search (Optuna, TPE, seeded): {trials: 8, metric: validation_loss, "
                          "space: {...}}; trials are scored on the validation rows, the best settings train the "
                          "final model, and the search's time and $ are the row's set-up cost (training/search.py)")

    @field_validator("method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        """An unknown method is reported on the ``method`` key itself (with the valid names)."""
        try:
            finetune_method(name)
        except UserError as e:
            raise ValueError(str(e)) from None
        return name

    @model_validator(mode="after")
    def _check_consistency(self) -> "FinetuneConfig":
        try:  # an unknown method, or settings of another method (lora_r with ia3, trainable_layers with lora)
            check_method_settings(self)
        except UserError as e:
            raise ValueError(str(e)) from None
        if self.eval_strategy == "steps" and self.eval_steps is None:
            raise ValueError("eval_strategy: steps needs eval_steps (e.g. eval_steps: 20)")
        if self.eval_steps is not None and self.eval_strategy != "steps":
            raise ValueError("eval_steps only applies with eval_strategy: steps")
        if self.early_stopping_patience is not None and self.eval_strategy == "no":
            raise ValueError("early_stopping_patience stops on the validation loss: set eval_strategy to epoch or "
                             "steps")
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("target_modules is an empty list; name modules, use 'all-linear', or leave it unset")
        if self.train_sizes is not None and (not self.train_sizes or min(self.train_sizes) < 1):
            raise ValueError("train_sizes must be a non-empty list of positive row counts, e.g. [50, 100, 200]")
        check_search(self)  # a searched setting also set by hand, one the method does not take, ...
        return self


@dataclass
class _Trained:
    """What training leaves behind for measurement, inference and the run record."""

    model: Any
    state: Any  # transformers TrainerState: global_step, epoch, num_input_tokens_seen, log_history
    train: SFTRows
    validation: SFTRows
    trainable: int
    total: int
    artifact_name: str
    artifact: Path
    padding_free: bool = False  # batches were flattened without padding (training/padding_free.py)


class FinetuneStrategy(Strategy):
    """Fine-tune the model on the training rows (by the configured method), then answer the test rows zero-shot.

    Decoder-only models train through TRL's SFT, encoder-decoder models through Seq2SeqTrainer, encoders as
    classifiers with a head over the task's labels: the family is read from the config.
    """

    Config = FinetuneConfig
    config: FinetuneConfig
    TRAITS = StrategyTraits(place="fine-tuning", use="trained", rung="finetune", data=("training rows",))

    def default_label(self) -> str:
        notes = ([] if self.config.with_instruction else ["input only"]) + (
            ["searched"] if self.config.search is not None else [])
        name = method_label(self.config) + (f" ({', '.join(notes)})" if notes else "")
        return name + extra_data_label(self.config.augment, self.config.synthetic)

    def uses_training_data(self) -> bool:
        return True

    def traits(self) -> StrategyTraits:
        return with_extra_data(self.TRAITS, self.config.augment, self.config.synthetic)

    def run(self, ctx: RunContext) -> StrategyOutput:
        from lmtailor.models import family_name_of, load_model

        if not ctx.data.train:
            raise UserError("finetune needs training rows, but the training split is empty; check data.max_train "
                            "and the split sizes")
        family = family_name_of(ctx.model_ref, ctx.runtime.trust_remote_code)
        method = finetune_method(self.config.method)
        method.check(self.config, family, ctx.runtime)  # before any loading: family, device, library
        if family == "encoder":
            if self.config.search is not None:
                raise UserError(f"{self.label()}: search is not implemented for encoder classifiers "
                                f"({ctx.model_ref}); remove search from this row or use a decoder-only model")
            return self._run_encoder(ctx)
        with ctx.meter.phase("load"):
            loaded = load_model(ctx.model_ref, ctx.runtime,
                                quantization_config=method.quantization_config(ctx.runtime))
        return self.tune_and_answer(ctx, loaded.model, loaded.tokenizer)

    def tuned_task(self, task: TaskSpec) -> TaskSpec:
        """The task as the tuned model sees it: the chosen layout, the instruction unless training drops it."""
        task = replace(task, prompt_format=self.config.instruction_format)
        return task if self.config.with_instruction else replace(task, instruction="")

    def tune_and_answer(self, ctx: RunContext, model, tokenizer) -> StrategyOutput:
        """Fine-tune an already loaded decoder-only or encoder-decoder model, then answer the test rows.

        Strategies that prepare the model first (continued pre-training, pre-training from scratch) call this with
        their model, so the fine-tuning phase is the same code and measured the same way as a plain finetune row.
        """
        from lmtailor.inference.predict import predict
        from lmtailor.models import family_name_of
        from lmtailor.training.peft_methods import serve

        family = family_name_of(ctx.model_ref, ctx.runtime.trust_remote_code)
        finetune_method(self.config.method).check(self.config, family, ctx.runtime)
        ctx, extra = with_extra_rows(ctx, self.config.augment, self.config.synthetic, model, tokenizer)
        task = self.tuned_task(ctx.task)
        tuner, search = self, None
        if self.config.search is not None:  # trials on the training rows, scored on validation, metered as set-up
            from lmtailor.training.search import run_search

            with ctx.meter.phase("search"):
                search = run_search(self, ctx, task, model, tokenizer, family)
            tuner = FinetuneStrategy(search.config)
        with ctx.meter.phase("train"):
            trained = tuner.train_once(ctx, task, model, tokenizer, family)
        tuner._measure(ctx.meter, trained)
        details = tuner._details(trained)
        if search is not None:
            details.update(search=search.record(), learning_rate_source="hyperparameter search")
        # Serve as deployed: an adapter that folds into the weights (LoRA, DoRA, IA3, LoHa, ...) is merged, so
        # inference costs what the base model's does; virtual tokens (prefix, prompt tuning) stay a PeftModel.
        model, serving = serve(trained.model, ctx.runtime.dtype)
        self._note_serving(details, serving)
        with ctx.meter.phase("inference"):  # the prompt format the model was tuned on
            predictions, inference = predict(model.eval(), tokenizer, task, ctx.data.test, (),
                                             ctx.budget, ctx.meter, mode=self.config.scoring,
                                             progress_desc=self.label())
        return StrategyOutput(predictions=predictions, artifacts={trained.artifact_name: trained.artifact},
                              details={**details, **extra, "inference": inference},
                              tuned=(model, tokenizer))

    def _run_encoder(self, ctx: RunContext) -> StrategyOutput:
        """An encoder (BERT family) gets a classification head over the task's labels, trained with the body."""
        from lmtailor.models import load_model
        from lmtailor.training.classifier import check_config, predict_classifier, train_classifier
        from lmtailor.training.peft_methods import serve

        if ctx.task.type != "classification" or not ctx.task.labels:
            raise UserError(f"{ctx.model_ref} is an encoder: it can be fine-tuned as a classifier only, but task "
                            f"{ctx.task.name!r} is {ctx.task.type}; use a decoder-only model for this task")
        check_config(self.config)
        method = finetune_method(self.config.method)
        with ctx.meter.phase("load"):
            loaded = load_model(ctx.model_ref, ctx.runtime, head="sequence-classification",
                                num_labels=len(ctx.task.labels),
                                quantization_config=method.quantization_config(ctx.runtime))
        # A classifier cannot write text: paraphrases and synthetic rows need augment.model / synthetic.teacher.
        ctx, extra = with_extra_rows(ctx, self.config.augment, self.config.synthetic)
        with ctx.meter.phase("train"):
            trained = train_classifier(loaded.model, loaded.tokenizer, self.config, ctx.task, ctx.data.train,
                                       ctx.data.validation, ctx.budget, ctx.runtime, ctx.seed, ctx.out_dir)
        self._measure(ctx.meter, trained)
        details = self._details(trained)
        model, serving = serve(trained.model, ctx.runtime.dtype)
        self._note_serving(details, serving)
        with ctx.meter.phase("inference"):
            predictions, inference = predict_classifier(model.eval(), loaded.tokenizer, ctx.task, ctx.data.test,
                                                        ctx.budget, ctx.meter, progress_desc=self.label())
        details = {**details, **extra, "head": "sequence-classification",
                   "labels": list(trained.labels), "inference": inference}
        return StrategyOutput(predictions=predictions, artifacts={trained.artifact_name: trained.artifact},
                              details=details, tuned=(model, loaded.tokenizer))

    def train_once(self, ctx: RunContext, task: TaskSpec, model, tokenizer, family: str,
                   callbacks: tuple | list = ()):
        """One training of a decoder-only or encoder-decoder model with this config (a row's, or a search trial's);
        ``callbacks`` are added to the trainer."""
        if family == "encoder-decoder":
            return self._train_seq2seq(ctx, task, model, tokenizer, callbacks)
        return self._train(ctx, task, model, tokenizer, callbacks)

    def _train_seq2seq(self, ctx: RunContext, task: TaskSpec, model, tokenizer, callbacks=()):
        """T5/BART: Seq2SeqTrainer on (source, target) pairs in the family's own format (training/seq2seq.py)."""
        from lmtailor.training.seq2seq import train_seq2seq

        return train_seq2seq(model, tokenizer, self.config, task, ctx.data.train, ctx.data.validation, ctx.budget,
                             ctx.runtime, ctx.seed, ctx.out_dir, callbacks)

    def _train(self, ctx: RunContext, task: TaskSpec, model, tokenizer, callbacks=()) -> _Trained:
        """Tokenize the rows, train through TRL, finish with a validation loss, save the artifact."""
        from lmtailor.training.common import count_params, train_and_save
        from lmtailor.training.dataset import build_sft_rows
        from lmtailor.training.peft_methods import save_override
        from lmtailor.training.sft import build_trainer, learning_rate

        cfg = self.config
        train = build_sft_rows(tokenizer, task, ctx.data.train, ctx.budget)
        val = build_sft_rows(tokenizer, task, ctx.data.validation, ctx.budget)
        trainer = build_trainer(model, tokenizer, cfg, train.dataset, val.dataset, ctx.runtime, ctx.seed,
                                ctx.out_dir / "checkpoints", ctx.budget.max_seq_len)
        for callback in callbacks:
            trainer.add_callback(callback)
        trainable, total = count_params(trainer.model)
        ctx.log.info("%s: %d training rows, %s of %s parameters trainable, lr %g, %s batches", self.label(),
                     train.rows, f"{trainable:,}", f"{total:,}", learning_rate(cfg),
                     "padding-free" if trainer.args.padding_free else "padded")
        state, name, path = train_and_save(trainer, cfg, tokenizer, ctx.out_dir, **save_override(cfg))
        return _Trained(trainer.model, state, train, val, trainable, total, name, path,
                        padding_free=bool(trainer.args.padding_free))

    def _measure(self, meter: Meter, t: _Trained) -> None:
        tokens = int(t.state.num_input_tokens_seen)  # real (non-padding) tokens over every step actually run
        meter.add_tokens("train", tokens)
        meter.add_examples("train", round(t.state.epoch * t.train.rows))
        meter.set_params(t.trainable, t.total)
        # 6N per token when every weight trains; otherwise the backward still carries activation gradients through
        # the frozen weights (4N + 2T). Freeze tuning stops lower, so "peft" over-counts it: an upper bound.
        kind = {"full": "full", "freeze": "freeze"}.get(self.config.method, "peft")
        meter.add_flops("train", estimate_flops(t.total, tokens, kind, t.trainable))
        meter.add_artifact(t.artifact_name, t.artifact)

    def _details(self, t: _Trained) -> dict[str, Any]:
        from lmtailor.training.common import summarize_log
        from lmtailor.training.sft import learning_rate

        cfg = self.config
        method = finetune_method(cfg.method)
        details = {
            "method": cfg.method, "with_instruction": cfg.with_instruction,
            "learning_rate": getattr(t, "learning_rate", None) or learning_rate(cfg), "steps": t.state.global_step,
            "epochs": t.state.epoch, "effective_batch_size": cfg.batch_size * cfg.gradient_accumulation_steps,
            "train_rows": t.train.rows, "train_tokens": int(t.state.num_input_tokens_seen),
            "train_data": t.train.summary(), "validation_data": t.validation.summary(),
            "trainable_params": t.trainable, "total_params": t.total,
            "trainable_percent": round(100 * t.trainable / t.total, 4) if t.total else None,
            # measured in training/common.py before the optimizer is dropped: what full vs PEFT costs in memory/time
            "optimizer_state_bytes": getattr(t.state, "optimizer_state_bytes", None),
            "seconds_per_step": getattr(t.state, "seconds_per_step", None),
            **method.details(t.model, cfg), **summarize_log(t.state.log_history),
        }
        if cfg.learning_rate is None:
            details["learning_rate_source"] = method.learning_rate_source
        details["padding_free"] = getattr(t, "padding_free", False)  # seq2seq and classifier batches are padded
        if cfg.method == "lora":
            details["lora"] = lora_details(t.model)
        return details

    @staticmethod
    def _note_serving(details: dict[str, Any], serving: str) -> None:
        """Say how the tuned model answered the test rows (merged adapter, PeftModel, plain weights)."""
        details["serving"] = serving
        for key in ("lora", "peft"):
            if isinstance(details.get(key), dict):
                details[key]["inference"] = serving


def lora_details(peft_model) -> dict:
    c = peft_model.peft_config["default"]
    targets = sorted(c.target_modules) if isinstance(c.target_modules, (set, list)) else c.target_modules
    return {"r": c.r, "alpha": c.lora_alpha, "dropout": c.lora_dropout, "target_modules": targets}
