"""builtin:pydoc-summary and builtin:pydoc-qa: rows from small fake object lists, then once from the real stdlib."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from pydantic import ValidationError

from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.data import pydoc_qa, pydoc_summary
from lmtailor.data.builtin import BUILTIN_DATASETS
from lmtailor.data.pydoc_module import extract_objects
from lmtailor.data.pydoc_qa import PydocQaOptions, gold_document_text
from lmtailor.data.pydoc_summary import PydocSummaryOptions, is_copied, split_docstring
from lmtailor.data.validate import DataError
from lmtailor.tasks.evaluator import evaluate


def obj(qualified: str, doc: str, signature: str | None = None, kind: str = "function") -> dict:
    module, qualname = qualified.split(".", 1)
    return {"id": qualified, "module": module, "qualname": qualname, "name": qualname.split(".")[-1], "kind": kind,
            "doc": doc, "signature": signature}


REST = "The value is taken from the environment when it is set, and computed otherwise."
SUMMARY_OBJECTS = [
    obj("statistics.median_high", "Return the high median of data.\n\nWhen the number of data points is even, the "
        "larger of the two middle values\nof the data is returned.", "(data)"),
    obj("shutil.get_terminal_size", f"Get the size of the terminal window.\n\n{REST}", "(fallback=(80, 24))"),
    # the summary is the rest's first sentence: copied verbatim
    obj("posix.mknod", "Create a node in the file system.\n\nCreate a node in the file system (file, device or "
        "pipe) at path."),
    # copied with a clause added: 5 of 6 bigrams appear in the rest (> 0.8), no single run
    obj("socket.create_connection", "Connect to address and return the socket object.\n\nConvenience function. "
        "Connect to address (a 2-tuple) and return the socket object when it succeeds.", "(address, timeout=None)"),
    obj("gc.collect", "Run the garbage collector."),  # no rest
    obj("gc.isenabled", "Returns true if automatic garbage collection is enabled.\n\nOK."),  # rest too short
    obj("imp.reload", "**DEPRECATED**\n\nReload the module and return it, as importlib.reload does today."),
    obj("doctest.long", "Run every example of a long document.\n\n" + "Many words of explanation. " * 80),
    # a C docstring that opens with its signature: that paragraph is the signature, the next one the summary
    obj("builtins.bytes.count", "B.count(sub[, start[, end]]) -> int\n\nReturn the number of non-overlapping "
        "occurrences of sub.\n\nOptional arguments start and end are interpreted as in slice notation.",
        kind="method"),
    # the same docstring under a second name: only the first (by id) is kept
    obj("random.Random.triangular", f"Triangular distribution of floats.\n\n{REST}", "(self, low=0.0, high=1.0)",
        "method"),
    obj("random.triangular", f"Triangular distribution of floats.\n\n{REST}", "(low=0.0, high=1.0)"),
    # the same summary as shutil.get_terminal_size (case and full stop aside) above another body: one row per
    # summary, or the answer of a test row would be a training row's answer word for word
    obj("tty.get_terminal_size", "get the size of the terminal window\n\nQuery the dimensions for the given file "
        "descriptor; the result is a named tuple of columns and lines.", "(fd=1)"),
]


def test_split_docstring_takes_the_first_paragraph_as_the_summary():
    assert split_docstring("Do  a\n   thing.\n\nMore.\n\nEven more.") == (None, "Do a thing.", "More.\n\nEven more.")
    assert split_docstring("f(x) -> y\n\nDo it.\n\nMore.") == ("f(x) -> y", "Do it.", "More.")
    assert split_docstring("Only a summary.") == (None, "Only a summary.", "")


def test_is_copied_catches_runs_and_near_copies_but_not_shared_vocabulary():
    assert is_copied("Create a node in the file system.", "Create a node in the file system (file) at path")
    assert is_copied("connect to address and return the socket object",
                     "Connect to address (a 2-tuple) and return the socket object when it succeeds")
    # every word of the summary is in the text, but not a single bigram: a summary, not a copy
    assert not is_copied("Return the high median of data.", "median: of data the high values, return it")
    assert not is_copied("Get the size of the terminal window.", REST)
    assert is_copied("A B", "a   b!") and not is_copied("", "anything")


def test_summary_rows_keep_real_summaries_and_drop_copies_and_empty_rests():
    rows, dropped = pydoc_summary.build_rows(SUMMARY_OBJECTS, PydocSummaryOptions(max_input_chars=800))
    by_id = {e.id: e for e in rows}
    assert list(by_id) == ["builtins.bytes.count", "random.Random.triangular", "shutil.get_terminal_size",
                           "statistics.median_high"]
    assert dropped == {"copied_summary": 2, "rest_too_short": 2, "summary_too_short": 1, "input_too_long": 1,
                       "duplicate": 1, "duplicate_summary": 1}  # tty.get_terminal_size: shutil's summary
    e = by_id["shutil.get_terminal_size"]
    assert e.input == f"shutil.get_terminal_size(fallback=(80, 24))\n\n{REST}"
    assert e.target == "Get the size of the terminal window."
    assert by_id["statistics.median_high"].target == "Return the high median of data."
    count = by_id["builtins.bytes.count"]
    assert count.input.startswith("builtins.bytes.count\nB.count(sub[, start[, end]]) -> int\n\nOptional arguments")
    assert count.target == "Return the number of non-overlapping occurrences of sub."
    for e in rows:  # the summary never reaches the input
        assert e.target not in e.input


def test_summary_max_rows_is_a_stable_subset_and_ids_are_stable():
    opts = PydocSummaryOptions(max_input_chars=800)
    full, _ = pydoc_summary.build_rows(SUMMARY_OBJECTS, opts)
    two, _ = pydoc_summary.build_rows(list(reversed(SUMMARY_OBJECTS)), opts.model_copy(update={"max_rows": 2}))
    assert len(two) == 2 and set(two) <= set(full)
    assert two == pydoc_summary.build_rows(SUMMARY_OBJECTS, opts.model_copy(update={"max_rows": 2}))[0]


def test_summary_through_the_registry(monkeypatch):
    monkeypatch.setattr(pydoc_summary, "extract_objects", lambda: SUMMARY_OBJECTS)
    spec = BUILTIN_DATASETS.get("pydoc-summary")
    dataset = spec.load({"max_input_chars": 800})
    assert dataset.task_defaults["type"] == "generation" and "one-line summary" in dataset.task_defaults["instruction"]
    assert len(dataset.rows) == 4
    with pytest.raises(ValidationError, match="max_chars"):
        spec.load({"max_chars": 10})
    with pytest.raises(DataError, match="loosen data.options"):
        spec.load({"min_summary_words": 50})
    assert all(f.description for f in spec.options.model_fields.values())


QA_OBJECTS = [
    obj("bdb.Bdb.is_skipped_module", "Return True if module_name matches any skip pattern.", kind="method"),
    obj("gc.get_freeze_count", "Return the number of objects in the permanent generation."),
    obj("marshal.loads", "Convert the bytes-like object to a value.\n\nIf no valid value is found, raise EOFError,\n"
        "ValueError or TypeError. Raises EOFError at the end."),
    obj("grp.getgrnam", "Return the group database entry for the given group name.\n\nIf name is not valid, "
        "raise KeyError."),
    obj("json.loads", "Deserialize s to a Python object.\n\nThis never raises ValueError here.\n\n"
        "    raise TypeError  # in an indented example\n>>> loads('x')\n...raise OSError"),
    # wrapped "Return" sentence: the answer would span a line break, so no returns question
    obj("inspect.getmro", "Return tuple of base classes (including cls) in\nmethod resolution order."),
    # the same qualified name in two modules: no module question for either
    obj("configparser.Error", "Base class for ConfigParser exceptions."),
    obj("shutil.Error", "Raised by copytree on failure.", kind="class"),
    obj("numbers.Number", "All numbers inherit from this class.\n\nIf you just want to check if an argument x is "
        "a number, without caring what kind, use isinstance(x, Number).", kind="class"),
]


def _qa(objects=QA_OBJECTS, **options):
    return pydoc_qa.build_rows(objects, PydocQaOptions(**options))


def test_qa_templates_make_extractive_questions():
    rows, per_template = _qa(max_rows=None)
    by_id = {e.id: e for e in rows}
    assert by_id["returns:gc.get_freeze_count"].input == "What does gc.get_freeze_count return?"
    assert by_id["returns:gc.get_freeze_count"].target == "the number of objects in the permanent generation"
    assert by_id["module:bdb.Bdb.is_skipped_module"].input == (
        "Which standard library module defines Bdb.is_skipped_module?")
    assert by_id["module:bdb.Bdb.is_skipped_module"].meta["answers"] == ["bdb"]
    # every exception named in prose, in order of appearance; code lines and "never raises" do not count
    assert by_id["raises:marshal.loads"].meta["answers"] == ["EOFError"]  # "raise EOFError," then "Raises EOFError"
    assert by_id["raises:grp.getgrnam"].meta["answers"] == ["KeyError"]
    assert "raises:json.loads" not in by_id
    assert "returns:inspect.getmro" not in by_id
    assert not {"module:configparser.Error", "module:shutil.Error"} & set(by_id)
    assert not {"module:json.loads", "module:marshal.loads"} & set(by_id)  # "loads" is in both modules
    assert "module:gc.get_freeze_count" in by_id
    assert per_template == dict(Counter(e.meta["template"] for e in rows))


def test_qa_answers_are_verbatim_in_the_gold_document():
    rows, _ = _qa(max_rows=None)
    docs = {o["id"]: gold_document_text(o) for o in QA_OBJECTS}
    assert gold_document_text(QA_OBJECTS[1]) == "gc.get_freeze_count\n\n" + QA_OBJECTS[1]["doc"]
    for e in rows:
        assert e.meta["gold_doc"] == e.id.split(":", 1)[1] and e.target == e.meta["answers"][0]
        for answer in e.meta["answers"]:
            assert answer in docs[e.meta["gold_doc"]], (e.id, answer)


def test_qa_rows_are_balanced_unique_and_stable():
    everything, _ = _qa(max_rows=None)
    rows, per_template = _qa(max_rows=6)
    assert len(rows) == 6 and set(rows) <= set(everything)
    # raises has 2 rows: it keeps both, module and returns share the rest evenly
    assert per_template == {"module": 2, "returns": 2, "raises": 2}
    assert len({e.id for e in rows}) == 6 and [e.id for e in rows] == sorted(e.id for e in rows)
    again, _ = _qa(list(reversed(QA_OBJECTS)), max_rows=6)
    assert [(e.id, e.input, e.target, e.meta) for e in again] == [(e.id, e.input, e.target, e.meta) for e in rows]
    only, counts = _qa(templates=["raises"])
    assert counts == {"raises": 2} and {e.meta["template"] for e in only} == {"raises"}


def test_qa_options_are_validated():
    with pytest.raises(ValidationError, match="listed twice"):
        PydocQaOptions(templates=["module", "module"])
    with pytest.raises(ValidationError, match="templates"):
        PydocQaOptions(templates=["default"])
    with pytest.raises(ValidationError):
        PydocQaOptions(templates=[])
    assert all(f.description for f in PydocQaOptions.model_fields.values())


def test_evaluator_scores_a_pydoc_qa_task(monkeypatch):
    monkeypatch.setattr(pydoc_qa, "extract_objects", lambda: QA_OBJECTS)
    dataset = BUILTIN_DATASETS.get("pydoc-qa").load({})
    assert dataset.task_defaults["type"] == "qa"
    task = TaskSpec("pydoc-qa", dataset.task_defaults["type"], dataset.task_defaults["instruction"])
    rows = dataset.rows
    perfect = evaluate(task, rows, [e.target for e in rows])
    assert perfect["primary_metric"] == "f1"
    assert {m["name"]: m["value"] for m in perfect["metrics"]} == {"f1": 1.0, "exact_match": 1.0}
    wrong = evaluate(task, rows, ["posix"] * len(rows))
    assert {m["name"]: m["value"] for m in wrong["metrics"]} == {"f1": 0.0, "exact_match": 0.0}


@pytest.fixture(scope="module")
def stdlib_objects():
    """This Python's extraction (a ~1 s subprocess the first time in a test session, then the cache)."""
    return extract_objects()


