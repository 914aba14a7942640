"""The typed row record and the run directory: a record written by ``RunDir`` reads back equal; its version is checked
(an old one migrated, a newer one refused naming the file and the version); and ``RunDir`` is the one module that
knows the layout of a run directory."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest

from lmtailor.errors import UserError
from lmtailor.io import write_json_atomic
from lmtailor.report.results_json import build_results, load_records
from lmtailor.rundir import RESULT_SCHEMA_VERSION, RunDir, RunRecord
from lmtailor.rundir.versions import MIGRATIONS, READABLE_RECORD_VERSIONS
from lmtailor.tasks.held_out import ids_digest

ROW = "lora__m__s0"
TEST_IDS = ["t1", "t2"]


def _run(tmp_path: Path) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.write_run_files("name: x\n", {"source": "d.jsonl", "seed": 0, "train": ["1"], "validation": ["v1"],
                                      "test": TEST_IDS, "learning_curve_subsets": {}},
                        {"name": "t", "type": "classification", "instruction": "x", "labels": ["a", "b"]})
    return run


def _record(**changes) -> RunRecord:
    """A record as run_row builds it: an int metric value, a NaN one and a key no field names, to see them kept."""
    fields = dict(row_id=ROW, row_index=0, label="LoRA", strategy="finetune", config={"name": "finetune", "r": 8},
                  model="m", seed=0, family="decoder-only", train_size=1, train_size_requested=None,
                  task={"name": "t", "type": "classification"}, test_rows=2, test_ids_sha256=ids_digest(TEST_IDS),
                  status="ok", error=None, primary_metric="accuracy",
                  metrics=[{"name": "accuracy", "value": 1, "higher_is_better": True},
                           {"name": "macro_f1", "value": math.nan, "higher_is_better": True}],
                  score_details={"per_row": [1.0, 1.0]},
                  validation={"rows": 1, "ids_sha256": ids_digest(["v1"]), "primary_metric": "accuracy",
                              "metrics": [{"name": "accuracy", "value": 0.0, "higher_is_better": True}],
                              "score_details": {"per_row": [0.0]}},
                  details={"steps": 3}, artifacts={"adapter": f"artifacts/{ROW}/adapter"},
                  meter={"wall_s": 1.5, "usd": {"train": 0.0, "total": 0.01, "inference_per_1k": 0.1}},
                  environment={"python": "3.11"}, started_at="2026-01-01T00:00:00+00:00",
                  finished_at="2026-01-01T00:00:02+00:00", from_a_newer_writer={"kept": True})
    return RunRecord(**{**fields, **changes})


def _write(run: RunDir, record: RunRecord) -> Path:
    run.write_files(run.row_files(record, {"test": '{"id": "t1"}\n'}))
    return run.record_path(record.row_id)


def test_a_record_written_by_rundir_reads_back_equal(tmp_path):
    run, record = _run(tmp_path), _record()
    path = _write(run, record)
    assert path == tmp_path / "run" / "results" / f"{ROW}.json"
    assert run.predictions_path(ROW).read_text() == '{"id": "t1"}\n'
    back = run.read_record(path)
    # NaN != NaN, so compare the NaN apart; everything else equal, the int metric still an int (not 1.0)
    got, sent = back.as_dict(), record.as_dict()
    assert math.isnan(got["metrics"][1].pop("value")) and math.isnan(sent["metrics"][1].pop("value"))
    assert got == sent
    assert type(back.metrics[0].value) is int and back.from_a_newer_writer == {"kept": True}
    assert got["schema_version"] == RESULT_SCHEMA_VERSION == 2
    # the file holds the keys run_row set, in its order, the unknown one last
    keys = list(json.loads(path.read_text()))
    assert keys[:4] == ["schema_version", "row_id", "row_index", "label"] and keys[-1] == "from_a_newer_writer"
    assert "forgetting" not in keys and "traits" not in keys  # never set: not written as null


def test_the_reports_reader_and_the_records_are_the_same(tmp_path):
    run = _run(tmp_path)
    _write(run, _record())
    (record,) = load_records(run.path)
    written = json.loads(run.record_path(ROW).read_text())
    for d in (record, written):  # NaN != NaN: take it out of both, then the report's dict is the file's
        assert math.isnan(d["metrics"][1].pop("value"))
    assert record == written
    assert build_results(run.path)["rows"][0]["metrics"] == {"accuracy": 1, "macro_f1": None}


def test_a_record_of_a_newer_version_is_refused_naming_the_file_and_the_version(tmp_path):
    run = _run(tmp_path)
    path = _write(run, _record())
    write_json_atomic(path, {**json.loads(path.read_text()), "schema_version": RESULT_SCHEMA_VERSION + 1})
    with pytest.raises(UserError) as e:
        run.read_record(path)
    message = str(e.value)
    assert str(path) in message and f"schema_version {RESULT_SCHEMA_VERSION + 1};" in message
    assert "this lmtailor reads versions 1, 2" in message and "upgrade lmtailor" in message
    write_json_atomic(path, {**json.loads(path.read_text()), "schema_version": "two"})
    with pytest.raises(UserError, match="schema_version 'two'; .* not written by any lmtailor release"):
        run.read_record(path)


def test_a_version_1_record_is_migrated(tmp_path):
    """Version 1, as lmtailor wrote it before validation scoring: no ``validation``; a record that old may also lack
    ``schema_version`` itself."""
    run = _run(tmp_path)
    old = {"schema_version": 1, "row_id": ROW, "row_index": 0, "label": "LoRA", "strategy": "finetune", "model": "m",
           "seed": 0, "train_size": 1, "status": "ok", "error": None, "test_ids_sha256": ids_digest(TEST_IDS),
           "primary_metric": "accuracy", "metrics": [{"name": "accuracy", "value": 0.5, "higher_is_better": True}],
           "details": {}, "meter": {"wall_s": 1.0}}
    for version in ({"schema_version": 1}, {}):
        without = {k: v for k, v in old.items() if k != "schema_version"} | version
        write_json_atomic(run.record_path(ROW), without)
        record = run.read_record(run.record_path(ROW))
        assert record.schema_version == 2 and record.validation is None
        assert record.as_dict() == {**old, "schema_version": 2, "validation": None}
    assert sorted(MIGRATIONS) == [1] and READABLE_RECORD_VERSIONS == (1, 2)  # a step per older version
    assert build_results(run.path)["selection"]["split"] == "test"  # no validation scores: chosen on test


def test_a_field_of_the_wrong_type_is_refused_naming_the_file_and_the_key(tmp_path):
    run = _run(tmp_path)
    path = _write(run, _record())
    write_json_atomic(path, {**json.loads(path.read_text()), "seed": "zero"})
    with pytest.raises(UserError, match=rf"{ROW}.json: seed: Input should be a valid integer"):
        run.read_record(path)


def test_a_record_of_another_run_is_refused_by_the_one_reader(tmp_path):
    run = _run(tmp_path)
    _write(run, _record(test_ids_sha256=ids_digest(["other"])))
    with pytest.raises(UserError, match=f"{ROW}.json was scored on other test rows"):
        run.records()


# --- RunDir owns the layout ---------------------------------------------------------------------------------------

SRC = Path(__file__).resolve().parents[1] / "src" / "lmtailor"
FILES = {"experiment.yaml", "config.yaml", "run.json", "splits.json", "task.json", "results.json", "results.md",
         "report.md", "report.html", "run.lock", "run.log", "unwritten-record"}
FOLDERS = {"results", "predictions", "artifacts", "probes", "augmented", "synthetic", "export"}


def _cache(node: ast.AST) -> bool:
    """``cache_dir() / ...``: lmtailor's cache (paths.cache_dir) has folders of the same names, none of a run's."""
    return isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "cache_dir"


def _layout_literals(path: Path) -> list[str]:
    """Where ``path`` names a run directory's file (a string that is one of FILES) or joins a run folder onto a path
    (``x / "results"``, ``f"results/{row}"``), as "line: text"."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and node.value in FILES:
            found.append(f"{node.lineno}: {node.value!r}")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and not _cache(node.left):
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) and side.value in FOLDERS:
                    found.append(f"{node.lineno}: / {side.value!r}")
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            head = str(node.values[0].value)
            if any(head.startswith(f"{folder}/") for folder in FOLDERS):
                found.append(f"{node.lineno}: f{head!r}...")
    return sorted(found, key=lambda hit: int(hit.split(":")[0]))


