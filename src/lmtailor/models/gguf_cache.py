"""Dequantize a GGUF model once and keep it as safetensors, so later loads take seconds instead of minutes.

Dequantizing every tensor to float32 (transformers' GGUF reader over the gguf package) takes a while. The result
(weights, config, tokenizer with its chat template, generation config) is saved under
``cache_dir()/models/<alias>-<first 12 hex of the GGUF's sha256>``: a new GGUF gets a new directory.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from lmtailor.errors import UserError
from lmtailor.models.cache import build_once, is_complete
from lmtailor.paths import cache_dir

log = logging.getLogger("lmtailor")


def converted_path(alias: str, digest: str) -> Path:
    """Where the converted copy of the GGUF with sha256 ``digest`` lives (whether or not it exists yet)."""
    return cache_dir() / "models" / f"{alias}-{digest[:12]}"


def is_converted(alias: str, digest: str) -> bool:
    """True when a finished converted copy exists in the cache."""
    return is_complete(converted_path(alias, digest))


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF to float32 safetensors with transformers' GGUF reader, without loading a model.

    ``load_gguf_checkpoint`` is what ``from_pretrained(gguf_file=...)`` calls: it dequantizes every tensor with the
    gguf package and renames (and un-permutes) it to transformers' names, taking the names from a model's state
    dict. A model on the meta device gives those names at no cost, and its ``save_pretrained(state_dict=...)``
    writes the same config, generation config and weight file as saving a loaded model did, without building,
    initializing and copying that model (tests/test_gguf_conversion.py checks it tensor by tensor).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    gguf_path = Path(gguf_path)
    folder, name = gguf_path.parent, gguf_path.name
    with _gguf_read_once():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        # float32: dequantized 4-bit values need more mantissa than bf16 has
        tensors = load_gguf_checkpoint(gguf_path, return_tensors=True, model_to_load=skeleton,
                                       torch_dtype=torch.float32)["tensors"]
    _check_every_weight_read(skeleton, tensors, gguf_path)
    skeleton.save_pretrained(out_dir, state_dict=tensors)
    tokenizer.save_pretrained(out_dir)


class IncompleteGgufError(UserError, RuntimeError):
    """A GGUF that lacks weights the model's architecture needs: the user's file, named with what to do."""


_READ_ONCE_LOCK = threading.Lock()


@contextlib.contextmanager
def _gguf_read_once() -> Iterator[None]:
    """Within the block, the gguf package parses a file's header once and builds a tensor-name map once.

    Transformers reads the GGUF three times (tokenizer, config, weights), and each ``GGUFReader`` parses every
    vocabulary entry of the header again; its name mapping builds ``gguf.get_tensor_name_map`` anew for every
    submodule (about 400 times for SmolLM2). In a profile of SmolLM2's conversion these two took 60% of the time,
    dequantizing 9%. Both are read-only once built, so sharing them changes no value. Transformers looks them up
    on the ``gguf`` module at call time, hence the swap.
    """
    import gguf

    with _READ_ONCE_LOCK:  # one swap at a time: a second conversion in another thread waits
        real_reader, real_map = gguf.GGUFReader, gguf.get_tensor_name_map
        readers: dict[tuple, object] = {}

        def shared_reader(path, mode="r"):
            key = (str(Path(path).resolve()), mode)
            if key not in readers:
                readers[key] = real_reader(path, mode)
            return readers[key]

        gguf.GGUFReader, gguf.get_tensor_name_map = shared_reader, functools.lru_cache(maxsize=None)(real_map)
        try:
            yield
        finally:
            gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_map


def _check_every_weight_read(skeleton, tensors: dict, gguf_path: Path) -> None:
    """Refuse a conversion that would save a model with weights the GGUF did not give (tied ones excepted)."""
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    expected = remove_tied_weights_from_state_dict(dict(skeleton.state_dict()), skeleton)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise IncompleteGgufError(f"{gguf_path}: the GGUF holds no tensor for {', '.join(missing[:5])}"
                                  f"{' ...' if len(missing) > 5 else ''}; it cannot be converted to a whole model. "
                                  "Re-download or re-export the file (a truncated or partial GGUF), or point the "
                                  "model reference at the model's safetensors directory instead")


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
