import time

import psutil
import pytest

from lmtailor.measure import Meter, Pricing, estimate_flops
from lmtailor.measure import meter as meter_module

_REAL_PROCESS = psutil.Process


class _FakeProcess:
    """psutil.Process with an RSS the test sets: the real RSS depends on what earlier tests freed but kept mapped."""

    rss = 1_000 * 2**20

    def __init__(self, pid):
        self._real = _REAL_PROCESS(pid)

    def memory_info(self):
        return type("mem", (), {"rss": _FakeProcess.rss})()

    def cpu_times(self):
        return self._real.cpu_times()


def test_meter_fills_every_field(tmp_path, monkeypatch):
    monkeypatch.setattr(meter_module.psutil, "Process", _FakeProcess)
    artifact = tmp_path / "adapter"
    artifact.mkdir()
    (artifact / "weights.bin").write_bytes(b"x" * 1000)
    meter = Meter(pricing=Pricing(cpu_usd_per_hour=3.6), hardware="cpu")
    with meter:
        with meter.phase("load"):
            time.sleep(0.01)
        with meter.phase("train"):
            _FakeProcess.rss += 64 * 2**20  # a 64 MB allocation, seen by the sampler thread (0.05 s polls)
            time.sleep(0.15)
            _FakeProcess.rss -= 64 * 2**20
            meter.add_tokens("train", 500)
        with meter.phase("inference"):
            time.sleep(0.05)
            meter.add_tokens("inference", 100)
            meter.add_examples("inference", 10)
        meter.set_params(trainable=10, total=1000)
        meter.add_artifact("adapter", artifact)
        meter.add_flops("train", estimate_flops(1000, 500, "peft", 10))
    rec = meter.record()
    assert rec["wall_s"] >= 0.2
    assert rec["phases"]["train"]["wall_s"] >= 0.15
    assert rec["phases"]["train"]["tokens"] == 500
    assert rec["peak_rss_bytes"] == rec["rss_at_start_bytes"] + 64 * 2**20  # the peak, not the RSS at the end
    assert rec["trainable_params"] == 10 and rec["total_params"] == 1000
    assert rec["artifact_bytes"] == {"adapter": 1000}
    assert rec["inference_latency_s_per_example"] == pytest.approx(rec["phases"]["inference"]["wall_s"] / 10, rel=0.05)
    # $3.6/h is $0.001/s
    assert rec["usd"]["train"] == pytest.approx(rec["phases"]["train"]["wall_s"] * 0.001, rel=0.05)
    assert rec["usd"]["inference_per_1k"] == pytest.approx(rec["inference_latency_s_per_example"] * 1000 * 0.001, rel=0.05)
    assert rec["tokens_per_s"]["train"] > 0
    assert rec["flops"]["train"] == pytest.approx((4 * 1000 + 2 * 10) * 500)


def test_meter_rejects_unknown_phase():
    meter = Meter()
    with pytest.raises(ValueError, match="unknown meter phase"):
        with meter.phase("training"):
            pass


def test_flop_rules():
    assert estimate_flops(10, 3, "inference") == 60
    assert estimate_flops(10, 3, "full") == 180
    with pytest.raises(ValueError):
        estimate_flops(10, 3, "lora")


def test_freed_memory_goes_back_to_the_system_before_a_row_is_metered():
    """In a fresh process with glibc told to keep freed heap memory (as it does by itself after a large block was
    freed), 400 MB of freed tensors stay resident until ``release_freed_memory`` hands them back."""
    import ctypes
    import subprocess
    import sys
    import textwrap

    if not hasattr(ctypes.CDLL(None), "malloc_trim"):
        pytest.skip("no glibc malloc_trim on this system")
    script = textwrap.dedent("""
        import ctypes, gc, psutil, torch
        from lmtailor.measure.meter import release_freed_memory
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 64 * 2**20)  # M_MMAP_THRESHOLD: 4 MB tensors come from the heap
        libc.mallopt(-1, 2**30)       # M_TRIM_THRESHOLD: the heap does not shrink by itself
        proc = psutil.Process()
        before = proc.memory_info().rss
        blocks = [torch.ones(1_000_000) for _ in range(100)]
        del blocks
        gc.collect()
        kept = (proc.memory_info().rss - before) / 2**20
        release_freed_memory()
        print(kept, (proc.memory_info().rss - before) / 2**20)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    kept, after = map(float, out.stdout.split())
    assert kept > 300  # MB the allocator kept after the tensors were freed
    assert after < 50


def test_each_phase_has_its_own_peak_memory(monkeypatch):
    """Training needs 300 MB more, inference 100 MB more: the row's peak is training's, each phase keeps its own,
    and an enclosing phase's window includes what a phase inside it reached."""
    monkeypatch.setattr(meter_module.psutil, "Process", _FakeProcess)
    _FakeProcess.rss = 1_000 * 2**20
    meter = Meter(pricing=Pricing(), hardware="cpu")
    with meter:
        with meter.phase("train"):
            _FakeProcess.rss += 300 * 2**20
            time.sleep(0.15)
            _FakeProcess.rss -= 300 * 2**20
        with meter.phase("inference"):
            _FakeProcess.rss += 100 * 2**20
            time.sleep(0.15)
            _FakeProcess.rss -= 100 * 2**20
        with meter.phase("pretrain"):
            with meter.phase("data"):
                _FakeProcess.rss += 50 * 2**20
                time.sleep(0.15)
                _FakeProcess.rss -= 50 * 2**20
    by_phase = meter.record()["peak_rss_bytes_by_phase"]
    assert by_phase == {"train": 1_300 * 2**20, "inference": 1_100 * 2**20, "data": 1_050 * 2**20,
                        "pretrain": 1_050 * 2**20}
    assert meter.record()["peak_rss_bytes"] == 1_300 * 2**20
