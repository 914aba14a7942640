"""Pre-training from scratch: sizing a model of the base's family to a parameter budget (counted exactly), and the
strategy end to end on tiny models, with the tokens-per-parameter ratio in the record and errors for bad configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from lmtailor.core.budget import Budget
from lmtailor.core.context import RunContext
from lmtailor.errors import UserError
from lmtailor.measure.meter import Meter
from lmtailor.models.sizing import count_params, human_count, parse_param_count, size_model
from lmtailor.strategies import STRATEGIES
from lmtailor.strategies.scratch import ScratchConfig, ScratchStrategy

from colours import CPU, TASK, colour_splits

BUDGET = Budget(max_input_tokens=32, max_new_tokens=6, max_seq_len=128, eval_batch_size=8)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SPLITS = colour_splits(12, 4, 4)


# --- sizing --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, count", [("10M", 10_000_000), ("1.5m", 1_500_000), ("500K", 500_000),
                                         ("2B", 2_000_000_000), ("10_000", 10_000), (123, 123)])
def test_parameter_counts_parse(text, count):
    assert parse_param_count(text) == count


@pytest.mark.parametrize("bad", ["ten", "10 MB", "-5M", 0, True, ""])
def test_bad_parameter_counts_are_refused(bad):
    with pytest.raises(UserError, match="parameter count"):
        parse_param_count(bad)


def test_human_counts():
    assert [human_count(n) for n in (999, 1500, 9_873_920, 135_000_000, 2e9)] == ["999", "1.5K", "9.9M", "135M",
                                                                                  "2B"]


def _tiny_config(family: str):
    from lmtailor.models.tiny import build_tiny_tokenizer, tiny_config

    tokenizer = build_tiny_tokenizer(family)
    return tiny_config(family, tokenizer), len(tokenizer)


def _smollm_like():
    """SmolLM2-135M's shape (grouped-query attention, tied embeddings, 49,152 tokens), built from its numbers."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True,
                       max_position_embeddings=8192), 49152


def _gemma3_like():
    """Gemma 3 270M's shape: 4 heads of 256 in a width of 640, one key-value head, 5 sliding layers per global one."""
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                            num_attention_heads=4, num_key_value_heads=1, head_dim=256), 262144


@pytest.mark.parametrize("make, target", [
    (lambda: _tiny_config("llama"), 60_000), (lambda: _tiny_config("llama"), 300_000),
    (lambda: _tiny_config("llama"), 1_000_000), (lambda: _tiny_config("t5"), 150_000),
    (lambda: _tiny_config("t5"), 1_000_000), (lambda: _tiny_config("bart"), 300_000),
    (_smollm_like, 10_000_000), (_smollm_like, 50_000_000), (_gemma3_like, 80_000_000),
])
def test_sized_model_is_within_ten_percent_of_the_target(make, target):
    base, vocab = make()
    sized = size_model(base, target, vocab)
    assert abs(sized.params / target - 1) <= 0.10
    assert sized.config.vocab_size == vocab and type(sized.config) is type(base)
    assert count_params(sized.config)[0] == sized.params
    if getattr(sized.config, "layer_types", None) is not None:  # Gemma 3's attention pattern, one per layer
        assert len(sized.config.layer_types) == sized.config.num_hidden_layers
        assert sized.config.layer_types[5] == "full_attention"


def test_parameter_count_is_exact_on_a_real_model():
    from transformers import AutoModelForCausalLM

    base, vocab = _tiny_config("llama")
    sized = size_model(base, 300_000, vocab)
    model = AutoModelForCausalLM.from_config(sized.config)  # real weights, not meta
    total = sum(p.numel() for p in model.parameters())
    assert sized.params == total
    embedding = model.get_input_embeddings().weight.numel()  # tied: input and output embeddings are one tensor
    assert sized.non_embedding_params == total - embedding


def test_the_base_size_gives_the_base_shape():
    base, vocab = _smollm_like()
    sized = size_model(base, 134_515_008, vocab)  # SmolLM2-135M's own count
    assert (sized.hidden, sized.layers, sized.shape.heads, sized.shape.kv_heads, sized.shape.ffn) == \
        (576, 30, 9, 3, 1536)
    assert sized.params == 134_515_008


def test_too_small_a_target_is_an_error_or_the_smallest_model():
    base, vocab = _smollm_like()
    with pytest.raises(UserError, match=r"below the smallest llama .* 49,152-token vocabulary"):
        size_model(base, 1_000_000, vocab)
    smallest = size_model(base, 1_000_000, vocab, min_layers=2, at_least_smallest=True)
    assert (smallest.hidden, smallest.layers, smallest.shape.heads) == (64, 2, 1)


def test_unknown_families_are_refused():
    from transformers import GPT2Config

    with pytest.raises(UserError, match="model type 'gpt2' is none of them"):
        size_model(GPT2Config(), 1_000_000, 50257)


# --- the strategy end to end ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from lmtailor.models.tiny import CORPUS

    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    paragraphs = [p for p in CORPUS.split("\n\n") if p.strip()]
    path.write_text("\n".join(json.dumps({"text": p}) for p in paragraphs))
    return path


PHASE = {"max_tokens": 3000, "block_size": 32, "batch_size": 4, "logging_steps": 1}


def _run(cfg: dict, model_ref: str, out_dir: Path, corpus: Path):
    config = ScratchConfig.model_validate({"name": "scratch", "corpus": str(corpus), **cfg})
    meter = Meter()
    ctx = RunContext(task=TASK, data=SPLITS, model_ref=model_ref, budget=BUDGET, seed=0, meter=meter,
                     out_dir=out_dir, runtime=CPU)
    with meter:
        output = ScratchStrategy(config).run(ctx)
    return output, meter


