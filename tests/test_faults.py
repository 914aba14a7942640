"""Faults during training: a non-finite loss or gradient stops with the step; CUDA out-of-memory shrinks the
micro-batch and continues; a full disk keeps the previous checkpoint; SIGINT/SIGTERM save a checkpoint and stop."""

from __future__ import annotations

import errno
import os
import re
import signal

import pytest
import torch
from transformers import TrainerCallback

from lmtailor.errors import TrainingInterrupted, UserError
from lmtailor.training import checkpoint as ckpt
from lmtailor.training import engine, recovery
from lmtailor.training.engine import CheckpointDiskFull, NonFiniteTraining
from lmtailor.training.recovery import run_training

from tiny_training import max_difference, sft_trainer, trainable_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread", "tiny_llama_dir")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: 8 steps of batch 4, never disturbed."""
    trainer, _, _ = sft_trainer(tmp_path_factory.mktemp("reference"))
    run_training(trainer)
    return trainable_weights(trainer.model)


@pytest.fixture(scope="module")
def without_dropout(tmp_path_factory):
    """The reference for a changed micro-batch: without dropout, whose masks depend on the micro-batch shapes."""
    trainer, _, _ = sft_trainer(tmp_path_factory.mktemp("no-dropout"), lora_dropout=0.0)
    run_training(trainer)
    return trainable_weights(trainer.model)


# --- non-finite loss or gradient -----------------------------------------------------------------------------------

def _poison_embeddings_at_forward(trainer, call: int) -> None:
    """From the ``call``-th training forward pass on, the embeddings come out as NaN: the loss is NaN from then."""
    embeddings = trainer.model.get_input_embeddings()
    seen = {"n": 0}

    def hook(module, inputs, output):
        if module.training:
            seen["n"] += 1
            if seen["n"] >= call:
                return output * float("nan")
        return output

    embeddings.register_forward_hook(hook)


def test_a_nan_loss_stops_training_at_its_step_with_a_hint(tmp_path):
    trainer, _, _ = sft_trainer(tmp_path)
    _poison_embeddings_at_forward(trainer, call=3)  # batch 4 = one forward per step: step 3
    before = trainable_weights(trainer.model)
    with pytest.raises(NonFiniteTraining) as caught:
        run_training(trainer)
    message = str(caught.value)
    assert "optimizer step 3 " in message and "loss nan" in message
    assert "learning_rate" in message and "fp32" in message and "max_grad_norm" in message
    assert "checkpoint-2" in message  # where to go back to
    assert isinstance(caught.value, UserError) and trainer.state.global_step == 2
    after = trainable_weights(trainer.model)
    assert all(torch.isfinite(w).all() for w in after.values())  # the poisoned update was never applied
    assert max_difference(before, after) > 0  # steps 1 and 2 did train


def test_an_infinite_gradient_norm_stops_training_even_with_a_finite_loss(tmp_path):
    trainer, _, _ = sft_trainer(tmp_path)
    lora = next(p for n, p in trainer.model.named_parameters() if p.requires_grad)
    steps = {"n": 0}

    def blow_up(grad):
        steps["n"] += 1
        return grad * float("inf") if steps["n"] == 4 else grad

    lora.register_hook(blow_up)
    with pytest.raises(NonFiniteTraining, match=r"optimizer step 4 .*gradient norm (inf|nan)") as caught:
        run_training(trainer)
    assert "loss" not in str(caught.value).split("is not a finite")[0].split("the ")[-1]  # the loss was fine


# --- CUDA out of memory --------------------------------------------------------------------------------------------

def _out_of_memory_once(monkeypatch, at_step: int, times: int = 1) -> dict:
    """``training_step`` raises CUDA's out-of-memory error when step ``at_step`` starts, ``times`` times."""
    original, raised = engine.EngineMixin.training_step, {"n": 0, "batch": []}

    def training_step(self, model, inputs, num_items_in_batch=None):
        ids = inputs["input_ids"]  # a padding-free batch is one flattened row whose positions restart per row
        rows = int((inputs["position_ids"] == 0).sum()) if ids.shape[0] == 1 and "position_ids" in inputs else \
            int(ids.shape[0])
        raised["batch"].append((self.state.global_step, rows))
        if self.state.global_step == at_step and raised["n"] < times:
            raised["n"] += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return original(self, model, inputs, num_items_in_batch)

    monkeypatch.setattr(engine.EngineMixin, "training_step", training_step)
    return raised


