"""Split documents into overlapping windows of tokens; each chunk is an exact substring of its document.

Chunk with the embedder's own tokenizer (``Embedder.tokenizer``) so a chunk of ``chunk_tokens`` tokens is what
the embedder sees, and keep ``chunk_tokens`` within its ``max_seq_length`` or the tail of each chunk is cut off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from lmtailor.errors import UserError
from lmtailor.retrieval.corpus import Document

# Documents are tokenized this many at a time: enough for the fast tokenizer's batching, little memory.
TOKENIZE_BATCH = 256


@dataclass(frozen=True)
class Chunk:
    """A window of one document: ``text == document.text[start_char:end_char]``; ``position`` counts from 0."""

    id: str
    doc_id: str
    position: int
    text: str
    start_char: int
    end_char: int


def chunk_documents(docs: Sequence[Document], tokenizer, chunk_tokens: int, overlap: int) -> list[Chunk]:
    """Cut each document into windows of ``chunk_tokens`` tokens, consecutive windows sharing ``overlap`` tokens."""
    if chunk_tokens < 1:
        raise UserError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    if not 0 <= overlap < chunk_tokens:
        raise UserError(f"chunk overlap must be at least 0 and smaller than chunk_tokens ({chunk_tokens}), "
                        f"got {overlap}")
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"chunking needs a fast tokenizer (one with offset mappings); {type(tokenizer).__name__} "
                        "is not one: load it with AutoTokenizer.from_pretrained(..., use_fast=True)")
    chunks: list[Chunk] = []
    for start in range(0, len(docs), TOKENIZE_BATCH):
        batch = docs[start:start + TOKENIZE_BATCH]
        # truncation=False: sentence-transformers tokenizers often ship with truncation switched on.
        enc = tokenizer([d.text for d in batch], add_special_tokens=False, return_offsets_mapping=True,
                        truncation=False, verbose=False)
        for doc, offsets in zip(batch, enc["offset_mapping"]):
            chunks.extend(_windows(doc, _nonempty(offsets), chunk_tokens, chunk_tokens - overlap))
    return chunks


def _nonempty(offsets: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    # Some tokenizers emit zero-width tokens (e.g. a lone "▁"); they carry no text to cut at.
    return [(s, e) for s, e in offsets if e > s]


def _windows(doc: Document, offsets: list[tuple[int, int]], size: int, step: int) -> list[Chunk]:
    out: list[Chunk] = []
    start = 0
    while start < len(offsets):
        end = min(start + size, len(offsets))
        s, e = offsets[start][0], offsets[end - 1][1]
        pos = len(out)
        out.append(Chunk(f"{doc.id}#{pos}", doc.id, pos, doc.text[s:e], s, e))
        if end == len(offsets):  # the window reached the end: no trailing chunk inside the previous one
            break
        start += step
    return out
