"""Resumable training checkpoints on disk: written atomically, verified before use, no pickles.

A checkpoint is a directory ``checkpoint-<step>`` holding

- the model or the PEFT adapter (``save_pretrained``: safetensors and JSON config),
- ``optimizer.safetensors`` (every state tensor) + ``optimizer.json`` (param groups, non-tensor state),
- ``scheduler.json`` and, with fp16 loss scaling, ``scaler.json``,
- ``process-<rank>.safetensors`` + ``process-<rank>.json`` per process: RNG states (Python, NumPy, torch CPU, CUDA)
  and the training loop's running log sums, so a resumed run logs exactly what an uninterrupted one does,
- ``trainer_state.json`` (global step, epoch: the data position Trainer's resume skips to; log history; callbacks),
- ``training_args.json`` (for people, and to refuse a checkpoint written with other settings),
- ``manifest.json``, written last: the sha256 and size of every other file. It is the completion marker.

Everything is written into ``.tmp-checkpoint-<step>`` beside the final directory (same filesystem) and renamed into
place, so a kill mid-write leaves a scratch directory that is never taken for a checkpoint; and a checkpoint whose
manifest is missing, unreadable or disagrees with a file is skipped by ``last_complete_checkpoint``. Nothing here is
read with pickle: tensors come from safetensors, everything else from JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger("lmtailor")

PREFIX = "checkpoint"
TEMP_PREFIX = f".tmp-{PREFIX}-"
TRASH_PREFIX = f".old-{PREFIX}-"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "lmtailor-checkpoint/1"
OPTIMIZER_TENSORS, OPTIMIZER_JSON = "optimizer.safetensors", "optimizer.json"
SCHEDULER_JSON, SCALER_JSON = "scheduler.json", "scaler.json"
TRAINER_STATE, TRAINING_ARGS = "trainer_state.json", "training_args.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle")
_STEP = re.compile(rf"^{PREFIX}-(\d+)$")


# --- directories, manifest, discovery --------------------------------------------------------------------------------

def checkpoint_name(step: int) -> str:
    return f"{PREFIX}-{step}"


def temp_dir_for(parent: Path, step: int) -> Path:
    """The scratch directory a checkpoint of ``step`` is written into: beside the final one, so the rename is atomic."""
    return Path(parent) / f"{TEMP_PREFIX}{step}"


def step_of(path: Path) -> int | None:
    """The step of a ``checkpoint-<step>`` directory name, None for any other name."""
    match = _STEP.match(Path(path).name)
    return int(match.group(1)) if match else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(directory: Path, step: int) -> dict:
    """Checksum every file of ``directory`` and write ``manifest.json`` last: the checkpoint is complete after this.

    Files are flushed to disk first, so after a power loss a manifest never vouches for data that was never written.
    """
    directory = Path(directory)
    files = {}
    for path in _files(directory):
        _fsync(path)
        files[path.relative_to(directory).as_posix()] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    manifest = {"format": MANIFEST_FORMAT, "step": step, "files": files}
    target = directory / MANIFEST
    with target.open("w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    return manifest


def checkpoint_problem(directory: Path, verify_checksums: bool = True) -> str | None:
    """Why ``directory`` is not a complete checkpoint (no manifest, unreadable, a file missing or changed); None if
    it is one. ``verify_checksums=False`` checks presence and sizes only (cheap, for rotation)."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        return "no manifest.json (it was interrupted while being written)"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict) or not files:
            return f"manifest.json is not an {MANIFEST_FORMAT} manifest"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"manifest.json is unreadable ({type(e).__name__}: {e})"
    for name, entry in files.items():
        file = directory / name
        if not file.is_file():
            return f"{name} is listed in the manifest but missing"
        if file.stat().st_size != entry.get("bytes"):
            return f"{name} has {file.stat().st_size} bytes, the manifest says {entry.get('bytes')}"
        if verify_checksums and _sha256(file) != entry.get("sha256"):
            return f"{name} does not match its sha256 in the manifest (changed or corrupted)"
    return None


def checkpoint_dirs(directory: Path) -> list[Path]:
    """``checkpoint-<step>`` directories under ``directory``, oldest step first (complete or not)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=lambda p: step_of(p))  # type: ignore[arg-type, return-value]


def complete_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints with a manifest whose files are all present at the recorded sizes, oldest first (no hashing)."""
    return [p for p in checkpoint_dirs(directory) if checkpoint_problem(p, verify_checksums=False) is None]


def last_complete_checkpoint(directory: Path) -> Path | None:
    """The newest checkpoint under ``directory`` whose manifest verifies (every checksum); others are skipped, said."""
    for path in reversed(checkpoint_dirs(directory)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("skipping %s: %s", path, problem)
    return None


def publish(temp: Path, final: Path) -> None:
    """Rename the finished scratch directory into place; an older directory of the same name is replaced."""
    trash = None
    if final.exists():  # e.g. the same step saved again after a resume: swap, never leave neither
        trash = final.with_name(f"{TRASH_PREFIX}{final.name}")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final, trash)
    os.replace(temp, final)
    with contextlib.suppress(OSError):
        _fsync(final.parent)  # make the rename itself durable
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def rotate(directory: Path, keep: int, protect: Iterable[Path] = ()) -> list[Path]:
    """Delete all but the ``keep`` newest complete checkpoints (never one in ``protect``, e.g. the best), plus any
    incomplete ``checkpoint-*`` older than the newest complete one. Returns what was deleted."""
    complete = complete_checkpoints(directory)
    protected = {Path(p).resolve() for p in protect}
    kept = set(p.resolve() for p in complete[-keep:]) | protected
    newest = step_of(complete[-1]) if complete else None
    deleted = []
    for path in checkpoint_dirs(directory):
        incomplete_and_old = path not in complete and newest is not None and step_of(path) < newest  # type: ignore
        if (path in complete and path.resolve() not in kept) or incomplete_and_old:
            shutil.rmtree(path, ignore_errors=True)
            deleted.append(path)
    return deleted


