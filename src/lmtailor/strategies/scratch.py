"""Pre-training from scratch: a model of the base model's family, from random weights, sized to a parameter budget,
trained on the corpus, then fine-tuned on the task.

The model reuses the base model's tokenizer and architecture; only its width and depth change, to about ``params``
parameters (``models/sizing.py``, counted exactly). It trains on ``max_tokens`` corpus tokens with the family's
objective (``training/pretrain.py``), and the record states parameters, tokens and tokens per parameter beside
Chinchilla's compute-optimal ~20 (Hoffmann et al. 2022). With a laptop's token budget it is expected to lose to a
pre-trained model: the row measures by how much, and at what cost. Without ``params``, the size is the
Chinchilla-optimal one for the token budget (tokens / 20), or the smallest model the tokenizer's vocabulary allows
(two layers, one head) when that is larger, as it is for budgets in the millions of tokens.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from lmtailor.core.context import RunContext
from lmtailor.core.strategy_output import StrategyOutput
from lmtailor.errors import UserError
from lmtailor.models import family_name_of, load_tokenizer, resolve_model
from lmtailor.models.sizing import CHINCHILLA_TOKENS_PER_PARAM, human_count, parse_param_count, size_model
from lmtailor.strategies.base import Strategy
from lmtailor.strategies.continued_pretraining import (PretrainingConfig, check_generative, check_objective_knobs,
                                                       fine_tune_after, load_pretraining_corpus, pretrain_details,
                                                       record_pretraining, resolve_block_size)
from lmtailor.strategies.finetune import FinetuneConfig, FinetuneStrategy
from lmtailor.strategies.traits import StrategyTraits, with_extra_data

# A small model from random weights takes a larger step than a pre-trained one may: 1e-3 is nanoGPT's rate for its
# small character model and the usual peak for models of 10-100M parameters; weight decay 0.1 as in GPT-3/LLaMA.
SCRATCH_LEARNING_RATE = 1e-3
DEFAULT_MIN_LAYERS = 2


class ScratchConfig(PretrainingConfig):
    """Knobs of a pre-training-from-scratch run (then fine-tuning, per the ``finetune`` block)."""

    name: Literal["scratch"] = Field(description="registered strategy name")
    params: int | str | None = Field(None, description="model size, e.g. 10M, 500K or 10000000 (unset: tokens / 20, "
                                     "Chinchilla's compute-optimal ratio, at least the smallest 2-layer model)")
    learning_rate: float | None = Field(None, gt=0, description="peak learning rate of the pre-training phase "
                                        f"(default {SCRATCH_LEARNING_RATE:g}; cosine decay after warm-up)")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay of the pre-training phase")
    finetune: FinetuneConfig = Field(
        default_factory=lambda: FinetuneConfig(name="finetune", method="full"),
        description="the fine-tuning phase: the finetune strategy's knobs (method, epochs, learning_rate, ...; "
                    "not name, label or models), e.g. {method: full, epochs: 3}")

    @field_validator("params")
    @classmethod
    def _parse_params(cls, value: Any) -> Any:
        if value is None:
            return None
        try:
            parse_param_count(value)
        except UserError as e:
            raise ValueError(str(e)) from None
        return value

    def target_params(self) -> int | None:
        """The requested size in parameters (None: sized from the token budget)."""
        return None if self.params is None else parse_param_count(self.params)


class ScratchStrategy(Strategy):
    """Pre-train a budget-sized model of the base model's family from random weights, then fine-tune it."""

    Config = ScratchConfig
    config: ScratchConfig
    TRAITS = StrategyTraits(place="pretraining", use="trained", rung="scratch", data=("corpus", "training rows"))

    def default_label(self) -> str:
        target = self.config.target_params()
        size = human_count(target) if target is not None else f"({CHINCHILLA_TOKENS_PER_PARAM} tok/param)"
        return f"scratch {size} + {FinetuneStrategy(self.config.finetune).label()}"

    def uses_training_data(self) -> bool:
        return True

    def traits(self) -> StrategyTraits:
        return with_extra_data(self.TRAITS, self.config.finetune.augment, self.config.finetune.synthetic)

    def run(self, ctx: RunContext) -> StrategyOutput:
        from transformers import AutoConfig

        from lmtailor.training.method_settings import FullSettings
        from lmtailor.training.peft_methods import check_method
        from lmtailor.training.pretrain import ensure_sentinels, resolve_objective, run_pretraining

        cfg = self.config
        check_generative(ctx, "scratch")
        # the fine-tuning phase's method settings are refused before pre-training spends anything (qlora on a CPU,
        # prefix on T5, ...)
        family = family_name_of(ctx.model_ref, ctx.runtime.trust_remote_code)
        check_method(cfg.finetune.method, family, ctx.runtime, cfg.finetune.padding_free)
        with ctx.meter.phase("load"):  # the base model's tokenizer and config; its weights are not needed
            path = resolve_model(ctx.model_ref).path
            base_config = AutoConfig.from_pretrained(path, trust_remote_code=ctx.runtime.trust_remote_code)
            tokenizer = load_tokenizer(path, trust_remote_code=ctx.runtime.trust_remote_code)
        objective = resolve_objective(cfg.objective, base_config)
        check_objective_knobs(cfg, objective)
        with ctx.meter.phase("pretrain"):
            if objective == "span-corruption":  # before sizing: the sentinels are part of the vocabulary
                ensure_sentinels(None, tokenizer)
            sized, sizing = self._size(ctx, base_config, len(tokenizer))
            model = _random_model(sized.config, ctx.seed).to(ctx.runtime.device)
            texts, exclusions = load_pretraining_corpus(ctx, cfg, self.label())
            pre = run_pretraining(model, tokenizer, texts, cfg, method=FullSettings(name="full"), objective=objective,
                                  block_size=resolve_block_size(cfg, base_config, ctx.budget),
                                  learning_rate=cfg.learning_rate or SCRATCH_LEARNING_RATE, runtime=ctx.runtime,
                                  seed=ctx.seed, out_dir=ctx.out_dir / "pretrain", desc=self.label())
        record_pretraining(ctx, pre, "full")
        ratio = pre.corpus_tokens / sized.params
        sizing.update(tokens=pre.corpus_tokens, tokens_per_param=round(ratio, 4),
                      chinchilla_tokens_per_param=CHINCHILLA_TOKENS_PER_PARAM)
        ctx.log.info("%s: %s parameters trained on %s tokens: %.3g tokens per parameter (Chinchilla-optimal ~%d)",
                     self.label(), f"{sized.params:,}", f"{pre.corpus_tokens:,}", ratio, CHINCHILLA_TOKENS_PER_PARAM)
        return fine_tune_after(self, cfg, ctx, pre.model, tokenizer, pretrain_details(ctx, cfg, pre),
                               extra={"scratch": sizing, "corpus_exclusions": exclusions})

    def _size(self, ctx: RunContext, base_config, vocab_size: int):
        """Size the model: the requested parameters, or Chinchilla's tokens / 20 (at least the smallest model)."""
        cfg = self.config
        target = cfg.target_params()
        chosen_by = "params"
        if target is None:
            target, chosen_by = max(1, cfg.max_tokens // CHINCHILLA_TOKENS_PER_PARAM), "token budget / 20"
        sized = size_model(base_config, target, vocab_size, min_layers=1 if cfg.params else DEFAULT_MIN_LAYERS,
                           at_least_smallest=cfg.params is None)
        if cfg.params is None and sized.params > target * 1.1:
            chosen_by = "smallest model this vocabulary allows"
        s = sized.shape
        ctx.log.info("%s: %s from random weights, %s parameters (%s without embeddings; target %s, by %s): "
                     "hidden %d, %d layers, %d heads of %d, feed-forward %d, vocabulary %s", self.label(),
                     base_config.model_type, f"{sized.params:,}", f"{sized.non_embedding_params:,}",
                     human_count(target), chosen_by, s.hidden, s.layers, s.heads, s.head_dim, s.ffn,
                     f"{vocab_size:,}")
        return sized, {**sized.summary(), "sized_by": chosen_by, "model_type": base_config.model_type,
                       "vocab_size": vocab_size, "base_model": ctx.model_ref}


def _random_model(config, seed: int):
    """The model ``config`` describes, randomly initialised in fp32 (master weights) from ``seed``."""
    import torch

    from lmtailor.models.families import family_of as family_adapter
    with torch.random.fork_rng(devices=[]):  # the same initial weights for the same seed, whatever ran before
        torch.manual_seed(seed)
        return family_adapter(config).auto_class().from_config(config, dtype=torch.float32)
