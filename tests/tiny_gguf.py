"""A tiny GGUF file written from the tiny llama, as llama.cpp's converter would write it (for the conversion tests)."""

from __future__ import annotations

from pathlib import Path

import torch


def _add(writer, name: str, data, quant_type) -> None:
    """Add a float32 tensor, or its ``quant_type`` blocks (the weights llama.cpp's quantizer would store)."""
    if quant_type is None:
        writer.add_tensor(name, data)
        return
    from gguf.quants import quantize

    writer.add_tensor(name, quantize(data, quant_type), raw_dtype=quant_type)  # shape: from the blocks


def _permute_for_llama_cpp(w: torch.Tensor, n_head: int) -> torch.Tensor:
    # what llama.cpp's converter does to q/k rows; transformers undoes it when reading the GGUF
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(src: Path, out: Path, quantized: bool = False) -> None:
    """Write the tiny llama as a GGUF the way llama.cpp would, tokenizer and chat template included: float32, or
    with ``quantized`` its embedding in Q8_0 and its layers' matrices in Q4_1 (as SmolLM2's embedded GGUF)."""
    import json

    from gguf import GGMLQuantizationType, GGUFWriter, TokenType
    from safetensors.torch import load_file

    cfg = json.loads((src / "config.json").read_text())
    tok = json.loads((src / "tokenizer.json").read_text())
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    w = GGUFWriter(out, "llama")
    w.add_context_length(cfg["max_position_embeddings"]), w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"]), w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads), w.add_head_count_kv(kv_heads), w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"]), w.add_vocab_size(cfg["vocab_size"])
    w.add_rope_dimension_count(cfg["hidden_size"] // heads)
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    special = {a["content"] for a in tok["added_tokens"]}
    w.add_tokenizer_model("gpt2"), w.add_tokenizer_pre("default"), w.add_token_list([t for t, _ in vocab])
    w.add_token_types([TokenType.CONTROL if t in special else TokenType.NORMAL for t, _ in vocab])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_bos_token_id(cfg["bos_token_id"]), w.add_eos_token_id(cfg["eos_token_id"])
    w.add_pad_token_id(cfg["pad_token_id"]), w.add_unk_token_id(0), w.add_add_bos_token(False)
    w.add_chat_template((src / "chat_template.jinja").read_text())
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, t in load_file(src / "model.safetensors").items():
        if name == "model.embed_tokens.weight":
            _add(w, "token_embd.weight", t.numpy(), GGMLQuantizationType.Q8_0 if quantized else None)
        elif name == "model.norm.weight":
            w.add_tensor("output_norm.weight", t.numpy())
        elif name.startswith("model.layers."):
            layer, rest = name.removeprefix("model.layers.").split(".", 1)
            kind = names[rest.removesuffix(".weight")]
            t = {"attn_q": lambda x: _permute_for_llama_cpp(x, heads),
                 "attn_k": lambda x: _permute_for_llama_cpp(x, kv_heads)}.get(kind, lambda x: x)(t)
            quant = GGMLQuantizationType.Q4_1 if quantized else None
            _add(w, f"blk.{layer}.{kind}.weight", t.contiguous().numpy(), quant)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