def remove_scratch(directory: Path) -> None:
    """Remove scratch directories a killed writer left behind (``.tmp-checkpoint-*``, ``.old-checkpoint-*``)."""
    directory = Path(directory)
    if directory.is_dir():
        for path in directory.iterdir():
            if path.is_dir() and path.name.startswith((TEMP_PREFIX, TRASH_PREFIX)):
                shutil.rmtree(path, ignore_errors=True)


def remove_all(directory: Path) -> None:
    """Remove every checkpoint and scratch directory under ``directory``, then the directory if nothing else is left."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for path in checkpoint_dirs(directory):
        shutil.rmtree(path, ignore_errors=True)
    remove_scratch(directory)
    with contextlib.suppress(OSError):
        directory.rmdir()


# --- JSON with tuples and tensors kept apart -------------------------------------------------------------------------

def _to_json(value: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """A JSON-able copy of ``value``: tensors go to ``tensors`` under ``key`` (and leave a reference), tuples are tagged
    so they come back as tuples (``betas``), anything else unknown is refused rather than silently stringified."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json(v, tensors, f"{key}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_to_json(v, tensors, f"{key}.{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _to_json(v, tensors, f"{key}.{k}") for k, v in value.items()}
        # non-string keys (the optimizer's parameter ids) would come back from JSON as strings: keep them as pairs
        return {"__dict__": [[_to_json(k, tensors, f"{key}.k{i}"), _to_json(v, tensors, f"{key}.{i}")]
                             for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot write {key} ({type(value).__name__}) to a checkpoint as JSON or a tensor")


def _from_json(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_from_json(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__tuple__" in value:
            return tuple(_from_json(v, tensors) for v in value["__tuple__"])
        if "__dict__" in value:
            return {_from_json(k, tensors): _from_json(v, tensors) for k, v in value["__dict__"]}
        return {k: _from_json(v, tensors) for k, v in value.items()}
    return value


def save_state(directory: Path, stem: str, state: Any) -> None:
    """Write ``state`` (nested dicts/lists/tuples of tensors and plain values) as ``<stem>.json`` plus, when it holds
    tensors, ``<stem>.safetensors``."""
    tensors: dict[str, torch.Tensor] = {}
    encoded = _to_json(state, tensors, "t")
    directory = Path(directory)
    if tensors:
        save_file(tensors, str(directory / f"{stem}.safetensors"))
    (directory / f"{stem}.json").write_text(json.dumps(encoded), encoding="utf-8")


def load_state(directory: Path, stem: str) -> Any:
    """Read back what ``save_state`` wrote (tensors on the CPU)."""
    directory = Path(directory)
    tensor_file = directory / f"{stem}.safetensors"
    tensors = load_file(str(tensor_file), device="cpu") if tensor_file.is_file() else {}
    return _from_json(json.loads((directory / f"{stem}.json").read_text(encoding="utf-8")), tensors)


def has_state(directory: Path, stem: str) -> bool:
    return (Path(directory) / f"{stem}.json").is_file()


# --- RNG states -----------------------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """Every global random generator training draws from: Python, NumPy, torch CPU and (when present) CUDA."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch_cpu": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = list(torch.cuda.random.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured (CUDA only when the checkpoint has it and CUDA is here)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.random.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        cuda = state["torch_cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.random.set_rng_state_all(cuda)
        else:
            log.warning("the checkpoint has CUDA RNG states for %d devices, this machine has %d: not restored",
                        len(cuda), torch.cuda.device_count())


# --- optimizer -------------------------------------------------------------------------------------------------------

def optimizer_state_bytes(optimizer) -> int:
    """Bytes held by the optimizer's state tensors (AdamW: two moments per trainable weight, plus step counters)."""
    if optimizer is None:
        return 0
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
               if isinstance(v, torch.Tensor))


def save_optimizer(directory: Path, optimizer) -> None:
    """The optimizer's ``state_dict``: state tensors as safetensors, param groups and the rest as JSON."""
    save_state(directory, Path(OPTIMIZER_JSON).stem, optimizer.state_dict())


def load_optimizer_state(directory: Path) -> dict:
    """The optimizer ``state_dict`` ``save_optimizer`` wrote, ready for ``optimizer.load_state_dict``."""
    return load_state(directory, Path(OPTIMIZER_JSON).stem)


def save_json_state(path: Path, state: dict) -> None:
    """A scheduler or scaler ``state_dict``: plain JSON (refused if it holds something JSON cannot keep)."""
    tensors: dict[str, torch.Tensor] = {}
    encoded = _to_json(state, tensors, "t")
    if tensors:
        raise TypeError(f"{path.name}: the state holds tensors ({', '.join(tensors)}); expected plain values")
    Path(path).write_text(json.dumps(encoded, indent=1), encoding="utf-8")


def load_json_state(path: Path) -> dict:
    return _from_json(json.loads(Path(path).read_text(encoding="utf-8")), {})


def pickle_files(directory: Path) -> list[Path]:
    """Files under ``directory`` in a pickle-based format (.bin, .pt, .pth, .pkl): a checkpoint must have none."""
    return [p for p in Path(directory).rglob("*") if p.is_file() and p.suffix in PICKLE_SUFFIXES]
