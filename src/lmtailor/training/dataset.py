"""Turn task rows into the pre-tokenized prompt/completion dataset that TRL's ``SFTTrainer`` trains on.

Rows are rendered with the same ``build_messages`` / ``encode_prompt_completion`` that inference uses, in the
task's instruction format (``TaskSpec.prompt_format``: chat, alpaca or plain) and with the row's own instruction or
earlier turns when it has them, so the tuned model sees at test time exactly the tokens it was trained on. Each row
becomes ``input_ids`` plus a ``completion_mask`` (1 on the answer tokens); ``SFTTrainer`` folds the mask into
``labels`` (-100 on the prompt) when ``completion_only_loss`` is on, and trains on every token when it is off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from datasets import Dataset

from lmtailor.core.budget import Budget
from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.errors import UserError
from lmtailor.prompting.formats import build_messages, encode_prompt_completion, truncate_text


@dataclass
class EncodedRow:
    """One training row as token ids, and what had to be cut to fit the budget."""

    prompt_ids: list[int]
    completion_ids: list[int]
    input_truncated: bool
    target_truncated: bool

    def as_record(self) -> dict:
        ids = self.prompt_ids + self.completion_ids
        return {"input_ids": ids, "completion_mask": [0] * len(self.prompt_ids) + [1] * len(self.completion_ids)}


@dataclass
class SFTRows:
    """A tokenized split, with counts the run record reports."""

    dataset: Dataset | None
    rows: int
    tokens: int
    truncated_inputs: int
    truncated_targets: int

    def summary(self) -> dict:
        return {"rows": self.rows, "tokens": self.tokens, "truncated_inputs": self.truncated_inputs,
                "truncated_targets": self.truncated_targets}


def _encode(tokenizer, task: TaskSpec, row: Example, text: str) -> tuple[list[int], list[int]]:
    return encode_prompt_completion(tokenizer, build_messages(task, text, meta=row.meta), row.target)


def encode_row(tokenizer, task: TaskSpec, row: Example, budget: Budget) -> EncodedRow:
    """Encode one row within ``budget``: the input is cut first, so the whole answer is learnt whenever it fits."""
    text, input_cut = truncate_text(tokenizer, row.input, budget.max_input_tokens)
    prompt, completion = _encode(tokenizer, task, row, text)
    over = len(prompt) + len(completion) - budget.max_seq_len
    if over > 0:  # the instruction and template overhead left too little room: shorten the input further
        n_input = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if n_input > over:
            text, _ = truncate_text(tokenizer, text, n_input - over)
            prompt, completion = _encode(tokenizer, task, row, text)
            input_cut = True
    over = len(prompt) + len(completion) - budget.max_seq_len
    target_cut = over > 0
    if target_cut:  # the answer itself is too long: keep its start, as TRL's keep_start truncation would
        completion = completion[: len(completion) - over]
    if not completion:
        raise UserError(
            f"row {row.id!r}: the prompt alone is {len(prompt)} tokens, which leaves no room for the answer within "
            f"budget.max_seq_len={budget.max_seq_len}; raise budget.max_seq_len or shorten the instruction (or the "
            "row's earlier turns)")
    return EncodedRow(prompt, completion, input_cut, target_cut)


def build_sft_rows(tokenizer, task: TaskSpec, rows: Sequence[Example], budget: Budget) -> SFTRows:
    """Encode ``rows`` into a ``datasets.Dataset`` with ``input_ids`` and ``completion_mask`` columns."""
    encoded = [encode_row(tokenizer, task, row, budget) for row in rows]
    records = [e.as_record() for e in encoded]
    return SFTRows(
        dataset=Dataset.from_list(records) if records else None,
        rows=len(records),
        tokens=sum(len(r["input_ids"]) for r in records),
        truncated_inputs=sum(e.input_truncated for e in encoded),
        truncated_targets=sum(e.target_truncated for e in encoded),
    )
