"""A record copied from another run (other test rows, or another task) is refused by `lmtailor report` and `compare`,
naming the file and what differs, instead of being averaged in as another seed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lmtailor.cli import main
from lmtailor.io import write_json_atomic
from lmtailor.tasks.held_out import ids_digest

TEST_IDS = ["t1", "t2", "t3", "t4"]


def _record(seed: int, per_row: list[float], test_ids: list[str] = TEST_IDS, task: str = "t") -> dict:
    row_id = f"lora__m__s{seed}"
    return {"schema_version": 1, "row_id": row_id, "row_index": seed, "label": "LoRA", "strategy": "finetune",
            "model": "m", "seed": seed, "train_size": 2, "train_size_requested": None, "status": "ok", "error": None,
            "task": {"name": task, "type": "classification"}, "test_rows": len(test_ids),
            "test_ids_sha256": ids_digest(test_ids), "primary_metric": "accuracy",
            "metrics": [{"name": "accuracy", "value": sum(per_row) / len(per_row), "higher_is_better": True}],
            "score_details": {"per_row": per_row}, "details": {}, "environment": {}, "config": {"name": "finetune"},
            "meter": {"hardware": "cpu", "wall_s": 1.0, "peak_rss_bytes": 1, "trainable_params": 1,
                      "total_params": 10, "inference_latency_s_per_example": 0.1,
                      "phases": {"inference": {"examples": 4, "wall_s": 0.4, "tokens": 0, "cpu_s": 0.4}},
                      "usd": {"rate_per_hour": 0.1, "train": 0.0, "total": 0.0, "inference_per_1k": 0.0}}}


def _run(root: Path, name: str, test_ids: list[str] = TEST_IDS) -> Path:
    run = root / name
    write_json_atomic(run / "task.json", {"name": "t", "type": "classification", "instruction": "x",
                                          "labels": ["a", "b"]})
    write_json_atomic(run / "splits.json", {"source": "d.jsonl", "seed": 0, "train": ["1", "2"], "validation": [],
                                            "test": test_ids, "learning_curve_subsets": {}})
    write_json_atomic(run / "results" / "lora__m__s0.json", _record(0, [1.0, 1.0, 0.0, 0.0], test_ids))
    return run


def _out(capsys) -> str:
    return " ".join(capsys.readouterr().out.split())


def test_report_refuses_a_record_scored_on_other_test_rows_and_rebuilds_once_it_is_moved_out(tmp_path, capsys):
    run = _run(tmp_path, "r1")
    assert main(["report", str(run)]) == 0
    good = (run / "results.json").read_bytes()
    # seed 1 copied in from a run whose test rows were other ones: it would be averaged in as a second seed
    copied = run / "results" / "lora__m__s1.json"
    write_json_atomic(copied, _record(1, [1.0, 1.0, 1.0, 1.0], ["u1", "u2", "u3", "u4"]))
    capsys.readouterr()
    assert main(["report", str(run)]) == 2
    out = _out(capsys).replace(" ", "")
    assert "lora__m__s1.json" in out and "scoredonothertestrows" in out
    assert ids_digest(["u1", "u2", "u3", "u4"]) in out and ids_digest(TEST_IDS) in out and "Moveitout" in out
    assert (run / "results.json").read_bytes() == good  # nothing rewritten from the mixed records
    shutil.move(copied, tmp_path / "lora__m__s1.json")
    assert main(["report", str(run)]) == 0
    assert (run / "results.json").read_bytes() == good  # byte for byte


def test_report_refuses_a_record_of_another_task(tmp_path, capsys):
    run = _run(tmp_path, "r1")
    write_json_atomic(run / "results" / "lora__m__s1.json", _record(1, [1.0, 1.0, 1.0, 1.0], task="other"))
    assert main(["report", str(run)]) == 2
    out = _out(capsys).replace(" ", "")
    assert "lora__m__s1.json" in out and "anothertask" in out and "name'other'(task.json:'t')" in out
    assert not (run / "results.json").exists()


def test_a_second_seed_of_the_same_run_is_averaged_in(tmp_path, capsys):
    run = _run(tmp_path, "r1")
    write_json_atomic(run / "results" / "lora__m__s1.json", _record(1, [1.0, 1.0, 1.0, 1.0]))
    assert main(["report", str(run)]) == 0
    group = json.loads((run / "results.json").read_text())["groups"][0]
    assert group["seeds"] == 2 and group["score_mean"] == 0.75  # (0.5 + 1.0) / 2


def test_compare_refuses_a_run_holding_a_copied_record_and_compares_clean_runs(tmp_path, capsys):
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b")
    assert main(["compare", str(a), str(b)]) == 0
    assert f"same test rows (test id digest `{ids_digest(TEST_IDS)}`)" in _out(capsys)
    c = _run(tmp_path, "c", ["u1", "u2", "u3", "u4"])
    assert main(["compare", str(a), str(c)]) == 0
    assert "Different test rows" in _out(capsys)
    shutil.copy(c / "results" / "lora__m__s0.json", a / "results" / "lora__m__s0.json")  # c's record inside a
    assert main(["compare", str(a), str(b)]) == 2
    out = _out(capsys).replace(" ", "")
    assert f"{a.name}/results/lora__m__s0.json" in out and "scoredonothertestrows" in out
