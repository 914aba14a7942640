"""Tiny randomly initialised models (a few hundred thousand parameters) for tests and smoke runs.

Each has a real byte-level BPE tokenizer trained in-process on a small fixed corpus, so every code path that
tokenizes, applies a chat template, trains or generates runs for real, only on a model too small to know anything.
Everything is deterministic given the seed.
"""

from __future__ import annotations

from pathlib import Path

from lmtailor.paths import cache_dir

TINY_VERSION = "v2"  # bump when the configs, corpus or tokenizer change, so cached builds are rebuilt
TINY_FAMILIES = ("llama", "t5", "bart", "bert")
VOCAB_SIZE = 512

# ChatML, the format of SmolLM2-Instruct: the tiny llama exercises the same code paths as the real instruct model.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_ENGLISH = """\
The quick brown fox jumps over the lazy dog. A small model learns the shape of a task from a few examples.
Please classify the following text into one of the labels: positive, negative, neutral, red, green, blue.
Summarize the docstring in one line. Answer the question using the passages given below.
Return the index of the first occurrence of the value in the list, or raise an error if it is absent.
The river runs past the old stone bridge, and the cloud over the hill is quiet and bright.
Instruction: write a short reply. Input: the meeting moved to Tuesday. Response: Noted, see you then.
This function opens a file, reads every line, and returns the number of words it contains.
Yes. No. Maybe. True or false? It depends on the data, the budget and the time you have.
Fine-tuning adapts the weights; prompting adapts the input; retrieval brings the right passage.
Numbers like 0, 1, 2, 3, 10, 42, 100 and 2024 appear in text; so do dates such as 1999-12-31.
"""

_PYTHON = '''\
def add(a: int, b: int) -> int:
    """Return the sum of a and b."""
    return a + b


class Stack:
    """A last-in, first-out list of items."""

    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        if not self.items:
            raise IndexError("pop from an empty stack")
        return self.items.pop()


for i, word in enumerate(sorted(set(text.split()))):
    print(f"{i}: {word!r}")

import os, json
with open(os.path.join("data", "rows.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
'''

CORPUS = (_ENGLISH + "\n" + _PYTHON) * 4

_SPECIALS = {
    # family: (special tokens in id order, keyword arguments naming them for the transformers tokenizer)
    "llama": (["<unk>", "<s>", "<|im_end|>", "<pad>", "<|im_start|>"],
              {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<pad>",
               "extra_special_tokens": ["<|im_start|>"]}),
    "t5": (["<pad>", "</s>", "<unk>"], {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}),
    # BART's own id order (<s>=0, <pad>=1, </s>=2, <unk>=3), which BartConfig's default token ids assume
    "bart": (["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
             {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
              "mask_token": "<mask>"}),
    "bert": (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
             {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
              "mask_token": "[MASK]"}),
}


def _train_backend(family: str):
    """Train the byte-level BPE backend (a ``tokenizers.Tokenizer``) with the family's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials, _ = _SPECIALS[family]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS.splitlines(keepends=True), trainer=trainer)
    ids = {t: tok.token_to_id(t) for t in specials}
    if family == "t5":  # T5 ends every sequence with </s>, as its own tokenizer does
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                           special_tokens=[("</s>", ids["</s>"])])
    elif family == "bart":  # BART wraps every sequence (targets too) in <s> … </s>, as its own tokenizer does
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", ids["<s>"]), ("</s>", ids["</s>"])])
    elif family == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    else:  # keep the byte-level offsets right; ChatML prompts carry their own markers, so no BOS is added
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def build_tiny_tokenizer(family: str):
    """Return the family's tiny tokenizer as a ``PreTrainedTokenizerFast``."""
    from transformers import PreTrainedTokenizerFast

    _, names = _SPECIALS[family]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_train_backend(family), model_max_length=512, **names)
    if family == "llama":
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _config(family: str, tokenizer):
    from transformers import BartConfig, BertConfig, LlamaConfig, T5Config

    vocab = len(tokenizer)
    if family == "llama":
        return LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                           tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if family == "t5":
        return T5Config(vocab_size=vocab, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                        num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                        decoder_start_token_id=tokenizer.pad_token_id)
    if family == "bart":
        return BartConfig(vocab_size=vocab, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                          decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                          max_position_embeddings=512, dropout=0.0, bos_token_id=tokenizer.bos_token_id,
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                          decoder_start_token_id=tokenizer.eos_token_id, forced_eos_token_id=tokenizer.eos_token_id)
    return BertConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=128, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)


def tiny_model_dir(family: str) -> Path:
    """Return the cached tiny ``family`` model directory (seed 0), building it atomically on first use."""
    from lmtailor.models.cache import build_once

    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny model family {family!r}; choose one of {', '.join(TINY_FAMILIES)}")
    target = cache_dir() / "models" / f"tiny-{family}-{TINY_VERSION}"
    return build_once(target, lambda tmp: build_tiny_model(family, tmp, seed=0))


def build_tiny_model(family: str, out_dir: Path, seed: int = 0) -> Path:
    """Build a tiny random ``family`` model (one of ``TINY_FAMILIES``) and save it with its tokenizer to ``out_dir``."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny model family {family!r}; choose one of {', '.join(TINY_FAMILIES)}")
    tokenizer = build_tiny_tokenizer(family)
    config = _config(family, tokenizer)
    auto = {"llama": AutoModelForCausalLM, "t5": AutoModelForSeq2SeqLM, "bart": AutoModelForSeq2SeqLM,
            "bert": AutoModel}[family]
    with torch.random.fork_rng(devices=[]):  # don't disturb the caller's random stream
        torch.manual_seed(seed)
        model = auto.from_config(config, dtype=torch.float32)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
