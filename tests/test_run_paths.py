"""Paths read from a run's records stay inside the run: a crafted ``row_id`` or artifact path is refused, naming the
file and the field, by every entry point that builds paths from records (export, serve, report, resume)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from lmtailor.cli import main
from lmtailor.errors import UserError
from lmtailor.export.exporter import export_row
from lmtailor.io import write_json_atomic
from lmtailor.paths import check_record, checked_row_id, inside, slug
from lmtailor.runner import _finished_records, plan_rows
from lmtailor.runtime import Runtime
from lmtailor.serve.target import load_target
from lmtailor.tasks.held_out import ids_digest

ROW = "lora__m__s0"


def _run(tmp_path: Path, record_name: str = ROW, **record) -> tuple[Path, Path]:
    """A run directory (task, splits, one artifact folder) whose one record is ``record`` over good defaults; and a
    victim directory outside the run that must survive whatever the record says."""
    run, victim = tmp_path / "runs" / "r1", tmp_path / "victim"
    victim.mkdir(parents=True)
    (victim / "keep.txt").write_text("precious")
    (run / "artifacts" / ROW / "adapter").mkdir(parents=True)
    write_json_atomic(run / "task.json", {"name": "t", "type": "classification", "instruction": "x", "labels": ["a"]})
    write_json_atomic(run / "splits.json", {"source": "d.jsonl", "seed": 0, "train": ["1"], "validation": [],
                                            "test": ["2"], "learning_curve_subsets": {}})
    good = {"schema_version": 1, "row_id": ROW, "row_index": 0, "label": "LoRA", "strategy": "finetune", "model": "m",
            "seed": 0, "train_size": 1, "status": "ok", "error": None, "test_ids_sha256": ids_digest(["2"]),
            "primary_metric": "accuracy", "metrics": [{"name": "accuracy", "value": 1.0, "higher_is_better": True}],
            "details": {}, "artifacts": {"adapter": f"artifacts/{ROW}/adapter"},
            "test_rows": 1, "environment": {}, "train_size_requested": None, "config": {"name": "finetune"},
            "meter": {"hardware": "cpu", "wall_s": 1.0, "peak_rss_bytes": 1, "trainable_params": 1, "total_params": 10,
                      "inference_latency_s_per_example": 0.1,
                      "phases": {"inference": {"examples": 1, "wall_s": 0.1, "tokens": 0, "cpu_s": 0.1}},
                      "usd": {"rate_per_hour": 0.1, "train": 0.0, "total": 0.0, "inference_per_1k": 0.0}}}
    write_json_atomic(run / "results" / f"{record_name}.json", {**good, **record})
    return run, victim


# The crafted records of the issue: a row id that walks out of the run, and artifact paths that point out of it.
CRAFTED = {
    "row id walks up": ("evil", {"row_id": "../../../victim"}, "row_id"),
    "row id of dots": ("evil", {"row_id": ".."}, "row_id"),
    "row id not its file's name": ("evil", {"row_id": "other__m__s0"}, "row_id"),
    "adapter walks up": (ROW, {"artifacts": {"adapter": "../../victim"}}, "artifacts.adapter"),
    "adapter absolute": (ROW, {"artifacts": {"adapter": "VICTIM"}}, "artifacts.adapter"),
    "pretrained model walks up": (ROW, {"artifacts": {"adapter": f"artifacts/{ROW}/adapter",
                                                      "pretrained_model": "artifacts/../../victim"}},
                                  "artifacts.pretrained_model"),
}


def _crafted(tmp_path, case):
    name, fields, field = CRAFTED[case]
    run, victim = _run(tmp_path, name)
    if fields.get("artifacts", {}).get("adapter") == "VICTIM":
        fields = {"artifacts": {"adapter": str(victim)}}
    write_json_atomic(run / "results" / f"{name}.json",
                      {**json.loads((run / "results" / f"{name}.json").read_text()), **fields})
    return run, victim, name, field


def _untouched(victim: Path) -> None:
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    assert (victim / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("case", list(CRAFTED))
def test_export_refuses_a_crafted_record_and_leaves_outside_paths_alone(tmp_path, case):
    run, victim, name, field = _crafted(tmp_path, case)
    with pytest.raises(UserError) as e:
        export_row(run, row_id=None, merge=True, overwrite=True)
    assert f"{name}.json" in str(e.value) and field in str(e.value)
    _untouched(victim)
    assert not (run / "export").exists()


@pytest.mark.parametrize("case", list(CRAFTED))
def test_serve_refuses_a_crafted_record(tmp_path, case):
    run, victim, name, field = _crafted(tmp_path, case)
    for row in (None, name):  # the only row, or chosen with --row
        with pytest.raises(UserError) as e:
            load_target(str(run), Runtime("cpu", "fp32", "test"), row=row)
        assert f"{name}.json" in str(e.value) and field in str(e.value)
    _untouched(victim)


def test_the_issues_export_is_refused_through_the_command_line(tmp_path, capsys):
    """The reproduction of issue 17: row_id "../../../../victim" with --merge --overwrite deleted the victim."""
    run, victim, name, _ = _crafted(tmp_path, "row id walks up")
    assert main(["export", str(run), "--merge", "--overwrite"]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "row_id" in out and "Traceback" not in out
    _untouched(victim)


@pytest.mark.parametrize("case", list(CRAFTED))
def test_report_refuses_a_crafted_record(tmp_path, case, capsys):
    run, victim, name, field = _crafted(tmp_path, case)
    assert main(["report", str(run)]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert f"{name}.json" in out.replace(" ", "") or f"{name}.json" in out
    assert field in out and "Traceback" not in out
    assert not (run / "results.json").exists()
    _untouched(victim)


@pytest.mark.parametrize("case", [c for c in CRAFTED if CRAFTED[c][0] == ROW])
def test_resume_refuses_a_kept_record_that_points_outside(tmp_path, case):
    run, victim, name, field = _crafted(tmp_path, case)
    with pytest.raises(UserError) as e:
        _finished_records(run, [SimpleNamespace(row_id=ROW)])
    assert f"{name}.json" in str(e.value) and field in str(e.value)
    _untouched(victim)


def test_resume_refuses_a_kept_record_whose_row_id_is_not_its_name(tmp_path):
    run, _ = _run(tmp_path, ROW, row_id="../../victim")
    with pytest.raises(UserError, match="row_id"):
        _finished_records(run, [SimpleNamespace(row_id=ROW)])


def test_a_good_run_passes_every_check(tmp_path):
    run, _ = _run(tmp_path)
    assert _finished_records(run, [SimpleNamespace(row_id=ROW)])[ROW]["row_id"] == ROW
    assert main(["report", str(run)]) == 0 and (run / "results.json").is_file()


def test_an_artifact_symlinked_out_of_the_run_is_refused(tmp_path):
    run, victim = _run(tmp_path)
    (run / "artifacts" / ROW / "adapter").rmdir()
    (run / "artifacts" / ROW / "adapter").symlink_to(victim, target_is_directory=True)
    with pytest.raises(UserError, match="artifacts.adapter"):
        export_row(run, merge=True, overwrite=True)
    _untouched(victim)


def test_row_ids_the_planner_writes_are_accepted(tmp_path):
    import lmtailor
    from lmtailor.config import load_experiment

    folder = Path(lmtailor.__file__).parent / "examples"
    ids = [row.row_id for path in sorted(folder.glob("*.yaml")) for row in plan_rows(load_experiment(path))]
    assert ids and all(checked_row_id(i, Path("x.json")) == i for i in ids)
    # the slug keeps letters, digits and dots and turns the rest into "-": "../x" can only become "..-x"
    assert slug("../../x") == "..-..-x" and checked_row_id("..-..-x", Path("x.json")) == "..-..-x"
    for bad in ("..", ".", "a/b", "a\\b", "", "a" * 201, None, 3):
        with pytest.raises(UserError, match="x.json"):
            checked_row_id(bad, Path("x.json"))


def test_inside_accepts_paths_under_the_root_only(tmp_path):
    (tmp_path / "run" / "a").mkdir(parents=True)
    where = Path("results/r.json")
    assert inside(tmp_path / "run", "a", where, "f") == tmp_path / "run" / "a"
    assert inside(tmp_path / "run", tmp_path / "run" / "a" / "b", where, "f") == tmp_path / "run" / "a" / "b"
    for bad in ("..", ".", "", "a/../..", str(tmp_path), 5, ["a"]):
        with pytest.raises(UserError, match="r.json"):
            inside(tmp_path / "run", bad, where, "f")
    with pytest.raises(UserError, match="artifacts is not a mapping"):
        check_record({"row_id": "r", "artifacts": ["a"]}, Path("results/r.json"), tmp_path / "run")


def test_resume_refuses_to_keep_a_record_scored_on_other_test_rows(tmp_path):
    run, _ = _run(tmp_path, ROW, test_ids_sha256=ids_digest(["9"]))  # the run's splits.json tests row "2"
    with pytest.raises(UserError, match=f"{ROW}.json was scored on other test rows"):
        _finished_records(run, [SimpleNamespace(row_id=ROW)])


def test_resume_refuses_a_foreign_record_beside_the_planned_rows_before_training(tmp_path):
    run, _ = _run(tmp_path, ROW)
    write_json_atomic(run / "results" / "copied__m__s0.json",
                      {**json.loads((run / "results" / f"{ROW}.json").read_text()), "row_id": "copied__m__s0",
                       "test_ids_sha256": ids_digest(["9"])})
    with pytest.raises(UserError, match="copied__m__s0.json was scored on other test rows"):
        _finished_records(run, [SimpleNamespace(row_id=ROW)])