def test_rundir_is_the_only_module_that_knows_the_layout():
    owner = SRC / "rundir" / "layout.py"
    assert _layout_literals(owner)  # the check sees the layout where it is
    elsewhere = {str(p.relative_to(SRC)): hits for p in sorted(SRC.rglob("*.py")) if p != owner
                 for hits in [_layout_literals(p)] if hits}
    assert elsewhere == {}, f"build these paths with lmtailor.rundir.RunDir instead: {elsewhere}"


def test_the_layout_check_finds_a_path_built_by_hand(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('p = run_dir / "results" / f"{r}.json"\nq = run_dir / "task.json"\ns = f"predictions/{r}"\n'
                      'doc = "results/<row>.json is where a record is"\nc = cache_dir() / "synthetic"\n')
    assert _layout_literals(module) == ["1: / 'results'", "2: 'task.json'", "3: f'predictions/'..."]


def test_run_dir_writes_only_inside_itself(tmp_path):
    from lmtailor.rundir import RunDir

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_json(run.probe_path("tiny-llama"), {"model": "tiny-llama"})
    assert run.read_json(run.probe_path("tiny-llama")) == {"model": "tiny-llama"}
    with pytest.raises(ValueError, match="not inside the run directory"):
        run.write_text(tmp_path / "elsewhere.md", "x")
    with pytest.raises(ValueError, match="not inside the run directory"):
        run.write_text(run.path / ".." / "escape.md", "x")
