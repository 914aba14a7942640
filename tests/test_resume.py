"""A training that stopped and resumed ends exactly where an uninterrupted one with the same seed ends: in-process
(a crash after a checkpoint) and end to end (`lmtailor run` killed with SIGKILL, then `lmtailor run --resume`)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lmtailor.core.context import RunContext
from lmtailor.measure.meter import Meter
from lmtailor.strategies.finetune import FinetuneStrategy
from lmtailor.training import engine

from colours import CPU, LABELS, TASK
from tiny_training import BUDGET, SPLITS, finetune_config

pytestmark = pytest.mark.usefixtures("one_torch_thread", "tiny_llama_dir")


class Crash(Exception):
    """Stands in for a kill: training stops dead, no handler runs."""



def _crash_in_step(mp: pytest.MonkeyPatch, step: int | None) -> None:
    """Make training raise ``Crash`` at the start of optimizer step ``step`` (None: never), as a kill would."""
    if step is None:
        return
    original = engine.EngineMixin.training_step

    def crashing(self, model, inputs, num_items_in_batch=None):
        if self.state.global_step + 1 == step:
            raise Crash(f"killed in step {step}")
        return original(self, model, inputs, num_items_in_batch)

    mp.setattr(engine.EngineMixin, "training_step", crashing)

def _finetune(out_dir: Path, crash_at_step: int | None = None, model_ref: str = "tiny-llama", **overrides):
    """The finetune strategy on the colour rows (seed 0, as the runner seeds a row); optionally crashing when the
    given optimizer step starts."""
    from transformers import set_seed

    cfg = finetune_config(**{"max_steps": 10, "checkpoint_steps": 3, "logging_steps": 2, **overrides})
    ctx = RunContext(task=TASK, data=SPLITS, model_ref=model_ref, budget=BUDGET, seed=0, meter=Meter(),
                     out_dir=out_dir, runtime=CPU)
    set_seed(0)
    with pytest.MonkeyPatch.context() as mp:
        _crash_in_step(mp, crash_at_step)
        with ctx.meter:
            return FinetuneStrategy(cfg).run(ctx)


@pytest.mark.parametrize("model_ref, crash_at_step, resumed_from, overrides", [
    ("tiny-llama", 5, "checkpoint-3", {}),  # mid-epoch (4 steps an epoch): the batches trained on are skipped
    # at the end of an epoch, the checkpoint is written after that epoch's evaluation, which a resume never repeats
    ("tiny-llama", 6, "checkpoint-4", {"checkpoint_steps": 4}),
    ("tiny-llama", 8, "checkpoint-6", {"gradient_accumulation_steps": 2, "batch_size": 2, "group_by_length": True}),
    ("tiny-t5", 5, "checkpoint-3", {}),  # Seq2SeqTrainer
    ("tiny-bert", 5, "checkpoint-3", {}),  # the classifier's Trainer
], ids=["mid-epoch", "epoch-end", "later-epoch-accumulation-length-grouped", "encoder-decoder", "encoder"])
def test_a_resumed_training_ends_exactly_like_an_uninterrupted_one(tmp_path, caplog, model_ref, crash_at_step,
                                                                  resumed_from, overrides):
    overrides = {"model_ref": model_ref, **overrides}
    reference = _finetune(tmp_path / "uninterrupted", **overrides)
    with pytest.raises(Crash):
        _finetune(tmp_path / "interrupted", crash_at_step=crash_at_step, **overrides)
    checkpoints = tmp_path / "interrupted" / "checkpoints"
    assert (checkpoints / resumed_from / "manifest.json").is_file()
    with caplog.at_level("INFO", logger="lmtailor"):
        resumed = _finetune(tmp_path / "interrupted", **overrides)
    assert f"resuming from {resumed_from}" in caplog.text

    weights = [load_file(str(run.artifacts["adapter"] / "adapter_model.safetensors")) for run in (reference, resumed)]
    assert weights[0].keys() == weights[1].keys()
    assert max(float((weights[0][k] - weights[1][k]).abs().max()) for k in weights[0]) <= 1e-5
    for key in ("steps", "epochs", "train_log", "eval_log", "mean_train_loss", "val_loss", "train_tokens"):
        assert resumed.details.get(key) == reference.details.get(key), key  # log sums carried across the resume
    assert resumed.predictions == reference.predictions
    assert not checkpoints.exists()  # removed once the artifact is saved


def _pretrain(out_dir: Path, crash_at_step: int | None = None):
    """The span-corruption pre-training phase of a tiny T5 (full, fp32), a checkpoint every 3 steps; optionally
    crashing when the given optimizer step starts."""
    from transformers import set_seed

    from lmtailor.models import load_model
    from lmtailor.models.tiny import CORPUS
    from lmtailor.strategies.continued_pretraining import ContinuedPretrainingConfig
    from lmtailor.training.pretrain import run_pretraining

    cfg = ContinuedPretrainingConfig.model_validate({
        "name": "continued-pretraining", "method": "full", "max_tokens": 5000, "block_size": 32, "batch_size": 8,
        "logging_steps": 2, "validation_blocks": 4, "finetune": {"method": "full"}})
    cfg = cfg.model_copy(update={"checkpoint_steps": 3})  # the phase's own setting, when the config has one
    texts = [p for p in CORPUS.split("\n\n") if p.strip()]
    set_seed(0)
    loaded = load_model("tiny-t5", CPU)
    with pytest.MonkeyPatch.context() as mp:
        _crash_in_step(mp, crash_at_step)
        return run_pretraining(loaded.model, loaded.tokenizer, texts, cfg, method=cfg.method,
                               objective="span-corruption", block_size=32, learning_rate=3e-3, runtime=CPU, seed=0,
                               out_dir=out_dir)


def test_a_resumed_denoising_pretraining_draws_the_same_noise_and_ends_the_same(tiny_t5_dir, tmp_path):
    reference = _pretrain(tmp_path / "uninterrupted")
    steps, passes = reference.details["steps"], reference.details["passes"]
    assert passes > 1.5  # the resume lands in a later pass, where each block gets fresh noise
    crash = steps - 2
    with pytest.raises(Crash):
        _pretrain(tmp_path / "interrupted", crash_at_step=crash)
    assert (tmp_path / "interrupted" / "checkpoints" / f"checkpoint-{(crash - 1) // 3 * 3}").is_dir()
    resumed = _pretrain(tmp_path / "interrupted")
    expected = reference.model.state_dict()
    assert max(float((v - expected[k]).abs().max()) for k, v in resumed.model.state_dict().items()) <= 1e-5
    for key in ("train_log", "held_out_loss_after", "corpus_tokens_trained", "tokens_processed", "mean_train_loss"):
        assert resumed.details[key] == reference.details[key], key
    assert not (tmp_path / "interrupted" / "checkpoints").exists()


# --- end to end: the CLI killed with SIGKILL, then `lmtailor run --resume` ------------------------------------------

EXPERIMENT = """
    name: resume
    task:
      type: classification
      instruction: Which colour word does the text contain?
    data:
      source: rows.jsonl
      input_field: text
      target_field: colour
      max_test: 9
    models: [tiny-llama]
    strategies:
      - {name: finetune, method: lora, max_steps: 60, batch_size: 4, checkpoint_steps: 4, logging_steps: 4,
         learning_rate: 0.01, eval_strategy: "no"}
    budget: {max_input_tokens: 48, max_seq_len: 96}
    runtime: {precision: fp32}
    forgetting: false
