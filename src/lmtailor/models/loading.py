"""Load a model reference as (model, tokenizer, family) on the run's device and dtype."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from lmtailor.errors import UserError
from lmtailor.measure.meter import tooling
from lmtailor.models.families import FamilyAdapter, family_of as family_adapter
from lmtailor.models.family import Family, Head, check_head, detect_family
from lmtailor.models.remote_code import check_remote_code
from lmtailor.models.safe_weights import load_pretrained
from lmtailor.models.sources import resolve_model
from lmtailor.runtime import Runtime


@dataclass
class LoadedModel:
    """A model ready to use: eval mode, on ``runtime.device`` in ``runtime.dtype``; its tokenizer has a pad token."""

    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    family: Family
    ref: str
    path: str
    source: Literal["embedded", "local", "hub", "tiny"]

    @property
    def adapter(self) -> FamilyAdapter:
        """The family's adapter (``models/families``): what this model can do and how."""
        return family_adapter(self.family)


def load_tokenizer(path: str, trust_remote_code: bool = False, gguf_file: str | None = None):
    """Load the tokenizer at ``path`` (from the GGUF file ``gguf_file`` in that folder, when given) and give it a pad
    token (eos, else sep/unk) when it has none."""
    from transformers import AutoTokenizer

    extra = {} if gguf_file is None else {"gguf_file": gguf_file}
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **extra)
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.sep_token or tokenizer.unk_token
        if fallback is None:
            raise ValueError(f"the tokenizer at {path} has no pad, eos, sep or unk token to pad batches with")
        tokenizer.pad_token = fallback
    return tokenizer


def family_name_of(ref: str, trust_remote_code: bool = False) -> Family:
    """The family's name for the model ``ref`` names: an alias says it; otherwise its config does (no weights
    loaded). ``adapter_of`` gives the family's adapter (``models.families.family_of`` turns a name into one).

    ``trust_remote_code``: the experiment's ``runtime.trust_remote_code`` (a model with its own code needs it even to
    read its config)."""
    from transformers import AutoConfig

    from lmtailor.models.sources import MODEL_ALIASES

    if ref in MODEL_ALIASES:  # also spares converting an embedded GGUF just to read its config
        return MODEL_ALIASES.get(ref).family  # type: ignore[return-value]
    return detect_family(AutoConfig.from_pretrained(resolve_model(ref).path, trust_remote_code=trust_remote_code))


def adapter_of(ref: str, trust_remote_code: bool = False) -> FamilyAdapter:
    """The family adapter of the model ``ref`` names (``family_name_of``, then the ``FAMILIES`` registry)."""
    return family_adapter(family_name_of(ref, trust_remote_code))


def load_model(ref: str, runtime: Runtime, head: Head | None = None, num_labels: int | None = None,
               quantization_config: Any = None) -> LoadedModel:
    """Resolve ``ref`` and load it with the family's head (or ``head``) in ``runtime.dtype`` on ``runtime.device``.

    ``quantization_config`` (e.g. QLoRA's 4-bit ``BitsAndBytesConfig``) quantizes the weights while loading; the
    quantized model is placed on the device by ``device_map``, as bitsandbytes models cannot be moved after loading.
    """
    from transformers import AutoConfig

    resolved = resolve_model(ref)
    trust = runtime.trust_remote_code  # off unless the experiment sets it; the run output says when it is on
    if resolved.source == "hub":
        download_hub_model(resolved.path, trust)
    elif not trust:  # a local model with its own code: our message, not Transformers' ValueError
        check_remote_code([resolved.path], trust)
    config = AutoConfig.from_pretrained(resolved.path, trust_remote_code=trust)
    family = detect_family(config)
    adapter = family_adapter(family)
    head = adapter.head(head)
    check_head(config, head)
    if head == "sequence-classification" and num_labels is not None:
        config.num_labels = num_labels
    elif num_labels is not None:
        raise ValueError(f"num_labels={num_labels} only applies to head='sequence-classification', not {head!r}")
    tokenizer = load_tokenizer(resolved.path, trust_remote_code=trust)
    if getattr(config, "pad_token_id", None) is None:
        # classification heads of decoders find the last real token through pad_token_id
        config.pad_token_id = tokenizer.pad_token_id
    # An explicit dtype, never "auto": "auto" takes the checkpoint's bf16 even on CPUs that emulate it slowly.
    placement = {} if quantization_config is None else {"quantization_config": quantization_config,
                                                         "device_map": {"": runtime.device}}
    try:
        # safetensors only (models/safe_weights.py): a pickled .bin can run code when it is loaded
        model = load_pretrained(adapter.auto_class(head), resolved.path, config=config, dtype=runtime.dtype,
                                trust_remote_code=trust, **placement)
    except OSError as e:
        if "safetensors" not in str(e):
            raise
        raise UserError(f"model {ref!r} ({resolved.path}) has no safetensors weights, and lmtailor does not load "
                        "pickled weight files (.bin, .pt), which can run code when loaded. Convert it once where you "
                        "trust it: AutoModel.from_pretrained(path).save_pretrained(new_dir), then use new_dir") from e
    if quantization_config is None:
        model.to(runtime.device)
    model.eval()
    contiguous_head_input(model)
    return LoadedModel(model, tokenizer, family, ref, resolved.path, resolved.source)


# What loading a hub model reads (weights as safetensors only, config, tokenizer, chat template); code with
# trust_remote_code. Other files a hub repository may hold (ONNX, GGUF, pickled weights) are never fetched.
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def download_hub_model(repo_id: str, trust_remote_code: bool = False) -> None:
    """Download a hub model's files into the hub cache once, as tool set-up: a deployment has its weights already,
    so the download is kept out of the row's time and $ (``measure.meter.tooling``) and recorded apart."""
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return  # downloaded before (a partial download is completed by from_pretrained, inside the row's load)
    with tooling(f"downloaded {repo_id} from the Hugging Face Hub"):
        snapshot_download(repo_id, allow_patterns=HUB_FILES + (["*.py"] if trust_remote_code else []))


def contiguous_head_input(model) -> None:
    """Hand the LM head a contiguous input, so that projecting the last position onto the vocabulary is one matmul.

    Why: generation and label scoring ask for the last position's logits only (``logits_to_keep=1``), which gives
    the head a strided ``(batch, 1, hidden)`` view. PyTorch folds a 3-D input into a single matmul only when that
    needs no copy or when the weight requires grad; with frozen weights (a merged LoRA model, whose base PEFT froze)
    it runs a batched matmul over a per-row copy of the whole vocabulary matrix instead. Measured on SmolLM2-135M
    (bf16, 8 rows): a forward took 0.88 s instead of 0.35 s, greedy generation 1.6x as long, and the tuned LoRA
    row's label scoring 3x as long as the full fine-tune's. Copying the ``(batch, 1, hidden)`` slice costs nothing
    next to that. Models without an LM head (classifiers) are left as they are.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, torch.nn.Module):
        head.register_forward_pre_hook(_contiguous_first_input)


def _contiguous_first_input(module, args: tuple) -> tuple | None:
    if args and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None
