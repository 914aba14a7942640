"""The dtype comes from what the hardware does natively, never from a library default."""

from __future__ import annotations

import pytest

from lmtailor import runtime
from lmtailor.runtime import _cpu_has_native_bf16, detect_runtime


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("fpu sse2 avx avx2 fma", False),  # emulated bf16: far slower than fp32
        ("fpu avx2 avx512f avx512_bf16", True),
        ("fpu avx2 amx_tile amx_bf16", True),
        ("fpu avx2 avx512_bf16x", False),  # a flag is a whole word, not a substring
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert _cpu_has_native_bf16(cpuinfo) is native


def test_missing_cpuinfo_means_no_native_bf16(tmp_path):
    assert _cpu_has_native_bf16(tmp_path / "absent") is False


@pytest.mark.parametrize(("native", "precision"), [(False, "fp32"), (True, "bf16")])
def test_auto_precision_on_cpu_follows_the_hardware(monkeypatch, native, precision):
    monkeypatch.setattr(runtime, "_cpu_has_native_bf16", lambda: native)
    chosen = detect_runtime("auto", "cpu")
    assert chosen.precision == precision
    assert precision in chosen.describe()  # the run output shows the dtype and why


def test_explicit_precision_wins(monkeypatch):
    monkeypatch.setattr(runtime, "_cpu_has_native_bf16", lambda: False)
    chosen = detect_runtime("bf16", "cpu")
    assert chosen.precision == "bf16" and "experiment" in chosen.reason


def test_trust_remote_code_is_off_unless_asked_and_then_named_in_the_output():
    assert detect_runtime("fp32", "cpu").trust_remote_code is False
    assert "trust_remote_code" not in detect_runtime("fp32", "cpu").describe()
    on = detect_runtime("fp32", "cpu", trust_remote_code=True)
    assert on.trust_remote_code and "trust_remote_code ON" in on.describe()


def test_threads_are_torch_default_unless_set_and_shown_in_the_output():
    import torch
    from pydantic import ValidationError

    from lmtailor.config import RuntimeConfig

    before = torch.get_num_threads()
    try:
        assert runtime.set_threads(None) == before  # unset: torch's own choice is left alone
        assert runtime.set_threads(1) == 1 and torch.get_num_threads() == 1
        assert "threads=1" in detect_runtime("fp32", "cpu").describe()
    finally:
        torch.set_num_threads(before)
    assert RuntimeConfig(threads=2).threads == 2 and RuntimeConfig().threads is None
    with pytest.raises(ValidationError, match="threads"):
        RuntimeConfig(threads=0)
