"""Instruction formats for encoder-decoder models (T5, Flan-T5, BART): a source text for the encoder, a target
text for the decoder, and no chat template.

The source is laid out the way Flan-T5 was instruction-tuned (natural instructions, blank lines between parts):

    {instruction}
    Options: red, green, blue          <- classification only

    Input: {exemplar input}            <- few-shot: exemplars go in the source, each with its answer
    Answer: {exemplar target}

    Input: {input}                     <- with exemplars; zero-shot, the row's input stands alone
    Answer:

With no instruction (``TaskSpec.instruction == ""``: a model tuned on the task no longer needs telling) and no
exemplars, the source is the bare input. The target is the answer, tokenized as the family's tokenizer writes
targets (T5: ``answer </s>``; BART: ``<s> answer </s>``), so the end-of-sequence token is learnt and scored.
Training and label scoring both go through ``encode_target``, so a tuned model is scored on the tokens it learnt.

A row's own instruction (``data.format: alpaca``) replaces the task's; a conversation row (``data.format: messages``)
puts its system text first and its earlier turns as ``Input:``/``Answer:`` pairs before its input.

``TaskSpec.prompt_format``: ``chat`` is the layout above (encoder-decoder models have no chat template; this is the
family's own instruction format). ``alpaca`` and ``plain`` lay the source out with the decoder-only raw templates
(``prompting/formats.py``) up to and including ``### Response:`` / ``RESPONSE:``, exemplar answers inline without eos;
the answer is still the decoder's target, so the same data and layout can be compared across families.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.errors import UserError
from lmtailor.prompting.exemplars import Exemplars, cut_exemplars, exemplars_per_row
from lmtailor.prompting.formats import (build_messages, check_format, instruction_for, raw_text, row_exemplars,
                                        shows_labels, truncate_text)


def _header(task: TaskSpec, meta: Mapping[str, Any] | None = None) -> str:
    instruction = instruction_for(task, meta)
    if instruction and shows_labels(task):
        instruction += "\nOptions: " + ", ".join(task.labels)
    return instruction


def _pairs(meta: Mapping[str, Any] | None) -> list[str]:
    """A conversation row's earlier turns (alternating user, assistant) as Input/Answer pairs."""
    turns = [t["content"] for t in (meta or {}).get("history") or ()]
    return [f"Input: {q}\nAnswer: {a}" for q, a in zip(turns[::2], turns[1::2])]


def source_text(task: TaskSpec, input_text: str, exemplars: Sequence[Example] = (),
                meta: Mapping[str, Any] | None = None) -> str:
    """The encoder's text for one row: instruction (and label options), few-shot exemplars, then the input.

    ``meta`` is the row's ``Example.meta`` (its own instruction, system text and earlier turns, when it has them).
    """
    fmt = check_format(task.prompt_format)
    if fmt != "chat":  # the raw templates, cut where the decoder's answer starts
        return raw_text(build_messages(task, input_text, exemplars, meta), fmt).rstrip()
    header = _header(task, meta)
    parts = [text for text in ((meta or {}).get("system"), header) if text]
    exemplars = row_exemplars(exemplars, meta)
    for ex in exemplars:
        own = _header(task, ex.meta)  # an exemplar with its own instruction shows it above its input
        parts += _pairs(ex.meta)
        parts.append((f"{own}\n" if own and own != header else "") + f"Input: {ex.input}\nAnswer: {ex.target}")
    history = _pairs(meta)
    parts += history
    # Zero-shot the input stands alone (Flan's "instruction, blank line, text"); after exemplars or earlier turns it
    # needs the same Input/Answer markers they have, so the model sees where its answer goes.
    parts.append(f"Input: {input_text}\nAnswer:" if exemplars or history else input_text)
    return "\n\n".join(parts)


def encode_source(tokenizer, text: str) -> list[int]:
    """Token ids of a source text, with the family's special tokens (T5: ``… </s>``; BART: ``<s> … </s>``)."""
    return tokenizer(text)["input_ids"]