def test_out_of_memory_halves_the_micro_batch_and_continues_from_the_checkpoint(tmp_path, monkeypatch, caplog,
                                                                                without_dropout):
    trainer, _, _ = sft_trainer(tmp_path, lora_dropout=0.0)
    raised = _out_of_memory_once(monkeypatch, at_step=3)  # in step 4: step 3 is done but not checkpointed
    with caplog.at_level("INFO", logger="lmtailor"):
        run_training(trainer)
    assert raised["n"] == 1
    assert (trainer.args.per_device_train_batch_size, trainer.args.gradient_accumulation_steps) == (2, 2)
    # (global step, micro-batch rows): steps 1-3 and the failed start of 4 with 4 rows, then from checkpoint-2 on
    # (step 3 again) two micro-batches of 2 rows per step
    assert raised["batch"][:4] == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert raised["batch"][4:] == [(step, 2) for step in range(2, 8) for _ in range(2)]
    assert trainer.engine.resumed_from.name == "checkpoint-2" and trainer.state.global_step == 8
    assert "out of memory with a micro-batch of 4: retrying with 2 and gradient accumulation 2" in caplog.text
    assert "resuming from checkpoint-2" in caplog.text
    # the same rows in the same steps: only the summation order inside a step differs
    assert max_difference(trainable_weights(trainer.model), without_dropout) < 1e-5


def test_out_of_memory_before_any_checkpoint_starts_over(tmp_path, monkeypatch, without_dropout):
    trainer, _, _ = sft_trainer(tmp_path, lora_dropout=0.0)
    monkeypatch.setattr(recovery, "_snapshot_wanted", lambda model: True)  # as on CUDA: keep the starting weights
    _out_of_memory_once(monkeypatch, at_step=1)  # step 1 trained, no checkpoint yet (every 2 steps)
    run_training(trainer)
    assert trainer.engine.resumed_from is None and trainer.args.per_device_train_batch_size == 2
    assert trainer.state.global_step == 8
    assert max_difference(trainable_weights(trainer.model), without_dropout) < 1e-5


def test_out_of_memory_at_a_micro_batch_of_one_gives_up_clearly(tmp_path, monkeypatch):
    trainer, _, _ = sft_trainer(tmp_path, batch_size=1, gradient_accumulation_steps=4)
    _out_of_memory_once(monkeypatch, at_step=0)
    with pytest.raises(UserError, match="micro-batch of 1 row.*gradient_checkpointing"):
        run_training(trainer)


def test_an_odd_micro_batch_shrinks_to_a_divisor():
    assert [recovery._smaller_micro_batch(b) for b in (8, 6, 9, 5, 3, 2)] == [4, 3, 3, 1, 1, 1]


# --- full disk -----------------------------------------------------------------------------------------------------

