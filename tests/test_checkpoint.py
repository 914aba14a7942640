"""Checkpoints: written atomically with the manifest last, no pickles, skipped unless whole, states round-trip."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from lmtailor.training import checkpoint as ckpt

from tiny_training import sft_trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- on a real training --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tiny_llama_dir, tmp_path_factory):
    """8 LoRA steps with a checkpoint every 2 (keep 2); the manifest's view of the files when it was written."""
    from lmtailor.training.recovery import run_training

    seen = {}
    original = ckpt.write_manifest

    def spy(directory, step):
        seen[step] = {"files_before": sorted(p.name for p in directory.iterdir()),
                      "parent": directory.parent, "name": directory.name,
                      "final_exists": (directory.parent / ckpt.checkpoint_name(step)).exists()}
        return original(directory, step)

    out = tmp_path_factory.mktemp("trained")
    trainer, _, _ = sft_trainer(out)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ckpt, "write_manifest", spy)
        run_training(trainer)
    return trainer, out / "checkpoints", seen


def test_checkpoints_every_checkpoint_steps_and_only_the_newest_kept(trained):
    trainer, directory, seen = trained
    assert sorted(seen) == [2, 4, 6]  # every 2 steps; not at the last step (the artifact is saved right after)
    assert [p.name for p in ckpt.checkpoint_dirs(directory)] == ["checkpoint-4", "checkpoint-6"]  # keep 2
    assert not [p for p in directory.iterdir() if p.name.startswith(".")]  # no scratch left behind
    assert trainer.state.global_step == 8


