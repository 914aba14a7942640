"""Several processes: the helpers (one process and two), the combined meter, and `accelerate launch` on 2 CPU processes.

The launch tests start real processes over gloo (torchrun under `accelerate launch --multi_gpu`: with `--cpu`,
accelerate 1.x starts a single process unless mpirun is configured; on a machine without GPUs the `--multi_gpu`
launcher runs the processes on the CPU, and lmtailor's runtime makes the Trainer use gloo).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from colours import colour_rows
from lmtailor import distributed
from lmtailor.errors import UserError
from lmtailor.measure.meter import Meter, combine_process_records

_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK",
                "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MPI_LOCALNRANKS",
                "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE")


@pytest.fixture()
def one_process(monkeypatch):
    for name in _LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test session's environment (its LMTAILOR_CACHE holds the tiny models), CI-safe and without launch vars."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS and not k.startswith("ACCELERATE_")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               HF_HOME=str(tmp_path / "hf-home"),  # no accelerate default config of the user's
               **extra)
    return env


# --- one process -------------------------------------------------------------------------------------------------


def test_helpers_are_no_ops_in_one_process_and_leave_torch_distributed_alone(one_process):
    distributed.setup(cpu=True)
    distributed.barrier()
    assert (distributed.world_size(), distributed.rank(), distributed.machines()) == (1, 0, 1)
    assert distributed.is_main_process() and not distributed.is_distributed()
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.gather_objects("x") == ["x"]
    assert distributed.all_reduce_sum(3) == 3 and distributed.all_reduce_sum(2.5) == 2.5
    assert distributed.on_main(lambda: 7) == 7
    distributed.check_same("digest", "the data")
    with distributed.rank_logging():
        pass
    assert not torch.distributed.is_initialized()


def test_on_main_raises_the_main_process_error_as_it_is(one_process):
    def fail():
        raise UserError("disk full")

    with pytest.raises(UserError, match="disk full"):
        distributed.on_main(fail)


def test_rank_world_size_and_machines_come_from_the_launcher(one_process, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert (distributed.world_size(), distributed.rank(), distributed.machines()) == (8, 5, 2)
    assert distributed.is_distributed() and not distributed.is_main_process()
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")  # mpirun (accelerate's multi-CPU launcher)
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    assert (distributed.world_size(), distributed.rank()) == (2, 0)


def test_timeout_comes_from_the_environment_and_bad_values_say_how_to_fix(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.timeout_s() == 1800
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "45")
    assert distributed.timeout_s() == 45
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "ten")
    with pytest.raises(UserError, match="LMTAILOR_DIST_TIMEOUT=600"):
        distributed.timeout_s()


def test_launcher_precision_follows_the_runtime(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert distributed.align_launcher_precision("fp32") is None
    assert "ACCELERATE_MIXED_PRECISION" not in os.environ  # nothing launched: nothing to align
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    note = distributed.align_launcher_precision("fp32")
    assert os.environ["ACCELERATE_MIXED_PRECISION"] == "no" and "training uses fp32" in note
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # accelerate's default: aligned without a word
    assert distributed.align_launcher_precision("bf16") is None
    assert os.environ["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_weights_checksum_tells_identical_copies_from_different_ones():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert distributed.weights_checksum(a) == distributed.weights_checksum(b)
    expected = float(a.weight.detach().double().sum() + a.bias.detach().double().sum())
    assert distributed.weights_checksum(a) == pytest.approx(expected, rel=1e-12)
    with torch.no_grad():
        b.bias[0] += 1e-3
    assert distributed.weights_checksum(a) != distributed.weights_checksum(b)


def test_artifacts_are_measured_by_the_main_process_only(tmp_path, monkeypatch):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "w.safetensors").write_bytes(b"x" * 10)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    meter = Meter()
    meter.add_artifact("adapter", tmp_path / "adapter")
    assert meter.artifacts == {}
    monkeypatch.setenv("RANK", "0")
    meter.add_artifact("adapter", tmp_path / "adapter")
    assert meter.artifacts == {"adapter": 10}


def test_other_ranks_log_only_warnings_prefixed_with_their_rank(one_process, monkeypatch):
    import logging

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    root, logger, handler = logging.getLogger(), logging.getLogger("lmtailor.test-rank"), Keep()
    root.addHandler(handler)
    logger.setLevel(logging.INFO)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    try:
        with distributed.rank_logging("lmtailor.test-rank"):
            logger.info("loading the model")
            logger.warning("row %s failed", "r1")
        logger.info("after the run")
    finally:
        root.removeHandler(handler)
    assert records == ["[rank 1] row r1 failed", "after the run"]
    assert not torch.distributed.is_initialized()


def _process_record(wall: float, cpu: float, train_wall: float, peak: int, start: int, tokens: int) -> dict:
    phases = {p: {"wall_s": 0.0, "cpu_s": 0.0, "tokens": 0, "examples": 0}
              for p in ("load", "data", "index", "pretrain", "train", "inference")}
    phases["train"] = {"wall_s": train_wall, "cpu_s": cpu / 2, "tokens": tokens, "examples": 16}
    phases["inference"] = {"wall_s": 2.0, "cpu_s": 1.0, "tokens": 100, "examples": 8}
    return {"hardware": "cpu", "world_size": 1, "wall_s": wall, "cpu_s": cpu, "phases": phases,
            "peak_rss_bytes": peak, "rss_at_start_bytes": start, "cuda_peak_bytes": None, "trainable_params": 10,
            "total_params": 100, "artifact_bytes": {"adapter": 5}, "flops": {"train": 6.0e6},
            "inference_latency_s_per_example": 0.25, "tokens_per_s": {}, "usd": {"rate_per_hour": 3.6}}


def test_combined_meter_takes_the_slowest_wall_sums_cpu_and_memory_and_counts_totals_once():
    main = _process_record(wall=10.0, cpu=8.0, train_wall=6.0, peak=500, start=100, tokens=4000)
    other = _process_record(wall=12.0, cpu=6.0, train_wall=7.0, peak=700, start=300, tokens=4000)
    rec = combine_process_records([main, other], billed_units=1)
    assert rec["world_size"] == 2
    assert rec["wall_s"] == 12.0 and rec["cpu_s"] == 14.0
    assert rec["phases"]["train"] == {"wall_s": 7.0, "cpu_s": 7.0, "tokens": 4000, "examples": 16}
    # 4000 tokens are the Trainer's total over both processes (it all-gathers them): counted once
    assert rec["tokens_per_s"]["train"] == pytest.approx(4000 / 7.0)
    assert rec["flops"] == {"train": 6.0e6} and rec["artifact_bytes"] == {"adapter": 5}
    assert (rec["peak_rss_bytes"], rec["rss_at_start_bytes"], rec["peak_rss_bytes_sum"]) == (700, 300, 1200)
    assert [p["peak_rss_bytes"] for p in rec["processes"]] == [500, 700]
    assert rec["inference_latency_s_per_example"] == 0.25  # 2 s for 8 rows on one process
    # $3.6/h = $0.001/s: set-up (train 7 s) and total (12 s) billed once on one machine; inference per 1k rows
    assert rec["usd"]["train"] == pytest.approx(0.007) and rec["usd"]["total"] == pytest.approx(0.012)
    assert rec["usd"]["inference_per_1k"] == pytest.approx(0.25)
    # two GPUs are two billed units for the set-up, while serving stays one process's latency
    gpus = combine_process_records([main, other], billed_units=2)
    assert gpus["usd"]["train"] == pytest.approx(0.014) and gpus["usd"]["inference_per_1k"] == pytest.approx(0.25)
    assert combine_process_records([main]) is main


# --- two processes -----------------------------------------------------------------------------------------------

_HELPER_SCRIPT = """
import json
import pathlib
from lmtailor import distributed
from lmtailor.errors import UserError

