"""The environment a result was measured in: versions, hardware and the lmtailor commit."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import psutil

from lmtailor import __version__
from lmtailor.runtime import Runtime

_PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "gguf", "optuna")


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def describe_environment(runtime: Runtime) -> dict:
    """Versions, hardware and runtime choices, stored in every result record."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    env = {
        "lmtailor": __version__,
        "lmtailor_commit": _git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "packages": versions,
        "device": runtime.device,
        "precision": runtime.precision,
        "precision_reason": runtime.reason,
    }
    import torch

    if runtime.hardware == "cpu":
        env["torch_threads"] = torch.get_num_threads()  # timings depend on it (runtime.threads)
    if runtime.hardware == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
    return env
