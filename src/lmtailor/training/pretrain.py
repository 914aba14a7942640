"""Language-model (pre-)training on raw text: the first phase of the continued-pretraining and scratch strategies.

The corpus is tokenized, packed into full blocks (``data/packing.py``) and trained on with the family's objective:

- decoder-only: causal LM, labels = input ids (pre-made rather than by ``DataCollatorForLanguageModeling``, which
  would hide every EOS from the loss wherever pad and EOS are the same token, as in SmolLM2 and Llama);
- T5 family: span corruption (``run_t5_mlm_flax.py``), fresh noise for every batch;
- BART family (and other encoder-decoders with a mask token): text infilling.

A token budget sets the length: ``max_tokens`` corpus tokens, repeating the corpus when it is smaller (``max_epochs``
caps the passes). A few blocks are held out, and their loss is measured before and after training: the direct
measure of how much of the domain the model learnt. Training goes through the engine's ``Trainer``
(``training/engine.py``) with the arguments every lmtailor trainer uses (``training/common.py``: precision from the
runtime, loss on the progress bar, resumable checkpoints in ``<out_dir>/checkpoints``), a cosine learning-rate
schedule after a linear warm-up, as in LLM pre-training recipes.
The method comes from the fine-tuning registry (``training/peft_methods.py``): full, freeze, or any method whose adapter
merges (LoRA, DoRA, IA3, ...), whose adapters are trained on the corpus and merged into the weights at the end.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from lmtailor.core.training_loop import OptimizerSettings, TrainingLoop
from lmtailor.data.packing import (PackedCorpus, noise_span_counts, pack_documents, span_corruption,
                                   span_corruption_lengths, text_infilling)
from lmtailor.errors import UserError
from lmtailor.models.families import adapters, family_of, model_family, pretraining_families
from lmtailor.runtime import Runtime
from lmtailor.training.common import common_training_args, count_params, summarize_log, use_loss_bar
from lmtailor.training.engine import engine_trainer_class
from lmtailor.training.method_kinds import LoraMethod, lora_details
from lmtailor.training.method_settings import MethodSettings
from lmtailor.training.peft_methods import finetune_method, peft_summary, wrap_for_training
from lmtailor.training.recovery import finish_checkpoints, run_training

log = logging.getLogger("lmtailor")

Objective = Literal["causal-lm", "span-corruption", "text-infilling"]
T5_TYPES = frozenset({"t5", "mt5", "umt5", "longt5"})
BART_TYPES = frozenset({"bart", "mbart"})
# The denoising objectives' defaults, from their papers: T5 hides 15% of tokens in spans of mean length 3 (Raffel et
# al. 2020, section 3.3); BART masks 30% with span lengths of mean 3 (Lewis et al. 2020, section 5.1).
DEFAULT_NOISE_DENSITY = {"span-corruption": 0.15, "text-infilling": 0.3}
SENTINELS = 100  # T5 tokenizers carry <extra_id_0> ... <extra_id_99>


def resolve_objective(requested: str, config) -> Objective:
    """The objective to pre-train ``config``'s model with: the requested one, or the family's (``auto``)."""
    adapter = family_of(config)
    model_type = getattr(config, "model_type", "")
    objectives = adapter.pretrain_objectives
    if not objectives:
        raise UserError(f"model type {model_type!r} is {adapter.with_article}: no pre-training objective is "
                        f"implemented for it (an encoder's would be masked LM); use a model of a family that has one: "
                        f"{pretraining_families()}")
    if requested != "auto" and requested not in objectives:
        owners = " or ".join(a.name for a in adapters() if requested in a.pretrain_objectives) or "no"
        raise UserError(f"objective: {requested} is for {owners} models; {model_type} is {adapter.with_article}: use "
                        f"{', '.join(objectives)} or auto")
    if len(objectives) == 1:
        return objectives[0]  # type: ignore[return-value]
    if requested == "span-corruption" and model_type not in T5_TYPES:
        raise UserError(f"objective: span-corruption is T5's (sentinel tokens); {model_type} is not a T5-family "
                        "model: use text-infilling or auto")
    if requested != "auto":
        return requested  # type: ignore[return-value]
    if model_type in T5_TYPES:
        return "span-corruption"
    if model_type in BART_TYPES:
        return "text-infilling"
    raise UserError(f"objective: auto has no pre-training objective for a {model_type!r} encoder-decoder: span "
                    "corruption is for T5-family models and text infilling for BART; set objective: text-infilling "
                    "to use it here (its tokenizer needs a mask token)")


def ensure_sentinels(model, tokenizer) -> tuple[list[int], int]:
    """``<extra_id_0..99>`` ids for span corruption; adds them (and embedding rows) to a tokenizer without them.

    Returns (sentinel ids, tokens added). Real T5 tokenizers have them; the tiny test T5 does not.
    """
    names = [f"<extra_id_{i}>" for i in range(SENTINELS)]
    vocab = tokenizer.get_vocab()
    missing = [n for n in names if n not in vocab]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
        if model is not None and len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
        log.warning("the tokenizer has no T5 sentinel tokens: added %d (<extra_id_N>) for span corruption",
                    len(missing))
    return tokenizer.convert_tokens_to_ids(names), len(missing)


def special_wrapping(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text (BART: [<s>], [</s>]; T5: [], [</s>])."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return full[:i], full[i + len(plain):]
    return [], []


@dataclass
class ObjectiveCollator:
    """Turns raw blocks into a batch for the objective; features that already carry labels are only stacked.

    Denoising draws new noise for every pass, so each pass over a repeated corpus hides different spans, as
    ``run_t5_mlm_flax.py`` does. Training blocks carry a ``noise_key`` (epoch, block index) and their noise is drawn
    from a generator seeded by (seed, epoch, index): the same in every run with that seed, whatever the batch size
    and wherever a resumed run starts. Blocks without a key draw from the collator's own seeded generator.
    """

    objective: Objective
    eos_id: int
    pad_id: int
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    sentinel_ids: Sequence[int] = ()
    mask_id: int | None = None
    prefix: Sequence[int] = ()
    suffix: Sequence[int] = ()
    decoder_start_id: int | None = None
    seed: int = 0
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def example(self, block: Sequence[int], rng: np.random.Generator | None = None) -> dict[str, list[int]]:
        """One training example from one raw block (noise from ``rng``, default the collator's generator)."""
        rng = rng if rng is not None else self.rng
        if self.objective == "causal-lm":
            ids = list(block)
            return {"input_ids": ids, "labels": ids}
        if self.objective == "span-corruption":
            inputs, labels = span_corruption(block, self.sentinel_ids, self.eos_id, self.noise_density,
                                             self.mean_noise_span_length, rng)
            return {"input_ids": inputs, "labels": labels}
        assert self.mask_id is not None
        inputs, labels = text_infilling(block, self.mask_id, self.noise_density, self.mean_noise_span_length,
                                        rng)
        labels = [*self.prefix, *labels, *self.suffix]
        if self.decoder_start_id is not None and labels[:1] == [self.decoder_start_id]:
            labels = labels[1:]  # the decoder is fed it first anyway (see prompting/seq2seq_format.encode_target)
        return {"input_ids": [*self.prefix, *inputs, *self.suffix], "labels": labels}

    def _keyed_rng(self, feature: dict) -> np.random.Generator | None:
        key = feature.get("noise_key")
        return np.random.default_rng([self.seed, *key]) if key is not None and self.objective != "causal-lm" else None

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        examples = [f if "labels" in f else self.example(f["input_ids"], self._keyed_rng(f)) for f in features]
        width = max(len(e["input_ids"]) for e in examples)
        label_width = max(len(e["labels"]) for e in examples)
        batch = {
            "input_ids": [e["input_ids"] + [self.pad_id] * (width - len(e["input_ids"])) for e in examples],
            "attention_mask": [[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in examples],
            "labels": [e["labels"] + [-100] * (label_width - len(e["labels"])) for e in examples],
        }
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


class _Blocks(torch.utils.data.Dataset):
    """Rows of a block array as ``{"input_ids": [...]}`` (or ready examples), without copying the array.

    Raw blocks carry a ``noise_key`` (epoch, index) for ``ObjectiveCollator``; the data loader tells the dataset the
    epoch (accelerate calls ``set_epoch`` on it at the start of each pass).
    """

    def __init__(self, blocks: np.ndarray | list[dict]) -> None:
        self.blocks = blocks
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict:
        row = self.blocks[i]
        return row if isinstance(row, dict) else {"input_ids": row.tolist(), "noise_key": [self.epoch, int(i)]}


def tokenize_documents(tokenizer, texts: Sequence[str], batch: int = 256, desc: str = "tokenize corpus"):
    """Token ids of each text, no special tokens (packing adds the separators), in batches with a progress bar."""
    from tqdm.auto import tqdm

    with tqdm(total=len(texts), desc=desc, unit="doc", disable=len(texts) < 2 * batch) as bar:
        for start in range(0, len(texts), batch):
            chunk = list(texts[start:start + batch])
            # verbose=False: documents longer than the model's context are expected here; packing cuts them
            yield from tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]
            bar.update(len(chunk))


@functools.lru_cache(maxsize=None)
def _trainer_class():
    from transformers import Trainer

    class _PretrainTrainer(Trainer):
        """Counts what was trained on, per micro-batch actually run: corpus tokens (the budget's unit; a batch at the
        end of a pass can be short) and, for an encoder-decoder, the target tokens beside the encoder's, so the
        meter's tokens and FLOPs cover every real token (as the finetune path does)."""

        corpus_tokens_seen = 0
        corpus_tokens_per_block = 0
        counts_labels = False

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.corpus_tokens_seen += int(inputs["input_ids"].shape[0]) * self.corpus_tokens_per_block
            if self.counts_labels and "labels" in inputs:
                self.state.num_input_tokens_seen += int((inputs["labels"] != -100).sum())
            return super().training_step(model, inputs, num_items_in_batch)

    return engine_trainer_class(_PretrainTrainer)


@dataclass
class Pretrained:
    """What the pre-training phase leaves: the model (LoRA merged) and what the record and the meter need."""

    model: Any
    tokens_processed: int  # real tokens through the model (encoder + decoder for encoder-decoders)
    corpus_tokens: int  # corpus tokens trained on: the unit of the token budget
    trainable: int
    total: int
    details: dict[str, Any]


@dataclass(frozen=True)
class _Plan:
    steps: int
    passes: float
    stopped_by: str


def plan_steps(train_blocks: int, raw_block: int, effective_batch: int, max_tokens: int,
               max_epochs: float | None) -> _Plan:
    """Optimizer steps for the token budget: whole steps of ``effective_batch`` blocks, at least one, and no more
    than ``max_epochs`` passes over ``train_blocks`` when that is set."""
    steps = max(1, max_tokens // (raw_block * effective_batch))
    stopped_by = "token budget"
    if max_epochs is not None:
        cap = max(1, math.floor(max_epochs * train_blocks / effective_batch))
        if cap < steps:
            steps, stopped_by = cap, f"max_epochs ({max_epochs:g} passes over the corpus)"
    return _Plan(steps, round(steps * effective_batch / train_blocks, 3), stopped_by)


def _objective_setup(model, tokenizer, cfg: OptimizerSettings, objective: Objective, block_size: int,
                     seed: int) -> tuple[ObjectiveCollator, int, dict]:
    """The collator and the raw block length (corpus tokens per block) for ``objective``, plus record details."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is None:
        raise UserError("the tokenizer has no end-of-sequence token to separate documents with; use the model's own "
                        "tokenizer")
    if objective == "causal-lm":
        return ObjectiveCollator(objective, eos, pad, seed=seed), block_size, {}
    density = cfg.noise_density or DEFAULT_NOISE_DENSITY[objective]
    span = cfg.mean_noise_span_length
    if objective == "span-corruption":
        sentinels, added = ensure_sentinels(model, tokenizer)
        raw, target_len = span_corruption_lengths(block_size, density, span)
        _, spans = noise_span_counts(raw, density, span)
        if spans > len(sentinels):
            raise UserError(f"block_size {block_size} makes {spans} noise spans per block, more than the "
                            f"{len(sentinels)} sentinel tokens; lower block_size")
        collator = ObjectiveCollator(objective, eos, pad, density, span, sentinel_ids=sentinels, seed=seed)
        return collator, raw, {"noise_density": density, "mean_noise_span_length": span, "sentinels_added": added,
                               "input_tokens_per_block": block_size, "target_tokens_per_block": target_len}
    if tokenizer.mask_token_id is None:
        raise UserError("text infilling replaces spans with the tokenizer's mask token, and this tokenizer has none; "
                        "this model has no denoising objective lmtailor can run")
    prefix, suffix = special_wrapping(tokenizer)
    if not suffix or suffix[-1] != eos:
        suffix = [*suffix, eos]
    raw = block_size - len(prefix) - len(suffix)
    if raw < 2:
        raise UserError(f"block_size {block_size} leaves no room for text beside the special tokens; raise it")
    collator = ObjectiveCollator(objective, eos, pad, density, span, mask_id=tokenizer.mask_token_id, prefix=prefix,
                                 suffix=suffix, decoder_start_id=model.config.decoder_start_token_id, seed=seed)
    return collator, raw, {"noise_density": density, "mean_noise_span_length": span,
                           "target_tokens_per_block": block_size}


def _held_out(packed: PackedCorpus, wanted: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training blocks, held-out blocks): up to ``wanted`` random blocks, at most a tenth of the corpus."""
    n = len(packed.blocks)
    k = min(wanted, n // 10)
    order = np.random.default_rng(seed).permutation(n)
    return packed.blocks[np.sort(order[k:])], packed.blocks[np.sort(order[:k])]


def phase_loop(cfg: OptimizerSettings, steps: int) -> TrainingLoop:
    """The training loop of a phase measured in steps: the phase's optimizer settings, ``steps`` optimizer steps,
    no evaluation in between (the held-out loss is measured before and after), no early stopping (a fixed token
    budget), no length grouping (every block has the same length)."""
    knobs = {k: getattr(cfg, k) for k in OptimizerSettings.model_fields}
    return TrainingLoop(**knobs, max_steps=steps, eval_strategy="no")


def _build_trainer(model, tokenizer, cfg: OptimizerSettings, method: MethodSettings, steps: int,
                   collator: ObjectiveCollator, train_blocks: np.ndarray, held_out: np.ndarray, raw_block: int,
                   learning_rate: float, runtime: Runtime, seed: int, out_dir: Path):
    """A ``Trainer`` for ``steps`` optimizer steps over the blocks, the model prepared (and PEFT-wrapped) by the
    fine-tuning method, as fine-tuning prepares it (full: fp32 master weights; LoRA, DoRA, IA3...: adapters)."""
    from transformers import TrainingArguments

    loop = phase_loop(cfg, steps)
    family = model_family(model)
    model = wrap_for_training(model, method, family.name, loop.gradient_checkpointing)
    args = TrainingArguments(**common_training_args(loop, runtime, seed, out_dir / "checkpoints", False,
                                                    learning_rate),
                             lr_scheduler_type="cosine", remove_unused_columns=False)
    # held-out examples are corrupted once, with a fixed generator, so "before" and "after" see the same noise
    fixed = replace(collator, seed=seed + 1)
    validation = _Blocks([fixed.example(b.tolist()) for b in held_out]) if len(held_out) else None
    trainer = _trainer_class()(model=model, args=args, data_collator=collator, train_dataset=_Blocks(train_blocks),
                               eval_dataset=validation, processing_class=tokenizer)
    trainer.counts_labels, trainer.corpus_tokens_per_block = family.seq2seq, raw_block
    return use_loss_bar(trainer)


def _release(trainer, method: MethodSettings) -> tuple[Any, dict]:
    """The trained model for the next phase (an adapter merged, every weight trainable again), the optimizer
    dropped; and what the record says about the method's adapter."""
    from peft import PeftModel

    trainer.optimizer = trainer.lr_scheduler = None  # the optimizer state is not needed for the next phase
    trainer.accelerator.free_memory()
    model = trainer.model
    if not finetune_method(method.name).merges or not isinstance(model, PeftModel):
        model.requires_grad_(True)  # freeze tuning froze the lower layers; the next phase decides what trains
        return model, finetune_method(method.name).details(model, method)
    merged = {"merged": "into the weights before fine-tuning"}
    adapter = {"lora": {**lora_details(model), **merged}} if isinstance(finetune_method(method.name), LoraMethod) \
        else {"peft": {**(peft_summary(model) or {}), **merged}}
    model = model.merge_and_unload()
    model.requires_grad_(True)  # PEFT froze the base weights; the next phase decides what trains
    return model, adapter


def run_pretraining(model, tokenizer, texts: Sequence[str], cfg: OptimizerSettings, *, method: MethodSettings,
                    objective: Objective, block_size: int, learning_rate: float, runtime: Runtime, seed: int,
                    out_dir: Path, desc: str = "pretrain") -> Pretrained:
    """Pack ``texts`` into blocks and train ``model`` on them with ``objective`` within ``cfg``'s token budget.

    ``cfg``: the pre-training phase's settings (its optimizer settings, and the corpus knobs ``max_tokens``,
    ``max_epochs``, ``validation_blocks``, ``noise_density``, ``mean_noise_span_length``). ``method``: any
    fine-tuning method whose adapter merges (``FinetuneMethod.merges``) or that trains the weights themselves: full
    trains every weight (in fp32 master weights), LoRA, DoRA, IA3, ... train adapters that are merged at the end.
    """
    collator, raw_block, objective_details = _objective_setup(model, tokenizer, cfg, objective, block_size, seed)
    packed = pack_documents(tokenize_documents(tokenizer, texts, desc=f"{desc}: tokenize"), raw_block,
                            tokenizer.eos_token_id)
    train_blocks, held_out = _held_out(packed, cfg.validation_blocks, seed)
    effective = cfg.batch_size * cfg.gradient_accumulation_steps
    plan = plan_steps(len(train_blocks), raw_block, effective, cfg.max_tokens, cfg.max_epochs)
    log.info("%s: %s objective, %d documents -> %s tokens -> %d blocks of %d (+%d tokens dropped), %d held out; "
             "%d steps of %d blocks = %s corpus tokens (%.2f passes; stopped by the %s), lr %g", desc, objective,
             packed.documents, f"{packed.stream_tokens:,}", len(packed.blocks), raw_block, packed.dropped_tokens,
             len(held_out), plan.steps, effective, f"{plan.steps * effective * raw_block:,}", plan.passes,
             plan.stopped_by, learning_rate)
    if plan.passes > 1:
        log.warning("%s: the corpus is smaller than the token budget: it is repeated %.1f times", desc, plan.passes)
    trainer = _build_trainer(model, tokenizer, cfg, method, plan.steps, collator, train_blocks, held_out, raw_block,
                             learning_rate, runtime, seed, out_dir)
    trainable, total = count_params(trainer.model)
    before = trainer.evaluate()["eval_loss"] if len(held_out) else None
    run_training(trainer)  # resumes from a checkpoint of an interrupted run of this phase
    after = trainer.evaluate()["eval_loss"] if len(held_out) else None
    finish_checkpoints(trainer)
    state, corpus_tokens = trainer.state, trainer.corpus_tokens_seen
    model, adapter = _release(trainer, method)
    details = {
        "objective": objective, "method": method.name, **objective_details, "corpus": packed.summary(),
        "block_size": block_size, "corpus_tokens_per_block": raw_block, "train_blocks": len(train_blocks),
        "held_out_blocks": len(held_out), "token_budget": cfg.max_tokens, "corpus_tokens_trained": corpus_tokens,
        "tokens_processed": int(state.num_input_tokens_seen), "steps": state.global_step,
        "passes": round(corpus_tokens / raw_block / len(train_blocks), 3), "stopped_by": plan.stopped_by,
        "effective_batch_size": effective, "learning_rate": learning_rate,
        "held_out_loss_before": before, "held_out_loss_after": after, "trainable_params": trainable,
        "total_params": total, **summarize_log(state.log_history), **adapter,
    }
    return Pretrained(model, int(state.num_input_tokens_seen), corpus_tokens, trainable, total, details)
