"""Put retrieved passages into a prompt: numbered, best first, within a token budget of the generator's tokenizer.

A passage that does not fit whole is cut to what is left of the budget (when enough is left to be worth reading)
and every later one is dropped; both are counted, so the run reports how much retrieved text the model never saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from lmtailor.prompting.formats import truncate_text
from lmtailor.retrieval.base import Hit

# A passage cut to fewer tokens than this says too little to be worth its header; it is dropped instead.
MIN_PASSAGE_TOKENS = 16


@dataclass
class Context:
    """The passages block of one prompt and what fitting it into the budget cost."""

    text: str
    doc_ids: list[str] = field(default_factory=list)  # documents of the passages shown, in order
    tokens: int = 0
    cut: int = 0  # passages shortened to fit
    dropped: int = 0  # passages left out: no room


def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def assemble_context(hits: Sequence[Hit], tokenizer, max_tokens: int) -> Context:
    """Number the hits' chunks ``[1] doc-id: text`` best first, keeping the block within ``max_tokens`` tokens."""
    lines: list[str] = []
    ctx = Context("")
    for i, hit in enumerate(hits):
        # Per-line token counts can differ from the joined block's by a token at the seams: keep a one-token margin.
        left = max_tokens - ctx.tokens - 1
        header = f"[{len(lines) + 1}] {hit.chunk.doc_id}: "
        header_tokens = _n_tokens(tokenizer, header)
        body = " ".join(hit.chunk.text.split())  # one line per passage: the numbering stays readable
        body_tokens = _n_tokens(tokenizer, body)
        if header_tokens + body_tokens <= left:
            lines.append(header + body)
            ctx.tokens += header_tokens + body_tokens + 1  # + the newline between passages
        elif left - header_tokens - 2 >= MIN_PASSAGE_TOKENS:
            text, _ = truncate_text(tokenizer, body, left - header_tokens - 2)  # 2: room for the " …" mark
            lines.append(header + text + " …")
            ctx.tokens += left
            ctx.cut += 1
        else:  # no room: this one and every lower-ranked one stay out (a later short one would skip the rank order)
            ctx.dropped += len(hits) - i
            break
        ctx.doc_ids.append(hit.chunk.doc_id)
    ctx.text = "\n".join(lines)
    return ctx


def with_passages(context: Context, input_text: str, input_name: str = "Question") -> str:
    """The row's input with its passages above it (the question last: it is what small models attend to best)."""
    if not context.text:
        return f"Passages: none found.\n\n{input_name}: {input_text}"
    return f"Passages:\n{context.text}\n\n{input_name}: {input_text}"
