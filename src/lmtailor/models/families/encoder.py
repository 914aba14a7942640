"""Encoder models (BERT, RoBERTa, DeBERTa, MiniLM): no language-model head; fine-tuned as classifiers."""

from __future__ import annotations

from lmtailor.models.families.base import FamilyAdapter, TinyArchitecture


def _bert_post_processor(ids: dict[str, int]):
    from tokenizers import processors

    return processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                         special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])


def _bert_config(tokenizer):
    from transformers import BertConfig

    return BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=128, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)


TINY_BERT = TinyArchitecture("bert", ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
                             {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                              "mask_token": "[MASK]"},
                             _bert_post_processor, _bert_config)


class Encoder(FamilyAdapter):
    name = "encoder"
    examples = "BERT, RoBERTa, DeBERTa, MiniLM"
    default_head = None  # the bare encoder; finetune loads it with a sequence-classification head
    generates_text = False
    seq2seq = False
    trains_with = "classifier"
    fresh_head = True  # the sequence-classification head finetune loads it with
    peft_task_type = "SEQ_CLS"
    predicts_with = None
    pretrain_objectives = ()  # masked-LM pre-training is not implemented
    padding_free = False
    freeze_stack = None
    perplexity = None
    perplexity_kind = None
    no_probe_reason = ("encoder classifier: its masked-LM head is replaced by a classification head over the task's "
                       "labels, so it has no distribution over text to take perplexity or choice likelihoods from")
    gguf = False
    tiny_architectures = (TINY_BERT,)


ENCODER = Encoder()
