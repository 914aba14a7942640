"""What the decoder-only and encoder-decoder paths of the transformers backend share (llama.cpp reuses the input
cut): cutting inputs to the budget, the pad id, running rows in eval mode under a progress bar, and label-constrained
greedy decoding."""

from __future__ import annotations

from typing import Callable, Sequence

from tqdm.auto import tqdm

from lmtailor.core.budget import Budget
from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.inference.generation import LabelTrie, generate_ids, labels_of_matches
from lmtailor.measure.meter import Meter
from lmtailor.prompting.exemplars import Exemplars, cut_exemplars, exemplars_per_row
from lmtailor.prompting.formats import truncate_text


def prepare_inputs(tokenizer, task: TaskSpec, rows: Sequence[Example], exemplars: Exemplars,
             max_input_tokens: int) -> tuple[list[str], list[list[Example]], int, int]:
    """Cut row and exemplar inputs to the budget; return (row texts, each row's exemplars, rows cut, exemplars cut).

    ``exemplars``: shared by every row, or a ``RowExemplars`` (one list per row); each distinct exemplar counts once.
    """
    texts, cut_rows = [], 0
    for row in rows:
        text, cut = truncate_text(tokenizer, row.input, max_input_tokens)
        texts.append(text)
        cut_rows += cut
    shots, cut_shots = cut_exemplars(exemplars_per_row(exemplars, len(rows)),
                                     lambda text: truncate_text(tokenizer, text, max_input_tokens))
    return texts, shots, cut_rows, cut_shots


def pad_token_id(tokenizer) -> int:
    """The id batches are padded with: the pad token, else eos."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def run_rows(model, rows: Sequence[Example], meter: Meter, details: dict, desc: str,
             body: Callable[[tqdm], tuple[list[str], int]]) -> tuple[list[str], dict]:
    """Run ``body(bar) -> (predictions, tokens)`` in eval mode under a progress bar; count it into ``meter``."""
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(rows), desc=desc, unit="row")
    try:
        predictions, tokens = body(bar)
    finally:
        bar.close()
        model.train(was_training)
    meter.count_inference(model, tokens, len(rows))
    details["tokens"] = tokens
    if "label_scores" in details:  # keyed by row id, so a reader can line them up with predictions.jsonl
        details["label_scores"] = dict(zip((row.id for row in rows), details["label_scores"]))
    return predictions, details


def constrained_labels(model, task: TaskSpec, prompts: Sequence[Sequence[int]], label_ids: Sequence[Sequence[int]],
                       budget: Budget, pad_id: int, bar, details: dict) -> tuple[list[str], int]:
    """Greedy decoding limited to the label sequences (any model family); returns (labels, tokens)."""
    trie = LabelTrie(label_ids)
    stops = sorted({ids[-1] for ids in label_ids})
    out = generate_ids(model, prompts, max(map(len, label_ids)), stops, pad_id, budget.eval_batch_size, trie=trie,
                       on_batch=bar.update)
    # A miss means decoding stopped on a stop token inside a label (one label's last token is another's middle
    # one): the answer names no label, and is scored wrong (generation.NO_LABEL), never taken for label 0.
    predictions, details["no_label_match"] = labels_of_matches([trie.match(ids) for ids in out.ids], task.labels)
    return predictions, out.tokens
