"""builtin:pydoc-module: built from this Python's docstrings, masked, deterministic, cached, out of process."""

from __future__ import annotations

import re
import sys
import time
from collections import Counter

import pytest

from lmtailor.data.builtin import BUILTIN_DATASETS
from lmtailor.data.pydoc_module import CLASS, MODULE, NAME, cache_path, mask_docstring
from lmtailor.data.validate import DataError


@pytest.fixture(scope="module")
def built():
    """The default dataset, built once (the first build extracts in a subprocess), and the seconds it took."""
    before = set(sys.modules)
    start = time.perf_counter()
    dataset = BUILTIN_DATASETS.get("pydoc-module").load({})
    return dataset, time.perf_counter() - start, set(sys.modules) - before


def test_builds_fast_out_of_process_with_enough_classes(built):
    dataset, seconds, new_modules = built
    assert seconds < 60
    counts = Counter(e.target for e in dataset.rows)
    assert 8 <= len(counts) <= 12 and min(counts.values()) >= 40
    assert dataset.task_defaults["labels"] == sorted(counts)
    defaults = dataset.task_defaults
    assert defaults["type"] == "classification" and "[NAME] masks" in defaults["instruction"]
    # the ~200 standard-library imports happened in the subprocess, not here
    assert not {"mailbox", "imaplib", "nntplib", "antigravity"} & new_modules
    assert cache_path().is_file() and dataset.files == [str(cache_path())]


def test_rows_are_sorted_by_qualified_name_and_masked(built):
    rows = built[0].rows
    assert [e.id for e in rows] == sorted(e.id for e in rows)
    assert len({e.input for e in rows}) == len(rows)
    for e in rows:
        module, qualname = e.id.split(".", 1)
        assert module == e.target
        text = e.input.replace(NAME, " ").replace(CLASS, " ").replace(MODULE, " ")
        for word in (module, *qualname.split(".")):
            assert not re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE), (e.id, e.input)
        assert len(e.input) >= 40 and "  " not in e.input and "\n" not in e.input


def test_rebuild_from_cache_and_fresh_extraction_give_the_same_rows(built):
    first = built[0].rows
    assert BUILTIN_DATASETS.get("pydoc-module").load({}).rows == first  # from the cache
    cache_path().unlink()
    again = BUILTIN_DATASETS.get("pydoc-module").load({}).rows  # a fresh subprocess extraction
    assert [(e.id, e.input, e.target) for e in again] == [(e.id, e.input, e.target) for e in first]


def test_options_select_classes_and_balance(built):
    spec = BUILTIN_DATASETS.get("pydoc-module")
    small = spec.load({"max_classes": 3, "max_examples_per_class": 30})
    counts = Counter(e.target for e in small.rows)
    assert len(counts) == 3 and set(counts.values()) == {30}
    everything = Counter(e.target for e in built[0].rows)
    assert set(counts) == {m for m, _ in sorted(everything.items(), key=lambda kv: (-kv[1], kv[0]))[:3]}
    with pytest.raises(DataError, match="lower data.options.min_examples_per_class"):
        spec.load({"min_examples_per_class": 100000})


def test_mask_docstring_masks_whole_words_only():
    doc = "OrderedDict.popitem(last)\n   pops.  popitem  returns; see collections.OrderedDict and Collections."
    assert mask_docstring(doc, "collections", "OrderedDict.popitem") == (
        f"{NAME}(last) pops. {NAME} returns; see {MODULE}.{CLASS} and {MODULE}.")
    assert mask_docstring("Decimal.sqrt of a decimal", "decimal", "Decimal.sqrt") == f"{NAME} of a {CLASS}"
