"""Continued pre-training: packing, the denoising objectives, the token budget, and the strategy end to end on tiny
models (decoder-only causal LM; T5 span corruption; BART text infilling), with errors for bad configurations."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from lmtailor.data.packing import (noise_span_counts, pack_documents, random_spans_noise_mask, span_corruption,
                                   span_corruption_lengths, text_infilling)
from lmtailor.core.budget import Budget
from lmtailor.core.context import RunContext
from lmtailor.core.strategy_output import StrategyOutput
from lmtailor.errors import UserError
from lmtailor.measure.meter import Meter
from lmtailor.strategies import STRATEGIES
from lmtailor.strategies.continued_pretraining import ContinuedPretrainingConfig, ContinuedPretrainingStrategy
from lmtailor.training.pretrain import ObjectiveCollator, plan_steps, resolve_objective

from colours import CPU, TASK, colour_splits

BUDGET = Budget(max_input_tokens=32, max_new_tokens=6, max_seq_len=128, eval_batch_size=8)


SPLITS = colour_splits(12, 4, 4)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- packing -------------------------------------------------------------------------------------------------------

DOCS = [[5, 6, 7], [8], [], [9, 10, 11, 12, 13, 14, 15, 16, 17], [18, 19]]


@pytest.mark.parametrize("block_size", [2, 3, 4, 5, 7, 20])
def test_packing_loses_and_repeats_no_token(block_size):
    packed = pack_documents(DOCS, block_size, separator=1)
    stream = [t for doc in DOCS for t in [*doc, 1]]  # each document, then the separator
    assert packed.stream_tokens == len(stream) == 20
    assert packed.blocks.shape == (len(stream) // block_size, block_size)
    assert packed.dropped_tokens == len(stream) % block_size
    # the blocks, then the dropped tail, are exactly the stream: nothing lost, nothing twice, order kept
    assert packed.blocks.ravel().tolist() + stream[len(stream) - packed.dropped_tokens:] == stream
    assert packed.documents == 5


def test_packing_without_separator_and_too_small_corpora():
    packed = pack_documents([[1, 2], [3, 4, 5]], 2, separator=None)
    assert packed.blocks.tolist() == [[1, 2], [3, 4]] and packed.dropped_tokens == 1
    with pytest.raises(UserError, match="less than one block of 64"):
        pack_documents(DOCS, 64, separator=1)


# --- span corruption and text infilling ----------------------------------------------------------------------------

def _fill_sentinels(inputs: list[int], targets: list[int], sentinels: list[int], eos: int) -> list[int]:
    """Put back, in place of each sentinel of the input, the span that follows that sentinel in the target."""
    assert inputs[-1] == eos and targets[-1] == eos
    spans, current = {}, None
    for t in targets[:-1]:
        if t in sentinels:
            current = t
            spans[current] = []
        else:
            spans[current].append(t)
    return [tok for t in inputs[:-1] for tok in (spans[t] if t in sentinels else [t])]


SENTINELS = list(range(1000, 900, -1))  # <extra_id_0> is the highest id, as in T5 tokenizers
EOS = 1


@pytest.mark.parametrize("length", [2, 3, 10, 34, 100, 568])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_span_corruption_inputs_and_targets_reassemble_the_original(length, seed):
    rng = np.random.default_rng(seed)
    block = rng.integers(10, 900, size=length).tolist()
    inputs, targets = span_corruption(block, SENTINELS, EOS, 0.15, 3.0, rng)
    assert _fill_sentinels(inputs, targets, SENTINELS, EOS) == block
    noise, spans = noise_span_counts(length, 0.15, 3.0)
    used = [t for t in inputs if t in SENTINELS]
    assert used == SENTINELS[:spans]  # <extra_id_0>, <extra_id_1>, ... in order
    assert len(targets) == noise + spans + 1 and len(inputs) == length - noise + spans + 1


def test_noise_mask_counts_and_layout():
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = random_spans_noise_mask(100, 0.15, 3.0, rng)
        starts = mask & ~np.concatenate([[False], mask[:-1]])
        assert mask.sum() == 15 and starts.sum() == 5  # round(100 * 0.15) tokens in round(15 / 3) spans
        assert not mask[0] and mask[-1]  # non-noise first, noise last (run_t5_mlm_flax's layout)


def test_span_corruption_lengths_fill_the_encoder_exactly():
    for input_length in (16, 32, 128, 512):
        raw, target = span_corruption_lengths(input_length, 0.15, 3.0)
        inputs, targets = span_corruption(list(range(10, 10 + raw)), SENTINELS, EOS, 0.15, 3.0,
                                          np.random.default_rng(0))
        assert len(inputs) == input_length and len(targets) == target
    assert span_corruption_lengths(512, 0.15, 3.0) == (568, 114)  # the numbers run_t5_mlm_flax.py gets


def test_text_infilling_masks_each_span_once_and_targets_the_whole_text():
    rng = np.random.default_rng(3)
    block = list(range(10, 50))
    inputs, target = text_infilling(block, 4, 0.3, 3.0, rng)
    assert target == block
    noise, spans = noise_span_counts(40, 0.3, 3.0)
    assert inputs.count(4) == spans and len(inputs) == 40 - noise + spans
    assert [t for t in inputs if t != 4] == [t for t in block if t in inputs]  # kept tokens, in order


def test_causal_lm_labels_keep_eos_even_when_it_is_the_pad_token():
    collator = ObjectiveCollator("causal-lm", eos_id=2, pad_id=2)  # SmolLM2: pad = eos = <|im_end|>
    batch = collator([{"input_ids": [5, 6, 2, 7]}, {"input_ids": [2, 8, 9, 10]}])
    assert batch["labels"].tolist() == batch["input_ids"].tolist() == [[5, 6, 2, 7], [2, 8, 9, 10]]
    assert batch["attention_mask"].sum() == 8


def test_token_budget_plans_whole_steps_and_caps_passes():
    plan = plan_steps(train_blocks=10, raw_block=32, effective_batch=4, max_tokens=1000, max_epochs=None)
    assert (plan.steps, plan.passes, plan.stopped_by) == (7, 2.8, "token budget")  # 1000 // (4 x 32)
    capped = plan_steps(10, 32, 4, 1000, max_epochs=1)
    assert capped.steps == 2 and capped.stopped_by.startswith("max_epochs")  # floor(10 / 4)
    assert plan_steps(10, 32, 4, 10, None).steps == 1  # at least one step


@pytest.mark.parametrize("family, requested, expected", [
    ("llama", "auto", "causal-lm"), ("llama", "causal-lm", "causal-lm"), ("t5", "auto", "span-corruption"),
    ("bart", "auto", "text-infilling"), ("t5", "text-infilling", "text-infilling"),
    ("llama", "span-corruption", "for encoder-decoder models"), ("t5", "causal-lm", "for decoder-only models"),
    ("bart", "span-corruption", "not a T5-family"), ("bert", "auto", "is an encoder"),
])
def test_objective_follows_the_family(family, requested, expected):
    from lmtailor.models.tiny import build_tiny_tokenizer, tiny_config

    config = tiny_config(family, build_tiny_tokenizer(family))
    if " " in expected:
        with pytest.raises(UserError, match=expected):
            resolve_objective(requested, config)
    else:
        assert resolve_objective(requested, config) == expected


# --- the strategy end to end ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A JSONL corpus of the tiny models' own training text: a few thousand tokens, one paragraph per document."""
    from lmtailor.models.tiny import CORPUS

    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    paragraphs = [p for p in CORPUS.split("\n\n") if p.strip()]
    path.write_text("\n".join(json.dumps({"text": p, "id": f"p{i}"}) for i, p in enumerate(paragraphs)))
    return path


