"""Choose the device and the dtype from what the hardware supports, and say why."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16", "fp16"]
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """The device and compute dtype a run uses, with the reason shown in the run output."""

    device: str
    precision: Literal["fp32", "bf16", "fp16"]
    reason: str
    # Python code shipped inside a model directory runs only when the experiment says so (runtime.trust_remote_code)
    trust_remote_code: bool = False

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.precision]

    @property
    def hardware(self) -> Literal["cpu", "cuda", "mps"]:
        return "cuda" if self.device.startswith("cuda") else ("mps" if self.device == "mps" else "cpu")

    def describe(self) -> str:
        threads = f" threads={torch.get_num_threads()}" if self.hardware == "cpu" else ""
        described = f"device={self.device}{threads} dtype={self.precision} ({self.reason})"
        if self.trust_remote_code:
            described += "; trust_remote_code ON: Python code inside model directories runs (set in the experiment)"
        return described


def set_threads(threads: int | None) -> int:
    """Run torch's CPU operators on ``threads`` threads (None: leave torch's default, one per physical core);
    returns the number in use.

    A setting because the default assumes the cores are free: on a 2-core machine shared with other jobs, a LoRA
    step ran about 10x faster on 1 thread than on 2 (benchmarks/README.md), the threads waiting on each other.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def _cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    # Without AVX512-BF16 or AMX, PyTorch emulates bf16 matmuls on the CPU: ~100x slower than fp32 (0.85 against
    # 117 GFLOP/s on an AVX2 machine). With AMX it is the other way round: ~5x faster than fp32 (1080 against 215).
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def detect_runtime(precision: Precision = "auto", device: str | None = None,
                   trust_remote_code: bool = False) -> Runtime:
    """Pick device and dtype: bf16 on GPUs and CPUs that do it natively, fp16 on older GPUs, else fp32."""
    chosen = _detect(precision, device)
    return replace(chosen, trust_remote_code=True) if trust_remote_code else chosen


def _detect(precision: Precision, device: str | None) -> Runtime:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision != "auto":
        return Runtime(device, precision, "set in the experiment")
    if device.startswith("cuda"):
        if torch.cuda.is_bf16_supported():
            return Runtime(device, "bf16", "GPU supports bf16")
        return Runtime(device, "fp16", "GPU lacks bf16")
    if device == "cpu" and _cpu_has_native_bf16():
        return Runtime(device, "bf16", "CPU has native bf16 (AVX512-BF16/AMX)")
    return Runtime(device, "fp32", "no native bf16 on this CPU; emulated bf16 is far slower than fp32")
