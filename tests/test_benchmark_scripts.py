"""The benchmark scripts run (on the tiny model, a few rows and steps) and print their tables. No timings are
asserted: the numbers live in benchmarks/README.md, measured on an idle machine."""

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_inference_throughput_prints_every_engine_against_the_naive_loop(tiny_llama_dir):
    out = _run("inference_throughput.py", "--model", "tiny-llama", "--rows", "4", "--max-new-tokens", "4",
               "--skip-llamacpp")
    for row in ("naive: model.generate per row, answer parsed", "lmtailor predict(mode=likelihood)",
                "naive: model.generate per row |", "lmtailor generate_ids"):
        assert row in out, row
    assert "same tokens as the naive loop in" in out


def test_train_throughput_prints_plain_against_lmtailor(tiny_llama_dir):
    out = _run("train_throughput.py", "--model", "tiny-llama", "--repeats", "1", "--steps", "2")
    for row in ("| plain |", "| lmtailor |", "| lmtailor-padded |", "| lmtailor / plain |"):
        assert row in out, row
    assert "lmtailor (padding-free) |" in out  # the default for a decoder-only model
    assert "4N+2T" in out and "GFLOP/s" in out