def test_a_full_disk_keeps_the_previous_checkpoint_and_says_what_it_needs(tmp_path, monkeypatch):
    trainer, _, _ = sft_trainer(tmp_path)
    original = ckpt.save_file

    def save_file(tensors, filename, *args, **kwargs):
        if ".tmp-checkpoint-4" in str(filename):
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return original(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", save_file)
    with pytest.raises(CheckpointDiskFull) as caught:
        run_training(trainer)
    message, directory = str(caught.value), tmp_path / "checkpoints"
    assert "no space left" in message and str(directory) in message and "step 4" in message
    assert "needs about" in message and "KB" in message and "checkpoint-2 is intact" in message
    assert isinstance(caught.value, UserError)
    assert [p.name for p in directory.iterdir()] == ["checkpoint-2"]  # the scratch copy is gone
    assert ckpt.last_complete_checkpoint(directory) == directory / "checkpoint-2"
    # The estimate is what a checkpoint of this training really takes: checkpoint-2's files (same sizes at step 4
    # up to a few bytes of trainer state), each in whole blocks, plus the directory's block. The adapter and the
    # optimizer's moments alone (28 KB + 56 KB) were 84 KB, about 40% short of the ~148 KB it occupies.
    block = os.statvfs(directory).f_frsize
    files = [p.stat().st_size for p in (directory / "checkpoint-2").iterdir()]
    on_disk = sum(-(-n // block) * block for n in files) + block
    said = float(re.search(r"needs about ([\d.]+) KB", message).group(1)) * 1024
    assert said >= sum(files) and abs(said - on_disk) <= 0.01 * on_disk, (said, on_disk)


def test_the_checkpoint_size_is_computed_file_by_file_before_it_is_written(tmp_path, monkeypatch):
    from lmtailor.training.checkpoint_size import checkpoint_size

    trainer, _, _ = sft_trainer(tmp_path, max_steps=2)
    seen = {}
    original = ckpt.save_file

    def save_file(tensors, filename, *args, **kwargs):  # the optimizer state is written: estimate before it
        seen.setdefault("size", checkpoint_size(trainer, tmp_path / "checkpoints", peft=True))
        return original(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", save_file)
    monkeypatch.setattr(recovery, "finish_checkpoints", lambda trainer: None)  # keep checkpoint-2 to compare
    monkeypatch.setattr(engine.EngineCallback, "on_step_end", lambda self, args, state, control, **kw: control)
    run_training(trainer)
    written = tmp_path / "checkpoints" / "checkpoint-2"
    size = {p.name: p.stat().st_size for p in written.iterdir()}
    parts = seen["size"].parts
    # Byte for byte: the safetensors files (header + data) and the JSON files the engine writes.
    assert parts["weights"] == [size["adapter_model.safetensors"]]
    assert parts["optimizer"] == [size["optimizer.json"], size["optimizer.safetensors"]]
    assert parts["process states"] == [size["process-0.json"], size["process-0.safetensors"]]
    assert parts["trainer state"][1:] == [size["training_args.json"], size["scheduler.json"]]
    assert abs(parts["trainer state"][0] - size["trainer_state.json"]) < 64  # callbacks' states join it at save
    # No earlier checkpoint: the config is computed, the model card (README.md) is not known yet.
    assert abs(parts["config"][0] - size["adapter_config.json"]) < 64 and len(parts["config"]) == 1
    assert abs(parts["manifest"][0] - size["manifest.json"]) < 256
    assert seen["size"].bytes() >= 0.9 * sum(size.values())


# --- signals -------------------------------------------------------------------------------------------------------

class _SignalAtStep(TrainerCallback):
    def __init__(self, signum: int, step: int) -> None:
        self.signum, self.step = signum, step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:  # during step ``step``
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_a_checkpoint_at_the_end_of_the_step_and_stops(tmp_path, signum, uninterrupted):
    trainer, _, _ = sft_trainer(tmp_path)
    trainer.add_callback(_SignalAtStep(signum, step=3))  # between the step-2 and step-4 checkpoints
    before = signal.getsignal(signum)
    with pytest.raises(TrainingInterrupted) as caught:
        run_training(trainer)
    assert signal.getsignal(signum) is before  # the handler is only installed during training
    directory = tmp_path / "checkpoints"
    message = str(caught.value)
    assert signal.Signals(signum).name in message and "step 3 of 8" in message
    assert str(directory / "checkpoint-3") in message and "lmtailor run --resume" in message
    assert caught.value.checkpoint == directory / "checkpoint-3"
    assert ckpt.last_complete_checkpoint(directory) == directory / "checkpoint-3"
    assert trainer.state.global_step == 3

    resumed, _, _ = sft_trainer(tmp_path)  # what `lmtailor run --resume` does for the row
    run_training(resumed)
    assert resumed.engine.resumed_from.name == "checkpoint-3"
    assert max_difference(trainable_weights(resumed.model), uninterrupted) <= 1e-5


def test_a_signal_in_the_last_step_resumes_without_training_further(tmp_path):
    reference, _, _ = sft_trainer(tmp_path / "reference", max_steps=7)
    run_training(reference)
    trainer, _, _ = sft_trainer(tmp_path, max_steps=7)  # 7 = 4 + 3: the last step is mid-epoch
    trainer.add_callback(_SignalAtStep(signal.SIGTERM, step=7))
    with pytest.raises(TrainingInterrupted, match="step 7 of 7"):
        run_training(trainer)
    resumed, _, _ = sft_trainer(tmp_path, max_steps=7)
    run_training(resumed)
    assert resumed.engine.resumed_from.name == "checkpoint-7"
    assert resumed.state.global_step == 7 and resumed.engine.step_seconds == []  # no step past max_steps
    assert max_difference(trainable_weights(resumed.model), trainable_weights(reference.model)) <= 1e-5


def test_a_second_signal_stops_at_once():
    state = engine.EngineState()
    with recovery.stop_on_signals(state):
        os.kill(os.getpid(), signal.SIGTERM)
        assert state.stop_signal == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt, match="twice"):
            os.kill(os.getpid(), signal.SIGTERM)
