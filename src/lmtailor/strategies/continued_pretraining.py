"""Continued pre-training: more language-model training of a pre-trained model on the user's raw domain text, then
the usual fine-tuning on the task.

The first phase (``training/pretrain.py``) packs the corpus into full blocks and trains with the family's objective
(causal LM; span corruption for T5; text infilling for BART) for ``max_tokens`` corpus tokens, by any method of the
fine-tuning registry that trains weights or merges its adapter (``method: full``, ``{name: lora, r: 16}``, dora, ia3,
freeze, ...; adapters are merged into the weights at the end). It is measured in the meter's ``pretrain`` phase, with
a held-out loss before and after. The second phase is the finetune strategy's own ``tune_and_answer`` on the prepared
model (the nested ``finetune:`` block holds its knobs), measured in ``train`` and ``inference`` exactly as a plain
finetune row, so the two rows differ only by the pre-training.

The corpus is any the rag rung accepts (a folder, a .jsonl file, ``builtin:pydoc``, ``task:train``), with the same
exclusions: documents a test row was made from, or whose text contains a test input or shows a test answer, are
left out (``retrieval/exclusion.py``; recorded in ``details["corpus_exclusions"]``), and ``task:train`` holds
training rows only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from lmtailor.core.budget import Budget
from lmtailor.core.context import RunContext
from lmtailor.core.strategy_output import StrategyOutput
from lmtailor.core.training_loop import OptimizerSettings
from lmtailor.distributed import on_main
from lmtailor.errors import UserError
from lmtailor.measure.meter import estimate_flops
from lmtailor.strategies.base import Strategy, StrategyConfig
from lmtailor.strategies.finetune import FinetuneConfig, FinetuneStrategy
from lmtailor.strategies.rag import corpus_documents, input_limit
from lmtailor.strategies.traits import StrategyTraits, with_extra_data
from lmtailor.training.method_field import MethodField, NestedMethod
from lmtailor.training.peft_methods import artifact_kind, check_method, finetune_method, method_label

_NOISE_FIELDS = ("noise_density", "mean_noise_span_length")


class PretrainingConfig(StrategyConfig, OptimizerSettings):
    """Knobs shared by the strategies that train on a raw corpus before fine-tuning (continued-pretraining, scratch)."""

    corpus: str = Field("builtin:pydoc", description="raw text to pre-train on: a folder of .txt/.md/.html files, a "
                        ".jsonl file, builtin:pydoc, or task:train (the training rows; never a test row)")
    text_field: str = Field("text", description="JSONL corpus: the field holding a document's text")
    id_field: str | None = Field(None, description="JSONL corpus: the field holding a document's id "
                                 "(default: file:line)")
    max_tokens: int = Field(200_000, ge=1, description="token budget of the pre-training phase, in corpus tokens; "
                            "a smaller corpus is repeated (see max_epochs)")
    max_epochs: float | None = Field(None, gt=0, description="most passes over the corpus (unset: as many as the "
                                     "token budget needs); training stops at whichever comes first")
    block_size: int | None = Field(None, ge=8, description="tokens per training block (default: budget.max_seq_len, "
                                   "or the model's context if shorter); documents are packed, EOS between them")
    objective: Literal["auto", "causal-lm", "span-corruption", "text-infilling"] = Field(
        "auto", description="auto: causal-lm for decoder-only models, span-corruption for T5, text-infilling for BART")
    noise_density: float | None = Field(None, gt=0, le=0.5, description="denoising objectives: share of tokens "
                                        "hidden (default: span-corruption 0.15, text-infilling 0.3)")
    mean_noise_span_length: float = Field(3.0, ge=1, description="denoising objectives: mean length of a hidden "
                                          "span, in tokens")
    # the optimizer settings are the training loop's (core/training_loop.py); these differ in meaning or default
    learning_rate: float | None = Field(None, gt=0, description="peak learning rate of the pre-training phase "
                                        "(cosine decay after warm-up; default depends on the strategy)")
    batch_size: int = Field(8, ge=1, description="blocks per forward/backward pass")
    validation_blocks: int = Field(16, ge=0, description="blocks held out of training, their loss measured before "
                                   "and after (at most a tenth of the corpus)")
    logging_steps: int = Field(10, ge=1, description="steps between training-loss log entries")
    finetune: FinetuneConfig = Field(
        default_factory=lambda: FinetuneConfig(name="finetune", method="lora"),
        description="the fine-tuning phase: the finetune strategy's knobs (method, epochs, learning_rate, ...; "
                    "not name, label or models), e.g. {method: lora, epochs: 2}")

    @field_validator("finetune", mode="before")
    @classmethod
    def _finetune_block(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        for key in ("name", "label", "models"):
            if value.get(key) not in (None, "finetune"):
                raise ValueError(f"finetune.{key} is a setting of the whole strategy, not of its fine-tuning "
                                 f"phase: move it up one level")
        return {**value, "name": "finetune"}

    @property
    def train_sizes(self) -> list[int] | None:
        """Learning-curve sizes: the fine-tuning phase's (the runner reads them here)."""
        return self.finetune.train_sizes


