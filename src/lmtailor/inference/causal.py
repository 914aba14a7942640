"""The transformers backend's decoder-only path: label likelihood, label-constrained greedy decoding, or free
generation with a causal LM.

Token accounting (``meter.add_tokens("inference", n)``) counts the real tokens fed to the model: prompt tokens
(padding excluded) plus generated or scored answer tokens. In likelihood mode the few-shot prefix shared by every
prompt is computed once and counted once, and the one-row self-check of the prefix cache is counted too: the count
is what the hardware processed, not what a naive implementation would have. With ``calibrate`` the content-free
prompts (``inference/calibration.py``) are counted too: they are part of answering.
"""

from __future__ import annotations

from typing import Sequence

from lmtailor.core.example import Example
from lmtailor.inference.backends.base import Answers, PredictRequest
from lmtailor.inference.calibration import ContentFreePrompts, choose_labels, content_free_prompts
from lmtailor.inference.generation import count_truncated, generate_ids
from lmtailor.inference.hf_rows import constrained_labels, pad_token_id, prepare_inputs, run_rows
from lmtailor.inference.label_scoring import score_labels, score_prompt_groups
from lmtailor.measure.meter import Meter
from lmtailor.prompting.exemplars import shot_count
from lmtailor.prompting.formats import build_messages, encode_prompt, encode_prompt_completion, stop_token_ids


def chat_prompts(tokenizer, request: PredictRequest) -> tuple[list[str], list[list[Example]], list[list[int]], dict]:
    """Cut the inputs to the budget and encode each row's prompt: (row texts, each row's exemplars, prompt ids, the
    details every mode starts from). Shared with llama.cpp, which is fed these same ids."""
    task, rows = request.task, request.rows
    texts, shots, cut_rows, cut_shots = prepare_inputs(tokenizer, task, rows, request.exemplars,
                                                       request.budget.max_input_tokens)
    details: dict = {"mode": request.mode, "rows": len(rows), "shots": shot_count(request.exemplars),
                     "truncated_inputs": cut_rows, "truncated_exemplar_inputs": cut_shots}
    # meta carries a row's own instruction, system text and earlier turns (data.format: alpaca / messages)
    prompts = [encode_prompt(tokenizer, build_messages(task, text, row_shots, row.meta))
               for row, text, row_shots in zip(rows, texts, shots)]
    if prompts:
        details["prompt_tokens"] = {"mean": round(sum(map(len, prompts)) / len(prompts), 1),
                                    "max": max(map(len, prompts))}
    return texts, shots, prompts, details


def label_completion_ids(tokenizer, request: PredictRequest, texts: Sequence[str],
                         shots: Sequence[Sequence[Example]]) -> list[list[int]]:
    """Each label's answer ids. The answer follows the same generation prompt in every row, so its tokens are the
    same for all rows: they are taken after the first row's prompt."""
    first = build_messages(request.task, texts[0], shots[0], request.rows[0].meta)
    return [encode_prompt_completion(tokenizer, first, label)[1] for label in request.task.labels]


def content_free(tokenizer, request: PredictRequest,
                 shots: Sequence[Sequence[Example]]) -> ContentFreePrompts | None:
    """The content-free prompts of ``calibrate`` (each row's instruction and exemplars), or None without it."""
    if not request.calibrate:
        return None
    task, rows = request.task, request.rows
    return content_free_prompts(len(rows), lambda i, text: encode_prompt(
        tokenizer, build_messages(task, text, shots[i], rows[i].meta)))


def causal_generate(model, tokenizer, request: PredictRequest, meter: Meter) -> Answers:
    """Free greedy generation for each row; counts tokens and rows into ``meter``."""
    _, _, prompts, details = chat_prompts(tokenizer, request)
    if not request.rows:
        return [], details
    pad_id = pad_token_id(tokenizer)
    return run_rows(model, request.rows, meter, details, request.progress_desc or str(request.mode),
                    lambda bar: _generate(model, tokenizer, prompts, request.budget, pad_id, bar, details))


def causal_labels(model, tokenizer, request: PredictRequest, meter: Meter) -> Answers:
    """Each row's label by likelihood or constrained decoding (``request.mode``); counts into ``meter``."""
    task, rows, budget = request.task, request.rows, request.budget
    texts, shots, prompts, details = chat_prompts(tokenizer, request)
    if not rows:
        return [], details
    pad_id = pad_token_id(tokenizer)

    def body(bar) -> tuple[list[str], int]:
        label_ids = label_completion_ids(tokenizer, request, texts, shots)
        if request.mode == "constrained":
            return constrained_labels(model, task, prompts, label_ids, budget, pad_id, bar, details)
        return _likelihood(model, task, prompts, label_ids, pad_id, bar, details, request.normalize,
                           budget.eval_batch_size, [row.id for row in rows], content_free(tokenizer, request, shots))

    return run_rows(model, rows, meter, details, request.progress_desc or str(request.mode), body)


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


def _generate(model, tokenizer, prompts, budget, pad_id, bar, details):
    stops = stop_token_ids(tokenizer)
    out = generate_ids(model, prompts, budget.max_new_tokens, stops, pad_id, budget.eval_batch_size,
                       on_batch=bar.update)
    details["truncated_generations"] = count_truncated(out.ids, stops, budget.max_new_tokens)
    texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in out.ids]
    return texts, out.tokens
