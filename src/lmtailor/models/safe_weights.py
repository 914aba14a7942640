"""The one way lmtailor loads weights: safetensors only, checked before PEFT or transformers look in the directory.

A pickle (``adapter_model.bin``, ``pytorch_model.bin``, ``*.pt``, ``*.ckpt``) runs code when it is unpickled, and
PEFT and transformers fall back to one whenever the safetensors file they look for first is missing; only PyTorch's
``weights_only`` default stands between such a file and ``pickle``. So every load of a model, an adapter or a
training checkpoint goes through this module: ``check_safe_weights`` refuses a directory whose weights would be read
from a pickle, naming it, and the loaders call PEFT and transformers only after it. ``tests/test_export.py`` checks,
on the package's source, that no other module calls a model's or an adapter's ``from_pretrained``. GGUF files
(``gguf_file=``) are parsed by the ``gguf`` package, never unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from lmtailor.errors import UserError

WeightsKind = Literal["model", "adapter", "checkpoint"]

# Suffixes of the files torch.save / pickle write; loaders unpickle these when no safetensors file stands in for them.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})
# What PEFT and transformers read in preference to a pickle: when one of these is present they never open the pickle.
_SAFE_FILES: dict[str, tuple[str, ...]] = {
    "adapter": ("adapter_model.safetensors",),
    "model": ("model.safetensors", "model.safetensors.index.json"),
    "checkpoint": (),  # an lmtailor checkpoint holds no pickle at all (training/checkpoint.py)
}


def _pickles(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file())


def check_safe_weights(directory: str | Path, kind: WeightsKind) -> None:
    """Refuse ``directory`` when loading it as ``kind`` would unpickle a file; a hub id (not a local directory)
    passes, its callers load it with ``use_safetensors=True``.

    An adapter must have ``adapter_model.safetensors`` (PEFT reads ``adapter_model.bin`` otherwise); a model whose
    directory holds pickles must have safetensors weights beside them (transformers prefers those); a training
    checkpoint may hold no pickle at all.
    """
    path = Path(directory).expanduser()
    if not path.is_dir():
        return
    if kind == "adapter" and not (path / _SAFE_FILES["adapter"][0]).is_file():
        found = _pickles(path)
        what = f"only pickled weights ({', '.join(found)})" if found else "no adapter_model.safetensors"
        raise UserError(f"{path} holds {what}: lmtailor loads adapter weights from safetensors only (a .bin adapter "
                        "is a pickle, which runs code when loaded). Convert it once where you trust it: "
                        "PeftModel.from_pretrained(base, dir).save_pretrained(new_dir), then use new_dir")
    if any((path / name).is_file() for name in _SAFE_FILES[kind]):
        return
    found = _pickles(path)
    if found:
        how = ("delete it to start that training over" if kind == "checkpoint" else
               "convert it once where you trust it: AutoModel.from_pretrained(path).save_pretrained(new_dir), then "
               "use new_dir")
        raise UserError(f"{path} holds pickled files ({', '.join(found[:5])}) and no safetensors weights to read "
                        f"instead: lmtailor loads {kind} weights from safetensors only (a pickle runs code when "
                        f"loaded); {how}")


def load_pretrained(model_class: Any, ref: str | Path, **kwargs: Any):
    """``model_class.from_pretrained(ref, use_safetensors=True, **kwargs)`` after ``check_safe_weights``."""
    check_safe_weights(ref, "model")
    return model_class.from_pretrained(ref, use_safetensors=True, **kwargs)


def load_encoder_decoder(model_class: Any, encoder: str | Path, **kwargs: Any):
    """``model_class.from_encoder_decoder_pretrained(encoder, None, **kwargs)`` (the decoder given in ``kwargs``),
    the encoder read from safetensors only."""
    check_safe_weights(encoder, "model")
    return model_class.from_encoder_decoder_pretrained(str(encoder), None, encoder_use_safetensors=True, **kwargs)


def load_peft_adapter(model: Any, adapter_dir: str | Path, **kwargs: Any):
    """``peft.PeftModel.from_pretrained(model, adapter_dir)`` after ``check_safe_weights`` (the only call to it)."""
    from peft import PeftModel

    check_safe_weights(adapter_dir, "adapter")
    return PeftModel.from_pretrained(model, str(adapter_dir), **kwargs)


def load_sentence_transformer(ref: str | Path, **kwargs: Any):
    """A ``sentence_transformers.SentenceTransformer`` from ``ref``, its weights read from safetensors only."""
    from sentence_transformers import SentenceTransformer

    check_safe_weights(ref, "model")
    model_kwargs = {"use_safetensors": True, **kwargs.pop("model_kwargs", {})}
    return SentenceTransformer(str(ref), model_kwargs=model_kwargs, **kwargs)
