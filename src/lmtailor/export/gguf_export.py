"""Write a standalone decoder-only Hugging Face model directory (safetensors) as one GGUF file for llama.cpp.

Nothing installed ships llama.cpp's ``convert_hf_to_gguf.py`` (the ``gguf`` package has the writer, the tensor-name
map and the quantizers, not the converter), so this is that converter's path for the Llama family, on the ``gguf``
package's own pieces: hyper-parameters under llama.cpp's keys, the byte-level BPE tokenizer
(``gguf_tokenizer.py``), and every tensor renamed by ``gguf.get_tensor_name_map``. Llama's query and key rows are
permuted as llama.cpp's converter does (its rotary embedding pairs neighbouring rows, transformers' pairs the two
halves; transformers' GGUF loader permutes them back). Tensors go out in f32, f16, or q8_0 (1-D tensors and norms
stay f32, as llama.cpp keeps them). Anything this writer cannot represent is an error naming llama.cpp's converter.

    export_gguf(Path("merged"), Path("model.f16.gguf"), "f16")
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np

from lmtailor.errors import UserError
from lmtailor.io import shared_file_mode
from lmtailor.export.gguf_tokenizer import LLAMA_CPP_CONVERTER, add_tokenizer
from lmtailor.registry import Registry

log = logging.getLogger("lmtailor")

GgufType = Literal["f32", "f16", "q8_0"]
GGUF_TYPES: tuple[str, ...] = ("f32", "f16", "q8_0")


@dataclass(frozen=True)
class GgufArchitecture:
    """How one transformers ``model_type`` is written: llama.cpp's architecture name, and whether Q/K are permuted."""

    gguf_arch: str  # a name in gguf.MODEL_ARCH_NAMES
    permute_qk: bool  # llama.cpp's "normal" (interleaved) rotary layout: q_proj/k_proj rows are reordered
    note: str = ""


# One entry per transformers model type; transformers' GGUF loader reads every one of them back.
GGUF_ARCHITECTURES: Registry[GgufArchitecture] = Registry("GGUF architecture")
GGUF_ARCHITECTURES.register("llama", GgufArchitecture("llama", permute_qk=True, note="Llama, SmolLM, TinyLlama"))
# llama.cpp's converter writes Mistral as llama: the same layers; the sliding window is not represented.
GGUF_ARCHITECTURES.register("mistral", GgufArchitecture("llama", permute_qk=True,
                                                        note="written as llama, as llama.cpp does"))
GGUF_ARCHITECTURES.register("qwen2", GgufArchitecture("qwen2", permute_qk=False, note="Qwen2, Qwen2.5"))


@dataclass(frozen=True)
class GgufExport:
    """What ``export_gguf`` wrote."""

    path: Path
    gguf_type: str
    architecture: str
    tensors: int
    bytes: int
    tokenizer: dict[str, Any]


def supported_message() -> str:
    """The model types the GGUF writer handles, for error messages and docs."""
    return ", ".join(f"{name} ({GGUF_ARCHITECTURES.get(name).note})" for name in GGUF_ARCHITECTURES)


def check_gguf_config(config, where: Path | str = "the model") -> GgufArchitecture:
    """The GGUF layout for ``config``; a clear error for encoders, encoder-decoders and unsupported layouts."""
    from lmtailor.models.families import family_of

    family = family_of(config)
    model_type = getattr(config, "model_type", "")
    if not family.gguf:
        raise UserError(f"GGUF export is for decoder-only models; {where} is {family.name} ({model_type}). llama.cpp "
                        f"runs a few encoder-decoder models (T5): try {LLAMA_CPP_CONVERTER}")
    if model_type not in GGUF_ARCHITECTURES:
        raise UserError(f"GGUF export: model type {model_type!r} is not one lmtailor writes (supported: "
                        f"{supported_message()}). Convert the merged directory with {LLAMA_CPP_CONVERTER}")
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", None):
        raise UserError(f"GGUF export: the model uses {rope_type!r} rope scaling, which lmtailor's GGUF writer "
                        f"does not write; use {LLAMA_CPP_CONVERTER}")
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) and window < config.max_position_embeddings:
        log.warning("%s attends within a sliding window of %d tokens, which the GGUF file does not record: "
                    "llama.cpp will attend to the whole context, so outputs differ past %d tokens", where, window,
                    window)
    return GGUF_ARCHITECTURES.get(model_type)


def _rope_theta(config) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise UserError("GGUF export: the model config has no rope_theta")
    return float(theta)


