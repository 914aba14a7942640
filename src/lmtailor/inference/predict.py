"""Predict the test rows with a causal LM: label likelihood, label-constrained greedy decoding, or free generation.

Token accounting (``meter.add_tokens("inference", n)``) counts the real tokens fed to the model: prompt tokens
(padding excluded) plus generated or scored answer tokens. In likelihood mode the few-shot prefix shared by every
prompt is computed once and counted once, and the one-row self-check of the prefix cache is counted too: the count
is what the hardware processed, not what a naive implementation would have. With ``calibrate`` the content-free
prompts (``inference/calibration.py``) are counted too: they are part of answering.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

from tqdm.auto import tqdm

from lmtailor.core.budget import Budget
from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.errors import UserError
from lmtailor.inference.calibration import check_calibration, choose_labels, content_free_prompts
from lmtailor.inference.generation import LabelTrie, count_truncated, generate_ids, labels_of_matches
from lmtailor.inference.label_scoring import score_labels, score_prompt_groups
from lmtailor.measure.meter import Meter
from lmtailor.prompting.exemplars import Exemplars, cut_exemplars, exemplars_per_row, shot_count
from lmtailor.prompting.formats import (build_messages, encode_prompt, encode_prompt_completion, stop_token_ids,
                                        truncate_text)

Mode = Literal["likelihood", "constrained", "generate"]
MODES: tuple[str, ...] = ("likelihood", "constrained", "generate")


def default_mode(task: TaskSpec) -> Mode:
    """Likelihood scoring for classification, free generation otherwise."""
    return "likelihood" if task.type == "classification" else "generate"


def check_mode(task: TaskSpec, mode: str) -> None:
    """Refuse an unknown scoring mode, or a label mode on a task without labels."""
    if mode not in MODES:
        raise UserError(f"unknown scoring mode {mode!r}; use one of {', '.join(MODES)}")
    if mode != "generate" and not task.labels:
        raise UserError(f"scoring mode {mode!r} chooses among the task's labels, but task {task.name!r} "
                        f"({task.type}) has none; use scoring: generate")


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


def predict(model, tokenizer, task: TaskSpec, rows: Sequence[Example], exemplars: Exemplars, budget: Budget,
            meter: Meter, mode: Mode | None = None, progress_desc: str = "",
            normalize: bool = False, calibrate: bool = False) -> tuple[list[str], dict]:
    """Return a prediction per row (aligned with ``rows``) and details; counts tokens and rows into ``meter``.

    ``exemplars`` are shown before every row, or per row (a ``RowExemplars``). ``normalize`` (likelihood mode) ranks
    labels by mean instead of summed token log-probability; ``calibrate`` (likelihood mode) divides out the labels'
    prior measured on content-free inputs (``inference/calibration.py``).
    """
    if getattr(model.config, "is_encoder_decoder", False):  # T5, BART: the family's own format and decoding
        from lmtailor.inference.seq2seq import predict_seq2seq

        return predict_seq2seq(model, tokenizer, task, rows, exemplars, budget, meter, mode=mode,
                               progress_desc=progress_desc, normalize=normalize, calibrate=calibrate)
    mode = mode or default_mode(task)
    check_mode(task, mode)
    if calibrate:
        check_calibration(mode)
    texts, shots, cut_rows, cut_shots = prepare_inputs(tokenizer, task, rows, exemplars, budget.max_input_tokens)
    details: dict = {"mode": mode, "rows": len(rows), "shots": shot_count(exemplars), "truncated_inputs": cut_rows,
                     "truncated_exemplar_inputs": cut_shots}
    if not rows:
        return [], details
    # meta carries a row's own instruction, system text and earlier turns (data.format: alpaca / messages)
    prompts = [encode_prompt(tokenizer, build_messages(task, text, row_shots, row.meta))
               for row, text, row_shots in zip(rows, texts, shots)]
    details["prompt_tokens"] = {"mean": round(sum(map(len, prompts)) / len(prompts), 1), "max": max(map(len, prompts))}
    pad_id = pad_token_id(tokenizer)

    def body(bar) -> tuple[list[str], int]:
        if mode == "generate":
            return _generate(model, tokenizer, prompts, budget, pad_id, bar, details)
        # The answer follows the same generation prompt in every row, so its tokens are the same for all rows.
        first = build_messages(task, texts[0], shots[0], rows[0].meta)
        label_ids = [encode_prompt_completion(tokenizer, first, label)[1] for label in task.labels]
        if mode == "likelihood":
            cf = content_free_prompts(len(rows), lambda i, text: encode_prompt(
                tokenizer, build_messages(task, text, shots[i], rows[i].meta))) if calibrate else None
            return _likelihood(model, task, prompts, label_ids, pad_id, bar, details, normalize,
                               budget.eval_batch_size, [row.id for row in rows], cf)
        return constrained_labels(model, task, prompts, label_ids, budget, pad_id, bar, details)

    return run_rows(model, rows, meter, details, progress_desc or mode, body)


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


def _likelihood(model, task, prompts, label_ids, pad_id, bar, details, normalize, batch_size: int = 8,
                row_ids: Sequence[str] = (), cf=None):
    result = score_labels(model, prompts, label_ids, pad_id, normalize=normalize, on_row=lambda: bar.update(1),
                          batch_size=batch_size)
    details.update({"labels": list(task.labels), "score": "mean token log-prob" if normalize else "sum of token "
                    "log-probs", "prefix_cache_tokens": result.prefix_len, "scoring_path": result.path,
                    "notes": result.notes, "cache_check": result.check,
                    "label_scores": [[round(x, 4) for x in row] for row in result.scores]})
    if cf is None:
        return choose_labels(task.labels, row_ids, result.scores, details), result.tokens
    # The content-free prompts, scored the same way; each prompt's variants share its instruction and exemplars.
    spent = []

    def score_groups(groups):
        spent.append(score_prompt_groups(model, groups, label_ids, pad_id, normalize=normalize,
                                         batch_size=batch_size))
        return spent[-1].scores

    cf_scores = cf.score_grouped(score_groups)
    predictions = choose_labels(task.labels, row_ids, result.scores, details, cf, cf_scores)
    details["notes"] = details["notes"] + spent[0].notes
    details["calibration"]["tokens"] = spent[0].tokens  # inference cost: counted with the rows' tokens
    return predictions, result.tokens + spent[0].tokens


def constrained_labels(model, task: TaskSpec, prompts, label_ids, budget: Budget, pad_id: int, bar,
                       details: dict) -> tuple[list[str], int]:
    """Greedy decoding limited to the label sequences (any model family); returns (labels, tokens)."""
    trie = LabelTrie(label_ids)
    stops = sorted({ids[-1] for ids in label_ids})
    out = generate_ids(model, prompts, max(map(len, label_ids)), stops, pad_id, budget.eval_batch_size, trie=trie,
                       on_batch=bar.update)
    # A miss means decoding stopped on a stop token inside a label (one label's last token is another's middle
    # one): the answer names no label, and is scored wrong (generation.NO_LABEL), never taken for label 0.
    predictions, details["no_label_match"] = labels_of_matches([trie.match(ids) for ids in out.ids], task.labels)
    return predictions, out.tokens


def _generate(model, tokenizer, prompts, budget, pad_id, bar, details):
    stops = stop_token_ids(tokenizer)
    out = generate_ids(model, prompts, budget.max_new_tokens, stops, pad_id, budget.eval_batch_size,
                       on_batch=bar.update)
    details["truncated_generations"] = count_truncated(out.ids, stops, budget.max_new_tokens)
    texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in out.ids]
    return texts, out.tokens
