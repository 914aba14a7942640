"""Write a byte-level BPE tokenizer (GPT-2 style: SmolLM, Llama 3, Qwen2, the tiny test models) into a GGUF file.

The layout follows llama.cpp's ``convert_hf_to_gguf.py`` (``get_vocab_base`` and ``_set_vocab_gpt2``): tokens by id
with their types, the merges, the special token ids and the chat template, read by the ``gguf`` package's
``SpecialVocab``. What llama.cpp gets from a hash of known tokenizers, the pre-tokenizer name
(``tokenizer.ggml.pre``), is read here from the tokenizer's own ``tokenizer.json``, so a tokenizer trained in-house
works too; a pre-tokenizer that matches none of the known shapes is an error, never a guess.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmtailor.errors import UserError

LLAMA_CPP_CONVERTER = ("llama.cpp's convert_hf_to_gguf.py (https://github.com/ggml-org/llama.cpp: "
                       "`python convert_hf_to_gguf.py MERGED_DIR --outtype f16`)")


def _regex_of(split: dict[str, Any]) -> str | None:
    pattern = split.get("pattern") or {}
    return pattern.get("Regex") if isinstance(pattern, dict) else None


def _known_split_regexes() -> dict[str, str]:
    """Split regexes of llama.cpp's pre-tokenizer types, as transformers' GGUF reader spells them."""
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as qwen2

    known = {qwen2: "qwen2"}
    try:  # the Llama 3 regex lives in transformers' GGUF reader; an older layout just loses this one shape
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

        known[GGUF_PRE_TOKENIZER_SPLITS["llama-bpe"]] = "llama-bpe"
    except (ImportError, KeyError):
        pass
    return known


def _byte_level(step: dict[str, Any], use_regex: bool) -> bool:
    return step.get("type") == "ByteLevel" and bool(step.get("use_regex", True)) == use_regex


def pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name (``tokenizer.ggml.pre``) for the pre-tokenizer in ``tokenizer.json``; raises if unknown.

    - ``ByteLevel`` with its built-in regex: GPT-2's split, llama.cpp ``gpt-2``;
    - ``Digits(individual)`` then that: SmolLM's, llama.cpp ``smollm``;
    - ``Split(regex)`` then ``ByteLevel`` without a regex: Qwen2's (``qwen2``) or Llama 3's (``llama-bpe``).
    """
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    normalizer = tokenizer_json.get("normalizer")
    name = None
    if len(steps) == 1 and _byte_level(steps[0], use_regex=True):
        name = "gpt-2"
    elif (len(steps) == 2 and steps[0].get("type") == "Digits" and steps[0].get("individual_digits")
          and _byte_level(steps[1], use_regex=True)):
        name = "smollm"
    elif len(steps) == 2 and steps[0].get("type") == "Split" and _byte_level(steps[1], use_regex=False):
        name = _known_split_regexes().get(_regex_of(steps[0]) or "")
    # Qwen2 normalizes to NFC, which llama.cpp's qwen2 type does as well; any other normalizer would be lost.
    normalizer_ok = normalizer is None or (name == "qwen2" and normalizer.get("type") == "NFC")
    if name is None or not normalizer_ok:
        raise UserError(f"the tokenizer's pre-tokenizer ({json.dumps(pre)[:200]}) and normalizer "
                        f"({json.dumps(normalizer)[:100]}) match none of the byte-level BPE layouts lmtailor writes "
                        f"to GGUF (GPT-2, SmolLM, Qwen2, Llama 3). Convert the merged directory with "
                        f"{LLAMA_CPP_CONVERTER}, which recognizes many more tokenizers")
    return name


def read_tokenizer_json(model_dir: Path) -> dict[str, Any]:
    """The directory's ``tokenizer.json``, checked to be byte-level BPE (what ``tokenizer.ggml.model gpt2`` means)."""
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{model_dir} has no tokenizer.json: lmtailor writes GGUF only for fast (tokenizers) "
                        f"byte-level BPE tokenizers; use {LLAMA_CPP_CONVERTER}")
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        kind = "sentencepiece-style BPE (byte fallback)" if model.get("byte_fallback") else model.get("type")
        raise UserError(f"{path}: the tokenizer is {kind}, not byte-level BPE; lmtailor's GGUF writer handles "
                        f"byte-level BPE only (SmolLM, Llama 3, Qwen2). Use {LLAMA_CPP_CONVERTER}")
    return data


def vocab_tokens(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id and their GGUF token types, as llama.cpp's ``get_vocab_base`` lists them."""
    import gguf

    reverse = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        token = reverse.get(i)
        if token is None:  # an embedding row no token uses (vocabularies padded to a multiple of 64, say)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            special = decoder[i].special or (token.startswith("<|") and token.endswith("|>"))
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def add_tokenizer(writer, model_dir: Path, vocab_size: int) -> dict[str, Any]:
    """Write the tokenizer of ``model_dir`` into ``writer``; returns what was written, for the export summary."""
    import gguf
    from transformers import AutoTokenizer

    pre = pre_tokenizer_name(read_tokenizer_json(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    if max(tokenizer.get_vocab().values()) >= vocab_size:
        raise UserError(f"{model_dir}: the tokenizer has ids up to {max(tokenizer.get_vocab().values())} but the "
                        f"model's embedding has {vocab_size} rows; resize the embedding before exporting")
    tokens, types = vocab_tokens(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    # llama.cpp adds BOS to every prompt of a BPE vocabulary unless told otherwise: say what this tokenizer does.
    probe = tokenizer("a")["input_ids"]
    special.add_special_token["bos"] = tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]
    special.add_special_token["eos"] = tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id]
    special.add_to_gguf(writer, quiet=True)
    return {"tokenizer": "gpt2", "pre_tokenizer": pre, "tokens": len(tokens), "merges": len(special.merges),
            "chat_template": special.chat_template is not None}
