"""The direct GGUF conversion (no transformers model built) writes what loading and saving a whole model wrote."""

from __future__ import annotations

import json

import pytest
import torch

from lmtailor.models.gguf_cache import convert_gguf

from gguf_reference import convert_gguf_through_a_model, same_files
from tiny_gguf import write_llama_gguf


@pytest.mark.parametrize("quantized", [False, True], ids=["f32", "q8_0-and-q4_1"])
def test_direct_conversion_equals_the_model_path_tensor_by_tensor(tiny_llama_dir, tmp_path, quantized):
    gguf = tmp_path / "tiny.gguf"
    write_llama_gguf(tiny_llama_dir, gguf, quantized=quantized)
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    convert_gguf_through_a_model(gguf, old)
    convert_gguf(gguf, new)
    assert sorted(p.name for p in new.iterdir()) == ["chat_template.jinja", "config.json", "generation_config.json",
                                                     "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert same_files(old, new) == []
    config = json.loads((new / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "float32"
    assert "quantization_config" not in config  # a plain dense model


def test_the_comparison_sees_one_flipped_bit(tiny_llama_dir, tmp_path):
    # the check above must be able to fail: flip the lowest mantissa bit of one weight and it reports the file
    from safetensors.torch import load_file, save_file

    gguf = tmp_path / "tiny.gguf"
    write_llama_gguf(tiny_llama_dir, gguf, quantized=True)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    convert_gguf(gguf, a)
    convert_gguf(gguf, b)
    assert same_files(a, b) == []
    tensors = load_file(b / "model.safetensors")
    first = sorted(tensors)[0]
    tensors[first].view(-1).view(torch.int32)[0] ^= 1
    save_file(tensors, b / "model.safetensors", metadata={"format": "pt"})
    assert same_files(a, b) == ["model.safetensors"]


def test_a_gguf_missing_a_weight_is_refused(tiny_llama_dir, tmp_path, monkeypatch):
    import transformers.modeling_gguf_pytorch_utils as reader

    gguf = tmp_path / "tiny.gguf"
    write_llama_gguf(tiny_llama_dir, gguf)
    real = reader.load_gguf_checkpoint

    def without_norm(*args, **kwargs):
        parsed = real(*args, **kwargs)
        if "tensors" in parsed:  # the config and tokenizer read the same file without tensors
            del parsed["tensors"]["model.norm.weight"]  # as a GGUF without output_norm.weight would read
        return parsed

    monkeypatch.setattr(reader, "load_gguf_checkpoint", without_norm)
    (tmp_path / "out").mkdir()
    with pytest.raises(RuntimeError, match="no tensor for model.norm.weight"):
        convert_gguf(gguf, tmp_path / "out")



def test_the_gguf_header_is_parsed_once_and_the_library_is_left_as_it_was(tiny_llama_dir, tmp_path, monkeypatch):
    import gguf

    gguf_file = tmp_path / "tiny.gguf"
    write_llama_gguf(tiny_llama_dir, gguf_file)
    opened = []

    class CountingReader(gguf.GGUFReader):
        def __init__(self, path, mode="r"):
            opened.append(path)
            super().__init__(path, mode)

    monkeypatch.setattr(gguf, "GGUFReader", CountingReader)
    (tmp_path / "out").mkdir()
    convert_gguf(gguf_file, tmp_path / "out")
    assert len(opened) == 1  # tokenizer, config and weights shared one reader (three without the sharing)
    assert gguf.GGUFReader is CountingReader and not hasattr(gguf.get_tensor_name_map, "cache_info")
