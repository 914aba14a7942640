"""Supervised fine-tuning of a model on the task's training rows, by any method of ``training/peft_methods.py``
(full, lora, dora, qlora, ia3, prefix, prompt-tuning, adapter, freeze, or any other PEFT method by name).

Rows are rendered with the same instruction format inference uses, the loss falls only on the answer (by default),
training runs through TRL's ``SFTTrainer`` (decoder-only), ``Seq2SeqTrainer`` (encoder-decoder) or a classifier
``Trainer`` (encoder), and the tuned model then answers the test rows zero-shot with that same format. The artifact
is saved as safetensors: an adapter (``adapter/``) or a whole model (``model/``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from pydantic import Field, model_validator

from lmtailor.augmentation.augment import AugmentConfig
from lmtailor.augmentation.synthetic import SyntheticConfig
from lmtailor.core.context import RunContext
from lmtailor.core.strategy_output import StrategyOutput
from lmtailor.core.task_spec import TaskSpec
from lmtailor.core.training_loop import TrainingLoop
from lmtailor.errors import UserError
from lmtailor.measure.meter import Meter, estimate_flops
from lmtailor.strategies.base import Strategy, StrategyConfig
from lmtailor.strategies.extra_data import extra_data_label, with_extra_rows
from lmtailor.strategies.traits import StrategyTraits, with_extra_data
from lmtailor.training.method_kinds import lora_details
from lmtailor.training.method_field import MethodField, NestedMethod
from lmtailor.training.peft_methods import check_method, check_settings, finetune_method, method_label
from lmtailor.training.search_space import SearchConfig, check_search
from lmtailor.training.trained import Trained


class FinetuneConfig(StrategyConfig, TrainingLoop, NestedMethod):
    """Knobs of a fine-tuning run: the training loop (``core/training_loop.py``), the method with its own settings
    (``method: {name: lora, r: 16}``, ``training/method_settings.py``), the prompt layout and extra data. The flat
    spelling of earlier versions (``method: lora`` with ``lora_r: 16`` beside it) is read as the nested one."""

    name: Literal["finetune"] = Field(description="registered strategy name")
    method: MethodField = Field(
        description="the method and its settings, e.g. {name: lora, r: 16, alpha: 32}: full (every weight), lora, "
                    "dora, qlora (LoRA on a 4-bit base, CUDA only), ia3, prefix, prompt-tuning, adapter (bottleneck "
                    "adapters), freeze (only the top trainable_layers layers and the head), or any other PEFT method "
                    "by its PEFT name (loha, lokr, vera, oft, boft, adalora, ...) with its settings in peft_options; "
                    "a bare name takes the method's defaults; see training/method_settings.py")
    with_instruction: bool = Field(
        True, description="show the task instruction (and label list) in training and test prompts; false trains "
                          "and answers on the bare input, a shorter prompt the tuned model no longer needs: cheaper "
                          "to train and to serve")
    instruction_format: Literal["chat", "alpaca", "plain"] = Field(
        "chat", description="how rows are laid out for training and for answering: chat (messages through the "
                            "model's chat template, the plain template when it has none), alpaca (### Instruction / "
                            "### Input / ### Response) or plain (INSTRUCTION: ... RESPONSE: ...)")
    train_sizes: list[int] | None = Field(
        None, description="learning curve: one row per training-set size (nested subsets of the training split)")
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

    @model_validator(mode="after")
    def _check_consistency(self) -> "FinetuneConfig":
        try:  # peft_options the method's PEFT config lacks, padding_free with virtual tokens, ...
            check_settings(self.method, self.padding_free)
        except UserError as e:
            raise ValueError(str(e)) from None
        if self.train_sizes is not None and (not self.train_sizes or min(self.train_sizes) < 1):
            raise ValueError("train_sizes must be a non-empty list of positive row counts, e.g. [50, 100, 200]")
        check_search(self)  # a searched setting also set by hand, one the method does not take, ...
        return self


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
        name = method_label(self.config.method) + (f" ({', '.join(notes)})" if notes else "")
        return name + extra_data_label(self.config.augment, self.config.synthetic)

    def uses_training_data(self) -> bool:
        return True

    def traits(self) -> StrategyTraits:
        return with_extra_data(self.TRAITS, self.config.augment, self.config.synthetic)

    def run(self, ctx: RunContext) -> StrategyOutput:
        from lmtailor.models import load_model
        from lmtailor.models.loading import adapter_of

        if not ctx.data.train:
            raise UserError("finetune needs training rows, but the training split is empty; check data.max_train "
                            "and the split sizes")
        adapter = adapter_of(ctx.model_ref, ctx.runtime.trust_remote_code)
        method = finetune_method(self.config.method.name)
        check_method(self.config.method, adapter.name, ctx.runtime, self.config.padding_free)  # before any loading
        if adapter.trains_with == "classifier":
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
        check_method(self.config.method, family, ctx.runtime, self.config.padding_free)
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
        method = finetune_method(self.config.method.name)
        with ctx.meter.phase("load"):
            loaded = load_model(ctx.model_ref, ctx.runtime, head="sequence-classification",
                                num_labels=len(ctx.task.labels),
                                quantization_config=method.quantization_config(ctx.runtime))
        # A classifier cannot write text: paraphrases and synthetic rows need augment.model / synthetic.teacher.
        ctx, extra = with_extra_rows(ctx, self.config.augment, self.config.synthetic)
        with ctx.meter.phase("train"):
            trained = train_classifier(loaded.model, loaded.tokenizer, self.config, self.config.method, ctx.task,
                                       ctx.data.train, ctx.data.validation, ctx.budget, ctx.runtime, ctx.seed,
                                       ctx.out_dir)
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
        from lmtailor.models.families import family_of  # lmtailor.models loads torch: not at import time

        if family_of(family).trains_with == "seq2seq":
            return self._train_seq2seq(ctx, task, model, tokenizer, callbacks)
        return self._train(ctx, task, model, tokenizer, callbacks)

    def _train_seq2seq(self, ctx: RunContext, task: TaskSpec, model, tokenizer, callbacks=()):
        """T5/BART: Seq2SeqTrainer on (source, target) pairs in the family's own format (training/seq2seq.py)."""
        from lmtailor.training.seq2seq import train_seq2seq

        return train_seq2seq(model, tokenizer, self.config, self.config.method, task, ctx.data.train,
                             ctx.data.validation, ctx.budget, ctx.runtime, ctx.seed, ctx.out_dir, callbacks)

    def _train(self, ctx: RunContext, task: TaskSpec, model, tokenizer, callbacks=()) -> Trained:
        """Tokenize the rows, train through TRL, finish with a validation loss, save the artifact."""
        from lmtailor.training.common import count_params, train_and_save
        from lmtailor.training.dataset import build_sft_rows
        from lmtailor.training.peft_methods import save_override
        from lmtailor.training.sft import build_trainer, learning_rate

        cfg = self.config
        train = build_sft_rows(tokenizer, task, ctx.data.train, ctx.budget)
        val = build_sft_rows(tokenizer, task, ctx.data.validation, ctx.budget)
        trainer = build_trainer(model, tokenizer, cfg, cfg.method, train.dataset, val.dataset, ctx.runtime, ctx.seed,
                                ctx.out_dir / "checkpoints", ctx.budget.max_seq_len)
        for callback in callbacks:
            trainer.add_callback(callback)
        trainable, total = count_params(trainer.model)
        ctx.log.info("%s: %d training rows, %s of %s parameters trainable, lr %g, %s batches", self.label(),
                     train.rows, f"{trainable:,}", f"{total:,}", learning_rate(cfg, cfg.method),
                     "padding-free" if trainer.args.padding_free else "padded")
        state, name, path = train_and_save(trainer, cfg, tokenizer, ctx.out_dir,
                                           finetune_method(cfg.method.name).artifact_kind, **save_override(cfg.method))
        return Trained(trainer.model, state, train, val, trainable, total, name, path,
                       learning_rate=learning_rate(cfg, cfg.method), padding_free=bool(trainer.args.padding_free))

    def _measure(self, meter: Meter, t: Trained) -> None:
        tokens = int(t.state.num_input_tokens_seen)  # real (non-padding) tokens over every step actually run
        meter.add_tokens("train", tokens)
        meter.add_examples("train", round(t.state.epoch * t.train.rows))
        meter.set_params(t.trainable, t.total)
        # the method's kind: 6N per token when every weight trains; otherwise the backward still carries activation
        # gradients through the frozen weights (4N + 2T)
        kind = finetune_method(self.config.method.name).flops_kind
        meter.add_flops("train", estimate_flops(t.total, tokens, kind, t.trainable))
        meter.add_artifact(t.artifact_name, t.artifact)

    def _details(self, t: Trained) -> dict[str, Any]:
        from lmtailor.training.common import summarize_log

        cfg = self.config
        method = finetune_method(cfg.method.name)
        details = {
            "method": cfg.method.name, "with_instruction": cfg.with_instruction,
            "learning_rate": t.learning_rate, "steps": t.state.global_step,
            "epochs": t.state.epoch, "effective_batch_size": cfg.batch_size * cfg.gradient_accumulation_steps,
            "train_rows": t.train.rows, "train_tokens": int(t.state.num_input_tokens_seen),
            "train_data": t.train.summary(), "validation_data": t.validation.summary(),
            "trainable_params": t.trainable, "total_params": t.total,
            "trainable_percent": round(100 * t.trainable / t.total, 4) if t.total else None,
            # measured in training/common.py before the optimizer is dropped: what full vs PEFT costs in memory/time
            "optimizer_state_bytes": getattr(t.state, "optimizer_state_bytes", None),
            "seconds_per_step": getattr(t.state, "seconds_per_step", None),
            **method.details(t.model, cfg.method), **summarize_log(t.state.log_history),
        }
        if cfg.learning_rate is None:
            details["learning_rate_source"] = method.learning_rate_source
        details["padding_free"] = t.padding_free  # seq2seq and classifier batches are padded
        if cfg.method.name == "lora":
            details["lora"] = lora_details(t.model)
        return details

    @staticmethod
    def _note_serving(details: dict[str, Any], serving: str) -> None:
        """Say how the tuned model answered the test rows (merged adapter, PeftModel, plain weights)."""
        details["serving"] = serving
        for key in ("lora", "peft"):
            if isinstance(details.get(key), dict):
                details[key]["inference"] = serving