@dataclass
class Run:
    output: StrategyOutput
    meter: Meter


def _run(cfg: dict, model_ref: str, out_dir: Path, corpus: Path) -> Run:
    config = ContinuedPretrainingConfig.model_validate({"name": "continued-pretraining", "corpus": str(corpus),
                                                        **cfg})  # a corpus in ``cfg`` wins
    meter = Meter()
    ctx = RunContext(task=TASK, data=SPLITS, model_ref=model_ref, budget=BUDGET, seed=0, meter=meter,
                     out_dir=out_dir, runtime=CPU)
    with meter:
        output = ContinuedPretrainingStrategy(config).run(ctx)
    return Run(output, meter)


PHASE = {"max_tokens": 3000, "block_size": 32, "batch_size": 4, "logging_steps": 1}


@pytest.fixture(scope="module")
def llama_full(tiny_llama_dir, corpus, tmp_path_factory) -> Run:
    cfg = {**PHASE, "method": "full", "learning_rate": 3e-3, "finetune": {"method": "lora", "epochs": 1}}
    return _run(cfg, "tiny-llama", tmp_path_factory.mktemp("llama-full"), corpus)


@pytest.fixture(scope="module")
def t5_lora(tiny_t5_dir, corpus, tmp_path_factory) -> Run:
    cfg = {**PHASE, "method": "lora", "learning_rate": 1e-2, "target_modules": ["q", "v"],
           "finetune": {"method": "full", "epochs": 1}}
    return _run(cfg, "tiny-t5", tmp_path_factory.mktemp("t5-lora"), corpus)


