"""`lmtailor export`: merged models and GGUF files that plain transformers / peft load and that predict the same as
the row's base + adapter; clear refusals; and guards for safe loading across the whole package."""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lmtailor
from lmtailor.errors import UserError
from lmtailor.export.cli import add_export_parser
from lmtailor.export.exporter import export_row
from lmtailor.export.gguf_export import export_gguf, permute_rows
from lmtailor.export.gguf_tokenizer import pre_tokenizer_name
from lmtailor.export.run_rows import select_row

from colours import CPU, TASK, colour_splits

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROBE = ["the river red stone", "one two blue cloud quiet <|im_end|>"]
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


# --- building run directories -------------------------------------------------------------------------------------

def write_record(run_dir: Path, row_id: str, model: str, *, status: str = "ok", artifacts: dict | None = None,
                 details: dict | None = None, strategy: str = "finetune", label: str = "LoRA", index: int = 0) -> None:
    """A result record as runner.run_row writes it (artifact paths relative to the run directory)."""
    record = {"schema_version": 1, "row_id": row_id, "row_index": index, "label": label, "strategy": strategy,
              "model": model, "status": status, "details": details or {},
              "artifacts": {k: str(Path(v).relative_to(run_dir)) for k, v in (artifacts or {}).items()},
              "error": None if status == "ok" else {"type": "RuntimeError", "message": "boom", "traceback": ""}}
    (run_dir / "results").mkdir(parents=True, exist_ok=True)
    (run_dir / "results" / f"{row_id}.json").write_text(json.dumps(record))


def save_random_adapter(model, peft_config, tokenizer, out: Path, seed: int = 0) -> Path:
    """Wrap ``model`` with a PEFT config whose weights start random (non-zero), save adapter and tokenizer."""
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, peft_config)
    peft_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def logits(model, tokenizer, texts=PROBE, **kw) -> torch.Tensor:
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.eval()(**batch, **kw)
    return out.logits


def no_pickles(path: Path) -> list[Path]:
    return [p for p in Path(path).rglob("*") if p.suffix in PICKLE_SUFFIXES]


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in Path(parent).iterdir() if ".tmp" in p.name or ".old-" in p.name]


@pytest.fixture(scope="module")
def run_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    """A run directory: a real LoRA finetune row on tiny-llama, a full-model row, a prompt row and a failed row."""
    from lmtailor.core.budget import Budget
    from lmtailor.core.context import RunContext
    from lmtailor.measure.meter import Meter
    from lmtailor.strategies.finetune import FinetuneConfig, FinetuneStrategy

    run = tmp_path_factory.mktemp("run")
    row = "lora__tiny-llama__s0"
    cfg = FinetuneConfig.model_validate({"name": "finetune", "method": "lora", "max_steps": 3, "batch_size": 4,
                                         "learning_rate": 2e-2, "eval_strategy": "no", "logging_steps": 1})
    ctx = RunContext(task=TASK, data=colour_splits(12, 3, 3), model_ref="tiny-llama",
                     budget=Budget(max_input_tokens=32, max_new_tokens=4, max_seq_len=96, eval_batch_size=8),
                     seed=0, meter=Meter(), out_dir=run / "artifacts" / row, runtime=CPU)
    with ctx.meter:
        output = FinetuneStrategy(cfg).run(ctx)
    write_record(run, row, "tiny-llama", artifacts=output.artifacts, details={"method": "lora"})
    write_record(run, "zero-shot__tiny-llama__s0", "tiny-llama", strategy="prompt", label="zero-shot", index=1)
    write_record(run, "full-ft__tiny-llama__s0", "tiny-llama", status="failed", label="full FT", index=2)
    return run


LORA_ROW = "lora__tiny-llama__s0"


@pytest.fixture(scope="module")
def merged(run_dir) -> Path:
    return export_row(run_dir, LORA_ROW, merge=True).model.path


# --- merge ---------------------------------------------------------------------------------------------------------

