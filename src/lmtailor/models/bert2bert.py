"""Warm-start an encoder-decoder (BERT2BERT) from a BERT encoder directory, once, and cache it as safetensors.

Transformers' ``EncoderDecoderModel.from_encoder_decoder_pretrained(enc, dec)`` loads the same BERT twice: once as
the encoder, once as a decoder (``is_decoder`` and ``add_cross_attention`` switched on: a causal mask, plus a
cross-attention block per layer). The cross-attention blocks, and the decoder's LM-head transform (a sentence
encoder such as MiniLM ships no masked-LM head), start random: the model is only useful after fine-tuning.
Encoder and decoder are not tied (``tie_encoder_decoder=False``), so each side trains on its own.

The special tokens follow the Hugging Face BERT2BERT recipe: the decoder starts from [CLS], ends at [SEP] (the
tokenizer's eos) and pads with [PAD]; the tokenizer, saved beside the model, wraps targets in [CLS] … [SEP] like
sources, so the [SEP] the decoder learns is also where generation stops.

The result lives in ``cache_dir()/models/<name>-<digest>/``; the digest covers the encoder directory's files and
``FORMAT_VERSION``, so a new encoder or a change to the recipe builds a new directory. It is written to a scratch
directory and renamed (``models/cache.py``), so a half-written directory is never loaded.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

from lmtailor.errors import UserError
from lmtailor.models.cache import build_once
from lmtailor.models.embedded import file_sha256
from lmtailor.models.safe_weights import load_encoder_decoder, load_pretrained
from lmtailor.models.families import family_of
from lmtailor.paths import cache_dir

log = logging.getLogger("lmtailor")

FORMAT_VERSION = "b2b-v1"  # bump when the build below changes, so cached directories are rebuilt
# the files of a saved BERT that decide the warm-started model (README, pooling config etc. do not)
_SOURCE_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "vocab.txt",
                 "tokenizer_config.json", "special_tokens_map.json")


def encoder_digest(encoder_dir: Path) -> str:
    """sha256 over the encoder directory's model and tokenizer files and ``FORMAT_VERSION``."""
    encoder_dir = Path(encoder_dir)
    digest = hashlib.sha256(FORMAT_VERSION.encode())
    for name in _SOURCE_FILES:
        if (encoder_dir / name).is_file():
            digest.update(f"{name}:{file_sha256(encoder_dir / name)}\n".encode())
    return digest.hexdigest()


def bert2bert_path(encoder_dir: Path, name: str) -> Path:
    """Where the warm-started model built from ``encoder_dir`` lives (whether or not it exists yet)."""
    return cache_dir() / "models" / f"{name}-{encoder_digest(encoder_dir)[:12]}"


def bert2bert_dir(encoder_dir: Path, name: str) -> Path:
    """Return the cached BERT2BERT directory warm-started from ``encoder_dir``, building it once if missing."""
    target = bert2bert_path(encoder_dir, name)

    def build(tmp: Path) -> None:
        started = time.perf_counter()
        log.info("warm-starting %s (BERT2BERT) from %s once; cache: %s", name, encoder_dir, target)
        build_bert2bert(encoder_dir, tmp)
        log.info("built %s in %.1f s", name, time.perf_counter() - started)

    return build_once(target, build)


def _bert2bert_tokenizer(encoder_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    missing = [t for t in ("cls_token", "sep_token", "pad_token") if getattr(tokenizer, t) is None]
    if missing:
        raise UserError(f"the tokenizer in {encoder_dir} has no {', '.join(missing)}, which a BERT2BERT warm start "
                        "needs (decoder start [CLS], end [SEP], padding [PAD]); use a BERT-style encoder")
    # BERT has no bos/eos: name [CLS]/[SEP] so, as the HF BERT2BERT recipe does, and every eos-driven path
    # (target encoding, generation stop, likelihood scoring) works unchanged
    tokenizer.bos_token = tokenizer.cls_token
    tokenizer.eos_token = tokenizer.sep_token
    return tokenizer


def new_module_names(model, missing_keys: set[str], prefix: str = "") -> list[str]:
    """The largest modules of ``model`` whose every parameter is in ``missing_keys`` (started random on load)."""
    names = []
    for name, module in model.named_modules():
        params = {f"{name}.{p}" for p, _ in module.named_parameters()}
        if name and params and params <= missing_keys:
            names.append(name)
    # drop the children of a module already named: keep only the largest ones
    names = [n for n in names if not any(n.startswith(f"{m}.") for m in names)]
    return [f"{prefix}{n}" for n in names]


def build_bert2bert(encoder_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """Warm-start a BERT2BERT ``EncoderDecoderModel`` from the BERT in ``encoder_dir``; save it with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, EncoderDecoderModel

    encoder_dir, out_dir = Path(encoder_dir), Path(out_dir)
    config = AutoConfig.from_pretrained(encoder_dir)
    if family_of(config).seq2seq or config.model_type not in ("bert", "roberta", "electra"):
        raise UserError(f"{encoder_dir} holds a {config.model_type!r} model; a BERT2BERT warm start needs a "
                        "BERT-style encoder (bert, roberta, electra)")
    tokenizer = _bert2bert_tokenizer(encoder_dir)
    config.is_decoder, config.add_cross_attention = True, True  # what from_encoder_decoder_pretrained sets
    with torch.random.fork_rng(devices=[]):  # the random cross-attention is the same on every machine
        torch.manual_seed(seed)
        # the decoder is loaded here rather than by from_encoder_decoder_pretrained, to learn which weights are new
        decoder, info = load_pretrained(AutoModelForCausalLM, encoder_dir, config=config, dtype=torch.float32,
                                        output_loading_info=True)
        model = load_encoder_decoder(EncoderDecoderModel, encoder_dir, decoder_model=decoder, dtype=torch.float32,
                                     tie_encoder_decoder=False)
    ids = {"decoder_start_token_id": tokenizer.cls_token_id, "bos_token_id": tokenizer.cls_token_id,
           "eos_token_id": tokenizer.sep_token_id, "pad_token_id": tokenizer.pad_token_id}
    for key, value in ids.items():
        setattr(model.config, key, value)
        setattr(model.generation_config, key, value)  # generate() reads these, not the model config
    for side in (model.config.encoder, model.config.decoder):  # the Trainer aligns the text (decoder) config too
        side.bos_token_id, side.eos_token_id = ids["bos_token_id"], ids["eos_token_id"]
    model.config.vocab_size = model.config.decoder.vocab_size
    # LoRA trains these in full (PEFT modules_to_save, training/seq2seq.py): frozen random weights learn nothing
    model.config.warm_start_new_modules = new_module_names(decoder, set(info["missing_keys"]), prefix="decoder.")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
