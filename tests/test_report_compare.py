"""`lmtailor compare`: several runs side by side, and a warning when they were not scored on the same test rows."""

from lmtailor.cli import main
from lmtailor.io import write_json_atomic
from lmtailor.tasks.held_out import ids_digest


TASK = {"name": "t", "type": "classification", "instruction": "x", "labels": ["a"]}


def _run(root, name, score, test_id, **task):
    """A run of one LoRA row scored on the one test row ``test_id`` (runs with the same test_id share test rows);
    ``task``: changes to its task.json."""
    run = root / name
    write_json_atomic(run / "task.json", {**TASK, **task})
    write_json_atomic(run / "splits.json", {"source": "d.jsonl", "seed": 0, "train": ["1"], "validation": [],
                                            "test": [test_id], "learning_curve_subsets": {}})
    ok = score is not None
    write_json_atomic(run / "results" / "lora__m__s0.json", {
        "row_id": "lora__m__s0", "row_index": 0, "label": "LoRA", "strategy": "finetune", "model": "m", "seed": 0,
        "train_size": 1, "status": "ok" if ok else "failed", "test_ids_sha256": ids_digest([test_id]),
        "error": None if ok else {"type": "RuntimeError", "message": "boom"},
        "metrics": [{"name": "accuracy", "value": score, "higher_is_better": True}] if ok else [],
        "primary_metric": "accuracy" if ok else None, "details": {},
        "meter": {"wall_s": 1.0, "peak_rss_bytes": 1, "phases": {},
                  "usd": {"train": 0.5, "total": 0.6, "inference_per_1k": 0.002}}})
    return run


def test_compare_lines_up_the_runs_and_shows_a_failed_row_as_failed(tmp_path, capsys):
    a, b = _run(tmp_path, "run-a", 0.75, "abc"), _run(tmp_path, "run-b", None, "abc")
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "compare.md")]) == 0
    text = (tmp_path / "compare.md").read_text()
    assert "| run-a | LoRA | m | accuracy 0.750 (1 seed) | $0.5000 | $0.0020 |" in text
    assert "| run-b | LoRA | m | failed |" in text
    assert "same test rows" in text and "Different test rows" not in text


def test_compare_says_when_runs_were_scored_on_different_test_rows(tmp_path, capsys):
    a, b = _run(tmp_path, "run-a", 0.75, "abc"), _run(tmp_path, "run-b", 0.5, "xyz")
    assert main(["compare", str(a), str(b)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Different test rows" in out
    assert f"run-a `{ids_digest(['abc'])}`" in out and f"run-b `{ids_digest(['xyz'])}`" in out


def test_compare_refuses_runs_of_different_tasks_naming_both_runs_and_each_field(tmp_path, capsys):
    a = _run(tmp_path, "run-a", 0.75, "abc")
    b = _run(tmp_path, "run-b", 0.5, "abc", instruction="y", labels=["a", "b"])  # same name and type
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "compare.md")]) == 2
    out = " ".join(capsys.readouterr().out.split()).replace(" ", "")
    assert f"cannotcompare{a}and{b}".replace(" ", "") in out and "theirtasksdiffer" in out
    assert "instruction:'x'inrun-a,'y'inrun-b" in out and "labels:['a']inrun-a,['a','b']inrun-b" in out
    assert "name:" not in out and "type:" not in out  # only the fields that differ are named
    assert not (tmp_path / "compare.md").exists()
    c = _run(tmp_path, "run-c", 0.5, "abc", type="generation")
    assert main(["compare", str(a), str(a), str(c)]) == 2  # any run against the first
    assert "type:'classification'inrun-a,'generation'inrun-c" in "".join(capsys.readouterr().out.split())


def test_compare_accepts_runs_of_the_same_task(tmp_path, capsys):
    a, b = _run(tmp_path, "run-a", 0.75, "abc"), _run(tmp_path, "run-b", 0.5, "abc", labels=["a"])
    assert main(["compare", str(a), str(b)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "| run-a | LoRA | m | accuracy 0.750 (1 seed)" in out and "| run-b | LoRA | m | accuracy 0.500 (1 seed)" in out


def test_compare_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    assert "no results/ folder" in " ".join(capsys.readouterr().out.split())


def _with_rows(run, per_row):
    """Give the run's one record per-row test scores (its score becomes their mean)."""
    import json

    path = run / "results" / "lora__m__s0.json"
    record = json.loads(path.read_text())
    record["score_details"] = {"per_row": per_row}
    record["metrics"][0]["value"] = sum(per_row) / len(per_row)
    write_json_atomic(path, record)


def test_compare_tests_a_configuration_against_the_first_run_with_the_paired_bootstrap(tmp_path):
    # run-a right on 30 of 48 rows, run-b on 22 of them and no other: the case, [0.06, 0.27] for a - b
    a, b = _run(tmp_path, "run-a", 0.5, "abc"), _run(tmp_path, "run-b", 0.5, "abc")
    _with_rows(a, [1.0] * 30 + [0.0] * 18)
    _with_rows(b, [1.0] * 22 + [0.0] * 26)
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "c.md")]) == 0
    text = (tmp_path / "c.md").read_text()
    # the unpaired intervals overlap ([0.500, 0.750] and [0.333, 0.604]); the paired test calls the difference
    assert "| run-a | LoRA | m | accuracy 0.625 [0.500, 0.750] (1 seed) |" in text
    assert "| run-b | LoRA | m | accuracy 0.458 [0.333, 0.604] (1 seed) |" in text
    assert "-16.7 pts, differs (paired 95% CI -27.1 to -6.2) |" in text
    # scored on different test rows: not paired, and said so
    c = _run(tmp_path, "run-c", 0.5, "xyz")
    _with_rows(c, [1.0] * 22 + [0.0] * 26)
    assert main(["compare", str(a), str(c), "--out", str(tmp_path / "d.md")]) == 0
    assert "not paired: different test rows |" in (tmp_path / "d.md").read_text()