distributed.setup(cpu=True)
r = distributed.rank()
out = {"rank": r, "world": distributed.world_size(), "main": distributed.is_main_process(),
       "sum_int": distributed.all_reduce_sum(r + 1), "sum_float": distributed.all_reduce_sum(0.5),
       "broadcast": distributed.broadcast_object(f"from rank {r}"), "gathered": distributed.gather_objects(r * 10)}
distributed.barrier()
out["on_main"] = distributed.on_main(lambda: "made on main" if distributed.is_main_process() else "not main")
def fail_for_people():
    raise UserError("the data file changed")
def fail():
    raise OSError("no space left on device")
try:
    distributed.on_main(fail_for_people)
except UserError as e:
    out["user_error"] = str(e)
try:
    distributed.on_main(fail)
except distributed.MainProcessError as e:
    out["on_main_error"] = str(e)
try:
    distributed.check_same(r, "the rank")
except UserError as e:
    out["check_same_error"] = str(e)
# one file per rank: two processes printing to one pipe can interleave their lines
pathlib.Path(__file__).with_name(f"result-{r}.json").write_text(json.dumps(out))
"""


def test_helpers_across_two_processes(tmp_path):
    script = tmp_path / "helpers.py"
    script.write_text(_HELPER_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(script)]
    done = subprocess.run(cmd, env=_launch_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    results = sorted((json.loads(p.read_text()) for p in tmp_path.glob("result-*.json")), key=lambda o: o["rank"])
    assert [o["rank"] for o in results] == [0, 1]
    for o in results:
        assert o["world"] == 2 and o["main"] == (o["rank"] == 0)
        assert o["sum_int"] == 3 and o["sum_float"] == 1.0
        assert o["broadcast"] == "from rank 0" and o["gathered"] == [0, 10]
        assert o["on_main"] == "made on main"
        # raised on both, alike: rank 1 does not wait for rank 0, and a row failing so fails the same everywhere
        assert o["user_error"] == "the data file changed"
        assert o["on_main_error"] == "the main process failed: OSError: no space left on device"
        assert "disagree on the rank" in o["check_same_error"]


# --- accelerate launch on a tiny model ---------------------------------------------------------------------------

TRAIN_ROWS, BATCH, STEPS = 48, 4, 2


def _write_experiment(tmp_path: Path) -> Path:
    with (tmp_path / "rows.jsonl").open("w") as f:
        for row in colour_rows(90, "row", seed=0):
            f.write(json.dumps({"text": row.input, "colour": row.target}) + "\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text(textwrap.dedent(f"""
        name: tiny ddp
        task:
          type: classification
          instruction: Which colour word does the text contain?
        data: {{source: rows.jsonl, input_field: text, target_field: colour, max_train: {TRAIN_ROWS}, max_test: 8}}
        models: [tiny-llama]
        forgetting: false
        runtime: {{precision: fp32}}
        strategies:  # the first row fails on every process alike: recorded, and the run goes on
          - {{name: finetune, method: lora, max_steps: {STEPS}, models: [./no-such-model]}}
          - {{name: finetune, method: lora, max_steps: {STEPS}, batch_size: {BATCH}, eval_strategy: "no"}}
        budget: {{max_input_tokens: 48, max_seq_len: 96}}
    """))
    return exp


def _accelerate_launch(tmp_path: Path, args: list[str], timeout: int = 300, **env: str):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), *args]
    return subprocess.run(cmd, cwd=tmp_path, env=_launch_env(tmp_path, **env), capture_output=True, text=True,
                          timeout=timeout)


def test_accelerate_launch_trains_on_two_processes_and_writes_one_run(tmp_path, tiny_llama_dir):
    exp = _write_experiment(tmp_path)
    done = _accelerate_launch(tmp_path, ["-m", "lmtailor.cli", "run", str(exp), "--out", "runs"])
    assert done.returncode == 1, done.stderr[-4000:]  # exit_codes.SOME_ROWS_FAILED: the ./no-such-model row
    (run_dir,) = (tmp_path / "runs").iterdir()  # the processes agreed on one run directory
    records = {r["model"]: r for r in (json.loads(p.read_text()) for p in (run_dir / "results").glob("*.json"))}
    assert records.keys() == {"tiny-llama", "./no-such-model", "none"}  # none: the trivial baseline row
    assert records["none"]["status"] == "ok" and records["none"]["strategy"] == "baseline"
    missing = records["./no-such-model"]
    assert missing["status"] == "failed" and [p["status"] for p in missing["distributed"]["processes"]] == [
        "failed", "failed"]
    record = records["tiny-llama"]
    assert record["status"] == "ok", record.get("error")

    # both processes trained, in step: the same optimizer steps, identical tuned weights and answers (DDP)
    dist = record["distributed"]
    assert dist["world_size"] == 2
    assert [(p["rank"], p["status"], p["steps"]) for p in dist["processes"]] == [(0, "ok", STEPS), (1, "ok", STEPS)]
    assert dist["weights_agree"] and dist["predictions_agree"] and not dist["out_of_step"]
    assert record["environment"]["world_size"] == 2
    meter = record["meter"]
    assert meter["world_size"] == 2 and [p["rank"] for p in meter["processes"]] == [0, 1]
    # each step takes a batch on each process: 2 steps x 4 rows x 2 processes (one process would see 8 rows)
    assert meter["phases"]["train"]["examples"] == STEPS * BATCH * 2
    assert meter["peak_rss_bytes_sum"] > meter["peak_rss_bytes"] > 0
    assert "rank 1 ok (2 steps)" in " ".join((run_dir / "run.log").read_text().split())

    # one artifact, written once, by the main process; no temporary files left by a second writer
    (artifact,) = (run_dir / "artifacts").iterdir()
    adapters = [p for p in run_dir.rglob("adapter_model.safetensors") if "checkpoint" not in str(p)]
    assert adapters == [artifact / "adapter" / "adapter_model.safetensors"]
    assert meter["artifact_bytes"]["adapter"] > 0
    assert not [p for p in run_dir.rglob(".*")]

    # the recorded answers are those one process gives with the saved adapter
    assert not (run_dir / "predictions" / f"{missing['row_id']}.jsonl").exists()
    preds = [json.loads(line) for line in (run_dir / "predictions" / f"{record['row_id']}.jsonl").open()]
    assert [p["prediction"] for p in preds] == _single_process_predictions(exp, artifact / "adapter")


def _single_process_predictions(exp_path: Path, adapter: Path) -> list[str]:
    from peft import PeftModel

    from lmtailor.config import load_experiment
    from lmtailor.data.prepare import prepare_data
    from lmtailor.inference.predict import predict
    from lmtailor.models import load_model
    from lmtailor.runner import resolve_task
    from lmtailor.runtime import detect_runtime
    from lmtailor.strategies.finetune import FinetuneStrategy

    exp = load_experiment(exp_path)
    prepared = prepare_data(exp.data, exp.task.type or "", exp_path.parent)
    strategy = FinetuneStrategy(exp.strategy_configs()[0])
    task = strategy.tuned_task(resolve_task(exp, prepared.task_defaults, prepared.splits))
    loaded = load_model("tiny-llama", detect_runtime(exp.runtime.precision, exp.runtime.device))
    model = PeftModel.from_pretrained(loaded.model, str(adapter)).merge_and_unload().eval()
    preds, _ = predict(model, loaded.tokenizer, task, prepared.splits.test, (), exp.budget.to_budget(), Meter(),
                       mode=strategy.config.scoring)
    return preds


_FAIL_ON_RANK_1 = """
import os, sys
import transformers

