"""Keep the rows a strategy predicts out of its corpus, by content: what a retriever may show or a model pre-train on.

A document is left out when its normalised text (``data/leakage.normalize_text``)

- *contains* the input of a row to predict — when that input is long enough to be evidence (at least
  ``MIN_CONTAINED_WORDS`` words and ``MIN_CONTAINED_CHARS`` characters); a shorter input ("I loved it.") would
  match ordinary prose, so it leaves out only a document that *equals* it;
- or shows a row's answer, as the task type says (``TaskType.target_in_corpus``): ``contains`` for generation (a
  summary copied word for word into a document is the answer; short ones again by equality only), ``equals`` for QA
  (a short answer phrase belongs in the document the question is about: pydoc-qa's gold documents keep it), and
  ``ignored`` for classification, whose labels ("os", "positive") are the vocabulary of every document, not
  evidence of a leak.

A row made from a document by changing it (builtin:pydoc-module masks the object's names) also carries the text it
was made from (``meta["source_text"]``), looked for like an input; and a document may carry other views of its text
(``meta["views"]``: a builtin:pydoc document's docstring masked the way pydoc-module masks its own), each checked
like its text. So a twin with an identical docstring under another name, whose first line names the module, is left
out. The documents a row was made from (``meta["source_doc"]``) are left out as before, by id. What was left out,
and why, goes into the row's record (``details["corpus_exclusions"]``) with a fingerprint of the rows checked against,
so the report's honesty check can verify the check covered the test rows.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

from lmtailor.core.example import Example
from lmtailor.data.leakage import NORMALISATION, normalize_text, row_digest, rows_fingerprint
from lmtailor.retrieval.corpus import Document
from lmtailor.tasks import TASK_TYPES

MIN_CONTAINED_WORDS = 5
MIN_CONTAINED_CHARS = 25
# Names listed per reason in the record (every exclusion is counted).
MAX_LISTED = 100
REASONS = ("source_doc", "contains_test_input", "equals_test_input", "contains_test_source", "equals_test_source",
           "contains_test_target", "equals_test_target")


def containable(normalised: str) -> bool:
    """Whether a normalised text is long enough for "a document contains it" to be evidence of a leak."""
    return len(normalised) >= MIN_CONTAINED_CHARS and len(normalised.split()) >= MIN_CONTAINED_WORDS


def target_rule(task_type: str) -> str:
    """How a task type's answers are looked for in a corpus: ``contains``, ``equals`` or ``ignored``."""
    if task_type in TASK_TYPES:
        return getattr(TASK_TYPES.get(task_type), "target_in_corpus", "equals")
    return "equals"


@dataclass
class HeldOutText:
    """The normalised inputs and answers a corpus must not show, indexed for a fast scan of many documents."""

    equal: dict[str, tuple[str, str]] = field(default_factory=dict)  # text -> (reason, row id)
    # A contained text's interior words appear whole in any document that contains it: the longest one is its
    # anchor, so each document is checked only against the texts whose anchor it has.
    by_anchor: dict[str, list[tuple[str, str, str]]] = field(default_factory=lambda: defaultdict(list))

    def add(self, text: str, row_id: str, kind: str, contains: bool) -> None:
        norm = normalize_text(text)
        if not norm:
            return
        self.equal.setdefault(norm, (f"equals_test_{kind}", row_id))
        if contains and containable(norm):
            words = norm.split()
            anchor = max(words[1:-1], key=len)
            self.by_anchor[anchor].append((norm, f"contains_test_{kind}", row_id))

    def match(self, text: str) -> tuple[str, str] | None:
        """(reason, row id) of the first held-out text ``text`` equals or contains; None when it shows none."""
        norm = normalize_text(text)
        if norm in self.equal:
            return self.equal[norm]
        for word in set(norm.split()) & self.by_anchor.keys():
            for pattern, reason, row_id in self.by_anchor[word]:
                if pattern in norm:
                    return reason, row_id
        return None

    def match_document(self, doc: Document) -> tuple[str, str] | None:
        """:meth:`match` on the document's text, then on each of its other views (``meta["views"]``)."""
        for text in (doc.text, *(doc.meta.get("views") or ())):
            hit = self.match(text)
            if hit is not None:
                return hit
        return None


def held_out_text(rows: Sequence[Example], task_type: str) -> HeldOutText:
    """What a corpus must not show of ``rows`` (the rows a strategy predicts), by the rules of ``task_type``."""
    held = HeldOutText()
    rule = target_rule(task_type)
    for e in rows:
        held.add(e.input, e.id, "input", contains=True)
        if e.meta.get("source_text"):
            held.add(e.meta["source_text"], e.id, "source", contains=True)
        if rule != "ignored":
            for answer in e.meta.get("answers") or [e.target]:
                held.add(answer, e.id, "target", contains=rule == "contains")
    return held


def exclude_held_out(docs: Sequence[Document], rows: Sequence[Example], task_type: str,
                     source_docs: set[str] = frozenset()) -> tuple[list[Document], dict]:
    """``docs`` without the documents that show ``rows``' content or were made into them; returns (kept, record).

    The record holds the normalisation, the rules, a fingerprint of the rows checked against
    (``data/leakage.rows_fingerprint`` of (id, digest)), the counts before and after, and per reason how many
    documents were left out with the first ``MAX_LISTED`` of them as ``[document id, row id]``.
    """
    held = held_out_text(rows, task_type)
    kept: list[Document] = []
    excluded: dict[str, list[list[str]]] = {r: [] for r in REASONS}
    for doc in docs:
        if doc.id in source_docs:
            excluded["source_doc"].append([doc.id, doc.id])
            continue
        hit = held.match_document(doc)
        if hit is None:
            kept.append(doc)
        else:
            excluded[hit[0]].append([doc.id, hit[1]])
    rule = target_rule(task_type)
    record = {
        "normalisation": NORMALISATION,
        "rules": {"input": f"contains (inputs of at least {MIN_CONTAINED_WORDS} words and {MIN_CONTAINED_CHARS} "
                           "characters) or equals",
                  "target": {"contains": f"contains (at least {MIN_CONTAINED_WORDS} words and {MIN_CONTAINED_CHARS} "
                                         "characters) or equals",
                             "equals": "equals", "ignored": "not checked (labels)"}[rule]},
        "checked_rows": len(rows), "rows_fingerprint": rows_fingerprint((e.id, row_digest(e)) for e in rows),
        "documents": len(docs), "kept": len(kept),
        "excluded": {r: {"count": len(v), "documents": v[:MAX_LISTED]} for r, v in excluded.items() if v},
    }
    return kept, record


def describe_exclusions(record: dict) -> str:
    """One line for the log: how many documents were left out, by reason."""
    parts = [f"{v['count']} {r.replace('_', ' ')}" for r, v in record["excluded"].items()]
    left = record["documents"] - record["kept"]
    return (f"left out {left} of {record['documents']} documents ({', '.join(parts)})" if parts
            else f"no document of {record['documents']} shows a row to predict")
