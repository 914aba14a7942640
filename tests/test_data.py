"""Data loading, validation, splits and learning-curve subsets: errors name file, row and field; splits are fixed."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from lmtailor.core.example import Example
from lmtailor.data.config import DataConfig
from lmtailor.data.inspect import inspect_data
from lmtailor.data.prepare import prepare_data
from lmtailor.data.splits import cap_rows, nested_subsets, split_rows
from lmtailor.data.validate import DataError

LABELS = ["red", "green", "blue"]


def _rows(n: int = 60, labels=LABELS) -> list[dict]:
    return [{"input": f"text number {i} about {labels[i % len(labels)]}", "target": labels[i % len(labels)]}
            for i in range(n)]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _prepare(tmp_path: Path, task_type: str = "classification", **cfg) -> object:
    return prepare_data(DataConfig(**cfg), task_type, tmp_path)


def _error(tmp_path: Path, **cfg) -> str:
    with pytest.raises(DataError) as e:
        _prepare(tmp_path, **cfg)
    return str(e.value)


# --- the data: block -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg, expected", [
    ({"source": "a.jsonl", "train": "b.jsonl", "test": "c.jsonl"}, "not both"),
    ({}, "no data"),
    ({"train": "b.jsonl"}, "data.test is missing"),
    ({"source": "rows.txt"}, "not a .jsonl"),
    ({"source": "a.jsonl", "options": {"k": 1}}, "options only apply to builtin"),
    ({"source": "builtin:pydoc-modul"}, "Did you mean 'pydoc-module'"),
    ({"source": "builtin:pydoc-module", "options": {"max_clases": 3}}, "data.options.max_clases: unknown option"),
    ({"source": "a.jsonl", "test_fraction": 0.6, "validation_fraction": 0.5}, "sum below 1"),
])
def test_data_block_combinations_are_checked(cfg, expected):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=expected):
        DataConfig(**cfg)


def test_every_data_option_is_documented():
    assert all(f.description for f in DataConfig.model_fields.values())


# --- loading -----------------------------------------------------------------------------------------------------

def test_jsonl_rows_get_file_and_line_ids(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"input": "a", "target": "x"}\n\n{"input": "b", "target": "y"}\n')
    from lmtailor.data.loading import load_file

    rows, warnings = load_file(path, "rows.jsonl", "input", "target")
    assert [e.id for e in rows] == ["rows.jsonl:1", "rows.jsonl:3"]  # the blank line keeps its number
    assert rows[1].meta == {"file": "rows.jsonl", "row": 3} and not warnings


def test_csv_rows_are_numbered_by_editor_line_and_quoted_newlines_work(tmp_path):
    from lmtailor.data.loading import load_file

    path = tmp_path / "rows.csv"
    path.write_text('text,label\n"first, with comma",x\n"two\nlines",y\nthird,x\n', encoding="utf-8")
    rows, _ = load_file(path, "rows.csv", "text", "label")
    assert [(e.id, e.input, e.target) for e in rows] == [
        ("rows.csv:2", "first, with comma", "x"), ("rows.csv:3", "two\nlines", "y"), ("rows.csv:5", "third", "x")]


def test_parquet_and_json_array_load_and_numbers_become_text(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lmtailor.data.loading import load_file

    pq.write_table(pa.table({"q": ["a", "b"], "label": [1, 2], "key": ["k1", "k2"]}), tmp_path / "rows.parquet")
    rows, warnings = load_file(tmp_path / "rows.parquet", "rows.parquet", "q", "label", id_field="key")
    assert [(e.id, e.target) for e in rows] == [("k1", "1"), ("k2", "2")]
    assert "field 'label' holds numbers" in warnings[0]
    (tmp_path / "rows.json").write_text(json.dumps([{"input": "a", "target": True}]))
    rows, _ = load_file(tmp_path / "rows.json", "rows.json", "input", "target")
    assert rows[0].target == "true" and rows[0].id == "rows.json:1"


# --- validation errors ---------------------------------------------------------------------------------------------

def test_empty_file(tmp_path):
    (tmp_path / "rows.jsonl").write_text("\n\n")
    assert "rows.jsonl" in (msg := _error(tmp_path, source="rows.jsonl")) and "has no rows" in msg


def test_missing_field_names_row_fields_and_the_mapping_keys(tmp_path):
    rows = _rows(6)
    del rows[2]["target"]
    rows[2]["label"] = "red"
    _jsonl(tmp_path / "rows.jsonl", rows)
    msg = _error(tmp_path, source="rows.jsonl")
    assert "rows.jsonl" in msg and "line 3, field 'target': missing" in msg
    assert "'input', 'label'" in msg and "data.target_field" in msg


def test_field_missing_everywhere_is_reported_once(tmp_path):
    _jsonl(tmp_path / "rows.jsonl", [{"text": "a", "label": "x"}] * 30)
    msg = _error(tmp_path, source="rows.jsonl")
    assert msg.count("no row has a field 'input'") == 1 and "input_field" in msg and "'text', 'label'" in msg


def test_empty_target_and_input(tmp_path):
    rows = _rows(6)
    rows[1]["target"] = "   "
    rows[4]["input"] = ""
    _jsonl(tmp_path / "rows.jsonl", rows)
    msg = _error(tmp_path, source="rows.jsonl")
    assert "line 2, field 'target': the target is empty" in msg
    assert "line 5, field 'input': the input is empty" in msg


def test_non_utf8_bytes_name_line_and_offset_and_suggest_reencoding(tmp_path):
    good = json.dumps({"input": "a", "target": "x"}) + "\n"
    (tmp_path / "rows.jsonl").write_bytes(good.encode() + b'{"input": "caf\xe9", "target": "x"}\n')
    msg = _error(tmp_path, source="rows.jsonl")
    offset = len(good) + len('{"input": "caf')
    assert f"line 2: byte 0xe9 at byte offset {offset}" in msg and "UTF-8" in msg and "iconv" in msg


def test_bad_json_and_several_problems_are_reported_together(tmp_path):
    lines = [json.dumps(r) for r in _rows(30)]
    lines[3] = '{"input": "a", "target": '
    for i in range(10, 25):
        lines[i] = json.dumps({"input": "x", "target": ""})
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    msg = _error(tmp_path, source="rows.jsonl")
    assert "16 problems" in msg and "line 4: not valid JSON" in msg
    assert "line 11, field 'target'" in msg and "and 6 more" in msg


def test_non_text_values_are_rejected_clearly(tmp_path):
    rows = _rows(4)
    rows[0]["input"] = ["a", "list"]
    rows[1]["target"] = None
    _jsonl(tmp_path / "rows.jsonl", rows)
    msg = _error(tmp_path, source="rows.jsonl")
    assert "line 1, field 'input': holds a list" in msg and "line 2, field 'target': is empty (null)" in msg


def test_csv_row_with_wrong_number_of_values(tmp_path):
    (tmp_path / "rows.csv").write_text("input,target\na,x\nb,c,y\n")
    assert "line 3: 3 values but the header has 2 columns" in _error(tmp_path, source="rows.csv")


def test_duplicate_ids_are_errors(tmp_path):
    rows = [dict(r, key="same" if i in (1, 4) else f"k{i}") for i, r in enumerate(_rows(6))]
    _jsonl(tmp_path / "rows.jsonl", rows)
    msg = _error(tmp_path, source="rows.jsonl", id_field="key")
    assert "line 5, field 'key': id 'same' is already used by line 2" in msg


def test_missing_file_names_the_path(tmp_path):
    assert "nope.jsonl: no such data file" in _error(tmp_path, source="nope.jsonl")


def test_a_directory_given_as_the_data_file_is_called_a_directory(tmp_path):
    (tmp_path / "rows.jsonl").mkdir()  # exists, so "no such data file" would be false
    msg = _error(tmp_path, source="rows.jsonl")
    assert "rows.jsonl: is a directory, not a data file" in msg and "no such" not in msg
    assert ".jsonl, .json, .csv, .tsv or .parquet file inside it" in msg  # what is expected instead


# --- duplicates and separate files -----------------------------------------------------------------------------------

def test_an_input_in_both_given_train_and_test_is_dropped_from_training_and_listed(tmp_path):
    train = _rows(30)
    # The test file repeats train row 8 with its case and spacing changed: still the same input once normalised.
    shared = {"input": "  TEXT number 7 about green.", "target": train[7]["target"]}
    _jsonl(tmp_path / "train.jsonl", train)
    _jsonl(tmp_path / "test.jsonl", [shared, *_rows(40)[30:]])
    prepared = _prepare(tmp_path, train="train.jsonl", test="test.jsonl")
    assert prepared.dropped_duplicates == {"train": [{"id": "train.jsonl:8", "same_input_as": "test.jsonl:1"}]}
    (warning,) = [w for w in prepared.warnings if "dropped 1 train row" in w]
    assert "train.jsonl:8 = test.jsonl:1" in warning
    s = prepared.splits
    assert "train.jsonl:8" not in {e.id for e in s.train + s.validation}
    # 30 given training rows - 1 dropped = 29, of which the default validation_fraction 0.1 carves 3: 26 + 3.
    assert (len(s.train), len(s.validation)) == (26, 3)
    assert s.test[0].id == "test.jsonl:1"  # a given test file keeps its order, and its rows
    assert not {e.id for e in s.validation} & {e.id for e in s.train}


def test_one_source_drops_training_rows_that_repeat_a_test_input(tmp_path):
    from lmtailor.data.leakage import normalize_text
    from lmtailor.data.prepare import split_content

    rows = _rows(30)
    # Row 31 repeats row 1's input with another case and a trailing full stop, and another target: not an exact
    # duplicate (both stay in the pool), but one input. Wherever the split puts them, no held-out copy may have a
    # training copy; the seed decides which, so the check below holds for every seed.
    rows.append({"input": "TEXT NUMBER 0 ABOUT RED.", "target": "blue"})
    _jsonl(tmp_path / "rows.jsonl", rows)
    drops = 0
    for seed in range(6):
        prepared = _prepare(tmp_path, source="rows.jsonl", seed=seed)
        s = prepared.splits
        held_out = {normalize_text(e.input) for e in s.validation + s.test}
        assert not [e.id for e in s.train if normalize_text(e.input) in held_out]
        twins = {"rows.jsonl:1", "rows.jsonl:31"}
        placed = {e.id: name for name, part in (("train", s.train), ("validation", s.validation),
                                                ("test", s.test)) for e in part}
        dropped = [d["id"] for ds in prepared.dropped_duplicates.values() for d in ds]
        # Both copies are accounted for: each is in a split or listed as dropped, never in training beside the other.
        assert twins <= set(placed) | set(dropped)
        if set(dropped) & twins:
            drops += 1
            assert len(set(placed) & twins) == 1
        content = split_content(s)
        assert set(content["digests"]["test"]) == {e.id for e in s.test}
    assert drops  # some seed put the twins on both sides (classification splits are stratified by label)


def test_normalisation_is_nfkc_casefold_whitespace_and_edge_punctuation():
    from lmtailor.data.leakage import normalize_text

    assert normalize_text("  Ｒｅｔｕｒｎ  the\tMEDIAN\n of data. ") == "return the median of data"  # full-width R
    assert normalize_text("«Straße»") == "strasse"  # casefold: ß is ss
    assert normalize_text("C++") == "c++"  # symbols are not punctuation
    assert normalize_text("?!") == "?!"  # only punctuation: kept, not emptied


def test_one_source_drops_exact_duplicates_before_splitting(tmp_path):
    rows = _rows(30)
    _jsonl(tmp_path / "rows.jsonl", rows + rows[:5])
    prepared = _prepare(tmp_path, source="rows.jsonl")
    assert any("dropped 5 row(s)" in w and "rows.jsonl:31 = rows.jsonl:1" in w for w in prepared.warnings)
    s = prepared.splits
    inputs = [e.input for e in s.train + s.validation + s.test]
    assert len(inputs) == len(set(inputs)) == 30


def test_same_file_name_in_two_folders_gets_distinct_ids(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _jsonl(tmp_path / "a" / "rows.jsonl", _rows(20))
    _jsonl(tmp_path / "b" / "rows.jsonl", _rows(40)[20:])
    prepared = _prepare(tmp_path, train="a/rows.jsonl", test="b/rows.jsonl")
    assert prepared.splits.test[0].id == "b/rows.jsonl:1"


def test_unseen_test_label_warns_and_labels_come_from_train(tmp_path):
    _jsonl(tmp_path / "train.jsonl", _rows(20, ["a", "b"]))
    _jsonl(tmp_path / "test.jsonl", _rows(6, ["a", "b", "c"]))
    prepared = _prepare(tmp_path, train="train.jsonl", test="test.jsonl")
    assert any("test has label(s) that no training row has: 'c' (2 rows)" in w for w in prepared.warnings)
    assert prepared.task_defaults == {"labels": ["a", "b"]}


# --- splits --------------------------------------------------------------------------------------------------------

def _examples(n: int = 90, labels=LABELS) -> list[Example]:
    return [Example(f"r{i}", r["input"], r["target"]) for i, r in enumerate(_rows(n, labels))]


def test_split_is_deterministic_disjoint_and_independent_of_row_order():
    rows = _examples()
    a = split_rows(rows, 0.2, 0.1, seed=3, stratify=True)
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    b = split_rows(shuffled, 0.2, 0.1, seed=3, stratify=True)
    assert [[e.id for e in part] for part in a] == [[e.id for e in part] for part in b]
    ids = [e.id for part in a for e in part]
    assert len(ids) == len(set(ids)) == 90
    assert [len(p) for p in a] == [63, 9, 18]
    c = split_rows(rows, 0.2, 0.1, seed=4, stratify=True)
    assert {e.id for e in c[2]} != {e.id for e in a[2]}


def test_split_is_stratified_so_small_classes_reach_every_split():
    rows = _examples(60, ["big"] * 9 + ["small"])  # 54 big, 6 small
    train, validation, test = split_rows(rows, 0.2, 0.1, seed=0, stratify=True)
    for part in (train, validation, test):
        assert {"big", "small"} <= {e.target for e in part}


def test_caps_are_deterministic_stratified_and_do_not_move_the_test_split(tmp_path):
    _jsonl(tmp_path / "rows.jsonl", _rows(120))
    small = _prepare(tmp_path, source="rows.jsonl", max_train=12, max_test=9, max_validation=0)
    big = _prepare(tmp_path, source="rows.jsonl", max_train=50, max_test=9)
    assert (len(small.splits.train), len(small.splits.validation), len(small.splits.test)) == (12, 0, 9)
    assert Counter(e.target for e in small.splits.train) == {"red": 4, "green": 4, "blue": 4}
    assert small.splits.ids()["test"] == big.splits.ids()["test"]
    assert _prepare(tmp_path, source="rows.jsonl", max_train=12).splits.ids() == _prepare(
        tmp_path, source="rows.jsonl", max_train=12).splits.ids()


def test_cap_keeps_every_class_when_it_can():
    rows = _examples(100, ["a"] * 18 + ["b", "c"])  # 90 a, 5 b, 5 c
    capped = cap_rows(rows, 10, seed=0, stratify=True)
    assert len(capped) == 10 and set(e.target for e in capped) == {"a", "b", "c"}


def test_nested_subsets_are_nested_sized_and_balanced():
    rows = _examples(90, ["a", "a", "a", "b", "c"])
    subsets = nested_subsets(rows, [6, 15, 40], seed=0)
    assert [len(s) for s in subsets] == [6, 15, 40]
    for small, large in zip(subsets, subsets[1:]):
        assert {e.id for e in small} <= {e.id for e in large}
    assert Counter(e.target for e in subsets[0]) == {"a": 2, "b": 2, "c": 2}
    assert nested_subsets(list(reversed(rows)), [15], seed=0)[0] == subsets[1]


def test_nested_subset_larger_than_the_training_set_is_a_clear_error():
    with pytest.raises(DataError, match=r"size\(s\) \[50\] exceed the 20 training rows"):
        nested_subsets(_examples(20), [10, 50], seed=0)


def test_too_few_rows_for_a_test_split(tmp_path):
    _jsonl(tmp_path / "rows.jsonl", _rows(1))
    assert "no test rows" in _error(tmp_path, source="rows.jsonl")


# --- hf: and inspect -------------------------------------------------------------------------------------------------

def test_hf_source_offline_says_how_to_use_a_file(tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    msg = _error(tmp_path, source="hf:someone/tickets")
    assert "hf:someone/tickets" in msg and "network" in msg and ".jsonl" in msg


def test_hf_source_uses_its_train_and_test_splits_and_label_names(tmp_path, monkeypatch):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    data = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(20)], "label": [i % 2 for i in range(20)]},
                                            features=features),
        "test": datasets.Dataset.from_dict({"text": ["u1", "u2"], "label": [0, 1]}, features=features)})
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(a) or data)
    prepared = _prepare(tmp_path, source="hf:someone/reviews:default", input_field="text", target_field="label")
    assert calls == [("someone/reviews", "default")]
    assert [(e.id, e.target) for e in prepared.splits.test] == [("someone/reviews/test:1", "neg"),
                                                                ("someone/reviews/test:2", "pos")]
    assert prepared.task_defaults["labels"] == ["neg", "pos"]


def test_inspect_shows_sizes_balance_and_lengths(tmp_path):
    _jsonl(tmp_path / "rows.jsonl", _rows(60))
    text = inspect_data(_prepare(tmp_path, source="rows.jsonl"), "classification").plain
    assert "train" in text and "42" in text and "label balance" in text and "green" in text
    assert "median" in text and "train input" in text


def test_gold_documents_and_answers_are_read_from_the_named_fields(tmp_path):
    from lmtailor.data.loading import load_file

    rows = [{"input": "q1", "target": "a", "doc": "d1", "alts": ["a", "A."]},
            {"input": "q2", "target": "b", "doc": ["d2", "d3"], "alts": []},
            {"input": "q3", "target": "c", "doc": None}]
    path = _jsonl(tmp_path / "qa.jsonl", rows)
    loaded, _ = load_file(path, "qa.jsonl", "input", "target", meta_fields={"gold_doc": "doc", "answers": "alts"})
    assert [r.meta.get("gold_doc") for r in loaded] == ["d1", ["d2", "d3"], None]  # empty: not scored on retrieval
    assert [r.meta.get("answers") for r in loaded] == [["a", "A."], None, None]


def test_a_bad_gold_document_value_names_file_row_and_field(tmp_path):
    _jsonl(tmp_path / "qa.jsonl", [{"input": "q", "target": "a", "doc": "d"}, {"input": "r", "target": "b", "doc": 7}])
    msg = _error(tmp_path, source="qa.jsonl", gold_doc_field="doc")
    assert "qa.jsonl" in msg and "line 2, field 'doc'" in msg and "gold_doc must be a string or a list" in msg
    msg = _error(tmp_path, source="qa.jsonl", answers_field="answers")
    assert "no row has a field 'answers'" in msg and "data.answers_field" in msg