def test_real_stdlib_summary_rows(stdlib_objects):
    rows, dropped = pydoc_summary.build_rows(stdlib_objects, PydocSummaryOptions())
    assert len(rows) >= 500 and dropped["rest_too_short"] > 0
    assert len({e.id for e in rows}) == len(rows)
    ids = {o["id"] for o in stdlib_objects}
    for e in rows:
        assert e.id in ids and e.target and e.input.startswith(e.id)
        assert not is_copied(e.target, e.input) and len(e.input) <= 1500
        assert "\n" not in e.target


def test_real_stdlib_qa_rows(stdlib_objects):
    rows, per_template = pydoc_qa.build_rows(stdlib_objects, PydocQaOptions(max_rows=300))
    assert len(rows) == 300 and min(per_template.values()) >= 60 and set(per_template) == {"module", "returns",
                                                                                              "raises"}
    docs = {o["id"]: gold_document_text(o) for o in stdlib_objects}
    assert len({e.id for e in rows}) == len({e.input for e in rows}) == 300
    for e in rows:
        assert all(a in docs[e.meta["gold_doc"]] for a in e.meta["answers"]), e.id
        assert re.fullmatch(r"(module|returns|raises):.+", e.id)
    assert isinstance(rows[0], Example)


def test_signatures_keep_short_literal_defaults_only(stdlib_objects):
    import os

    from lmtailor.data.pydoc_extract import _portable_default

    assert _portable_default(None) is None and _portable_default((80, 24)) == (80, 24)
    assert _portable_default("utf-8") == "utf-8"
    for value in (os.environ, object(), len, "x" * 100, float("nan")):
        assert repr(_portable_default(value)) == "..."
    home = os.path.expanduser("~")
    signatures = [o["signature"] for o in stdlib_objects if o["signature"]]
    assert len(signatures) > len(stdlib_objects) // 2
    # os.environ (cgi.parse's default), install paths and memory addresses would make rows differ between machines
    assert not [s for s in signatures if " at 0x" in s or "environ(" in s or (len(home) > 1 and home in s)]
