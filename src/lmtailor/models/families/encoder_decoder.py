"""Encoder-decoder models (T5, Flan-T5, BART, BERT2BERT): Flan-style source text in, the target out of the decoder."""

from __future__ import annotations

from lmtailor.models.families.base import FamilyAdapter, TinyArchitecture


def _t5_post_processor(ids: dict[str, int]):
    from tokenizers import processors

    # T5 ends every sequence with </s>, as its own tokenizer does
    return processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                         special_tokens=[("</s>", ids["</s>"])])


def _t5_config(tokenizer):
    from transformers import T5Config

    return T5Config(vocab_size=len(tokenizer), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                    num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0,
                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                    decoder_start_token_id=tokenizer.pad_token_id)


def _bart_post_processor(ids: dict[str, int]):
    from tokenizers import processors

    # BART wraps every sequence (targets too) in <s> … </s>, as its own tokenizer does
    return processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                         special_tokens=[("<s>", ids["<s>"]), ("</s>", ids["</s>"])])


def _bart_config(tokenizer):
    from transformers import BartConfig

    return BartConfig(vocab_size=len(tokenizer), d_model=64, encoder_layers=2, decoder_layers=2,
                      encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                      max_position_embeddings=512, dropout=0.0, bos_token_id=tokenizer.bos_token_id,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.eos_token_id, forced_eos_token_id=tokenizer.eos_token_id)


TINY_T5 = TinyArchitecture("t5", ("<pad>", "</s>", "<unk>"),
                           {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"},
                           _t5_post_processor, _t5_config)
# BART's own id order (<s>=0, <pad>=1, </s>=2, <unk>=3), which BartConfig's default token ids assume
TINY_BART = TinyArchitecture("bart", ("<s>", "<pad>", "</s>", "<unk>", "<mask>"),
                             {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
                              "mask_token": "<mask>"},
                             _bart_post_processor, _bart_config)


class EncoderDecoder(FamilyAdapter):
    name = "encoder-decoder"
    examples = "T5, Flan-T5, BART, BERT2BERT"
    default_head = "seq2seq-lm"
    generates_text = True
    seq2seq = True
    trains_with = "seq2seq"
    fresh_head = False
    peft_task_type = "SEQ_2_SEQ_LM"
    predicts_with = "seq2seq"
    pretrain_objectives = ("span-corruption", "text-infilling")
    padding_free = False  # encoder inputs and seq2seq targets are padded per batch
    freeze_stack = "decoder"
    # no left-to-right objective over a single text: the second half of each passage given the first as the source
    perplexity = "continuation"
    perplexity_kind = "continuation (second half of each passage given the first)"
    no_probe_reason = None
    gguf = False  # llama.cpp runs a few (T5), but lmtailor's GGUF writer and llama.cpp path are decoder-only
    tiny_architectures = (TINY_T5, TINY_BART)


ENCODER_DECODER = EncoderDecoder()
