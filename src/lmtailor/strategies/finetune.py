"""Supervised fine-tuning, LoRA or full, of a decoder-only model on the task's training rows.

Rows are rendered with the same instruction format inference uses, the loss falls only on the answer (by default),
training runs through TRL's ``SFTTrainer``, and the tuned model then answers the test rows zero-shot with that same
format. The artifact is saved as safetensors: a PEFT adapter (``adapter/``) or a whole model (``model/``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from lmtailor.data.augment import AugmentConfig
from lmtailor.data.synthetic import SyntheticConfig
from lmtailor.errors import UserError
from lmtailor.measure.meter import Meter
from lmtailor.strategies.base import RunContext, Strategy, StrategyConfig, StrategyOutput
from lmtailor.tasks.base import TaskSpec

if TYPE_CHECKING:
    from lmtailor.training.dataset import SFTRows

_LORA_FIELDS = ("lora_r", "lora_alpha", "lora_dropout", "target_modules")


class FinetuneConfig(StrategyConfig):
    """Knobs of a fine-tuning run. LoRA knobs set together with ``method: full`` are an error, not silently ignored."""

    name: Literal["finetune"] = Field(description="registered strategy name")
    method: Literal["lora", "full"] = Field(description="lora: train low-rank adapters only; full: train every weight")
    epochs: float = Field(1.0, gt=0, description="passes over the training rows (fractions allowed)")
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps (overrides epochs)")
    learning_rate: float | None = Field(
        None, gt=0, description="peak AdamW learning rate (default: lora 2e-4, full 5e-5; see training/sft.py)")
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

    @model_validator(mode="after")
    def _check_consistency(self) -> "FinetuneConfig":
        if self.method == "full":
            stray = [f for f in _LORA_FIELDS if f in self.model_fields_set]
            if stray:
                raise ValueError(f"LoRA settings ({', '.join(stray)}) do not apply to method: full; remove them or "
                                 "set method: lora")
        if self.eval_strategy == "steps" and self.eval_steps is None:
            raise ValueError("eval_strategy: steps needs eval_steps (e.g. eval_steps: 20)")
        if self.eval_steps is not None and self.eval_strategy != "steps":
            raise ValueError("eval_steps only applies with eval_strategy: steps")
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("target_modules is an empty list; name modules, use 'all-linear', or leave it unset")
        if self.train_sizes is not None and (not self.train_sizes or min(self.train_sizes) < 1):
            raise ValueError("train_sizes must be a non-empty list of positive row counts, e.g. [50, 100, 200]")
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


class FinetuneStrategy(Strategy):
    """Fine-tune the model on the training rows (LoRA or full), then answer the test rows zero-shot.

    Decoder-only models train through TRL's SFT, encoder-decoder models through Seq2SeqTrainer, encoders as
    classifiers with a head over the task's labels: the family is read from the config.
    """

    Config = FinetuneConfig
    config: FinetuneConfig

    def default_label(self) -> str:
        from lmtailor.strategies.extra_data import extra_data_label

        name = "LoRA" if self.config.method == "lora" else "full FT"
        name = name if self.config.with_instruction else f"{name} (input only)"
        return name + extra_data_label(self.config.augment, self.config.synthetic)

    def uses_training_data(self) -> bool:
        return True

    def run(self, ctx: RunContext) -> StrategyOutput:
        from lmtailor.models import family_of, load_model

        if not ctx.data.train:
            raise UserError("finetune needs training rows, but the training split is empty; check data.max_train "
                            "and the split sizes")
        if family_of(ctx.model_ref) == "encoder":
            return self._run_encoder(ctx)
        with ctx.meter.phase("load"):
            loaded = load_model(ctx.model_ref, ctx.runtime)
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
        from lmtailor.models import family_of
        from lmtailor.strategies.extra_data import with_extra_rows

        ctx, extra = with_extra_rows(ctx, self.config.augment, self.config.synthetic, model, tokenizer)
        task = self.tuned_task(ctx.task)
        with ctx.meter.phase("train"):
            if family_of(ctx.model_ref) == "encoder-decoder":
                trained = self._train_seq2seq(ctx, task, model, tokenizer)
            else:
                trained = self._train(ctx, task, model, tokenizer)
        self._measure(ctx.meter, trained)
        model = trained.model
        if self.config.method == "lora":
            # Serve as deployed: the adapter (saved above) folded into the base weights, so inference costs what the
            # base model's does instead of paying for the extra low-rank matmuls on every layer.
            model = model.merge_and_unload()
        with ctx.meter.phase("inference"):  # the prompt format the model was tuned on
            predictions, inference = predict(model.eval(), tokenizer, task, ctx.data.test, (),
                                             ctx.budget, ctx.meter, mode=self.config.scoring,
                                             progress_desc=self.label())
        return StrategyOutput(predictions=predictions, artifacts={trained.artifact_name: trained.artifact},
                              details={**self._details(trained), **extra, "inference": inference},
                              tuned=(model, tokenizer))

    def _run_encoder(self, ctx: RunContext) -> StrategyOutput:
        """An encoder (BERT family) gets a classification head over the task's labels, trained with the body."""
        from lmtailor.models import load_model
        from lmtailor.training.classifier import check_config, predict_classifier, train_classifier

        if ctx.task.type != "classification" or not ctx.task.labels:
            raise UserError(f"{ctx.model_ref} is an encoder: it can be fine-tuned as a classifier only, but task "
                            f"{ctx.task.name!r} is {ctx.task.type}; use a decoder-only model for this task")
        check_config(self.config)
        from lmtailor.strategies.extra_data import with_extra_rows

        with ctx.meter.phase("load"):
            loaded = load_model(ctx.model_ref, ctx.runtime, head="sequence-classification",
                                num_labels=len(ctx.task.labels))
        # A classifier cannot write text: paraphrases and synthetic rows need augment.model / synthetic.teacher.
        ctx, extra = with_extra_rows(ctx, self.config.augment, self.config.synthetic)
        with ctx.meter.phase("train"):
            trained = train_classifier(loaded.model, loaded.tokenizer, self.config, ctx.task, ctx.data.train,
                                       ctx.data.validation, ctx.budget, ctx.runtime, ctx.seed, ctx.out_dir)
        self._measure(ctx.meter, trained)
        model = trained.model.merge_and_unload() if self.config.method == "lora" else trained.model
        with ctx.meter.phase("inference"):
            predictions, inference = predict_classifier(model.eval(), loaded.tokenizer, ctx.task, ctx.data.test,
                                                        ctx.budget, ctx.meter, progress_desc=self.label())
        details = {**self._details(trained), **extra, "head": "sequence-classification",
                   "labels": list(trained.labels), "inference": inference}
        return StrategyOutput(predictions=predictions, artifacts={trained.artifact_name: trained.artifact},
                              details=details, tuned=(model, loaded.tokenizer))

    def _train_seq2seq(self, ctx: RunContext, task: TaskSpec, model, tokenizer):
        """T5/BART: Seq2SeqTrainer on (source, target) pairs in the family's own format (training/seq2seq.py)."""
        from lmtailor.training.seq2seq import train_seq2seq

        return train_seq2seq(model, tokenizer, self.config, task, ctx.data.train, ctx.data.validation, ctx.budget,
                             ctx.runtime, ctx.seed, ctx.out_dir)

    def _train(self, ctx: RunContext, task: TaskSpec, model, tokenizer) -> _Trained:
        """Tokenize the rows, train through TRL, finish with a validation loss, save the artifact."""
        from lmtailor.training.dataset import build_sft_rows
        from lmtailor.training.common import count_params, train_and_save
        from lmtailor.training.sft import build_trainer, learning_rate

        cfg = self.config
        train = build_sft_rows(tokenizer, task, ctx.data.train, ctx.budget)
        val = build_sft_rows(tokenizer, task, ctx.data.validation, ctx.budget)
        trainer = build_trainer(model, tokenizer, cfg, train.dataset, val.dataset, ctx.runtime, ctx.seed,
                                ctx.out_dir / "checkpoints", ctx.budget.max_seq_len)
        trainable, total = count_params(trainer.model)
        ctx.log.info("%s: %d training rows, %s of %s parameters trainable, lr %g", self.label(), train.rows,
                     f"{trainable:,}", f"{total:,}", learning_rate(cfg))
        state, name, path = train_and_save(trainer, cfg, tokenizer, ctx.out_dir)
        return _Trained(trainer.model, state, train, val, trainable, total, name, path)

    def _measure(self, meter: Meter, t: _Trained) -> None:
        from lmtailor.measure.meter import estimate_flops

        tokens = int(t.state.num_input_tokens_seen)  # real (non-padding) tokens over every step actually run
        meter.add_tokens("train", tokens)
        meter.add_examples("train", round(t.state.epoch * t.train.rows))
        meter.set_params(t.trainable, t.total)
        kind = "peft" if self.config.method == "lora" else "full"
        meter.add_flops("train", estimate_flops(t.total, tokens, kind, t.trainable))
        meter.add_artifact(t.artifact_name, t.artifact)

    def _details(self, t: _Trained) -> dict[str, Any]:
        from lmtailor.training.common import summarize_log
        from lmtailor.training.sft import learning_rate

        cfg = self.config
        details = {
            "method": cfg.method, "with_instruction": cfg.with_instruction,
            "learning_rate": getattr(t, "learning_rate", None) or learning_rate(cfg), "steps": t.state.global_step,
            "epochs": t.state.epoch, "effective_batch_size": cfg.batch_size * cfg.gradient_accumulation_steps,
            "train_rows": t.train.rows, "train_tokens": int(t.state.num_input_tokens_seen),
            "train_data": t.train.summary(), "validation_data": t.validation.summary(),
            "trainable_params": t.trainable, "total_params": t.total, **summarize_log(t.state.log_history),
        }
        if cfg.method == "lora":
            details["lora"] = {**lora_details(t.model), "inference": "adapter merged into the base weights"}
        return details


def lora_details(peft_model) -> dict:
    c = peft_model.peft_config["default"]
    targets = sorted(c.target_modules) if isinstance(c.target_modules, (set, list)) else c.target_modules
    return {"r": c.r, "alpha": c.lora_alpha, "dropout": c.lora_dropout, "target_modules": targets}