class ContinuedPretrainingConfig(PretrainingConfig, NestedMethod):
    """Knobs of a continued pre-training run (then fine-tuning, per the ``finetune`` block)."""

    name: Literal["continued-pretraining"] = Field(description="registered strategy name")
    method: MethodField = Field(
        description="pre-training phase: a fine-tuning method and its settings, from the same registry as "
                    "finetune's method: full (every weight), freeze, or a method whose adapter merges into the "
                    "weights before fine-tuning (lora, dora, ia3, loha, ...), e.g. {name: lora, r: 16}")

    @field_validator("method")
    @classmethod
    def _method_can_pretrain(cls, settings: Any) -> Any:
        method = finetune_method(settings.name)
        if method.peft and not method.merges:
            raise ValueError(f"method: {settings.name} cannot pre-train: its adapter does not merge into the "
                             "weights (virtual tokens, bottleneck adapters or a 4-bit base), and the fine-tuning "
                             "phase starts from the pre-trained weights; use full, freeze, lora, dora or ia3")
        return settings


# --- what both corpus strategies share ---------------------------------------------------------------------------

def load_pretraining_corpus(ctx: RunContext, cfg: PretrainingConfig, label: str) -> tuple[list[str], dict]:
    """The corpus's texts without what the rows to predict could leak (as the rag rung leaves it out), and the
    record of what was left out (``details["corpus_exclusions"]``)."""
    docs, exclusions = corpus_documents(ctx, cfg.corpus, cfg.text_field, cfg.id_field, label)
    return [d.text for d in docs], exclusions


def resolve_block_size(cfg: PretrainingConfig, model_config, budget: Budget) -> int:
    """The configured block size, or ``budget.max_seq_len`` capped at the model's positions."""
    limit = input_limit(model_config)
    if cfg.block_size is not None:
        if limit is not None and cfg.block_size > limit:
            raise UserError(f"block_size {cfg.block_size} is longer than the model's {limit} positions; lower it")
        return cfg.block_size
    return min(budget.max_seq_len, limit) if limit is not None else budget.max_seq_len


def check_objective_knobs(cfg: PretrainingConfig, objective: str) -> None:
    """Denoising knobs set for a causal-LM run are an error, not silently ignored."""
    stray = [f for f in _NOISE_FIELDS if f in cfg.model_fields_set]
    if objective == "causal-lm" and stray:
        raise UserError(f"{', '.join(stray)} apply to the denoising objectives (span-corruption, text-infilling), "
                        "not to causal-lm; remove them")


