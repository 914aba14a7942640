"""A ``task:train`` corpus is retrieved as whole training rows and shown as worked examples, never as passages.

Chunking a training row would cut its input from its answer: a retrieved window without its "Answer:" teaches the
model nothing, and numbered passage headers ("[1] train.jsonl:283: ...") get copied into answers. Here every
training row is one chunk whose text is the row's input (what a test input is compared with; a dense embedder reads
its first ``max_seq_length`` tokens), and a retrieved row comes back as the row itself: input, then answer, laid
out exactly as the k-shot exemplars are (``prompting/formats.build_messages`` reads them from the test row's
``meta["exemplars"]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from lmtailor.core.example import Example
from lmtailor.prompting.formats import truncate_text
from lmtailor.retrieval.base import Hit
from lmtailor.retrieval.chunking import Chunk
from lmtailor.retrieval.corpus import Document

# Tokens one exemplar turn adds around its input and answer (role markers, "Input:"/"Answer:" and line breaks): a
# margin so that the budget holds for what the model reads, whatever the template.
TURN_OVERHEAD_TOKENS = 8


def row_chunks(docs: Sequence[Document], rows: Sequence[Example]) -> list[Chunk]:
    """One chunk per kept training row (``docs`` are the rows' documents after exclusions): the whole input."""
    by_id = {e.id: e for e in rows}
    chunks = []
    for doc in docs:
        text = by_id[doc.id].input
        chunks.append(Chunk(f"{doc.id}#0", doc.id, 0, text, 0, len(text)))
    return chunks


@dataclass
class WorkedExamples:
    """The training rows shown before one test input, and what the budget cost."""

    examples: list[Example] = field(default_factory=list)  # in prompt order: the nearest row last
    doc_ids: list[str] = field(default_factory=list)  # retrieval order, best first
    tokens: int = 0
    dropped: int = 0  # retrieved rows left out: no room for them whole
    cut_inputs: int = 0  # inputs cut to max_input_tokens, as any exemplar's is


def fit_worked_examples(hits: Sequence[Hit], rows: dict[str, Example], tokenizer, max_tokens: int,
                        max_input_tokens: int) -> WorkedExamples:
    """The retrieved rows, best first, each whole (input cut to ``max_input_tokens`` like any exemplar's, answer
    always whole), while they fit in ``max_tokens``; the first that does not fit and every later one are dropped.

    They are returned nearest-last, so the most similar solved row sits right above the test input, the order Liu et
    al. (2022, "What makes good in-context examples for GPT-3?") report as slightly better than the reverse.
    """
    out = WorkedExamples()
    for i, hit in enumerate(hits):
        row = rows[hit.chunk.doc_id]
        text, cut = truncate_text(tokenizer, row.input, max_input_tokens)
        cost = (len(tokenizer(text, add_special_tokens=False)["input_ids"])
                + len(tokenizer(row.target, add_special_tokens=False)["input_ids"]) + TURN_OVERHEAD_TOKENS)
        if out.tokens + cost > max_tokens:
            out.dropped = len(hits) - i
            break
        out.tokens += cost
        out.cut_inputs += cut
        out.doc_ids.append(row.id)
        # A row's own meta (its instruction, system text, earlier turns) comes with it, as a drawn shot's does.
        out.examples.append(Example(row.id, text, row.target, {k: v for k, v in row.meta.items()
                                                                if k != "exemplars"}))
    out.examples.reverse()
    return out


def with_worked_examples(row: Example, worked: WorkedExamples) -> Example:
    """``row`` carrying its retrieved worked examples in ``meta["exemplars"]`` (shown after any drawn shots)."""
    return Example(row.id, row.input, row.target, {**row.meta, "exemplars": list(worked.examples)})