def encode_target(tokenizer, target: str, decoder_start_token_id: int | None = None) -> list[int]:
    """Token ids the decoder learns and is scored on, ending with the end-of-sequence token.

    A leading ``decoder_start_token_id`` is dropped: the decoder is always fed it first, and a target that repeats
    it (BERT2BERT: [CLS] starts the decoder and the BERT tokenizer starts targets with [CLS]) teaches the model to
    emit it again, which a briefly tuned model then repeats for ever. T5 and BART targets never start with it.
    """
    ids = tokenizer(text_target=target)["input_ids"]
    if decoder_start_token_id is not None and ids[:1] == [decoder_start_token_id]:
        ids = ids[1:]
    if tokenizer.eos_token_id is None:
        raise UserError("this tokenizer has no eos token, so an encoder-decoder answer has no end to learn, score or "
                        "stop at; use the model's own tokenizer")
    if not ids or ids[-1] != tokenizer.eos_token_id:  # a tokenizer that adds no special tokens to targets
        ids = ids + [tokenizer.eos_token_id]
    return ids


@dataclass
class Seq2SeqSources:
    """The rows' source texts within the input budget, and how many inputs had to be cut."""

    texts: list[str]
    truncated_inputs: int
    truncated_exemplar_inputs: int
    shots: list[list[Example]] = field(default_factory=list)  # each row's exemplars, as cut
    inputs: list[str] = field(default_factory=list)  # each row's input, as cut


def build_sources(tokenizer, task: TaskSpec, rows: Sequence[Example], exemplars: Exemplars,
                  max_input_tokens: int) -> Seq2SeqSources:
    """Source texts for ``rows``: every row and exemplar input cut to ``max_input_tokens`` tokens (counted).

    ``exemplars``: shared by every row, or a ``RowExemplars`` (one list per row); each distinct exemplar counts once.
    """
    shots, cut_shots = cut_exemplars(exemplars_per_row(exemplars, len(rows)),
                                     lambda text: truncate_text(tokenizer, text, max_input_tokens))
    texts, cut_rows, inputs = [], 0, []
    for row, row_shots in zip(rows, shots):
        text, cut = truncate_text(tokenizer, row.input, max_input_tokens)
        texts.append(source_text(task, text, row_shots, row.meta))
        inputs.append(text)
        cut_rows += cut
    return Seq2SeqSources(texts, cut_rows, cut_shots, shots, inputs)


@dataclass
class Seq2SeqRow:
    """One training row as encoder and decoder ids, and what had to be cut to fit the budget."""

    source_ids: list[int]
    target_ids: list[int]
    input_truncated: bool
    target_truncated: bool


def encode_training_row(tokenizer, task: TaskSpec, row: Example, max_input_tokens: int,
                        max_seq_len: int, decoder_start_token_id: int | None = None) -> Seq2SeqRow:
    """Encode one training row: the input cut to ``max_input_tokens``, then the source and the target each kept
    within ``max_seq_len`` (the encoder and the decoder are separate sequences)."""
    text, input_cut = truncate_text(tokenizer, row.input, max_input_tokens)
    source = encode_source(tokenizer, source_text(task, text, meta=row.meta))
    over = len(source) - max_seq_len
    if over > 0:  # the instruction and options left too little room: shorten the input further
        n_input = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if n_input <= over:
            raise UserError(f"row {row.id!r}: the instruction alone is {len(source) - n_input} tokens, which leaves "
                            f"no room for the input within budget.max_seq_len={max_seq_len}; raise "
                            "budget.max_seq_len or shorten task.instruction")
        text, _ = truncate_text(tokenizer, text, n_input - over)
        source = encode_source(tokenizer, source_text(task, text, meta=row.meta))
        input_cut = True
        if len(source) > max_seq_len:  # tokens merged differently at the cut: drop the rest, keep the end token
            source = source[: max_seq_len - 1] + source[-1:]
    target = encode_target(tokenizer, row.target, decoder_start_token_id)
    target_cut = len(target) > max_seq_len
    if target_cut:  # keep the answer's start, as the decoder-only path does
        target = target[:max_seq_len]
    return Seq2SeqRow(source, target, input_truncated=input_cut, target_truncated=target_cut)
