"""builtin:pydoc-module — which standard-library module is a docstring from? Built from the running Python.

The docstrings of the public functions, classes and methods of the standard library (``sys.stdlib_module_names``)
are extracted in a subprocess (``pydoc_extract.py``) and cached per Python version and extractor version. Each row's
input is a docstring with the object's name, its class and its module masked; its target is the module name.
The same Python version gives the same rows on every machine of the same platform.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import re
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from lmtailor.core.example import Example
from lmtailor.data.builtin import BuiltinDataset, BuiltinSpec
from lmtailor.data.validate import DataError
from lmtailor.io import write_jsonl_atomic
from lmtailor.paths import cache_dir

log = logging.getLogger("lmtailor")

EXTRACTOR = Path(__file__).with_name("pydoc_extract.py")
EXTRACT_TIMEOUT_S = 300
NAME, CLASS, MODULE = "[NAME]", "[CLASS]", "[MODULE]"
INSTRUCTION = (f"Which Python standard library module is this docstring from? In it, {NAME} masks the object's "
               f"name, {CLASS} its class and {MODULE} its module.")


class PydocModuleOptions(BaseModel):
    """Options of builtin:pydoc-module (``data.options`` in the experiment file)."""

    model_config = ConfigDict(extra="forbid")

    min_examples_per_class: int = Field(40, ge=1, description="keep only modules with at least this many rows")
    max_classes: int = Field(12, ge=2, description="keep the modules with the most rows, at most this many "
                             "(ties broken by name)")
    max_examples_per_class: int | None = Field(None, ge=1, description="keep at most this many rows per module "
                                               "(chosen by a hash of the row id), for a balanced dataset")
    min_chars: int = Field(40, ge=1, description="drop docstrings shorter than this after masking")


def cache_path() -> Path:
    """Where this Python's extraction is cached: keyed by Python version and a hash of the extractor's code."""
    code = hashlib.sha256(EXTRACTOR.read_bytes()).hexdigest()[:12]
    return cache_dir() / "datasets" / f"pydoc-{platform.python_version()}-{code}.jsonl"


def extract_objects() -> list[dict]:
    """Every documented public object of the standard library (cached): id, module, qualname, name, kind, doc."""
    path = cache_path()
    if not path.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rows.jsonl"
            # -I -S: no site-packages, no user env; a fresh process keeps import side effects out of this one.
            try:
                proc = subprocess.run([sys.executable, "-I", "-S", str(EXTRACTOR), str(out)], cwd=tmp,
                                      stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                      timeout=EXTRACT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise DataError(f"builtin:pydoc-module: extracting the standard library's docstrings took more than "
                                f"{EXTRACT_TIMEOUT_S}s (a module hangs on import?); run `{sys.executable} -I -S "
                                f"{EXTRACTOR} out.jsonl` to see where") from None
            if proc.returncode != 0 or not out.is_file():
                raise DataError(f"builtin:pydoc-module: extracting the standard library's docstrings failed "
                                f"(exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
            rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        write_jsonl_atomic(path, rows)
        return rows
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def mask_docstring(doc: str, module: str, qualname: str) -> str:
    """Normalise whitespace and mask the object's name and qualified name, its class and its module (whole words)."""
    parts = qualname.split(".")
    lookup: dict[str, str] = {}
    # In priority order, case-insensitive: "Decimal" is the class's own name in its docstring, and the module
    # decimal's name (capitalised at a sentence start) elsewhere.
    for name, mask in [(qualname, NAME), (parts[-1], NAME), *((c, CLASS) for c in parts[:-1]), (module, MODULE)]:
        lookup.setdefault(name.lower(), mask)
    # Longest first, so "OrderedDict.popitem" is masked whole before "popitem".
    names = sorted(lookup, key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b", re.IGNORECASE)
    return pattern.sub(lambda m: lookup[m.group(1).lower()], " ".join(doc.split()))


def _masked_unique(objects: list[dict], min_chars: int) -> tuple[list[Example], dict]:
    """Masked rows long enough to keep; identical inputs keep one row, or none when their modules disagree."""
    by_input: dict[str, list[Example]] = defaultdict(list)
    short = 0
    for obj in objects:
        text = mask_docstring(obj["doc"], obj["module"], obj["qualname"])
        if len(text) < min_chars:
            short += 1
            continue
        # source_text: the docstring before masking, which a corpus must not show either (retrieval/exclusion.py)
        by_input[text].append(Example(obj["id"], text, obj["module"], {"kind": obj["kind"], "source_doc": obj["id"],
                                                                       "source_text": obj["doc"]}))
    rows, dup, conflicting = [], 0, 0
    for group in by_input.values():
        if len({e.target for e in group}) > 1:
            conflicting += len(group)
            continue
        dup += len(group) - 1
        rows.append(min(group, key=lambda e: e.id))
    return rows, {"too_short": short, "duplicates": dup, "conflicting": conflicting}


def _select_classes(rows: list[Example], opts: PydocModuleOptions) -> list[str]:
    counts = Counter(e.target for e in rows)
    eligible = sorted((m for m, n in counts.items() if n >= opts.min_examples_per_class), key=lambda m: (-counts[m], m))
    if len(eligible) < 2:
        best = ", ".join(f"{m} ({n})" for m, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5])
        raise DataError(f"builtin:pydoc-module: only {len(eligible)} module(s) have at least "
                        f"min_examples_per_class={opts.min_examples_per_class} rows (largest: {best}); "
                        "lower data.options.min_examples_per_class")
    return sorted(eligible[: opts.max_classes])


def build_rows(objects: list[dict], opts: PydocModuleOptions) -> tuple[list[Example], dict]:
    """Turn extracted objects into task rows sorted by id; returns (rows, counts of what was dropped)."""
    rows, stats = _masked_unique(objects, opts.min_chars)
    labels = set(_select_classes(rows, opts))
    rows = [e for e in rows if e.target in labels]
    if opts.max_examples_per_class:
        by_label: dict[str, list[Example]] = defaultdict(list)
        for e in sorted(rows, key=lambda e: hashlib.sha256(e.id.encode()).hexdigest()):
            by_label[e.target].append(e)
        rows = [e for group in by_label.values() for e in group[: opts.max_examples_per_class]]
    return sorted(rows, key=lambda e: e.id), stats


def build(opts: PydocModuleOptions) -> BuiltinDataset:
    """Build builtin:pydoc-module with ``opts``; logs how many objects, modules and classes it used."""
    objects = extract_objects()
    rows, stats = build_rows(objects, opts)
    labels = sorted({e.target for e in rows})
    version = platform.python_version()
    log.info("pydoc-module: %d documented objects from %d modules of the Python %s standard library; "
             "dropped %d too short, %d duplicate, %d with conflicting modules; kept %d rows of %d classes",
             len(objects), len({o["module"] for o in objects}), version, stats["too_short"], stats["duplicates"],
             stats["conflicting"], len(rows), len(labels))
    defaults = {"type": "classification", "name": "pydoc-module", "instruction": INSTRUCTION, "labels": labels}
    description = (f"builtin:pydoc-module (docstrings of the Python {version} standard library: "
                   f"{len(rows)} rows, {len(labels)} modules)")
    return BuiltinDataset(rows, defaults, description, files=[str(cache_path())])


SPEC = BuiltinSpec(description="predict a standard-library object's module from its masked docstring",
                   options=PydocModuleOptions, build=build)
