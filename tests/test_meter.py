import time

import pytest

from lmtailor.measure import Meter, Pricing, estimate_flops


def test_meter_fills_every_field(tmp_path):
    artifact = tmp_path / "adapter"
    artifact.mkdir()
    (artifact / "weights.bin").write_bytes(b"x" * 1000)
    meter = Meter(pricing=Pricing(cpu_usd_per_hour=3.6), hardware="cpu")
    with meter:
        with meter.phase("load"):
            time.sleep(0.01)
        with meter.phase("train"):
            # 64 MB written byte by byte: a zeroed bytearray may be untouched calloc pages, which add no RSS
            blob = b"\x01" * (64 * 2**20)
            time.sleep(0.15)
            del blob
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
    assert rec["peak_rss_bytes"] >= rec["rss_at_start_bytes"] + 32 * 2**20
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