def test_continued_pretraining_lowers_the_loss_on_a_decoder(llama_full):
    pre = llama_full.output.details["pretrain"]
    assert pre["objective"] == "causal-lm" and pre["method"] == "full"
    assert pre["last_train_loss"] < pre["first_train_loss"] - 0.3
    assert pre["held_out_loss_after"] < pre["held_out_loss_before"] - 0.3
    assert pre["held_out_blocks"] > 0 and pre["corpus"]["documents"] > 10


def test_the_token_budget_is_counted_exactly(llama_full):
    pre, m = llama_full.output.details["pretrain"], llama_full.meter
    # 3000 corpus tokens in steps of 4 blocks of 32 = 23 steps; a batch at the end of a pass can be short
    assert pre["steps"] == 3000 // (4 * 32)
    assert pre["corpus_tokens_trained"] <= pre["steps"] * 4 * 32 and pre["corpus_tokens_trained"] % 32 == 0
    # causal LM: every corpus token goes through the model once per pass, and nothing else does
    assert m.phases["pretrain"].tokens == pre["tokens_processed"] == pre["corpus_tokens_trained"]
    assert m.phases["pretrain"].examples == pre["corpus_tokens_trained"] // 32
    assert pre["passes"] == pytest.approx(pre["corpus_tokens_trained"] / 32 / pre["train_blocks"], abs=1e-3)
    assert pre["corpus"]["stream_tokens"] == pre["corpus"]["blocks"] * 32 + pre["corpus"]["dropped_tail_tokens"]
    assert m.flops["pretrain"] == pytest.approx(6 * pre["total_params"] * pre["tokens_processed"])
    assert m.total_params == pre["total_params"] + m.trainable_params  # the fine-tuning phase adds its adapter


def test_both_phases_are_measured_separately_and_together(llama_full):
    d, m = llama_full.output.details, llama_full.meter
    assert m.phases["pretrain"].wall_s > 0 and m.phases["train"].wall_s > 0 and m.phases["train"].tokens > 0
    assert d["times"]["setup_s"] == pytest.approx(d["times"]["pretrain_s"] + d["times"]["finetune_s"], abs=2e-3)
    assert d["finetune"]["method"] == "lora" and d["finetune"]["steps"] > 0 and "inference" in d
    assert len(llama_full.output.predictions) == len(SPLITS.test)
    # the LoRA adapter is saved with the continued-pretrained model it was trained on
    assert set(llama_full.output.artifacts) == {"pretrained_model", "adapter"}
    assert m.artifacts["pretrained_model"] > 0


