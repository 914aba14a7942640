"""Degenerate tasks and hostile YAML: labels too small to stratify are said with what was done, non-string labels are
read as text with a note that reaches the report, and YAML is read within size, alias-expansion and depth limits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtailor.config import ConfigError, apply_overrides, read_yaml
from lmtailor.core.example import Example
from lmtailor.data.config import DataConfig
from lmtailor.data.prepare import prepare_data
from lmtailor.data.splits import split_rows, stratification_note
from lmtailor.report.honesty import honesty_checks
from lmtailor.yaml_limits import MAX_YAML_BYTES, YamlLimitError


def _rows(per_label: dict[str, int]) -> list[Example]:
    return [Example(f"{label}-{i}", f"{label} row {i}", label) for label, n in per_label.items() for i in range(n)]


def test_labels_too_small_to_stratify_are_said_with_what_was_done():
    # 200 labels x 2 rows, test 0.2, validation 0.1: per label round(0.4) = 0 test rows, raised to 1 (2 rows allow
    # it), round(0.2) = 0 validation rows (a label needs 3 rows for one in each split): 200 of 400 rows in test (50%),
    # none in validation.
    rows = _rows({f"L{i:03d}": 2 for i in range(200)})
    train, validation, test = split_rows(rows, 0.2, 0.1, seed=0, stratify=True)
    assert (len(train), len(validation), len(test)) == (200, 0, 200)
    note = stratification_note(rows, 0.2, 0.1)
    assert "200 of 200 labels have too few rows to stratify" in note
    assert "Test holds 200 of 400 rows (50%, asked 20%), validation 0 (0%, asked 10%)" in note
    assert "validation is EMPTY" in note and "'L000' (2)" in note and "and 195 more" in note


def test_labels_with_a_row_for_every_split_need_no_note():
    # 2 labels x 10 rows: round(10 * 0.2) = 2 test and round(10 * 0.1) = 1 validation row each
    assert stratification_note(_rows({"red": 10, "blue": 10}), 0.2, 0.1) is None
    # one small label among large ones: 3 rows give round(0.6) = 1 test and round(0.3) = 0 -> raised to 1 validation;
    # 2 rows give 1 test and no validation
    note = stratification_note(_rows({"red": 10, "blue": 10, "green": 2}), 0.2, 0.1)
    assert "1 of 3 labels" in note and "'green' (2)" in note and "1 label(s) have no validation row" in note
    assert "EMPTY" not in note


def _write(folder: Path, name: str, rows: list[dict]) -> Path:
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_boolean_labels_are_read_as_text_with_a_note_that_reaches_the_report(tmp_path):
    _write(tmp_path, "d.jsonl", [{"input": f"row {i}", "target": i % 2 == 0} for i in range(40)])
    prepared = prepare_data(DataConfig(source="d.jsonl"), "classification", tmp_path)
    assert prepared.task_defaults["labels"] == ["false", "true"]
    (note,) = prepared.warnings
    assert note == ("d.jsonl: field 'target' holds numbers or booleans in 40 row(s), read as text "
                    "(e.g. line 1: True -> 'true')")
    (tmp_path / "splits.json").write_text(json.dumps({"warnings": prepared.warnings}), encoding="utf-8")
    check = {c["check"]: c for c in honesty_checks(tmp_path, [])}["data read and split without warnings"]
    assert check["ok"] is False and note in check["detail"]
    (tmp_path / "splits.json").write_text(json.dumps({"warnings": []}), encoding="utf-8")
    assert {c["check"]: c for c in honesty_checks(tmp_path, [])}["data read and split without warnings"]["ok"] is True


def test_validation_carved_from_a_training_file_names_the_labels_it_lacks(tmp_path):
    # 2 labels x 10 rows and 3 labels of 1 row: a 1-row label keeps its row for training (round(0.1) = 0)
    rows = [{"input": f"{label} {i}", "target": label} for label, n in (("a", 10), ("b", 10), ("c", 1), ("d", 1),
                                                                          ("e", 1)) for i in range(n)]
    _write(tmp_path, "train.jsonl", rows)
    _write(tmp_path, "test.jsonl", [{"input": f"t{i}", "target": t} for i, t in enumerate("ab")])
    prepared = prepare_data(DataConfig(train="train.jsonl", test="test.jsonl"), "classification", tmp_path)
    (note,) = [w for w in prepared.warnings if "carved" in w]
    assert "3 of 5 labels have one training row" in note and "'c', 'd', 'e'" in note


BOMB = """name: bomb
strategies:
  - name: finetune
    peft_options:
      a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]
      b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
      c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
      d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
      e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
      f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
      g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
"""


def test_an_alias_bomb_is_refused_naming_the_block(tmp_path):
    # f expands to 1 + 9 * size(e); size(a) = 10, size(b) = 1 + 9*10 = 91, c = 820, d = 7381, e = 66430,
    # f = 597871 > 100000: f is the smallest block over the limit
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB, encoding="utf-8")
    with pytest.raises(YamlLimitError, match=r"strategies\.0\.peft_options\.f expands to more than 100,000 values"):
        read_yaml(path)


def test_aliases_within_the_limit_are_fine_and_recursion_and_size_are_refused(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(BOMB.split("      e:")[0], encoding="utf-8")  # up to d: 7381 values, well within the limit
    assert len(read_yaml(path)["strategies"][0]["peft_options"]["d"]) == 9
    path.write_text("name: &x [a, *x]\n", encoding="utf-8")
    with pytest.raises(YamlLimitError, match="recursive structure"):
        read_yaml(path)
    path.write_text("name: x\n" + "#" * MAX_YAML_BYTES + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="over the 1,048,576-byte limit"):
        read_yaml(path)
    path.write_text("name: " + "[" * 150 + "]" * 150 + "\n", encoding="utf-8")
    with pytest.raises(YamlLimitError, match="nested"):
        read_yaml(path)


def test_set_values_are_read_within_the_same_limits():
    value = "{a: &a [1,1,1,1,1,1,1,1,1,1], " + ", ".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 10)}]" for p, n in zip("abcd", "bcde")) + "}"
    # e = 1 + 10 * size(d), d = 1 + 10 * (1 + 10 * (1 + 10 * 11)) = 11111: e = 111111 > 100000
    with pytest.raises(YamlLimitError, match=r"--set strategies\.0\.peft_options: e expands"):
        apply_overrides({"strategies": [{"name": "finetune"}]}, [f"strategies.0.peft_options={value}"])


def test_a_lone_surrogate_in_a_json_array_names_the_item_and_field(tmp_path):
    from lmtailor.data.validate import DataError

    rows = [{"input": f"row {i}", "target": ["red", "blue"][i % 2]} for i in range(10)]
    text = json.dumps(rows).replace('"target": "blue"', '"target": "bl\\udbffue"', 1)  # item 2's target
    (tmp_path / "d.json").write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=r"item 2, field 'target': holds the lone surrogate escape \\udbff"):
        prepare_data(DataConfig(source="d.json"), "classification", tmp_path)
    (tmp_path / "d.json").write_text(json.dumps(rows).replace("row 3", "row \\ud83d\\ude00 3"), encoding="utf-8")
    prepared = prepare_data(DataConfig(source="d.json"), "classification", tmp_path)  # a whole pair is a character
    assert any(e.input == "row \U0001F600 3" for e in prepared.splits.train + prepared.splits.validation
               + prepared.splits.test)
