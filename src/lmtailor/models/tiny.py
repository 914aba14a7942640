"""Tiny randomly initialised models (a few hundred thousand parameters) for tests and smoke runs.

Each has a real byte-level BPE tokenizer trained in-process on a small fixed corpus, so every code path that
tokenizes, applies a chat template, trains or generates runs for real, only on a model too small to know anything.
Everything is deterministic given the seed.
"""

from __future__ import annotations

from pathlib import Path

from lmtailor.models.families import FamilyAdapter, TinyArchitecture, tiny_architectures
from lmtailor.paths import cache_dir

# bump when the corpus, or a family's tiny architecture (models/families/), changes, so cached builds are rebuilt
TINY_VERSION = "v2"
VOCAB_SIZE = 512

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

def _train_backend(arch: TinyArchitecture):
    """Train the byte-level BPE backend (a ``tokenizers.Tokenizer``) with the architecture's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = list(arch.special_tokens)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS.splitlines(keepends=True), trainer=trainer)
    tok.post_processor = arch.post_processor({t: tok.token_to_id(t) for t in specials})
    return tok


def _architecture(name: str) -> tuple[FamilyAdapter, TinyArchitecture]:
    """The tiny architecture ``name`` (llama, t5, bart, bert: each model family lists its own), with its family."""
    archs = tiny_architectures()
    if name not in archs:
        raise ValueError(f"unknown tiny model family {name!r}; choose one of {', '.join(archs)}")
    return archs[name]


def build_tiny_tokenizer(family: str):
    """Return the tiny tokenizer of ``family`` (a tiny architecture's name: llama, t5, bart, bert) as a
    ``PreTrainedTokenizerFast``."""
    from transformers import PreTrainedTokenizerFast

    _, arch = _architecture(family)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_train_backend(arch), model_max_length=512,
                                        **arch.token_names)
    if arch.chat_template is not None:
        tokenizer.chat_template = arch.chat_template
    return tokenizer


def tiny_config(family: str, tokenizer):
    """The transformers config of the tiny ``family`` model (llama, t5, bart, bert) for its ``tokenizer``."""
    return _architecture(family)[1].config(tokenizer)


def tiny_model_dir(family: str) -> Path:
    """Return the cached tiny ``family`` model directory (seed 0), building it atomically on first use."""
    from lmtailor.models.cache import build_once

    _architecture(family)  # an unknown name fails before the cache directory is named
    target = cache_dir() / "models" / f"tiny-{family}-{TINY_VERSION}"
    return build_once(target, lambda tmp: build_tiny_model(family, tmp, seed=0))


def build_tiny_model(family: str, out_dir: Path, seed: int = 0) -> Path:
    """Build a tiny random ``family`` model (llama, t5, bart, bert) and save it with its tokenizer to ``out_dir``;
    it has its model family's default head."""
    import torch

    adapter, _ = _architecture(family)
    tokenizer = build_tiny_tokenizer(family)
    config = tiny_config(family, tokenizer)
    auto = adapter.auto_class()
    with torch.random.fork_rng(devices=[]):  # don't disturb the caller's random stream
        torch.manual_seed(seed)
        model = auto.from_config(config, dtype=torch.float32)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
