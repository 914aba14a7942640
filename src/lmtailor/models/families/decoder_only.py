"""Decoder-only models (Llama, Qwen, SmolLM, Gemma): chat-templated prompts, causal LM."""

from __future__ import annotations

from lmtailor.models.families.base import FamilyAdapter, TinyArchitecture

# ChatML, the format of SmolLM2-Instruct: the tiny llama exercises the same code paths as the real instruct model.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _llama_post_processor(ids: dict[str, int]):
    from tokenizers import processors

    # keep the byte-level offsets right; ChatML prompts carry their own markers, so no BOS is added
    return processors.ByteLevel(trim_offsets=False)


def _llama_config(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


TINY_LLAMA = TinyArchitecture(
    "llama", ("<unk>", "<s>", "<|im_end|>", "<pad>", "<|im_start|>"),
    {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<pad>",
     "extra_special_tokens": ["<|im_start|>"]},
    _llama_post_processor, _llama_config, CHATML_TEMPLATE)


class DecoderOnly(FamilyAdapter):
    name = "decoder-only"
    examples = "Llama, Qwen, SmolLM, Gemma"
    default_head = "causal-lm"
    generates_text = True
    seq2seq = False
    trains_with = "sft"
    fresh_head = False
    peft_task_type = "CAUSAL_LM"
    predicts_with = "causal"
    pretrain_objectives = ("causal-lm",)
    padding_free = True
    freeze_stack = None
    perplexity = "causal"
    perplexity_kind = "causal"
    no_probe_reason = None
    gguf = True
    tiny_architectures = (TINY_LLAMA,)


DECODER_ONLY = DecoderOnly()