def test_the_adapter_reloads_on_the_saved_pretrained_model(llama_full, tiny_llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    arts = llama_full.output.artifacts
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    pretrained = AutoModelForCausalLM.from_pretrained(arts["pretrained_model"], dtype=torch.float32)
    moved = [n for n, p in pretrained.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert len(moved) == len(list(base.parameters()))  # full pre-training moved every weight
    PeftModel.from_pretrained(pretrained, arts["adapter"])  # loads cleanly: same architecture and names


def test_span_corruption_lora_on_t5_lowers_the_loss_and_merges(t5_lora, tiny_t5_dir):
    pre, m = t5_lora.output.details["pretrain"], t5_lora.meter
    assert pre["objective"] == "span-corruption" and pre["method"] == "lora"
    assert pre["held_out_loss_after"] < pre["held_out_loss_before"] - 0.3
    assert pre["last_train_loss"] < pre["first_train_loss"]
    assert pre["input_tokens_per_block"] == 32 and pre["corpus_tokens_per_block"] == 34  # T5's expanded length
    assert pre["sentinels_added"] == 100  # the tiny T5 tokenizer has no <extra_id_N>
    # an encoder-decoder processes the inputs and the targets: 32 + 8 tokens per block of 34 corpus tokens
    assert pre["tokens_processed"] == pre["corpus_tokens_trained"] // 34 * (32 + 8)
    assert pre["lora"]["target_modules"] == ["q", "v"] and pre["trainable_params"] < pre["total_params"]
    assert m.flops["pretrain"] == pytest.approx((4 * pre["total_params"] + 2 * pre["trainable_params"])
                                                * pre["tokens_processed"])
    # full fine-tuning after merged LoRA trains every weight (the merge left none frozen)
    assert m.trainable_params == m.total_params and set(t5_lora.output.artifacts) == {"model"}
    assert t5_lora.output.details["finetune"]["method"] == "full"


def test_text_infilling_on_bart_lowers_the_loss(corpus, tmp_path):
    from lmtailor.models.tiny import tiny_model_dir

    tiny_model_dir("bart")
    cfg = {**PHASE, "max_tokens": 1500, "method": "full", "learning_rate": 3e-3,
           "finetune": {"method": "lora", "max_steps": 1}}
    pre = _run(cfg, "tiny-bart", tmp_path, corpus).output.details["pretrain"]
    assert pre["objective"] == "text-infilling" and pre["noise_density"] == 0.3
    assert pre["held_out_loss_after"] < pre["held_out_loss_before"]


# --- configuration -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", [{"name": "ia3"}, {"name": "dora", "r": 4, "alpha": 8}])
def test_any_merging_method_of_the_registry_pre_trains(method, tiny_llama_dir, corpus, tmp_path):
    """IA3 and DoRA (neither could pre-train before the registry) train adapters on the corpus, which are merged
    before fine-tuning: the held-out loss falls and the fine-tuning phase starts from plain weights."""
    cfg = {**PHASE, "max_tokens": 1500, "method": method, "learning_rate": 1e-2,
           "finetune": {"method": "lora", "max_steps": 1}}
    run = _run(cfg, "tiny-llama", tmp_path, corpus)
    pre = run.output.details["pretrain"]
    assert pre["method"] == method["name"] and pre["steps"] == 1500 // (32 * 4)  # 11 whole steps of 4 blocks
    assert pre["held_out_loss_after"] < pre["held_out_loss_before"]
    adapter = pre["lora"] if method["name"] == "dora" else pre["peft"]
    assert adapter["merged"] == "into the weights before fine-tuning"
    if method["name"] == "dora":
        assert (adapter["r"], adapter["alpha"]) == (4, 8)
    else:
        assert adapter["peft_type"] == "IA3"
    assert 0 < pre["trainable_params"] < pre["total_params"]  # only the adapter trained
    assert run.output.details["finetune"]["method"] == "lora" and run.output.details["finetune"]["steps"] == 1
    label = ContinuedPretrainingStrategy(ContinuedPretrainingConfig.model_validate(
        {"name": "continued-pretraining", "method": method, "finetune": {"method": "lora"}})).label()
    assert label == f"continued PT ({'IA3' if method['name'] == 'ia3' else 'DoRA'}) + LoRA"


def _config(**kw) -> ContinuedPretrainingConfig:
    return ContinuedPretrainingConfig.model_validate({"name": "continued-pretraining", **kw})


def test_labels_and_the_nested_finetune_block():
    assert STRATEGIES.get("continued-pretraining") is ContinuedPretrainingStrategy
    label = ContinuedPretrainingStrategy(_config(method="lora", finetune={"method": "lora"})).label()
    assert label == "continued PT (LoRA) + LoRA"
    cfg = _config(method="full", finetune={"method": "full", "epochs": 2, "train_sizes": [4, 8]})
    assert ContinuedPretrainingStrategy(cfg).label() == "continued PT (full) + full FT"
    assert cfg.finetune.epochs == 2 and cfg.train_sizes == [4, 8]  # the runner's learning curve
    # the config as written back out (the nested block carries its name) validates again
    assert ContinuedPretrainingConfig.model_validate(cfg.model_dump(mode="json", exclude_unset=True)) == cfg


@pytest.mark.parametrize("kw, message", [
    ({"method": "full", "lora_r": 8}, "do not apply to method: full"),
    ({"method": "lora", "finetune": {"method": "lora", "label": "x"}}, "finetune.label is a setting"),
    ({"method": "lora", "finetune": {"method": "lora", "name": "prompt"}}, "finetune.name is a setting"),
    ({"method": "lora", "finetune": {"method": "lora", "lora_r": 4, "shots": 2}}, "shots"),
    ({"method": "lora", "finetune": {"method": "full", "lora_r": 4}}, "do not apply to method: full"),
    ({"method": "lora", "noise_density": 0.9}, "noise_density"),
    ({"method": "lora", "max_tokens": 0}, "max_tokens"),
    ({"method": "prefix"}, "prefix cannot pre-train: its adapter does not merge"),
    ({"method": {"name": "prompt-tuning"}}, "prompt-tuning cannot pre-train"),
    ({"method": "lorra"}, "Did you mean 'lora'"),
    ({}, "method"),
])
def test_bad_configs_are_refused(kw, message):
    with pytest.raises(ValidationError, match=message):
        _config(**kw)


@pytest.mark.parametrize("model_ref, kw, message", [
    ("tiny-bert", {}, "tiny-bert is an encoder"),
    ("tiny-llama", {"noise_density": 0.2}, "noise_density apply to the denoising objectives"),
    ("tiny-llama", {"block_size": 1024}, "longer than the model's 512 positions"),
    ("tiny-llama", {"corpus": "task:test"}, "the only corpus made from the task's data is task:train"),
    ("tiny-llama", {"corpus": "no/such/folder"}, "no such folder or file"),
    ("tiny-t5", {"objective": "causal-lm"}, "causal-lm is for decoder-only models"),
])
def test_bad_runs_fail_with_clear_errors(tiny_llama_dir, tiny_t5_dir, tiny_bert_dir, tmp_path, corpus, model_ref, kw,
                                         message):
    with pytest.raises(UserError, match=message):
        _run({**PHASE, "method": "full", **kw}, model_ref, tmp_path, corpus)


def test_task_train_corpus_trains_on_training_rows_only(tiny_llama_dir, tmp_path):
    cfg = {"max_tokens": 256, "block_size": 16, "batch_size": 4, "method": "full", "validation_blocks": 0,
           "finetune": {"method": "lora", "max_steps": 1}}
    pre = _run(cfg, "tiny-llama", tmp_path, Path("task:train")).output.details["pretrain"]
    assert pre["corpus"]["source"] == "task:train" and pre["corpus"]["documents"] == len(SPLITS.train)
    assert pre["held_out_blocks"] == 0 and pre["held_out_loss_before"] is None