if os.environ.get("RANK") == "1":  # rank 1 fails in its second step, while rank 0 waits in the gradient all-reduce
    original = transformers.Trainer.training_step

    def training_step(self, *args, **kwargs):
        if self.state.global_step >= 1:
            raise RuntimeError("injected failure on rank 1")
        return original(self, *args, **kwargs)

    transformers.Trainer.training_step = training_step

from lmtailor.cli import main
sys.exit(main(sys.argv[1:]))
"""


# 35-60 s, mostly rank 0 waiting out the 20 s time-out (shorter ones can expire while the two processes still start
# up, which takes them unequal time on a busy machine): marked integration to keep the default run short.
@pytest.mark.integration
def test_a_row_failing_on_one_process_is_recorded_and_stops_the_run_without_hanging(tmp_path, tiny_llama_dir):
    exp = _write_experiment(tmp_path)
    (tmp_path / "fail_on_rank_1.py").write_text(_FAIL_ON_RANK_1)
    done = _accelerate_launch(tmp_path, ["fail_on_rank_1.py", "run", str(exp), "--out", "runs"], timeout=240,
                              LMTAILOR_DIST_TIMEOUT="20")
    assert done.returncode != 0
    assert "can no longer be trusted to stay in step" in " ".join(done.stdout.split()), done.stderr[-4000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    records = {r["model"]: r for r in (json.loads(p.read_text()) for p in (run_dir / "results").glob("*.json"))}
    record = records["tiny-llama"]
    # the row's error is the cause (rank 1's), not rank 0's time-out, which is its consequence
    assert record["status"] == "failed"
    assert record["error"]["rank"] == 1 and "injected failure on rank 1" in record["error"]["message"]
    statuses = {p["rank"]: (p["status"], p["error"]) for p in record["distributed"]["processes"]}
    assert "injected failure on rank 1" in statuses[1][1]
    assert statuses[0][0] == "failed"  # rank 0 gave up waiting for rank 1 after the timeout: it did not hang
    assert record["distributed"]["out_of_step"]
    assert "lora" in (run_dir / "results.md").read_text().lower()  # the table still shows the row


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"])
def test_example_accelerate_configs_load_and_point_at_their_deepspeed_json(name):
    from accelerate.commands.config.config_args import load_config_from_file

    root = Path(__file__).resolve().parents[1]
    config = load_config_from_file(str(root / "examples" / "accelerate" / f"{name}.yaml"))
    assert config.mixed_precision == "no"  # lmtailor's runtime decides the precision
    if name.startswith("deepspeed"):
        ds = json.loads((root / config.deepspeed_config["deepspeed_config_file"]).read_text())
        assert ds["zero_optimization"]["stage"] == int(name[-1])
    if name == "fsdp":
        assert config.fsdp_config["fsdp_use_orig_params"] is False  # LoRA: PEFT's FSDP guide
