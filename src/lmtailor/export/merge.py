"""Fold a row's PEFT adapter into its base model and save a standalone model directory, atomically.

The base is loaded in fp32 on the CPU (merging in half precision would round the folded update away), the adapter is
applied with plain ``peft.PeftModel.from_pretrained`` (through ``models/safe_weights.py``: safetensors only) and
checked to have loaded every saved weight, and ``merge_and_unload`` leaves an ordinary transformers model, saved as
safetensors with the row's tokenizer (and a classifier's ``labels.json``). The directory is written under a temporary
name beside the target and renamed, so a killed export never leaves a half-written model that looks whole.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lmtailor.errors import UserError
from lmtailor.io import shared_dir_mode
from lmtailor.export.run_rows import LABELS_FILE, TrainedRow
from lmtailor.models.safe_weights import load_peft_adapter
from lmtailor.runtime import Runtime

log = logging.getLogger("lmtailor")

EXPORT_INFO = "lmtailor_export.json"  # provenance beside the weights: which row, base and adapter made them
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class MergeResult:
    """A merged (or already standalone) model directory and where it came from."""

    path: Path
    base: str
    peft_type: str | None  # None for a full-model artifact
    head: str | None  # "sequence-classification" for encoder classifiers, else the family's LM head
    merged: bool  # False when the artifact was already a whole model


def export_runtime(trust_remote_code: bool = False) -> Runtime:
    """fp32 on the CPU: the merged weights are exact, whatever precision training ran in."""
    return Runtime("cpu", "fp32", "export merges in fp32 on the CPU", trust_remote_code=trust_remote_code)


def write_dir_atomically(target: Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Run ``write(tmp)`` on a fresh directory beside ``target``, then rename it to ``target``."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise UserError(f"{target} already exists; remove it, choose another --out, or pass --overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        write(tmp)
        os.chmod(tmp, shared_dir_mode())  # mkdtemp makes it private; an export is shared as the umask says
        if target.exists():  # overwrite: the old one goes only once the new one is whole
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
            os.rename(target, old / "x")
            try:
                os.rename(tmp, target)
            except OSError:
                os.rename(old / "x", target)  # put the previous export back
                raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def check_mergeable(row: TrainedRow, peft_config: dict[str, Any]) -> None:
    """Refuse adapters that have no weights to fold in (prefix tuning, prompt tuning, ...), saying how to serve them."""
    from lmtailor.training.peft_methods import peft_type_merges

    peft_type = str(peft_config.get("peft_type"))
    if not peft_type_merges(peft_type):  # the method's own FinetuneMethod.merges, as serving and pre-training read it
        raise UserError(
            f"row {row.row_id}: method {row.method or peft_type} (PEFT {peft_type}) learns virtual tokens fed to the "
            "model with every input, not changes to its weights, so there is nothing to merge into the base. The "
            "adapter must be served with its base model: PeftModel.from_pretrained(AutoModelForCausalLM."
            f"from_pretrained(BASE), {str(row.artifact)!r}), where BASE is the model the row trained on "
            f"({row.model_ref}); see docs/EXPORT.md")
    if not (row.artifact / ADAPTER_WEIGHTS).is_file():
        raise UserError(f"row {row.row_id}: {row.artifact} has no {ADAPTER_WEIGHTS}; lmtailor loads adapter weights "
                        "from safetensors only (a .bin adapter is a pickle)")


def base_reference(row: TrainedRow) -> str:
    """The model the adapter was trained on: the row's pre-trained model if it made one, else the record's base."""
    pretrained = row.artifact_path("pretrained_model")
    if pretrained is not None:
        if not pretrained.is_dir():
            raise UserError(f"row {row.row_id}: its pre-trained model {pretrained} is missing; the adapter only "
                            "works on top of it")
        return str(pretrained)
    if row.pretrained:
        raise UserError(
            f"row {row.row_id} ({row.record.get('strategy')}) trained its model on a corpus before fine-tuning, and "
            f"the adapter ({row.method}) was trained on that model, which this run did not save (no "
            f"'pretrained_model' artifact). Merging it into {row.model_ref} would give a model that was never "
            "trained. Re-run the row with a version of lmtailor that saves the pre-trained model beside every "
            "adapter, or fine-tune with method: full, whose artifact is a whole model")
    return row.model_ref


def _check_adapter_loaded(peft_model, adapter_dir: Path, base: str) -> None:
    """Every saved adapter tensor must be in the model, unchanged: PEFT only warns about keys it could not place."""
    import torch
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    saved = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    live = get_peft_model_state_dict(peft_model)
    missing = sorted(set(saved) - set(live))
    wrong = [k for k in set(saved) & set(live) if not torch.equal(saved[k].float(), live[k].detach().float())]
    if missing or wrong:
        raise UserError(f"the adapter in {adapter_dir} does not fit the base model {base}: {len(missing)} saved "
                        f"tensors found no place ({', '.join(missing[:3])}) and {len(wrong)} loaded differently. Is "
                        f"{base} the model the row trained on?")


def load_adapted(row: TrainedRow, runtime: Runtime):
    """(PEFT model on the fp32 base, tokenizer, base reference): the row's model before merging."""
    from lmtailor.models import load_model, load_tokenizer

    base = base_reference(row)
    labels = row.labels
    head = "sequence-classification" if labels else None
    loaded = load_model(base, runtime, head=head, num_labels=len(labels) if labels else None)
    if labels:  # as training named them (training/classifier.py), so the saved config says what it predicts
        loaded.model.config.id2label = dict(enumerate(labels))
        loaded.model.config.label2id = {label: i for i, label in enumerate(labels)}
    try:
        model = load_peft_adapter(loaded.model, row.artifact)  # refuses a pickled adapter before PEFT opens it
    except (ValueError, KeyError, RuntimeError) as e:  # PEFT: target modules missing, shape mismatch, ...
        raise UserError(f"row {row.row_id}: the adapter in {row.artifact} does not fit the base model {base} "
                        f"({type(e).__name__}: {str(e)[:300]}). Is {base} the model the row trained on?") from e
    _check_adapter_loaded(model, row.artifact, base)
    has_tokenizer = (row.artifact / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(str(row.artifact)) if has_tokenizer else loaded.tokenizer
    return model.eval(), tokenizer, base


def merge_row(row: TrainedRow, out_dir: Path, overwrite: bool = False, runtime: Runtime | None = None) -> MergeResult:
    """Merge the adapter of ``row`` into its base and save the standalone model to ``out_dir``."""
    if row.kind == "model":
        log.info("row %s is a full fine-tune: %s is already a standalone model", row.row_id, row.artifact)
        return MergeResult(row.artifact, row.model_ref, None, "sequence-classification" if row.labels else None,
                           merged=False)
    peft_config = row.peft_config()
    check_mergeable(row, peft_config)
    if Path(out_dir).exists() and not overwrite:  # before loading anything
        raise UserError(f"{out_dir} already exists; remove it, choose another --out, or pass --overwrite")
    runtime = runtime or export_runtime()
    model, tokenizer, base = load_adapted(row, runtime)
    try:
        merged = model.merge_and_unload()
    except (AttributeError, NotImplementedError, ValueError) as e:
        raise UserError(f"row {row.row_id}: PEFT cannot merge a {peft_config['peft_type']} adapter ({e}); serve the "
                        "adapter on its base model with PeftModel.from_pretrained (docs/EXPORT.md)") from e
    info = {"row_id": row.row_id, "run_dir": str(row.run_dir.resolve()), "base_model": base,
            "record_model": row.model_ref, "adapter": str(row.artifact.resolve()), "method": row.method,
            "peft_type": peft_config["peft_type"], "dtype": "float32"}

    def write(tmp: Path) -> None:
        merged.save_pretrained(tmp)  # safetensors: the only format transformers 5 writes
        tokenizer.save_pretrained(tmp)
        if (row.artifact / LABELS_FILE).is_file():
            shutil.copy2(row.artifact / LABELS_FILE, tmp / LABELS_FILE)
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

    path = write_dir_atomically(Path(out_dir), write, overwrite)
    log.info("row %s: %s adapter merged into %s -> %s", row.row_id, peft_config["peft_type"], base, path)
    head = "sequence-classification" if row.labels else None
    return MergeResult(path, base, str(peft_config["peft_type"]), head, merged=True)
