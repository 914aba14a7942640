"""One process per run directory: a second `run --resume` of a run in use is refused; a dead holder's lock is taken
over (flock is released by the kernel when its holder dies, even by SIGKILL)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lmtailor.cli import main
from lmtailor.errors import UserError
from lmtailor.run_lock import RunInUse, RunLock
from lmtailor.rundir import RunDir

SRC = str(Path(__file__).resolve().parents[1] / "src")
HOLDER = ("import sys, time\nfrom lmtailor.run_lock import RunLock\nlock = RunLock().acquire(sys.argv[1])\n"
          "print('locked', flush=True)\ntime.sleep(120)\n")


@pytest.fixture
def holder():
    """Start another process that locks a run directory and waits; yields a function (run_dir -> Popen)."""
    started: list[subprocess.Popen] = []

    def start(run_dir: Path) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True,
                                env=env)
        started.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_a_second_lock_is_refused_and_a_released_one_can_be_taken_again(tmp_path):
    first = RunLock().acquire(tmp_path)
    assert RunDir(tmp_path).lock.read_text() == f"{os.getpid()}\n"
    with pytest.raises(RunInUse) as caught:
        RunLock().acquire(tmp_path)  # flock locks belong to the open file: a second open conflicts even here
    assert str(RunDir(tmp_path).lock) in str(caught.value) and f"pid {os.getpid()}" in str(caught.value)
    first.release()
    assert RunDir(tmp_path).lock.read_text() == ""  # released: no pid claims it
    RunLock().acquire(tmp_path).release()


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path, holder, caplog):
    proc = holder(tmp_path)
    with pytest.raises(RunInUse, match=f"pid {proc.pid}"):
        RunLock().acquire(tmp_path)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: the file still names it, the kernel dropped the lock
    proc.wait()
    assert RunDir(tmp_path).lock.read_text() == f"{proc.pid}\n"
    with caplog.at_level(logging.INFO, logger="lmtailor"):
        lock = RunLock().acquire(tmp_path)
    assert f"from pid {proc.pid}, which no longer holds it" in caplog.text
    assert RunDir(tmp_path).lock.read_text() == f"{os.getpid()}\n"
    lock.release()


def _resumable_run(tmp_path: Path, models: list[str]) -> Path:
    """A run directory as `lmtailor run` starts it (experiment.yaml and run.json), no row run yet."""
    with (tmp_path / "rows.jsonl").open("w") as f:
        for i in range(30):
            label = ("red", "green", "blue")[i % 3]
            f.write(json.dumps({"text": f"row {i} says {label}", "colour": label}) + "\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "experiment.yaml").write_text(textwrap.dedent(f"""
        name: locked
        task: {{type: classification, instruction: "Which colour word does the text contain?"}}
        data: {{source: rows.jsonl, input_field: text, target_field: colour, max_test: 6}}
        models: {json.dumps(models)}
        strategies: [{{name: prompt, shots: 0}}]
        forgetting: false
    """))
    (run_dir / "run.json").write_text(json.dumps({"base_dir": str(tmp_path)}))
    return run_dir


def test_resume_of_a_run_in_use_is_refused_before_any_row_runs(tmp_path, holder, capsys):
    run_dir = _resumable_run(tmp_path, [str(tmp_path / "no-such-model")])
    proc = holder(run_dir)
    assert main(["run", "--resume", str(run_dir)]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert f"another lmtailor process (pid {proc.pid})" in out and str(RunDir(run_dir).lock) in out
    assert not (run_dir / "results").exists()  # nothing was (re)run
    proc.kill()
    proc.wait()
    assert main(["run", "--resume", str(run_dir)]) == 3  # the holder is gone: the resume runs (its one model row
    assert RunDir(run_dir).lock.read_text() == ""  # fails: no such model) and releases the lock at the end


def test_a_new_run_holds_its_lock_from_before_it_can_be_resumed(tmp_path, monkeypatch):
    import lmtailor.runner as runner

    run_dir = _resumable_run(tmp_path, [str(tmp_path / "no-such-model")])
    seen = {}
    original = runner._write_run_files

    def write_run_files(directory, *args, **kwargs):
        seen["resume_files"] = (directory / "experiment.yaml").is_file()
        with pytest.raises(RunInUse) as caught:  # what a `run --resume` started now would get
            RunLock().acquire(directory)
        seen["refused"] = str(caught.value)
        return original(directory, *args, **kwargs)

    monkeypatch.setattr(runner, "_write_run_files", write_run_files)
    experiment = tmp_path / "exp.yaml"  # beside rows.jsonl
    experiment.write_text((run_dir / "experiment.yaml").read_text())
    assert main(["run", str(experiment), "--out", str(tmp_path / "runs")]) == 3
    assert seen["resume_files"] and f"pid {os.getpid()}" in seen["refused"]


def test_a_run_directory_that_cannot_hold_the_lock_is_named(tmp_path):
    with pytest.raises(UserError, match=r"cannot create the run's lock .*run\.lock .*must be a writable directory"):
        RunLock().acquire(tmp_path / "gone")  # no such directory (root ignores read-only modes, so not chmod)
