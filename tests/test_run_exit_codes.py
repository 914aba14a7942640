"""`lmtailor run` exits 0 when every row finished, 1 when some failed, 3 when all but the trivial baseline failed."""

from __future__ import annotations

import json
import textwrap

import pytest

from lmtailor.cli import build_parser, main
from lmtailor.exit_codes import ALL_ROWS_FAILED, OK, SOME_ROWS_FAILED, run_exit_code

pytestmark = pytest.mark.usefixtures("tiny_llama_dir")


def _experiment(tmp_path, models: list[str]):
    with (tmp_path / "rows.jsonl").open("w") as f:
        for i in range(30):
            label = ("red", "green", "blue")[i % 3]
            f.write(json.dumps({"text": f"row {i} says {label}", "colour": label}) + "\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text(textwrap.dedent(f"""
        name: exit codes
        task: {{type: classification, instruction: "Which colour word does the text contain?"}}
        data: {{source: rows.jsonl, input_field: text, target_field: colour, max_test: 6}}
        models: {json.dumps(models)}
        strategies: [{{name: prompt, shots: 0}}]
        budget: {{max_input_tokens: 32}}
        forgetting: false
    """))
    return exp


def _statuses(tmp_path) -> dict[str, str]:
    (run_dir,) = (tmp_path / "runs").iterdir()
    return {p.stem: json.loads(p.read_text())["status"] for p in (run_dir / "results").glob("*.json")}


def test_some_rows_failed_exits_1_and_names_them(tmp_path, capsys):
    missing = str(tmp_path / "no-such-model")
    code = main(["run", str(_experiment(tmp_path, ["tiny-llama", missing])), "--out", str(tmp_path / "runs")])
    statuses = _statuses(tmp_path)
    assert sorted(statuses.values()) == ["failed", "ok", "ok"]  # the missing model's row; tiny-llama and baseline
    assert code == SOME_ROWS_FAILED == 1
    out = " ".join(capsys.readouterr().out.split())
    failed_row = next(k for k, v in statuses.items() if v == "failed")
    assert f"1 of 3 rows failed ({failed_row})" in out


@pytest.mark.parametrize("statuses, expected", [
    ([("prompt", "ok"), ("baseline", "ok")], OK),
    ([("prompt", "ok"), ("finetune", "failed"), ("baseline", "ok")], SOME_ROWS_FAILED),
    ([("prompt", "failed"), ("finetune", "failed"), ("baseline", "ok")], ALL_ROWS_FAILED),
    ([("baseline", "failed")], ALL_ROWS_FAILED),  # only a baseline, and it failed
    ([("baseline", "ok")], OK),
])  # exit 3 through the CLI: tests/test_run_lock.py resumes a run whose only model row fails
def test_exit_code_from_the_records(statuses, expected):
    assert run_exit_code([{"strategy": s, "status": st} for s, st in statuses]) == expected


def test_run_help_lists_the_exit_codes():
    text = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    for line in ("0    every row finished", "1    some rows failed", "2    a usage, configuration or data error",
                 "3    every row failed", "130  interrupted"):
        assert line in text