@pytest.fixture(scope="module")
def llama_run(tiny_llama_dir, corpus, tmp_path_factory):
    cfg = {**PHASE, "params": "150K", "finetune": {"method": "full", "epochs": 1}}
    return _run(cfg, "tiny-llama", tmp_path_factory.mktemp("scratch-llama"), corpus)


def test_scratch_llama_is_sized_trained_and_reported(llama_run):
    output, meter = llama_run
    s, pre = output.details["scratch"], output.details["pretrain"]
    assert abs(s["params"] / 150_000 - 1) <= 0.10 and s["target_params"] == 150_000
    assert s["vocab_size"] == 512 and s["model_type"] == "llama" and s["sized_by"] == "params"
    assert s["tokens"] == pre["corpus_tokens_trained"] > 0
    assert s["tokens_per_param"] == pytest.approx(s["tokens"] / s["params"], abs=1e-4)
    assert s["chinchilla_tokens_per_param"] == 20
    assert pre["method"] == "full" and pre["total_params"] == pre["trainable_params"] == s["params"]
    assert pre["held_out_loss_after"] < pre["held_out_loss_before"] - 0.2
    assert pre["last_train_loss"] < pre["first_train_loss"] - 0.2
    assert meter.phases["pretrain"].tokens == pre["tokens_processed"] and meter.flops["pretrain"] > 0
    assert meter.total_params == s["params"]  # the fine-tuned model is the scratch one
    assert len(output.predictions) == len(SPLITS.test) and set(output.artifacts) == {"model"}


def test_the_scratch_model_starts_random_and_reloads(llama_run, tiny_llama_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    output, _ = llama_run
    saved = AutoConfig.from_pretrained(output.artifacts["model"])
    base = AutoConfig.from_pretrained(tiny_llama_dir)
    shape = output.details["scratch"]["shape"]
    assert (saved.hidden_size, saved.num_hidden_layers) == (shape["hidden"], shape["layers"])
    assert saved.model_type == base.model_type and saved.vocab_size == base.vocab_size
    model = AutoModelForCausalLM.from_pretrained(output.artifacts["model"], dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) == output.details["scratch"]["params"]


def test_scratch_t5_trains_with_span_corruption(tiny_t5_dir, corpus, tmp_path):
    cfg = {**PHASE, "params": "150K", "finetune": {"method": "lora", "max_steps": 2}}
    output, meter = _run(cfg, "tiny-t5", tmp_path, corpus)
    s, pre = output.details["scratch"], output.details["pretrain"]
    assert pre["objective"] == "span-corruption" and s["model_type"] == "t5"
    assert s["vocab_size"] == 512 + 100  # the base tokenizer plus the sentinels span corruption needs
    assert abs(s["params"] / 150_000 - 1) <= 0.10
    assert pre["held_out_loss_after"] < pre["held_out_loss_before"] - 0.2
    assert set(output.artifacts) == {"pretrained_model", "adapter"}  # a LoRA fine-tune keeps its base


def test_default_size_follows_the_token_budget(tiny_llama_dir, corpus, tmp_path):
    cfg = {**PHASE, "max_tokens": 400, "finetune": {"method": "full", "max_steps": 1}}
    output, _ = _run(cfg, "tiny-llama", tmp_path, corpus)
    s = output.details["scratch"]
    # 400 tokens / 20 = 20 parameters: far below any model with a 512-token vocabulary, so the smallest one
    assert s["target_params"] == 20 and s["sized_by"] == "smallest model this vocabulary allows"
    assert s["shape"]["layers"] == 2 and s["shape"]["heads"] == 1
    assert ScratchStrategy(ScratchConfig(name="scratch")).label() == "scratch (20 tok/param) + full FT"


# --- configuration -------------------------------------------------------------------------------------------------

def test_labels_and_defaults():
    assert STRATEGIES.get("scratch") is ScratchStrategy
    cfg = ScratchConfig.model_validate({"name": "scratch", "params": "10M"})
    assert ScratchStrategy(cfg).label() == "scratch 10M + full FT"
    assert cfg.weight_decay == 0.1 and cfg.finetune.method.name == "full"
    lora = ScratchConfig.model_validate({"name": "scratch", "params": 2_000_000, "finetune": {"method": "lora"}})
    assert ScratchStrategy(lora).label() == "scratch 2M + LoRA"


@pytest.mark.parametrize("kw, message", [
    ({"params": "ten"}, "not a parameter count"), ({"params": 0}, "must be positive"),
    ({"method": "lora"}, "method"), ({"finetune": {"method": "lora", "models": ["x"]}}, "finetune.models"),
])
def test_bad_configs_are_refused(kw, message):
    with pytest.raises(ValidationError, match=message):
        ScratchConfig.model_validate({"name": "scratch", **kw})


@pytest.mark.parametrize("model_ref, kw, message", [
    ("tiny-bert", {}, "tiny-bert is an encoder"),
    ("tiny-llama", {"params": "1K"}, "below the smallest llama"),
    ("tiny-llama", {"params": "1M", "mean_noise_span_length": 2}, "apply to the denoising objectives"),
])
def test_bad_runs_fail_with_clear_errors(tiny_llama_dir, tiny_bert_dir, corpus, tmp_path, model_ref, kw, message):
    with pytest.raises(UserError, match=message):
        _run({**PHASE, **kw}, model_ref, tmp_path, corpus)
