"""Ordinary mistakes through the CLI: each gives exit code 2 and one ``error:`` line naming the file, row or key, and
no traceback (``-v`` / ``--debug`` shows one). One table, one row per mistake; no model is loaded (the runs are the
trivial baseline's, which needs none).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import pytest

from lmtailor.cli import main

ROWS = [{"input": f"item number {i} colour", "target": ["red", "blue"][i % 2]} for i in range(40)]
EXPERIMENT = """name: mistakes
task: {type: classification, instruction: "Name the colour."}
data: {source: DATA}
models: [MODEL]
forgetting: false
strategies:
  - name: STRATEGY
"""
ROW_RECORD = "results/baseline__none__s0.json"


def _experiment(folder: Path, rows: list[dict] | str = ROWS, data: str = "data.jsonl", model: str = "tiny-llama",
                strategy: str = "baseline", extra: str = "") -> Path:
    """An experiment file and its data in ``folder``; ``rows`` as dicts (written as JSONL) or as the file's text."""
    folder.mkdir(parents=True, exist_ok=True)
    text = rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows)
    (folder / data).write_text(text, encoding="utf-8")
    path = folder / "exp.yaml"
    path.write_text(EXPERIMENT.replace("DATA", data).replace("MODEL", model).replace("STRATEGY", strategy) + extra,
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished run of the trivial baseline (no model loaded): what report and resume are given damaged copies of."""
    folder = tmp_path_factory.mktemp("run")
    assert main(["run", str(_experiment(folder)), "--out", str(folder / "runs")]) == 0
    (run_dir,) = (folder / "runs").iterdir()
    return run_dir


def _copy_run(run_dir: Path, tmp_path: Path, damage: Callable[[Path], None]) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    damage(copy / ROW_RECORD)
    return copy


def _edit_record(**changes) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        record = json.loads(path.read_text(encoding="utf-8"))
        for key, value in changes.items():
            if key == "metric_value":
                record["metrics"][0]["value"] = value
            else:
                record[key] = value
        path.write_text(json.dumps(record), encoding="utf-8")
    return edit


@pytest.fixture
def read_only(monkeypatch):
    """Make a folder read-only. chmod does not stop root (CI containers often run as root), so for root the
    file-system calls that create entries inside it fail as they would for anyone else."""
    folders: list[Path] = []

    def make(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o555)
        folders.append(folder.resolve())
        return folder

    if os.geteuid() == 0:
        def inside(path) -> bool:
            try:
                resolved = Path(os.fsdecode(path)).resolve()
            except (TypeError, ValueError):
                return False
            return any(resolved.is_relative_to(f) for f in folders)

        real_open, real_mkdir = os.open, os.mkdir

        def guarded_open(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
            return real_open(path, flags, *args, **kwargs)

        def guarded_mkdir(path, *args, **kwargs):
            if inside(path):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", guarded_open)
        monkeypatch.setattr(os, "mkdir", guarded_mkdir)
    yield make
    for folder in folders:
        folder.chmod(0o755)


def _bomb() -> str:
    """A billion-laughs block (9^9 strings once expanded) inside peft_options."""
    lines = ['      a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"      {name}: &{name} [{','.join(['*' + prev] * 9)}]")
    return "    peft_options:\n" + "\n".join(lines) + "\n"


# Each case: (id, build(tmp_path, pytest's request, read_only) -> argv, words the error line must hold: the first
# of them in the error line itself)
CASES = [
    ("run into a read-only --out",
     lambda t, rq, ro: ["run", str(_experiment(t)), "--out", str(ro(t / "ro"))],
     ["error:", "{tmp}/ro/mistakes-", "Permission denied"]),
    ("report in a read-only run directory",
     lambda t, rq, ro: ["report", str(ro(_copy_run(rq.getfixturevalue("finished_run"), t, lambda p: None)))],
     ["error:", "{tmp}/run/", "Permission denied"]),
    ("export --out into a read-only folder",
     lambda t, rq, ro: ["export", str(_adapter_run(t, rq)), "--merge", "--out", str(ro(t / "ro") / "export")],
     ["error:", "{tmp}/ro/export", "Permission denied"]),
    ("--set with unclosed brackets",
     lambda t, rq, ro: ["validate", str(_experiment(t)), "--set", "strategies.0.shots=[1,2"],
     ["error:", "--set strategies.0.shots=[1,2", "not valid YAML"]),
    ("a binary file as the experiment",
     lambda t, rq, ro: ["validate", str(_binary(t / "model.bin"))], ["error:", "model.bin", "not a text file"]),
    ("lone surrogate in JSONL (validate)",
     lambda t, rq, ro: ["validate", str(_experiment(t, _surrogate_rows()))],
     ["error:", "data.jsonl", "line 41, field 'input'", "lone surrogate"]),
    ("lone surrogate in JSONL (run)",
     lambda t, rq, ro: ["run", str(_experiment(t, _surrogate_rows())), "--out", str(t / "runs")],
     ["error:", "data.jsonl", "line 41, field 'input'", "lone surrogate"]),
    ("lone surrogate in the experiment file",
     lambda t, rq, ro: ["validate", str(_experiment(t, extra='description: "bad \\udbff"\n'))],
     ["error:", "exp.yaml", "description holds the lone surrogate escape \\udbff"]),
    ("report on a binary row record",
     lambda t, rq, ro: ["report", str(_copy_run(rq.getfixturevalue("finished_run"), t, lambda p: p.write_bytes(bytes(range(256)))))],
     ["error:", "baseline__none__s0.json", "not a text file"]),
    ("report on status: weird",
     lambda t, rq, ro: ["report", str(_copy_run(rq.getfixturevalue("finished_run"), t, _edit_record(status="weird")))],
     ["error:", "baseline__none__s0.json", "status is 'weird'"]),
    ("report on a string metric",
     lambda t, rq, ro: ["report", str(_copy_run(rq.getfixturevalue("finished_run"), t, _edit_record(metric_value="high")))],
     ["error:", "baseline__none__s0.json", "metrics.0 (accuracy)", "'high' is not a number"]),
    ("resume with a truncated row record",
     lambda t, rq, ro: ["run", "--resume", str(_copy_run(rq.getfixturevalue("finished_run"), t, lambda p: p.write_bytes(p.read_bytes()[:100])))],
     ["error:", "baseline__none__s0.json", "not a readable row record"]),
    ("auto_map without trust_remote_code (validate)",
     lambda t, rq, ro: ["validate", str(_experiment(t, model=_remote_code_model(t), strategy="prompt"))],
     ["error:", "config.json has auto_map", "runtime.trust_remote_code"]),
    ("auto_map without trust_remote_code (run)",
     lambda t, rq, ro: ["run", str(_experiment(t, model=_remote_code_model(t), strategy="prompt")), "--out",
                       str(t / "runs")],
     ["error:", "config.json has auto_map", "runtime.trust_remote_code"]),
    ("a YAML bomb in peft_options",
     lambda t, rq, ro: ["validate", str(_experiment(t, strategy="finetune\n    method: lora\n" + _bomb()))],
     ["error:", "exp.yaml", "strategies.0.peft_options", "expands to more than 100,000 values"]),
    ("an unknown peft_options key",
     lambda t, rq, ro: ["validate", str(_experiment(t, strategy="finetune\n    method: loha\n    peft_options: {nope: 1}"))],
     ["error:", "exp.yaml", "strategies.0", "nope is not a setting of PEFT's LoHaConfig", "rank_dropout"]),
    ("one label (validate)",
     lambda t, rq, ro: ["validate", str(_experiment(t, [dict(r, target="red") for r in ROWS]))],
     ["error:", "data.jsonl, field 'target'", "at least two labels"]),
    ("one label (run)",
     lambda t, rq, ro: ["run", str(_experiment(t, [dict(r, target="red") for r in ROWS])), "--out", str(t / "runs")],
     ["error:", "data.jsonl, field 'target'", "at least two labels"]),
]


def _adapter_run(folder: Path, request) -> Path:
    """A run directory with one trained row: a LoRA adapter (random, untrained) on the tiny llama, as run_row saves."""
    from peft import LoraConfig, get_peft_model

    from colours import CPU
    from lmtailor.models import load_model

    request.getfixturevalue("tiny_llama_dir")
    run, row = folder / "run", "lora__tiny-llama__s0"
    adapter = run / "artifacts" / row / "adapter"
    loaded = load_model("tiny-llama", CPU)
    get_peft_model(loaded.model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")).save_pretrained(
        adapter)
    loaded.tokenizer.save_pretrained(adapter)
    (run / "results").mkdir()
    (run / "results" / f"{row}.json").write_text(json.dumps({
        "schema_version": 2, "row_id": row, "row_index": 0, "label": "LoRA", "strategy": "finetune",
        "model": "tiny-llama", "status": "ok", "error": None, "metrics": [], "details": {"method": "lora"},
        "artifacts": {"adapter": f"artifacts/{row}/adapter"}}))
    return run


def _binary(path: Path) -> Path:
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4)
    return path


def _surrogate_rows() -> str:
    r"""40 good rows, then one whose input holds the escape ``\udbff`` (half a UTF-16 pair): line 41."""
    return "".join(json.dumps(r) + "\n" for r in ROWS) + '{"input": "bad \\udbff here", "target": "red"}\n'


def _remote_code_model(folder: Path) -> str:
    """A local model folder whose config asks for its own modelling code (no weights: nothing may get that far)."""
    model = folder / "remote-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "custom", "auto_map": {
        "AutoConfig": "configuration_custom.CustomConfig", "AutoModelForCausalLM": "modeling_custom.CustomModel"}}))
    return str(model)


@pytest.mark.parametrize("build, words", [(b, w) for _, b, w in CASES], ids=[c[0] for c in CASES])
def test_an_ordinary_mistake_is_one_error_line_and_exit_2(build, words, tmp_path, request, read_only, capsys):
    argv = build(tmp_path, request, read_only)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert "Traceback" not in out + err
    error_lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, out
    words = [w.replace("{tmp}", str(tmp_path)) for w in words]
    assert words[1] in error_lines[0], error_lines[0]  # the error line itself names the file, row or key
    said = " ".join(out[out.index("error:"):].split())  # with what follows it: a data error's rows, one a line
    for word in words:
        assert word in said, (word, said)


def test_debug_shows_the_traceback_of_a_file_system_error(tmp_path, read_only):
    with pytest.raises(PermissionError):
        main(["--debug", "run", str(_experiment(tmp_path)), "--out", str(read_only(tmp_path / "ro"))])


def test_a_csv_cell_over_128_kb_is_read(tmp_path, capsys):
    """csv's default cell limit (131072 characters) is no limit on a row: a long document is data like any other."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["input", "target"])
    for i, r in enumerate(ROWS):
        writer.writerow(["x" * 200_000 if i == 3 else r["input"], r["target"]])
    exp = _experiment(tmp_path, buf.getvalue(), data="data.csv")
    assert main(["validate", str(exp)]) == 0
    assert "valid." in capsys.readouterr().out