def record_pretraining(ctx: RunContext, pre, kind: str) -> None:
    """Count the pre-training phase in the meter: tokens, blocks and the FLOP estimate."""
    ctx.meter.add_tokens("pretrain", pre.tokens_processed)
    ctx.meter.add_examples("pretrain", pre.corpus_tokens // pre.details["corpus_tokens_per_block"])  # blocks
    ctx.meter.add_flops("pretrain", estimate_flops(pre.total, pre.tokens_processed, kind, pre.trainable))


def pretrain_details(ctx: RunContext, cfg: PretrainingConfig, pre) -> dict:
    """The pre-training phase for the run record: corpus, blocks, tokens, steps, losses, wall time."""
    corpus = {"source": cfg.corpus, **pre.details["corpus"]}
    return {**pre.details, "corpus": corpus, "wall_s": round(ctx.meter.phases["pretrain"].wall_s, 3)}


def fine_tune_after(strategy: Strategy, cfg: PretrainingConfig, ctx: RunContext, model, tokenizer,
                    pretrain_details: dict, extra: dict | None = None) -> StrategyOutput:
    """The fine-tuning phase on the prepared model (the finetune strategy's own code), then one record of both."""
    if model.dtype != ctx.runtime.dtype:  # full pre-training kept fp32 master weights; fine-tune as a loaded model
        model = model.to(ctx.runtime.dtype)

    artifacts: dict[str, Path] = {}
    # an adapter only works on top of the model it was trained on
    if artifact_kind(cfg.finetune.method.name) == "adapter":
        path = ctx.out_dir / "pretrained_model"
        # under several processes only the main one writes; the others get its outcome (see distributed.on_main)
        on_main(lambda: (model.save_pretrained(path), tokenizer.save_pretrained(path)))
        ctx.meter.add_artifact("pretrained_model", path)
        artifacts["pretrained_model"] = path
    finetuned = FinetuneStrategy(cfg.finetune).tune_and_answer(ctx, model, tokenizer)
    phases = {p: round(ctx.meter.phases[p].wall_s, 3) for p in ("pretrain", "search", "train")}
    times = {"pretrain_s": phases["pretrain"], "finetune_s": phases["train"],
             "setup_s": round(phases["pretrain"] + phases["search"] + phases["train"], 3)}
    if cfg.finetune.search is not None:  # the fine-tuning phase's hyperparameter search (the pre-training is fixed)
        times["search_s"] = phases["search"]
    ctx.log.info("%s: pre-training %.1f s + search %.1f s + fine-tuning %.1f s = %.1f s of set-up", strategy.label(),
                 times["pretrain_s"], phases["search"], times["finetune_s"], times["setup_s"])
    ft_details = {k: v for k, v in finetuned.details.items() if k != "inference"}
    # the search record also at the top, where the report and the honesty checks look for a row's search
    search = {"search": ft_details["search"]} if "search" in ft_details else {}
    details = {**(extra or {}), **search, "pretrain": pretrain_details, "finetune": ft_details, "times": times,
               "inference": finetuned.details.get("inference")}
    return StrategyOutput(predictions=finetuned.predictions, artifacts={**artifacts, **finetuned.artifacts},
                          details=details, tuned=finetuned.tuned)


def check_generative(ctx: RunContext, rung: str) -> None:
    """Refuse a model of a family with no pre-training objective here (an encoder) before loading anything."""
    from lmtailor.models.families import pretraining_families
    from lmtailor.models.loading import adapter_of

    if not ctx.data.train:
        raise UserError(f"{rung} fine-tunes after pre-training and needs training rows, but the training split is "
                        "empty; check data.max_train and the split sizes")
    adapter = adapter_of(ctx.model_ref, ctx.runtime.trust_remote_code)
    if not adapter.pretrain_objectives:
        raise UserError(f"{ctx.model_ref} is {adapter.with_article}: {rung} needs a model of a family with a "
                        f"pre-training objective: {pretraining_families()} (an encoder's, masked LM, is not "
                        "implemented)")


class ContinuedPretrainingStrategy(Strategy):
    """Train the model further on a raw corpus (full or LoRA, merged), then fine-tune it on the task."""

    Config = ContinuedPretrainingConfig
    config: ContinuedPretrainingConfig
    TRAITS = StrategyTraits(place="continued-pretraining", use="trained", rung="continued-pretraining",
                            data=("corpus", "training rows"))

    def default_label(self) -> str:
        method = self.config.method
        phase = "full" if method.name == "full" else method_label(method)
        return f"continued PT ({phase}) + {FinetuneStrategy(self.config.finetune).label()}"

    def uses_training_data(self) -> bool:
        return True

    def traits(self) -> StrategyTraits:
        return with_extra_data(self.TRAITS, self.config.finetune.augment, self.config.finetune.synthetic)

    def run(self, ctx: RunContext) -> StrategyOutput:
        from lmtailor.models import family_name_of, load_model
        from lmtailor.training.pretrain import resolve_objective, run_pretraining

        cfg = self.config
        check_generative(ctx, "continued-pretraining")
        # the fine-tuning phase's method settings are refused before pre-training spends anything (qlora on a CPU,
        # prefix on T5, ...)
        family = family_name_of(ctx.model_ref, ctx.runtime.trust_remote_code)
        check_method(cfg.finetune.method, family, ctx.runtime, cfg.finetune.padding_free)
        check_method(cfg.method, family, ctx.runtime)  # the pre-training phase's method too
        method = finetune_method(cfg.method.name)
        with ctx.meter.phase("load"):
            loaded = load_model(ctx.model_ref, ctx.runtime)
        objective = resolve_objective(cfg.objective, loaded.model.config)
        check_objective_knobs(cfg, objective)
        learning_rate = cfg.learning_rate or method.default_learning_rate(family)
        with ctx.meter.phase("pretrain"):
            texts, exclusions = load_pretraining_corpus(ctx, cfg, self.label())
            block_size = resolve_block_size(cfg, loaded.model.config, ctx.budget)
            pre = run_pretraining(loaded.model, loaded.tokenizer, texts, cfg, method=cfg.method, objective=objective,
                                  block_size=block_size, learning_rate=learning_rate, runtime=ctx.runtime,
                                  seed=ctx.seed, out_dir=ctx.out_dir / "pretrain", desc=self.label())
        record_pretraining(ctx, pre, method.flops_kind)
        return fine_tune_after(self, cfg, ctx, pre.model, loaded.tokenizer, pretrain_details(ctx, cfg, pre),
                               extra={"corpus_exclusions": exclusions})
