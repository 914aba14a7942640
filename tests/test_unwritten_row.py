"""When results/ cannot be written after a row trained, the row's record and predictions wait beside its artifact,
the run stops saying so, and `run --resume` puts them in place instead of training the row again."""

from __future__ import annotations

import errno
import json
import textwrap
from pathlib import Path

import pytest

import lmtailor.rundir.layout as layout
from lmtailor.cli import main
from lmtailor.errors import UserError
from lmtailor.strategies.finetune import FinetuneStrategy
from lmtailor.rundir.layout import STASH_DIR
from lmtailor.unwritten_rows import restore_row

pytestmark = pytest.mark.usefixtures("one_torch_thread", "tiny_llama_dir")


def _experiment(tmp_path: Path) -> Path:
    with (tmp_path / "rows.jsonl").open("w") as f:
        for i in range(30):
            label = ("red", "green", "blue")[i % 3]
            f.write(json.dumps({"text": f"row {i} says {label}", "colour": label}) + "\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text(textwrap.dedent("""
        name: unwritable
        task: {type: classification, instruction: "Which colour word does the text contain?"}
        data: {source: rows.jsonl, input_field: text, target_field: colour, max_test: 6}
        models: [tiny-llama]
        strategies: [{name: finetune, method: lora, max_steps: 2, batch_size: 4}]
        budget: {max_input_tokens: 32, max_seq_len: 128}
        forgetting: false
        runtime: {precision: fp32, threads: 1}
    """))
    return exp


def test_a_trained_row_whose_record_cannot_be_written_is_not_trained_again(tmp_path, monkeypatch, capsys):
    original = layout.write_text_atomic

    def results_read_only(path, text):
        if Path(path).parent.name == "results":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return original(path, text)

    with monkeypatch.context() as mp:
        mp.setattr(layout, "write_text_atomic", results_read_only)
        assert main(["run", str(_experiment(tmp_path)), "--out", str(tmp_path / "runs")]) == 2
    (run_dir,) = (tmp_path / "runs").iterdir()
    (row_dir,) = [p for p in (run_dir / "artifacts").iterdir() if p.name.startswith("lora")]
    row_id, stash = row_dir.name, row_dir / STASH_DIR
    out = "".join(capsys.readouterr().out.split())  # the console wraps long paths: compare without white space
    assert f"row{row_id}finishedbutitsrecordcouldnotbewritten(PermissionError" in out
    assert str(stash) in out and "lmtailorrun--resume" in out
    assert (row_dir / "adapter" / "adapter_model.safetensors").is_file()  # the artifact is kept
    kept = json.loads((stash / "results" / f"{row_id}.json").read_text())
    assert kept["status"] == "ok" and kept["row_id"] == row_id
    assert len((stash / "predictions" / f"{row_id}.jsonl").read_text().splitlines()) == 6  # max_test rows
    assert not (run_dir / "results" / f"{row_id}.json").exists()

    def no_training(self, ctx):
        raise AssertionError("the row was trained again")

    monkeypatch.setattr(FinetuneStrategy, "run", no_training)
    assert main(["run", "--resume", str(run_dir)]) == 0  # the baseline row runs; the LoRA row is taken from the stash
    assert json.loads((run_dir / "results" / f"{row_id}.json").read_text()) == kept
    assert len((run_dir / "predictions" / f"{row_id}.jsonl").read_text().splitlines()) == 6
    assert not stash.exists() and (row_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_a_stash_that_still_cannot_be_put_in_place_is_named(tmp_path, monkeypatch):
    import lmtailor.unwritten_rows as unwritten

    stash = tmp_path / "artifacts" / "row-a" / STASH_DIR
    (stash / "results").mkdir(parents=True)
    (stash / "results" / "row-a.json").write_text('{"status": "ok"}\n')

    def read_only(path, text):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(unwritten, "write_text_atomic", read_only)
    with pytest.raises(UserError, match=r"row row-a's record is kept in .*results/row-a.json still cannot be written"):
        restore_row(tmp_path, "row-a")
    assert (stash / "results" / "row-a.json").is_file()  # still kept for the next try
    assert restore_row(tmp_path, "row-b") is False  # no stash: nothing to do
