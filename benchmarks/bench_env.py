"""Where a benchmark ran, for the header of its table: the CPU and its speed-relevant flags, and the git commit.

Both benchmark scripts import it; they run as ``python benchmarks/<script>.py``, so this folder is on sys.path.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

# the instruction sets that decide the dtype (bf16 is native only with AVX512-BF16 or AMX) and the kernels
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, str]:
    """(the CPU's model name, which of ``SPEED_FLAGS`` it has); the platform's processor name and "?" off Linux."""
    try:
        lines = cpuinfo.read_text().splitlines()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        flags = set(next(line for line in lines if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return platform.processor() or platform.machine(), "?"
    return name, " ".join(f for f in SPEED_FLAGS if f in flags) or "none of " + "/".join(SPEED_FLAGS)


def commit(repo: Path) -> str:
    """The short commit of ``repo``'s HEAD, marked when tracked files have uncommitted changes; "?" without git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + (" (+ uncommitted changes)" if dirty else "")
