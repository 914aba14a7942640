"""What ``lmtailor serve TARGET`` serves: a model reference, a PEFT adapter directory, a merged export, or a run's
trained row, loaded once in the runtime's dtype.

Adapters whose method changes weights (LoRA, DoRA, IA3, ...) are merged into their base, in fp32 on the CPU so the
folded update is exact (``export/merge.py``), then cast to the runtime's dtype: served as they would be deployed.
Prompt-learning adapters (prefix and prompt tuning) have no weights to fold in, so they are served as a PeftModel,
whose virtual tokens ``generate_ids`` puts in a KV cache (``inference/virtual_tokens.py``). Encoder-only models and
classifiers have no language-model head to generate with, and are refused.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmtailor.errors import UserError
from lmtailor.export.exporter import default_out_dir
from lmtailor.export.merge import base_reference, export_runtime, load_adapted
from lmtailor.export.run_rows import ADAPTER_CONFIG, TrainedRow, select_row
from lmtailor.inference.llamacpp import load_llamacpp
from lmtailor.inference.virtual_tokens import virtual_token_count
from lmtailor.models.family import Family
from lmtailor.models.families import family_of
from lmtailor.models.loading import family_name_of
from lmtailor.models.safe_weights import check_safe_weights
from lmtailor.rundir import RunDir
from lmtailor.runtime import Runtime
from lmtailor.training.peft_methods import peft_type_merges

_SANE_MAX_LENGTH = 1_000_000  # tokenizers without a limit say int(1e30)


@dataclass
class ServedModel:
    """A loaded model ready to serve, and what to say about it."""

    model: Any  # transformers.PreTrainedModel, or a peft.PeftModel for prompt-learning adapters
    tokenizer: Any
    family: Family
    name: str  # the default model name clients send
    description: str  # what is served, for the start-up lines
    context_length: int | None  # positions the model takes (decoder: prompt + answer; encoder-decoder: each side)
    virtual_tokens: int = 0  # positions a prefix/prompt-tuning adapter puts before every prompt
    encode_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    backend: str = "transformers"  # "llamacpp": model is an inference.llamacpp.LlamaCppModel

    @property
    def seq2seq(self) -> bool:
        return family_of(self.family).seq2seq


class ClassifierNotServable(UserError):
    """An encoder-only model or a classifier: it has no language-model head to generate text with."""


def context_length(model, tokenizer) -> int | None:
    """The model's context: ``max_position_embeddings`` (or its older names), else the tokenizer's sane limit."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < _SANE_MAX_LENGTH else None


def _refuse_encoder(what: str) -> ClassifierNotServable:
    return ClassifierNotServable(
        f"{what} is an encoder-only model (BERT-like) or a classifier: it has no language-model head, so it cannot "
        "generate text. lmtailor serve serves decoder-only (Llama, Qwen, SmolLM, ...) and encoder-decoder (T5, BART) "
        "models, their adapters and merged exports")


def _is_classifier_dir(path: Path) -> bool:
    """A saved classifier: lmtailor's labels.json beside it, or only sequence-classification architectures."""
    if (path / "labels.json").is_file():
        return True
    config = path / "config.json"
    if not config.is_file():
        return False
    archs = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    return bool(archs) and all(a.endswith("ForSequenceClassification") for a in archs)


def _served(model, tokenizer, family: Family, name: str, description: str) -> ServedModel:
    return ServedModel(model.eval(), tokenizer, family, name, description, context_length(model, tokenizer),
                       virtual_token_count(model))


def _from_model(ref: str, runtime: Runtime, name: str, what: str | None = None) -> ServedModel:
    from lmtailor.models import load_model

    local = Path(ref).expanduser()
    if local.is_dir() and _is_classifier_dir(local):
        raise _refuse_encoder(what or ref)
    family = family_name_of(ref, trust_remote_code=runtime.trust_remote_code)
    if not family_of(family).generates_text:
        raise _refuse_encoder(what or ref)
    loaded = load_model(ref, runtime)
    return _served(loaded.model, loaded.tokenizer, family, name, f"{what or ref} ({family}, {loaded.path})")