def test_merged_model_loads_with_plain_transformers_and_predicts_like_base_plus_adapter(run_dir, merged,
                                                                                       tiny_llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    adapter = run_dir / "artifacts" / LORA_ROW / "adapter"
    assert merged == run_dir / "export" / LORA_ROW / "merged"
    tokenizer = AutoTokenizer.from_pretrained(merged)
    plain = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    assert type(plain) is LlamaForCausalLM  # an ordinary model: no PEFT wrapper, no adapter modules
    assert not any("lora" in name for name, _ in plain.named_parameters())
    # the adapter directory itself loads with plain PEFT on the plain base
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, adapter)
    expected = logits(with_adapter, tokenizer)
    torch.testing.assert_close(logits(plain, tokenizer), expected, atol=1e-5, rtol=1e-5)
    untouched = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    assert (logits(untouched, tokenizer) - expected).abs().max() > 1e-3  # the adapter changed something
    info = json.loads((merged / "lmtailor_export.json").read_text())
    assert info["row_id"] == LORA_ROW and info["peft_type"] == "LORA" and info["base_model"] == "tiny-llama"
    assert (merged / "model.safetensors").is_file() and (merged / "chat_template.jinja").is_file()
    assert leftovers(merged.parent) == []


def test_nothing_in_the_run_or_its_exports_is_a_pickle(run_dir, merged):
    assert no_pickles(run_dir) == []  # artifacts (adapter, tokenizer) and exports alike


