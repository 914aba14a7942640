"""How much disk one checkpoint takes: every file ``training/engine.py`` writes, for the full-disk message.

A checkpoint is more than the weights and the optimizer's moments: safetensors headers, the optimizer's parameter
groups, the scheduler, one RNG-and-loop state per process, the trainer state with its log history, the training
arguments, the model's config and card, the manifest; and each file occupies whole blocks of the filesystem. For a
small adapter those extras are most of it (a 28 KB LoRA adapter's checkpoint took about 160 KB on a 4 KB-block disk).

Sizes are computed from the objects about to be written, without copying a tensor: safetensors files as header +
data, JSON files by serialising the same values the engine serialises. The model's config files and card are taken
from the previous complete checkpoint's manifest when there is one (they do not change between steps), otherwise
from the config alone (the card, a few KB, is then left out).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmtailor.training import checkpoint as ckpt

_DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                torch.bool: "BOOL"}


@dataclass
class CheckpointSize:
    """The files of one checkpoint by part (part -> file sizes in bytes) and the disk's allocation block."""

    parts: dict[str, list[int]] = field(default_factory=dict)
    block: int = 1

    def bytes(self, part: str | None = None) -> int:
        """Bytes of ``part`` (every part when None)."""
        return sum(sum(v) for k, v in self.parts.items() if part is None or k == part)

    def on_disk(self) -> int:
        """What the checkpoint occupies: every file rounded up to whole blocks, plus its directory's block."""
        rounded = sum(-(-n // self.block) * self.block for sizes in self.parts.values() for n in sizes)
        return rounded + self.block


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> int:
    """The size of the safetensors file ``tensors`` make: 8 bytes, the JSON header padded to 8, the data."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, t in sorted(tensors.items()):
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPE_NAMES.get(t.dtype, "F8_E4M3"), "shape": list(t.shape),
                        "data_offsets": [offset, offset + n]}
        offset += n
    length = len(json.dumps(header, separators=(",", ":")).encode())
    return 8 + length + (-length % 8) + offset


def _encode(value: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """``checkpoint._to_json`` without copying tensors: ``tensors`` gets the tensors themselves."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value
        return {"__tensor__": key}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{key}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{key}.{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors, f"{key}.{k}") for k, v in value.items()}
        return {"__dict__": [[_encode(k, tensors, f"{key}.k{i}"), _encode(v, tensors, f"{key}.{i}")]
                             for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    return value


def state_file_sizes(state: Any) -> list[int]:
    """Sizes of the ``<stem>.json`` (+ ``<stem>.safetensors``) ``checkpoint.save_state`` writes for ``state``."""
    tensors: dict[str, torch.Tensor] = {}
    sizes = [len(json.dumps(_encode(state, tensors, "t")).encode())]
    if tensors:
        sizes.append(safetensors_bytes(tensors))
    return sizes


def _json_state_size(state: dict) -> int:
    return len(json.dumps(_encode(state, {}, "t"), indent=1).encode())


def _weights(model, peft: bool) -> dict[str, torch.Tensor]:
    """The tensors ``save_pretrained`` writes: the adapter's state dict, or the model's without tied duplicates."""
    if peft:
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model)
    seen, weights = set(), {}
    for name, t in model.state_dict().items():
        ident = (t.data_ptr(), t.numel(), t.dtype) if t.device.type != "meta" else (name,)
        if ident not in seen:
            seen.add(ident)
            weights[name] = t
    return weights


def _config_sizes(model, peft: bool, previous: Path | None, written: set[str]) -> list[int]:
    """The model's config files and card: as the previous checkpoint has them, else the config alone."""
    if previous is not None:
        try:
            files = json.loads((previous / ckpt.MANIFEST).read_text(encoding="utf-8"))["files"]
            return [int(e["bytes"]) for name, e in files.items() if name not in written]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    if peft:
        config = model.peft_config[model.active_adapter]
        return [len(json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str).encode())]
    return [len(model.config.to_json_string().encode())]


def checkpoint_size(trainer, directory: Path, peft: bool) -> CheckpointSize:
    """What the next checkpoint of ``trainer`` (an engine trainer) takes in ``directory``."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    weights_name = "adapter_model.safetensors" if peft else "model.safetensors"
    size = CheckpointSize()
    size.parts["weights"] = [safetensors_bytes(_weights(model, peft), {"format": "pt"})]
    size.parts["optimizer"] = state_file_sizes(trainer.optimizer.state_dict()) if trainer.optimizer else []
    loop = {"rng": ckpt.rng_state(), "loop": trainer._loop_state()}
    size.parts["process states"] = state_file_sizes(loop) * max(1, trainer.args.world_size)
    trainer_state = [len((json.dumps(_asdict(trainer.state), indent=2, sort_keys=True) + "\n").encode()),
                     len(json.dumps(trainer._args_record(), indent=1).encode())]
    if trainer.lr_scheduler is not None:
        trainer_state.append(_json_state_size(trainer.lr_scheduler.state_dict()))
    scaler = getattr(trainer.accelerator, "scaler", None)
    if scaler is not None:
        trainer_state.append(_json_state_size(scaler.state_dict()))
    size.parts["trainer state"] = trainer_state
    written = {weights_name, ckpt.OPTIMIZER_JSON, ckpt.OPTIMIZER_TENSORS, ckpt.SCHEDULER_JSON, ckpt.SCALER_JSON,
               ckpt.TRAINER_STATE, ckpt.TRAINING_ARGS}
    previous = (ckpt.complete_checkpoints(directory) or [None])[-1]
    if previous is not None:
        written |= {p.name for p in previous.iterdir() if p.name.startswith("process-")}
    size.parts["config"] = _config_sizes(model, peft, previous, written)
    n_files = sum(len(v) for v in size.parts.values())
    # manifest.json: one entry per file (name, size, sha256), indent 1 (checkpoint.write_manifest)
    entry = {"bytes": 10 ** 9, "sha256": "0" * 64}
    size.parts["manifest"] = [len(json.dumps({"format": ckpt.MANIFEST_FORMAT, "step": trainer.state.global_step,
                                              "files": {f"{'x' * 28}{i}": entry for i in range(n_files)}},
                                             indent=1).encode())]
    try:
        size.block = os.statvfs(directory).f_frsize or 1
    except (OSError, AttributeError):
        pass
    return size


def _asdict(state) -> dict:
    import dataclasses

    return dataclasses.asdict(state)