"""


@pytest.fixture()
def experiment(tmp_path) -> Path:
    rng = random.Random(0)
    words = "the a of one two river stone cloud quiet bright small old".split()
    with (tmp_path / "rows.jsonl").open("w") as f:
        for i in range(60):
            text = " ".join(rng.choices(words, k=5)) + f" {LABELS[i % 3]} " + " ".join(rng.choices(words, k=2))
            f.write(json.dumps({"text": text, "colour": LABELS[i % 3]}) + "\n")
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(EXPERIMENT))
    return path


def _cli(*args: str) -> subprocess.Popen:
    # One thread in every process: the same floating-point reduction order, so the same bits.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-m", "lmtailor.cli", "run", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(process: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-3000:]
    return out


class _KillAfterFirstCheckpoint(threading.Thread):
    """Watches ``runs`` and SIGKILLs ``process`` as soon as a complete checkpoint (its manifest) exists."""

    def __init__(self, process: subprocess.Popen, runs: Path, timeout: float = 300) -> None:
        super().__init__(daemon=True)
        self.process, self.runs, self.timeout = process, runs, timeout
        self.checkpoint: Path | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            found = sorted(self.runs.glob("*/artifacts/*/checkpoints/checkpoint-*/manifest.json"))
            if found:
                self.process.send_signal(signal.SIGKILL)
                self.checkpoint = found[0].parent
                break
            time.sleep(0.02)
        self.process.wait()


def _result(run_dir: Path) -> dict:
    """The run's fine-tuning record (the trivial baseline row every run adds is the other one)."""
    records = [json.loads(p.read_text()) for p in (run_dir / "results").glob("*.json")]
    assert sorted(r["strategy"] for r in records) == ["baseline", "finetune"]
    (record,) = [r for r in records if r["strategy"] != "baseline"]
    return record


def _adapter(run_dir: Path) -> dict:
    (path,) = run_dir.glob("artifacts/*/adapter/adapter_model.safetensors")
    return load_file(str(path))


def test_a_run_killed_after_a_checkpoint_and_resumed_ends_like_an_uninterrupted_run(experiment, tmp_path):
    from lmtailor.cli import main

    killed = _cli(str(experiment), "--out", str(tmp_path / "killed"))
    watcher = _KillAfterFirstCheckpoint(killed, tmp_path / "killed")
    watcher.start()
    # meanwhile, the uninterrupted reference, in this process (one torch thread, as in the subprocesses)
    assert main(["run", str(experiment), "--out", str(tmp_path / "uninterrupted")]) == 0
    watcher.join()
    assert watcher.checkpoint is not None, "the run ended before its first checkpoint:\n" + killed.stdout.read()[-3000:]
    (run_dir,) = (tmp_path / "killed").iterdir()
    assert killed.returncode == -signal.SIGKILL
    assert not list((run_dir / "results").glob("*.json"))  # killed mid-training: the row has no result yet

    resumed_output = _finish(_cli("--resume", str(run_dir)))
    log = (run_dir / "run.log").read_text()
    resumed_at = int(log.split("resuming from checkpoint-")[1].split()[0])
    assert int(watcher.checkpoint.name.split("-")[1]) <= resumed_at < 60  # continued, not started over
    (reference_dir,) = (tmp_path / "uninterrupted").iterdir()
    reference, resumed = _result(reference_dir), _result(run_dir)
    assert resumed["status"] == "ok", resumed_output[-3000:]
    assert resumed["metrics"] == reference["metrics"]
    for key in ("steps", "train_log", "mean_train_loss", "val_loss", "train_tokens"):
        assert resumed["details"][key] == reference["details"][key], key
    expected, got = _adapter(reference_dir), _adapter(run_dir)
    assert got.keys() == expected.keys()
    assert max(float((got[k] - expected[k]).abs().max()) for k in got) <= 1e-5
    assert not list(run_dir.glob("artifacts/*/checkpoints"))  # cleaned up after the artifact was saved