def test_a_checkpoint_is_written_in_a_scratch_dir_beside_it_and_renamed_with_the_manifest_last(trained):
    _, directory, seen = trained
    for step, view in seen.items():
        assert view["parent"] == directory and view["name"] == f".tmp-checkpoint-{step}"  # same filesystem
        assert not view["final_exists"]  # the final name appears only by the rename
        assert ckpt.MANIFEST not in view["files_before"]
    final = directory / "checkpoint-6"
    manifest = json.loads((final / ckpt.MANIFEST).read_text())
    files = sorted(p.relative_to(final).as_posix() for p in final.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert sorted(manifest["files"]) == files and manifest["step"] == 6
    assert seen[6]["files_before"] == sorted(p.name for p in final.iterdir() if p.name != "manifest.json")
    newest_other = max(p.stat().st_mtime_ns for p in final.rglob("*") if p.name != "manifest.json")
    assert (final / ckpt.MANIFEST).stat().st_mtime_ns >= newest_other


def test_a_checkpoint_holds_every_state_and_no_pickle(trained):
    _, directory, _ = trained
    final = directory / "checkpoint-6"
    names = {p.name for p in final.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.safetensors", "optimizer.json",
            "scheduler.json", "process-0.json", "process-0.safetensors", "trainer_state.json",
            "training_args.json", "manifest.json"} <= names
    assert ckpt.pickle_files(final) == [] and "training_args.bin" not in names
    state = json.loads((final / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and state["epoch"] == pytest.approx(1.5)  # the data position: 16 rows / 4
    for path in final.iterdir():  # every non-tensor file is JSON (or the adapter's README)
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            assert path.suffix in (".safetensors", ".md"), path.name


def test_the_optimizer_state_in_the_checkpoint_is_the_trainers(trained):
    trainer, directory, _ = trained
    saved = ckpt.load_optimizer_state(directory / "checkpoint-6")
    # AdamW: step, exp_avg, exp_avg_sq per trainable tensor; the param groups with their betas tuple
    assert len(saved["state"]) == sum(1 for p in trainer.model.parameters() if p.requires_grad)
    first = saved["state"][0]
    assert set(first) == {"step", "exp_avg", "exp_avg_sq"} and float(first["step"]) == 6
    assert isinstance(saved["param_groups"][0]["betas"], tuple)


# --- the manifest decides ------------------------------------------------------------------------------------------

def _fake_checkpoint(parent, step: int, payload: bytes = b"weights") -> "ckpt.Path":
    path = parent / ckpt.checkpoint_name(step)
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(payload)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    ckpt.write_manifest(path, step)
    return path


def test_last_complete_checkpoint_takes_the_newest_whole_one(tmp_path):
    _fake_checkpoint(tmp_path, 2)
    newest = _fake_checkpoint(tmp_path, 10)  # 10 > 4 as numbers, not as strings
    _fake_checkpoint(tmp_path, 4)
    assert ckpt.last_complete_checkpoint(tmp_path) == newest
    assert ckpt.last_complete_checkpoint(tmp_path / "missing") is None


@pytest.mark.parametrize("damage", ["no manifest", "corrupt manifest", "empty manifest", "changed file",
                                    "missing file", "truncated file"])
def test_a_checkpoint_that_is_not_whole_is_skipped(tmp_path, damage, caplog):
    older = _fake_checkpoint(tmp_path, 2)
    newer = _fake_checkpoint(tmp_path, 4, payload=b"abcdefgh")
    if damage == "no manifest":
        (newer / ckpt.MANIFEST).unlink()
    elif damage == "corrupt manifest":
        (newer / ckpt.MANIFEST).write_text('{"format": "lmtailor-checkpoint/1", "files": {"mod')
    elif damage == "empty manifest":
        (newer / ckpt.MANIFEST).write_text(json.dumps({"format": ckpt.MANIFEST_FORMAT, "step": 4, "files": {}}))
    elif damage == "changed file":
        (newer / "model.safetensors").write_bytes(b"abcdefgX")  # same size: only the checksum tells
    elif damage == "missing file":
        (newer / "model.safetensors").unlink()
    else:
        (newer / "model.safetensors").write_bytes(b"abc")
    with caplog.at_level("WARNING", logger="lmtailor"):
        assert ckpt.last_complete_checkpoint(tmp_path) == older
    assert "skipping" in caplog.text and "checkpoint-4" in caplog.text
    assert ckpt.checkpoint_problem(older) is None and ckpt.checkpoint_problem(newer) is not None


def test_a_scratch_directory_is_never_a_checkpoint_and_is_cleaned_up(tmp_path):
    whole = _fake_checkpoint(tmp_path, 2)
    scratch = ckpt.temp_dir_for(tmp_path, 4)
    shutil.copytree(whole, scratch)  # even with a valid manifest inside
    assert ckpt.last_complete_checkpoint(tmp_path) == whole
    ckpt.remove_scratch(tmp_path)
    assert not scratch.exists() and whole.exists()


def test_publish_replaces_a_checkpoint_of_the_same_step(tmp_path):
    _fake_checkpoint(tmp_path, 2, payload=b"old")
    temp = ckpt.temp_dir_for(tmp_path, 2)
    temp.mkdir()
    (temp / "model.safetensors").write_bytes(b"new")
    ckpt.write_manifest(temp, 2)
    ckpt.publish(temp, tmp_path / "checkpoint-2")
    assert (tmp_path / "checkpoint-2" / "model.safetensors").read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-2"]


def test_rotate_keeps_the_newest_complete_and_the_protected(tmp_path):
    paths = {s: _fake_checkpoint(tmp_path, s) for s in (2, 4, 6, 8)}
    broken = tmp_path / "checkpoint-5"
    broken.mkdir()  # a leftover without a manifest, older than the newest complete one
    deleted = ckpt.rotate(tmp_path, keep=2, protect=[paths[2]])
    assert sorted(p.name for p in deleted) == ["checkpoint-4", "checkpoint-5"]
    assert [p.name for p in ckpt.checkpoint_dirs(tmp_path)] == ["checkpoint-2", "checkpoint-6", "checkpoint-8"]


def test_remove_all_leaves_no_trace(tmp_path):
    directory = tmp_path / "checkpoints"
    _fake_checkpoint(directory, 2)
    ckpt.temp_dir_for(directory, 4).mkdir()
    ckpt.remove_all(directory)
    assert not directory.exists()


# --- states round-trip through safetensors and JSON ----------------------------------------------------------------

def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1)), float(np.random.randn())


def test_rng_states_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    ckpt.save_state(tmp_path, "process-0", {"rng": ckpt.rng_state()})
    expected = _draws()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.set_rng_state(ckpt.load_state(tmp_path, "process-0")["rng"])
    assert _draws() == expected
    assert ckpt.pickle_files(tmp_path) == []


def _adamw_after(steps: int, model: torch.nn.Module, optimizer, scheduler) -> None:
    for i in range(steps):
        loss = model(torch.full((3, 4), float(i + 1))).pow(2).sum()
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def _setup(seed: int = 0):
    from transformers import get_scheduler

    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.01)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=2, num_training_steps=10)
    return model, optimizer, scheduler


def test_optimizer_and_scheduler_states_round_trip(tmp_path):
    model, optimizer, scheduler = _setup()
    _adamw_after(3, model, optimizer, scheduler)
    ckpt.save_optimizer(tmp_path, optimizer)
    ckpt.save_json_state(tmp_path / ckpt.SCHEDULER_JSON, scheduler.state_dict())
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    twin, twin_opt, twin_sched = _setup(seed=1)
    twin.load_state_dict(weights)
    twin_opt.load_state_dict(ckpt.load_optimizer_state(tmp_path))
    twin_sched.load_state_dict(ckpt.load_json_state(tmp_path / ckpt.SCHEDULER_JSON))
    assert twin_sched.get_last_lr() == scheduler.get_last_lr()
    _adamw_after(4, model, optimizer, scheduler)
    _adamw_after(4, twin, twin_opt, twin_sched)
    for key, value in model.state_dict().items():
        assert torch.equal(twin.state_dict()[key], value)  # the continued training is bit for bit the same
    assert twin_sched.get_last_lr() == scheduler.get_last_lr()
    assert ckpt.optimizer_state_bytes(optimizer) == 2 * (8 + 2) * 4 + 2 * 4  # two fp32 moments + step counters
    assert ckpt.pickle_files(tmp_path) == []