def test_an_existing_export_is_kept_unless_overwrite(run_dir, merged):
    before = (merged / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(UserError, match="already exists.*--overwrite"):
        export_row(run_dir, LORA_ROW, merge=True)
    assert (merged / "model.safetensors").stat().st_mtime_ns == before
    again = export_row(run_dir, LORA_ROW, merge=True, overwrite=True).model.path
    assert again == merged and (merged / "model.safetensors").stat().st_mtime_ns != before
    assert leftovers(merged.parent) == []


def test_row_selection_names_the_choices(run_dir, tmp_path):
    assert select_row(run_dir).row_id == LORA_ROW  # the only trained row may be left out
    with pytest.raises(UserError, match="Did you mean lora__tiny-llama__s0"):
        select_row(run_dir, "lora__tiny-lama__s0")
    with pytest.raises(UserError, match="(?s)saved no adapter or model.*lora__tiny-llama__s0"):
        select_row(run_dir, "zero-shot__tiny-llama__s0")
    with pytest.raises(UserError, match="did not finish.*boom"):
        select_row(run_dir, "full-ft__tiny-llama__s0")
    two = tmp_path / "two"
    for i, row in enumerate(["a", "b"]):
        (two / "artifacts" / row / "model").mkdir(parents=True)
        write_record(two, row, "tiny-llama", artifacts={"model": two / "artifacts" / row / "model"}, index=i)
    with pytest.raises(UserError, match=r"2 trained rows; choose one with --row:\n  a .*\n  b "):
        select_row(two)
    with pytest.raises(UserError, match="no results"):
        select_row(tmp_path)


def test_what_is_on_disk_decides_the_kind_of_artifact(run_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    saved = run / "artifacts" / "r" / "model"
    shutil.copytree(run_dir / "artifacts" / LORA_ROW / "adapter", saved)  # a PEFT adapter under the name "model"
    write_record(run, "r", "tiny-llama", artifacts={"model": saved})
    assert select_row(run).kind == "adapter" and select_row(run).is_peft
    bottleneck = run / "artifacts" / "b" / "adapter"  # AdapterHub's layout: its own config, no peft_type
    bottleneck.mkdir(parents=True)
    (bottleneck / "adapter_config.json").write_text(json.dumps({"config": {"architecture": "bottleneck"}}))
    write_record(run, "b", "tiny-llama", artifacts={"adapter": bottleneck}, details={"method": "adapter"}, index=1)
    assert not select_row(run, "b").is_peft
    with pytest.raises(UserError, match="not a PEFT adapter"):
        export_row(run, "b", merge=True)


def test_full_model_rows_are_already_standalone(tiny_llama_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    model_dir = run / "artifacts" / "full" / "model"
    shutil.copytree(tiny_llama_dir, model_dir)
    write_record(run, "full", "tiny-llama", artifacts={"model": model_dir}, details={"method": "full"})
    result = export_row(run, merge=True)
    assert result.model.path == model_dir and not result.model.merged
    assert not (run / "export").exists()  # nothing copied
    gguf_file = export_row(run, gguf=True, gguf_type="f32").gguf.path  # straight from the model directory
    assert gguf_file == run / "export" / "full" / "full.f32.gguf" and not (run / "export" / "full" / "merged").exists()


# --- GGUF ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("gguf_type", "tolerance"), [("f32", 1e-6), ("f16", 2e-3), ("q8_0", 3e-2)])
def test_gguf_loads_back_with_transformers_with_the_merged_logits(run_dir, merged, gguf_type, tolerance):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = export_row(run_dir, LORA_ROW, gguf=True, gguf_type=gguf_type)  # reuses the merged directory
    path = result.gguf.path
    assert path == run_dir / "export" / LORA_ROW / f"{LORA_ROW}.{gguf_type}.gguf" and result.model.path == merged
    assert leftovers(path.parent) == []
    reference = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    hf_tokenizer = AutoTokenizer.from_pretrained(merged)
    from_gguf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    gguf_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    sample = "The quick brown fox, 1999-12-31 <|im_start|>user\nhello<|im_end|>"
    assert gguf_tokenizer(sample)["input_ids"] == hf_tokenizer(sample)["input_ids"]
    messages = [{"role": "user", "content": "hi"}]
    assert (gguf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            == hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    expected = logits(reference, hf_tokenizer)
    got = logits(from_gguf, hf_tokenizer)
    # measured: f32 exact, f16 ~6e-4, q8_0 ~7e-3 of the largest logit; unpermuted Q/K rows would give ~8e-3
    assert (got - expected).abs().max() <= tolerance * expected.abs().max()


def test_gguf_sizes_follow_the_type(run_dir, merged):
    sizes = {t: export_row(run_dir, LORA_ROW, gguf=True, gguf_type=t, overwrite=True).gguf.bytes
             for t in ("f32", "f16", "q8_0")}
    assert sizes["q8_0"] < sizes["f16"] < sizes["f32"]


def test_permutation_is_llama_cpps():
    rows = np.arange(4, dtype=np.float32).reshape(4, 1)  # one head of 4 rows: halves (0,1),(2,3) -> pairs
    assert permute_rows(rows, heads=1)[:, 0].tolist() == [0, 2, 1, 3]
    two_heads = np.arange(8, dtype=np.float32)
    assert permute_rows(two_heads, heads=2).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_gguf_holds_permuted_query_and_key_rows(merged, tmp_path):
    import gguf
    from safetensors.torch import load_file

    path = export_gguf(merged, tmp_path / "m.gguf", "f32").path
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    weights = load_file(str(merged / "model.safetensors"))
    q = weights["model.layers.0.self_attn.q_proj.weight"].numpy()
    k = weights["model.layers.0.self_attn.k_proj.weight"].numpy()
    assert np.array_equal(np.asarray(tensors["blk.0.attn_q.weight"].data).reshape(q.shape), permute_rows(q, 4))
    assert np.array_equal(np.asarray(tensors["blk.0.attn_k.weight"].data).reshape(k.shape), permute_rows(k, 2))
    v = weights["model.layers.0.self_attn.v_proj.weight"].numpy()
    assert np.array_equal(np.asarray(tensors["blk.0.attn_v.weight"].data).reshape(v.shape), v)
    assert "output.weight" not in tensors  # tied to the token embedding, as the config says


def _tiny_decoder(kind: str, tokenizer):
    from transformers import AutoModelForCausalLM, MistralConfig, Qwen2Config

    shape = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                 tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = Qwen2Config(**shape) if kind == "qwen2" else MistralConfig(**shape, sliding_window=None)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # Qwen2's q/k/v biases start at zero: make them count
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_()
    return model


@pytest.mark.parametrize("kind", ["qwen2", "mistral"])
def test_other_llama_family_layouts_round_trip(kind, tmp_path):
    from transformers import AutoModelForCausalLM

    from lmtailor.models.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer("llama")
    model = _tiny_decoder(kind, tokenizer)
    model_dir = tmp_path / f"tiny-{kind}"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    path = export_gguf(model_dir, tmp_path / "out" / "m.gguf", "f32").path
    from_gguf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    assert not from_gguf.config.tie_word_embeddings
    torch.testing.assert_close(logits(from_gguf, tokenizer), logits(model, tokenizer), atol=1e-5, rtol=1e-5)


def test_gguf_refuses_what_it_cannot_write(tiny_t5_dir, tiny_llama_dir, tmp_path):
    import shutil

    with pytest.raises(UserError, match="decoder-only.*encoder-decoder.*convert_hf_to_gguf.py"):
        export_gguf(tiny_t5_dir, tmp_path / "t5.gguf")
    scaled = tmp_path / "scaled"
    shutil.copytree(tiny_llama_dir, scaled)
    config = json.loads((scaled / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    (scaled / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="'linear' rope scaling.*convert_hf_to_gguf.py"):
        export_gguf(scaled, tmp_path / "scaled.gguf")
    config.update(model_type="gemma3_text", architectures=["Gemma3ForCausalLM"])
    config.pop("rope_parameters")
    (scaled / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="'gemma3_text' is not one lmtailor writes.*llama.*qwen2.*convert_hf"):
        export_gguf(scaled, tmp_path / "gemma.gguf")
    with pytest.raises(UserError, match="gguf-type 'q4_k'"):
        export_row(tmp_path, gguf=True, gguf_type="q4_k")
    assert not list(tmp_path.glob("*.gguf")) and leftovers(tmp_path) == []


def test_pre_tokenizer_names_come_from_the_tokenizer_layout():
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert pre_tokenizer_name({"pre_tokenizer": byte_level, "normalizer": None}) == "gpt-2"
    digits = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    assert pre_tokenizer_name({"pre_tokenizer": digits}) == "smollm"
    split = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": PRETOKENIZE_REGEX}, "behavior": "Isolated"},
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}
    assert pre_tokenizer_name({"pre_tokenizer": split, "normalizer": {"type": "NFC"}}) == "qwen2"
    with pytest.raises(UserError, match="match none.*convert_hf_to_gguf.py"):
        pre_tokenizer_name({"pre_tokenizer": {"type": "Metaspace"}, "normalizer": None})
    with pytest.raises(UserError, match="match none"):
        pre_tokenizer_name({"pre_tokenizer": byte_level, "normalizer": {"type": "Lowercase"}})


# --- other families and methods -----------------------------------------------------------------------------------

def test_encoder_classifier_merges_with_its_head_and_labels(tiny_bert_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmtailor.models import load_model
    from lmtailor.strategies.finetune import FinetuneConfig
    from lmtailor.training.classifier import lora_config, save_classifier

    labels = ["red", "green", "blue"]
    run = tmp_path / "run"
    adapter = run / "artifacts" / "clf" / "adapter"
    torch.manual_seed(0)
    loaded = load_model(str(tiny_bert_dir), CPU, head="sequence-classification", num_labels=3)
    cfg = FinetuneConfig.model_validate({"name": "finetune", "method": "lora"})
    from peft import get_peft_model

    peft_config = lora_config(cfg.method, loaded.model)
    peft_config.init_lora_weights = False
    save_classifier(get_peft_model(loaded.model, peft_config), loaded.tokenizer, labels, adapter)
    write_record(run, "clf", "tiny-bert", artifacts={"adapter": adapter},
                 details={"method": "lora", "head": "sequence-classification", "labels": labels})
    with pytest.raises(UserError, match="encoder classifier.*decoder-only"):
        export_row(run, gguf=True)
    merged = export_row(run, merge=True).model.path
    assert json.loads((merged / "labels.json").read_text())["labels"] == labels
    plain = AutoModelForSequenceClassification.from_pretrained(merged, dtype=torch.float32)
    assert plain.config.id2label == {0: "red", 1: "green", 2: "blue"}
    tokenizer = AutoTokenizer.from_pretrained(merged)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3, dtype=torch.float32)
    expected = logits(PeftModel.from_pretrained(base, adapter), tokenizer)
    torch.testing.assert_close(logits(plain, tokenizer), expected, atol=1e-5, rtol=1e-5)
    assert no_pickles(run) == []


def test_encoder_decoder_merges_into_a_seq2seq_model(tiny_t5_dir, tmp_path):
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    run = tmp_path / "run"
    adapter = run / "artifacts" / "t5" / "adapter"
    tokenizer = AutoTokenizer.from_pretrained(tiny_t5_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir, dtype=torch.float32)
    save_random_adapter(model, LoraConfig(task_type="SEQ_2_SEQ_LM", r=4, init_lora_weights=False), tokenizer, adapter)
    write_record(run, "t5", "tiny-t5", artifacts={"adapter": adapter}, details={"method": "lora"})
    merged = export_row(run, merge=True).model.path
    labels = tokenizer(["a b", "c"], return_tensors="pt", padding=True)["input_ids"]
    plain = AutoModelForSeq2SeqLM.from_pretrained(merged, dtype=torch.float32)
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir, dtype=torch.float32)
    expected = logits(PeftModel.from_pretrained(base, adapter), tokenizer, PROBE, labels=labels)
    torch.testing.assert_close(logits(plain, tokenizer, PROBE, labels=labels), expected, atol=1e-5, rtol=1e-5)


def _peft_config(method: str):
    """A PEFT config of ``method`` whose weights start random, so merging it changes the model."""
    from peft import IA3Config, LoHaConfig, LoraConfig

    return {"lora": lambda: LoraConfig(task_type="CAUSAL_LM", r=4, init_lora_weights=False),
            "dora": lambda: LoraConfig(task_type="CAUSAL_LM", r=4, use_dora=True, init_lora_weights=False),
            "ia3": lambda: IA3Config(task_type="CAUSAL_LM", init_ia3_weights=False),
            "loha": lambda: LoHaConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"],
                                       init_weights=False)}[method]()


@pytest.mark.parametrize("method", ["dora", "ia3", "loha"])
def test_other_peft_methods_merge_to_the_same_predictions(method, tiny_llama_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "run"
    adapter = run / "artifacts" / "m" / "adapter"
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    save_random_adapter(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), _peft_config(method), tokenizer,
                        adapter)
    write_record(run, "m", "tiny-llama", artifacts={"adapter": adapter}, details={"method": method})
    merged = export_row(run, merge=True).model
    assert merged.peft_type == {"dora": "LORA", "ia3": "IA3", "loha": "LOHA"}[method]
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    expected = logits(PeftModel.from_pretrained(base, adapter), tokenizer)
    plain = AutoModelForCausalLM.from_pretrained(merged.path, dtype=torch.float32)
    torch.testing.assert_close(logits(plain, tokenizer), expected, atol=1e-5, rtol=1e-5)


def test_a_partly_loaded_adapter_is_caught(run_dir, tiny_llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lmtailor.export.merge import _check_adapter_loaded

    adapter = run_dir / "artifacts" / LORA_ROW / "adapter"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), adapter)
    _check_adapter_loaded(model, adapter, "tiny-llama")
    with torch.no_grad():  # as if PEFT had left one saved tensor unplaced (it only warns about those)
        next(p for n, p in model.named_parameters() if "lora_B" in n).zero_()
    with pytest.raises(UserError, match="1 loaded differently"):
        _check_adapter_loaded(model, adapter, "tiny-llama")


def test_the_runs_trust_remote_code_setting_is_read(tmp_path):
    from lmtailor.export.exporter import run_trusts_remote_code

    assert run_trusts_remote_code(tmp_path) is False
    (tmp_path / "config.yaml").write_text("name: x\nruntime: {precision: auto}\n")
    assert run_trusts_remote_code(tmp_path) is False
    (tmp_path / "config.yaml").write_text("name: x\nruntime: {trust_remote_code: true}\n")
    assert run_trusts_remote_code(tmp_path) is True


@pytest.mark.parametrize("method", ["prefix", "prompt-tuning"])
def test_virtual_token_methods_cannot_merge_and_say_how_to_serve(method, tiny_llama_dir, tmp_path):
    from peft import PrefixTuningConfig, PromptTuningConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "run"
    adapter = run / "artifacts" / "p" / "adapter"
    config = (PrefixTuningConfig if method == "prefix" else PromptTuningConfig)(task_type="CAUSAL_LM",
                                                                                 num_virtual_tokens=4)
    save_random_adapter(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), config,
                        AutoTokenizer.from_pretrained(tiny_llama_dir), adapter)
    write_record(run, "p", "tiny-llama", artifacts={"adapter": adapter}, details={"method": method})
    with pytest.raises(UserError, match=f"method {method} .*nothing to merge.*served with its base model.*"
                                        "PeftModel.from_pretrained"):
        export_row(run, merge=True)
    assert not (run / "export").exists()


def _pretrained_row(run: Path, tiny_llama_dir, save_pretrained_model: bool):
    """A continued-pretraining row: the adapter was trained on a changed copy of the base model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    artifacts = run / "artifacts" / "cpt"
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    pretrained = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    with torch.no_grad():
        for p in pretrained.parameters():
            p.mul_(1.5)
    if save_pretrained_model:
        pretrained.save_pretrained(artifacts / "pretrained_model")
        tokenizer.save_pretrained(artifacts / "pretrained_model")
    save_random_adapter(pretrained, _peft_config("lora"), tokenizer, artifacts / "adapter")
    found = {"adapter": artifacts / "adapter"}
    if save_pretrained_model:
        found["pretrained_model"] = artifacts / "pretrained_model"
    write_record(run, "cpt", "tiny-llama", artifacts=found, strategy="continued-pretraining",
                 details={"pretrain": {"steps": 3}, "finetune": {"method": "lora"}})
    return tokenizer


def test_pretrained_rows_merge_onto_the_model_they_trained(tiny_llama_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    tokenizer = _pretrained_row(run, tiny_llama_dir, save_pretrained_model=True)
    merged = export_row(run, merge=True).model
    assert merged.base == str(run / "artifacts" / "cpt" / "pretrained_model")
    pretrained = AutoModelForCausalLM.from_pretrained(run / "artifacts" / "cpt" / "pretrained_model")
    expected = logits(PeftModel.from_pretrained(pretrained, run / "artifacts" / "cpt" / "adapter"), tokenizer)
    plain = AutoModelForCausalLM.from_pretrained(merged.path, dtype=torch.float32)
    torch.testing.assert_close(logits(plain, tokenizer), expected, atol=1e-5, rtol=1e-5)


def test_pretrained_rows_without_their_model_are_refused(tiny_llama_dir, tmp_path):
    run = tmp_path / "run"
    _pretrained_row(run, tiny_llama_dir, save_pretrained_model=False)
    with pytest.raises(UserError, match="trained its model on a corpus.*did not save.*never trained"):
        export_row(run, merge=True)


def test_an_adapter_that_does_not_fit_the_base_is_refused(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "run"
    adapter = run / "artifacts" / "x" / "adapter"
    save_random_adapter(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), _peft_config("lora"),
                        AutoTokenizer.from_pretrained(tiny_llama_dir), adapter)
    write_record(run, "x", "tiny-bert", artifacts={"adapter": adapter}, details={"method": "lora"})
    with pytest.raises(UserError, match="does not fit the base model tiny-bert"):  # no q_proj/v_proj in a BERT
        export_row(run, merge=True)
    assert not (run / "export" / "x" / "merged").exists()


# --- the command ---------------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmtailor")
    add_export_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_command_help_and_output(run_dir, merged, capsys):
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(["export", "--help"])
    assert exit_.value.code == 0 and "--gguf-type" in capsys.readouterr().out
    args = _parser().parse_args(["export", str(run_dir)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"row {LORA_ROW}" in out and "PeftModel.from_pretrained" in out and "nothing written" in out
    args = _parser().parse_args(["export", str(run_dir), "--row", LORA_ROW, "--gguf", "--gguf-type", "q8_0",
                                 "--overwrite"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "merged model" in out and f"{LORA_ROW}.q8_0.gguf" in out and "llama-cli -m" in out
    assert "AutoModelForCausalLM.from_pretrained" in out


# --- safe loading guards (the whole installed package) -------------------------------------------------------------

def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _keyword_is(call: ast.Call, name: str, value) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


# calls that may run Python code shipped with a model or dataset when told to trust it
LOADERS = {"from_pretrained", "from_config", "pipeline", "SentenceTransformer", "CrossEncoder", "load_dataset"}


def _package_sources():
    root = Path(lmtailor.__file__).parent
    return [(p.relative_to(root.parent), ast.parse(p.read_text(encoding="utf-8"))) for p in sorted(root.rglob("*.py"))]


def test_the_package_loads_no_pickles_and_runs_no_model_code_by_default():
    problems = []
    for path, tree in _package_sources():
        for call in _calls(tree):
            name = _dotted(call.func)
            if name == "torch.load" and not _keyword_is(call, "weights_only", True):
                problems.append(f"{path}:{call.lineno}: torch.load without weights_only=True")
            if name in ("torch.save", "pickle.dump", "pickle.dumps", "pickle.load", "pickle.loads"):
                problems.append(f"{path}:{call.lineno}: {name} writes or reads a pickle; use safetensors or JSON")
            if name.split(".")[-1] in LOADERS and _keyword_is(call, "trust_remote_code", True):
                problems.append(f"{path}:{call.lineno}: trust_remote_code=True hard-coded; take it from the "
                                "experiment's runtime.trust_remote_code")
            if _keyword_is(call, "safe_serialization", False):
                problems.append(f"{path}:{call.lineno}: safe_serialization=False writes a pickle")
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in {"pickle", "dill", "cloudpickle", "joblib"} for n in names):
                    problems.append(f"{path}:{node.lineno}: imports a pickle library")
    assert problems == []


# Weight loads of PEFT, transformers and sentence-transformers: only models/safe_weights.py calls them, after its
# safetensors-only check. Configs and tokenizers (AutoConfig, PeftConfig, AutoTokenizer) read JSON and vocabularies;
# GGUF files (gguf_file=) are parsed by the gguf package: neither unpickles anything.
WEIGHT_LOADS = {"from_pretrained", "from_encoder_decoder_pretrained", "from_single_file", "load_adapter",
                "load_peft_weights", "SentenceTransformer", "CrossEncoder"}
SAFE_LOADER = Path("lmtailor/models/safe_weights.py")


def _loads_weights(call: ast.Call) -> bool:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name not in WEIGHT_LOADS or any(k.arg == "gguf_file" for k in call.keywords):
        return False
    owner = _dotted(func.value) if isinstance(func, ast.Attribute) else ""
    return not owner.endswith(("Config", "Tokenizer"))


def test_every_weight_load_goes_through_the_safetensors_only_loader():
    problems = [f"{path}:{call.lineno}: {ast.unparse(call.func)}(...) loads weights outside {SAFE_LOADER}; call "
                "lmtailor.models.safe_weights (load_pretrained, load_peft_adapter, ...) instead"
                for path, tree in _package_sources() if path != SAFE_LOADER
                for call in _calls(tree) if _loads_weights(call)]
    assert problems == []
    # and the loader itself checks before each of its loads
    loader = next(tree for path, tree in _package_sources() if path == SAFE_LOADER)
    for fn in (n for n in loader.body if isinstance(n, ast.FunctionDef) and n.name.startswith("load_")):
        calls = [c for c in _calls(fn) if _dotted(c.func) == "check_safe_weights" or _loads_weights(c)]
        assert calls and _dotted(calls[0].func) == "check_safe_weights", fn.name


def test_the_weight_load_guard_catches_what_it_looks_for():
    calls = [stmt.value for stmt in ast.parse(
        "PeftModel.from_pretrained(m, p)\nauto_class(h).from_pretrained(p)\nSentenceTransformer(p)\n"
        "model.load_adapter(p)\nAutoConfig.from_pretrained(p)\nPeftConfig.from_pretrained(p)\n"
        "AutoTokenizer.from_pretrained(p)\nAutoModelForCausalLM.from_pretrained(d, gguf_file=n)").body]
    assert [_loads_weights(c) for c in calls] == [True, True, True, True, False, False, False, False]


def test_the_guard_catches_what_it_looks_for():
    bad = ast.parse("torch.load(p)\ntorch.load(p, weights_only=False)\nAutoModel.from_pretrained(p, "
                    "trust_remote_code=True)\ntorch.load(p, weights_only=True)")
    flagged = [(_dotted(c.func), _keyword_is(c, "weights_only", True), _keyword_is(c, "trust_remote_code", True))
               for c in _calls(bad)]
    assert flagged == [("torch.load", False, False), ("torch.load", False, False),
                       ("AutoModel.from_pretrained", False, True), ("torch.load", True, False)]
