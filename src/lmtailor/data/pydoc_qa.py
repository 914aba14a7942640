"""builtin:pydoc-qa — questions about standard-library objects, answered by a phrase of the object's documentation.

Questions come from templates applied to the docstrings of the cached extraction that builtin:pydoc-module uses,
deterministically. Every answer is found verbatim in its gold document, the text of one ``builtin:pydoc`` corpus
document (``gold_document_text``: the qualified name, a blank line, the docstring), so retrieval can be scored with
``meta["gold_doc"]`` (the qualified name ``module.qualname``) and reading with ``meta["answers"]``.

The templates, chosen because their answers are short, extractive and unambiguous:

- ``module``: "Which standard library module defines Bdb.is_skipped_module?" -> ``bdb``; only for qualified names
  that exist in one module (``Error`` or ``main`` would have several right answers).
- ``returns``: "What does gc.get_freeze_count return?" -> the rest of the docstring's first prose sentence that
  starts with "Return(s)", when it ends on the same line ("the number of objects in the permanent generation").
- ``raises``: "Which exception does marshal.loads raise?" -> every exception a prose sentence says it raises
  ("Raises EOFError ..."), each one a right answer.

Not used: "the default value of parameter p": the signature is not part of the gold document, and defaults stated in
docstrings are rare (about 50 in Python 3.11) and mostly ``None``; "is it a class or a function": not extractive.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import re
from collections import Counter
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmtailor.core.example import Example
from lmtailor.data.builtin import BuiltinDataset, BuiltinSpec
from lmtailor.data.pydoc_module import cache_path, extract_objects
from lmtailor.data.validate import DataError

log = logging.getLogger("lmtailor")

Template = Literal["module", "returns", "raises"]
INSTRUCTION = ("Answer the question about the Python standard library with a short phrase taken from the "
               "documentation: a module name, an exception name, or the words the docstring uses.")
_RETURNS = re.compile(r"(?:^|(?<=[.!?] ))Returns? ([^\n]+?)\.(?= |$)")
_RAISES = re.compile(r"(?<!not )(?<!never )(?<!n't )\b(?:Raises?|raises?) (?:an? )?[`*]*"
                     r"(\w+(?:Error|Exception|Warning|Exit|Interrupt))\b")


class PydocQaOptions(BaseModel):
    """Options of builtin:pydoc-qa (``data.options`` in the experiment file)."""

    model_config = ConfigDict(extra="forbid")

    max_rows: int | None = Field(600, ge=1, description="keep at most this many rows, taken from the templates in "
                                 "turn (balanced as far as each template has rows), each in the order of a hash "
                                 "of the row id; null keeps every row")
    templates: list[Template] = Field(["module", "returns", "raises"], min_length=1, description="question "
                                      "templates to use: module, returns, raises")
    max_answer_words: int = Field(12, ge=1, description="drop questions whose answer has more words than this")

    @field_validator("templates")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"templates are listed twice: {value}; list each once")
        return value


def gold_document_text(obj: dict) -> str:
    """The text of the ``builtin:pydoc`` corpus document of an extracted object: qualified name, blank line, doc."""
    return f"{obj['id']}\n\n{obj['doc']}"


def _prose_lines(doc: str) -> list[str]:
    # Indented blocks and doctest lines are code: "raise KeyError" there is not a sentence about the object.
    return [line for line in doc.splitlines() if line and not line[0].isspace() and not line.startswith((">>>", "..."))]


def _module(obj: dict, unique_qualnames: set[str]) -> tuple[str, list[str]] | None:
    if obj["qualname"] not in unique_qualnames:
        return None
    return f"Which standard library module defines {obj['qualname']}?", [obj["module"]]


def _returns(obj: dict, unique_qualnames: set[str]) -> tuple[str, list[str]] | None:
    for line in _prose_lines(obj["doc"]):
        match = _RETURNS.search(line)
        if match:
            return f"What does {obj['id']} return?", [match.group(1).strip()]
    return None


def _raises(obj: dict, unique_qualnames: set[str]) -> tuple[str, list[str]] | None:
    names = [n for line in _prose_lines(obj["doc"]) for n in _RAISES.findall(line) if n != obj["name"]]
    if not names:
        return None
    return f"Which exception does {obj['id']} raise?", list(dict.fromkeys(names))


TEMPLATES: dict[str, Callable[[dict, set[str]], tuple[str, list[str]] | None]] = {
    "module": _module, "returns": _returns, "raises": _raises}


def candidate_rows(objects: list[dict], opts: PydocQaOptions) -> dict[str, list[Example]]:
    """Every question each chosen template makes from ``objects``, by template, sorted by id."""
    counts = Counter(o["qualname"] for o in objects)
    unique = {q for q, n in counts.items() if n == 1}
    pools: dict[str, list[Example]] = {}
    for name in opts.templates:
        rows = []
        for obj in objects:
            made = TEMPLATES[name](obj, unique)
            if made is None:
                continue
            question, answers = made
            if max(len(a.split()) for a in answers) > opts.max_answer_words:
                continue
            rows.append(Example(f"{name}:{obj['id']}", question, answers[0],
                                {"gold_doc": obj["id"], "answers": answers, "template": name}))
        pools[name] = sorted(rows, key=lambda e: e.id)
    return pools


def build_rows(objects: list[dict], opts: PydocQaOptions) -> tuple[list[Example], dict[str, int]]:
    """Rows taken from the templates in turn up to ``max_rows``, sorted by id; returns (rows, rows per template)."""
    pools = candidate_rows(objects, opts)
    queues = {name: sorted(rows, key=lambda e: hashlib.sha256(e.id.encode()).hexdigest())
              for name, rows in pools.items()}
    limit = opts.max_rows if opts.max_rows is not None else sum(len(q) for q in queues.values())
    chosen: list[Example] = []
    depth = 0
    # Round robin: every template gives one row per turn until it runs out, so a small template keeps all its rows
    # and the others share what is left evenly.
    while len(chosen) < limit and any(depth < len(q) for q in queues.values()):
        for name in opts.templates:
            if depth < len(queues[name]) and len(chosen) < limit:
                chosen.append(queues[name][depth])
        depth += 1
    return sorted(chosen, key=lambda e: e.id), dict(Counter(e.meta["template"] for e in chosen))


def build(opts: PydocQaOptions) -> BuiltinDataset:
    """Build builtin:pydoc-qa with ``opts``; logs how many questions each template gave."""
    objects = extract_objects()
    rows, per_template = build_rows(objects, opts)
    if not rows:
        raise DataError(f"builtin:pydoc-qa: the templates {opts.templates} made no question from "
                        f"{len(objects)} documented objects; add templates or raise data.options.max_answer_words")
    version = platform.python_version()
    log.info("pydoc-qa: %d questions from %d documented objects of the Python %s standard library (%s)",
             len(rows), len(objects), version, ", ".join(f"{n} {t}" for t, n in sorted(per_template.items())))
    defaults = {"type": "qa", "name": "pydoc-qa", "instruction": INSTRUCTION}
    description = (f"builtin:pydoc-qa (questions on the Python {version} standard library's docstrings: "
                   f"{len(rows)} rows)")
    return BuiltinDataset(rows, defaults, description, files=[str(cache_path())])


SPEC = BuiltinSpec(description="answer questions about standard-library objects from their docstrings (gold "
                   "document known, for retrieval)", options=PydocQaOptions, build=build)