def test_a_state_that_is_neither_a_tensor_nor_plain_json_is_refused(tmp_path):
    with pytest.raises(TypeError, match="object"):
        ckpt.save_state(tmp_path, "x", {"callable": object()})


# --- train_and_save: early stopping, the report's measurements, clean-up ----------------------------------------

class _ScriptedValidationLoss(TrainerCallback):
    """Replaces the validation loss the early-stopping logic sees with a script (the log keeps the real one)."""

    def __init__(self, losses: list[float]) -> None:
        self.losses = list(losses)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.global_step and self.losses:
            metrics["eval_loss"] = self.losses.pop(0)


class _WeightsAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step, self.weights = step, None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            self.weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_early_stopping_stops_on_the_validation_loss_and_keeps_the_best_weights(tmp_path, caplog):
    from safetensors.torch import load_file

    from lmtailor.training.common import train_and_save

    trainer, cfg, tokenizer = sft_trainer(tmp_path, max_steps=12, early_stopping_patience=2, eval_strategy="steps",
                                          eval_steps=2, keep_checkpoints=1)
    assert (trainer.args.save_strategy, trainer.args.save_steps) == ("steps", 2)  # a checkpoint at each evaluation
    assert trainer.args.load_best_model_at_end and trainer.args.metric_for_best_model == "eval_loss"
    best, last = _WeightsAt(4), _WeightsAt(8)
    trainer.add_callback(_ScriptedValidationLoss([3.0, 2.0, 2.5, 2.6]))  # steps 2, 4, 6, 8: best at 4
    trainer.add_callback(best)
    trainer.add_callback(last)
    with caplog.at_level("INFO", logger="lmtailor"):
        state, name, path = train_and_save(trainer, cfg, tokenizer, tmp_path, "adapter")
    assert state.global_step == 8 and state.best_global_step == 4  # two evaluations without improvement
    assert "kept the weights of step 4" in caplog.text
    saved = load_file(str(path / "adapter_model.safetensors"))
    at_step_4 = {k.replace(".default", ""): v for k, v in best.weights.items()}  # PEFT drops the adapter name
    assert saved.keys() == at_step_4.keys()
    assert all(torch.equal(saved[k], at_step_4[k]) for k in saved)  # the artifact is step 4's ...
    assert not all(torch.equal(last.weights[k], best.weights[k]) for k in best.weights)  # ... not step 8's
    assert state.log_history[-1]["step"] == 8 and "eval_loss" in state.log_history[-1]  # the kept weights, scored
    assert not (tmp_path / "checkpoints").exists()


def test_early_stopping_needs_a_validation_loss():
    from pathlib import Path

    from lmtailor.errors import UserError
    from lmtailor.training.common import common_training_args

    from colours import CPU
    from tiny_training import finetune_config

    cfg = finetune_config(early_stopping_patience=2)
    with pytest.raises(UserError, match="early_stopping_patience.*validation"):
        common_training_args(cfg, CPU, 0, Path("unused"), has_eval=False, learning_rate=1e-3)


def test_train_and_save_measures_the_optimizer_state_and_the_step_time(tmp_path):
    from lmtailor.training.common import train_and_save

    trainer, cfg, tokenizer = sft_trainer(tmp_path)
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    state, name, path = train_and_save(trainer, cfg, tokenizer, tmp_path, "adapter")
    # AdamW in fp32: two moments per trainable weight, plus one 4-byte step counter per trainable tensor
    assert state.optimizer_state_bytes == 8 * sum(p.numel() for p in trainable) + 4 * len(trainable)
    assert 0 < state.seconds_per_step < 10
    assert name == "adapter" and (path / "adapter_model.safetensors").is_file()
    assert trainer.optimizer is None and not (tmp_path / "checkpoints").exists()


def test_length_grouped_order_is_fixed_by_seed_and_epoch():
    from lmtailor.training.engine import EpochSeededLengthGroupedSampler

    lengths = random.Random(0).sample(range(1, 41), 40)
    sampler = EpochSeededLengthGroupedSampler(2, lengths, seed=0)  # mega-batches of 5 batches (transformers' rule)
    first = list(sampler)
    assert list(sampler) == first and sorted(first) == list(range(40))  # same epoch, same order
    sampler.set_epoch(1)
    assert list(sampler) != first  # a new order each epoch
    again = EpochSeededLengthGroupedSampler(2, lengths, seed=0)
    again.set_epoch(1)
    torch.manual_seed(123)  # the global generator plays no part
    assert list(again) == list(sampler)
    for start in (0, 10, 20, 30):  # within a mega-batch, longest first: similar lengths share a batch (the first
        chunk = [lengths[i] for i in first[start + 1:start + 10]]  # row may be swapped for the longest of all)
        assert chunk == sorted(chunk, reverse=True)
