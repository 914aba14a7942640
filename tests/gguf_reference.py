"""The GGUF conversion lmtailor used before issue 19, kept as the reference the direct one must equal bit for bit.

It builds a whole transformers model (``from_pretrained(gguf_file=...)``, dequantizing through the "gguf"
quantizer) and saves it; ``models.gguf_cache.convert_gguf`` now skips the model.
"""

from __future__ import annotations

from pathlib import Path


def _detach_gguf_quantizer(model) -> None:
    """Make a GGUF-loaded model an ordinary dense one, so ``save_pretrained`` accepts it (nothing stayed packed)."""
    import torch

    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    packed = sorted({type(m).__name__ for m in model.modules() if "gguf" in type(m).__name__.lower()}
                    | {str(p.dtype) for p in model.parameters() if not torch.is_floating_point(p)})
    if packed:
        raise RuntimeError(f"the GGUF model kept packed weights ({', '.join(packed)}); it cannot be saved dense")
    quantizer.remove_quantization_config(model)


def convert_gguf_through_a_model(gguf_path: Path, out_dir: Path) -> None:
    """Load a GGUF with transformers (dequantizing to float32) and save model and tokenizer as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf_path = Path(gguf_path)
    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    _detach_gguf_quantizer(model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def same_files(a: Path, b: Path) -> list[str]:
    """Names of the files that differ between two converted directories (weights compared tensor by tensor,
    bit for bit, with their dtypes and shapes; every other file byte for byte)."""
    from safetensors.torch import load_file

    names = sorted({p.name for p in Path(a).iterdir()} | {p.name for p in Path(b).iterdir()})
    differ = []
    for name in names:
        pa, pb = Path(a) / name, Path(b) / name
        if not (pa.is_file() and pb.is_file()):
            differ.append(name)
        elif name.endswith(".safetensors"):
            ta, tb = load_file(pa), load_file(pb)
            if ta.keys() != tb.keys() or any(ta[k].dtype != tb[k].dtype or ta[k].shape != tb[k].shape
                                              or not _bitwise_equal(ta[k], tb[k]) for k in ta):
                differ.append(name)
        elif pa.read_bytes() != pb.read_bytes():
            differ.append(name)
    return differ


def _bitwise_equal(x, y) -> bool:
    import torch

    # compare the bits, so -0.0 vs 0.0 or two NaN payloads would count as different
    as_int = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
    dtype = as_int.get(x.dtype)
    return bool(torch.equal(x.view(dtype), y.view(dtype)) if dtype else torch.equal(x, y))
