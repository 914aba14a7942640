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
    out = _run("train_throughput.py", "--model", "tiny-llama", "--repeats", "1", "--steps", "2", "--precision",
               "fp32", "--engines", "plain,lmtailor,lmtailor-fp32-casts")
    for row in ("| plain |", "| lmtailor |", "| lmtailor-fp32-casts |", "| lmtailor / plain |",
                "| lmtailor-fp32-casts / plain |"):
        assert row in out, row
    assert "| lmtailor-padded" not in out  # not asked for
    assert "lmtailor (padding-free) |" in out  # the default for a decoder-only model
    assert "dtype fp32" in out and "(fp32 2048x2048 matmul)" in out  # --precision reaches the runs and the peak
    assert "4N+2T" in out and "GFLOP/s" in out


def test_train_table_shows_the_cuda_peak_only_where_a_gpu_trained():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_throughput", BENCHMARKS / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module._memory({"rss_train_peak": 2 * 2**30, "cuda_train_peak": None}) == "2,048 MB"
    assert module._memory({"rss_train_peak": 2**30, "cuda_train_peak": 3 * 2**29}) == "1,024 MB; CUDA 1,536 MB"


def test_table_headers_name_the_cpu_flags_and_the_commit(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_env

    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: Some Xeon\nflags\t\t: fpu avx2 amx_bf16 avx512_bf16x\n")
    assert bench_env.cpu(info) == ("Some Xeon", "avx2 amx_bf16")  # whole flags only
    assert bench_env.cpu(tmp_path / "absent")[1] == "?"
    assert bench_env.commit(tmp_path) == "?"  # not a git checkout
    assert bench_env.commit(BENCHMARKS.parent).split()[0].isalnum()


def test_label_scoring_tolerance_prints_the_three_differences(tiny_llama_dir):
    out = _run("label_scoring_tolerance.py", "--models", "tiny-llama", "--rows", "2")
    for row in ("(a) fp32 cached vs fp32 uncached: max", "(b) bf16 uncached vs fp32 uncached: max",
                "(c) bf16 cached vs fp32 uncached: max"):
        assert row in out, row
    assert "path prefix-cache" in out


def test_serve_load_prints_each_mode_side_by_side():
    """Three servers of the tiny random Llama in turn (static, continuous without and with the prefix cache), two
    clients for two seconds each: every mode answers without errors, and only the last reuses prompt tokens."""
    out = _run("serve_load.py", "--clients", "2", "--seconds", "2",
               "--batching", "static,continuous-no-prefix-cache,continuous")
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in out.splitlines() if line.startswith("|")}
    assert rows["measure"][-1].strip(" |") == "continuous"
    assert [v.strip(" |") for v in rows["errors"]] == ["0", "0", "0"]
    reused = [v.strip(" |") for v in rows["prompt tokens reused (prefix cache)"]]
    assert reused[:2] == ["-", "0"] and int(reused[2]) > 0
    assert "continuous / static" in out


def test_train_step_anatomy_prints_every_variant(tiny_llama_dir):
    out = _run("train_step_anatomy.py", "--model", "tiny-llama", "--precision", "fp32", "--batches", "2",
               "--repeats", "1")
    for row in ("| forward |", "| forward + backward | ", "| forward + backward, LoRA dropout 0 |",
                "| forward + backward, PEFT's fp32 casts |"):
        assert row in out, row
    assert "| forward + backward | " in out and "| 1.00 |" in out and "commit" in out