def _from_adapter(row, runtime: Runtime, name: str, what: str) -> ServedModel:
    """Serve a TrainedRow's PEFT adapter: merged when its method changes weights, else as a PeftModel."""
    check_safe_weights(row.artifact, "adapter")  # a pickled adapter is refused before PEFT opens the directory
    peft_type = str(row.peft_config()["peft_type"])
    if row.labels:
        raise _refuse_encoder(what)
    base = base_reference(row)
    family = family_name_of(base, trust_remote_code=runtime.trust_remote_code)
    if not family_of(family).generates_text:
        raise _refuse_encoder(f"{what} (base {base})")
    if not peft_type_merges(peft_type):  # the method's own ``merges``, as export and pre-training read it
        model, tokenizer, base = load_adapted(row, runtime)
        model.to(dtype=runtime.dtype)  # PEFT keeps adapter weights in fp32; the base is in the runtime's dtype
        how = f"{peft_type} adapter on {base}, served as a PeftModel (virtual tokens; nothing to merge)"
    else:
        # merge in fp32 (a half-precision merge rounds the update away), then serve in the runtime's dtype
        model, tokenizer, base = load_adapted(row, export_runtime(runtime.trust_remote_code))
        model = model.merge_and_unload()
        model.to(device=runtime.device, dtype=runtime.dtype)
        how = f"{peft_type} adapter merged into {base} (in fp32)"
    return _served(model, tokenizer, family, name, f"{what}: {how}; {family}")


def _adapter_dir_row(path: Path):
    """An adapter directory seen as a one-row run, so export/merge.py's loading and checks apply unchanged."""
    config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if "peft_type" not in config:
        raise UserError(f"{path / ADAPTER_CONFIG} has no peft_type: not a PEFT adapter; lmtailor serves PEFT adapters")
    base = config.get("base_model_name_or_path")
    if not base:
        raise UserError(f"{path / ADAPTER_CONFIG} does not name its base model (base_model_name_or_path); merge it "
                        "into its base first (lmtailor export --merge) and serve the merged directory")
    return TrainedRow(path.parent, path.name, {"model": base, "status": "ok"}, "adapter", path)


def _from_run(run_dir: Path, row_id: str | None, runtime: Runtime, name: str | None) -> ServedModel:
    row = select_row(run_dir, row_id)
    what = f"row {row.row_id} of {run_dir}"
    if row.labels:
        raise _refuse_encoder(what)
    if row.kind == "model":
        return _from_model(str(row.artifact), runtime, name or row.row_id, what)
    return _from_adapter(row, runtime, name or row.row_id, what)


def default_name(target: str) -> str:
    """The model name clients send when --model-name is not given: an alias or hub id as is, else the dir name."""
    path = Path(target).expanduser()
    return path.resolve().name if path.exists() else target


def _from_gguf(target: str, name: str) -> ServedModel:
    """Serve ``target``'s GGUF through llama.cpp (decoder-only; the HF tokenizer writes prompts)."""
    loaded = load_llamacpp(target)
    gguf = loaded.model.describe()["gguf"]
    return ServedModel(loaded.model, loaded.tokenizer, "decoder-only", name,
                       f"{target} through llama.cpp ({gguf['file']}, {gguf['type']})", loaded.model.n_ctx,
                       backend="llamacpp")


def _gguf_target(path: Path, target: str, row: str | None, name: str | None) -> ServedModel:
    """``--backend llamacpp``: a GGUF (embedded alias, .gguf path, folder with one), or a run row's exported one."""
    if path.is_dir() and RunDir(path).has_results():
        chosen = select_row(path, row)
        out = default_out_dir(path, chosen.row_id)
        if not list(out.glob("*.gguf")):
            raise UserError(f"--backend llamacpp serves a GGUF file; row {chosen.row_id} has none yet: run "
                            f"lmtailor export {target} --row {chosen.row_id} --merge --gguf")
        return _from_gguf(str(out), name or chosen.row_id)
    return _from_gguf(target, name or default_name(target))


def load_target(target: str, runtime: Runtime, row: str | None = None, name: str | None = None,
                backend: str = "transformers") -> ServedModel:
    """Load what ``target`` names (run directory, adapter directory, model directory, alias or hub id) to serve it;
    ``backend="llamacpp"`` serves its GGUF through llama.cpp instead."""
    path = Path(target).expanduser()
    if backend == "llamacpp":
        return _gguf_target(path, target, row, name)
    if path.is_dir() and RunDir(path).has_results():
        return _from_run(path, row, runtime, name)
    if row is not None:
        raise UserError(f"--row picks a row of a run directory, but {target} is not one (it has no results/ folder)")
    if path.is_dir() and (path / ADAPTER_CONFIG).is_file():
        adapter = _adapter_dir_row(path)
        return _from_adapter(adapter, runtime, name or default_name(target), f"adapter {path}")
    return _from_model(target, runtime, name or default_name(target))
