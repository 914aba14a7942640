"""Dequantize a GGUF model once and keep it as safetensors, so later loads take seconds instead of minutes.

Transformers reads GGUF with ``from_pretrained(dir, gguf_file=...)`` and dequantizes every tensor to float32,
which is slow. The result (model, tokenizer with its chat template, generation config) is saved under
``cache_dir()/models/<alias>-<first 12 hex of the GGUF's sha256>``: a new GGUF gets a new directory.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Callable

from lmtailor.models.cache import build_once, is_complete
from lmtailor.paths import cache_dir

log = logging.getLogger("lmtailor")


def converted_path(alias: str, digest: str) -> Path:
    """Where the converted copy of the GGUF with sha256 ``digest`` lives (whether or not it exists yet)."""
    return cache_dir() / "models" / f"{alias}-{digest[:12]}"


def is_converted(alias: str, digest: str) -> bool:
    """True when a finished converted copy exists in the cache."""
    return is_complete(converted_path(alias, digest))


def _detach_gguf_quantizer(model) -> None:
    """Make a GGUF-loaded model an ordinary dense one, so ``save_pretrained`` and training accept it.

    Transformers 5 loads GGUF through a "gguf" quantizer. Dequantizing (always, for llama and gemma3, which go
    through its legacy path) leaves plain ``nn.Linear`` weights yet keeps the quantizer attached, which makes the
    model "not serializable" and "not trainable". Removing it is only right when nothing stayed packed: check that.
    """
    import torch

    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    packed = sorted({type(m).__name__ for m in model.modules() if "gguf" in type(m).__name__.lower()}
                    | {str(p.dtype) for p in model.parameters() if not torch.is_floating_point(p)})
    if packed:
        raise RuntimeError(f"the GGUF model kept packed weights ({', '.join(packed)}); it cannot be saved dense")
    quantizer.remove_quantization_config(model)


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Load a GGUF with transformers (dequantizing to float32) and save model and tokenizer as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf_path = Path(gguf_path)
    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # dequantize=True: a dense model even where transformers could keep GGUF blocks (needs `kernels`), since
    # we save and fine-tune it. float32: dequantized 4-bit values need more mantissa than bf16 has.
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    _detach_gguf_quantizer(model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def ensure_converted(alias: str, digest: str, materialize: Callable[[Path], Path],
                     convert: Callable[[Path, Path], None] | None = None) -> Path:
    """Return the converted directory for ``alias``, converting the GGUF that ``materialize(scratch)`` gives once."""
    target = converted_path(alias, digest)
    if is_complete(target):
        return target
    convert = convert or convert_gguf

    def build(tmp: Path) -> None:
        scratch = tmp / ".gguf-source"  # e.g. the assembled gemma chunks; deleted before the rename
        scratch.mkdir()
        started = time.perf_counter()
        log.info("converting %s from GGUF to safetensors once (this takes a while); cache: %s", alias, target)
        convert(materialize(scratch), tmp)
        shutil.rmtree(scratch)
        log.info("converted %s in %.0f s", alias, time.perf_counter() - started)

    return build_once(target, build)