def add_hyperparameters(writer, config) -> None:
    """The model's shape under llama.cpp's keys (``<arch>.context_length``, ``<arch>.block_count``, ...)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_dimension_count(head_dim)
    if head_dim * heads != config.hidden_size:  # llama.cpp assumes hidden / heads unless told
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)


def permute_rows(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's ``permute``: within each head, rows (0..d/2, d/2..d) become interleaved pairs."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def read_tensors(model_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float32 array) for every tensor in the directory's safetensors files; pickles are never read."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise UserError(f"{model_dir} holds no .safetensors weights; lmtailor reads weights from safetensors only "
                        "(save the model with save_pretrained, whose default is safetensors)")
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name).float().numpy()


def _encode(data: np.ndarray, name: str, gguf_type: str) -> tuple[np.ndarray, Any]:
    """The array to write and its GGML type: norms and 1-D tensors stay f32, as llama.cpp keeps them."""
    import gguf

    if gguf_type == "f32" or data.ndim <= 1 or name.endswith("_norm.weight"):
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    if gguf_type == "q8_0":
        try:
            return gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
        except gguf.quants.QuantError:  # a row length that is no multiple of 32: f16, as llama.cpp falls back
            pass
    return data.astype(np.float16), gguf.GGMLQuantizationType.F16


def add_tensors(writer, model_dir: Path, config, arch: GgufArchitecture, gguf_type: str) -> int:
    """Rename, permute and encode every tensor; an unmapped tensor is an error, never silently dropped."""
    import gguf

    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch.gguf_arch)
    names = gguf.get_tensor_name_map(arch_id, config.num_hidden_layers)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    tied = bool(getattr(config, "tie_word_embeddings", False))
    count = 0
    for hf_name, data in read_tensors(model_dir):
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue  # recomputed by llama.cpp / the same matrix as the token embedding
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"GGUF export: tensor {hf_name!r} of {model_dir} has no {arch.gguf_arch} GGUF name; "
                            f"this model is not a plain {arch.gguf_arch}. Use {LLAMA_CPP_CONVERTER}")
        if arch.permute_qk and ".self_attn.q_proj." in hf_name:
            data = permute_rows(data, heads)
        elif arch.permute_qk and ".self_attn.k_proj." in hf_name:
            data = permute_rows(data, kv_heads)
        encoded, qtype = _encode(data, name, gguf_type)
        writer.add_tensor(name, encoded, raw_dtype=qtype)
        count += 1
    return count


def _file_type(gguf_type: str) -> int:
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]


def export_gguf(model_dir: Path, out_file: Path, gguf_type: GgufType = "f16", name: str | None = None,
                overwrite: bool = False) -> GgufExport:
    """Write the decoder-only model in ``model_dir`` to ``out_file`` (temp file beside it, then renamed)."""
    import gguf
    from transformers import AutoConfig

    if gguf_type not in GGUF_TYPES:
        raise UserError(f"GGUF type {gguf_type!r} is not one of {', '.join(GGUF_TYPES)}")
    model_dir, out_file = Path(model_dir), Path(out_file)
    if out_file.exists() and not overwrite:
        raise UserError(f"{out_file} already exists; remove it or pass --overwrite")
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    arch = check_gguf_config(config, model_dir)
    writer = gguf.GGUFWriter(path=None, arch=arch.gguf_arch)
    writer.add_name(name or model_dir.name)
    add_hyperparameters(writer, config)
    writer.add_file_type(_file_type(gguf_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokenizer = add_tokenizer(writer, model_dir, config.vocab_size)
    tensors = add_tensors(writer, model_dir, config, arch, gguf_type)
    _write_atomically(writer, out_file)
    log.info("wrote %s (%s, %d tensors, %.1f MB)", out_file, gguf_type, tensors, out_file.stat().st_size / 1e6)
    return GgufExport(out_file, gguf_type, arch.gguf_arch, tensors, out_file.stat().st_size, tokenizer)


def _write_atomically(writer, out_file: Path) -> None:
    """Header, metadata and tensors to a temp file in the target's directory, then one rename."""
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_file.parent, prefix=f".{out_file.name}.", suffix=".tmp")
    os.fchmod(fd, shared_file_mode())  # mkstemp's 0600 would keep the exported model from the user's group
    os.close(fd)
    try:
        writer.write_header_to_file(path=Path(tmp))
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=True)
        writer.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out_file)
    except BaseException:
        writer.close()
        Path(tmp).unlink(missing_ok=True)
        raise
