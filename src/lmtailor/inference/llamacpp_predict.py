"""Predict test rows through llama.cpp: the contract and details of ``inference/predict.predict``, another engine.

The prompts and label ids are lmtailor's (the Hugging Face tokenizer's), so both engines see the same tokens:

- ``generate``: greedy decoding until a stop token of the chat format (or ``max_new_tokens``).
- ``likelihood``: each label's completion ids (label, then end of turn) scored by summed (or mean) token
  log-probability. The prompt is evaluated once per row; each label token after the first costs one
  single-token decode on top of the cached prompt and label prefix (labels sharing leading tokens share them).
- ``constrained``: greedy decoding where each step may only take a token that continues some label (the label trie
  of the transformers path).

Rows run one after another in one llama.cpp sequence; consecutive prompts share the few-shot prefix in its cache.
Token accounting counts the tokens llama.cpp evaluated (cache hits excluded), like predict() counts what the
hardware processed; FLOPs are 2·N per token with N the GGUF's parameter count.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from lmtailor.core.budget import Budget
from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.inference.calibration import check_calibration, choose_labels, content_free_prompts
from lmtailor.inference.generation import LabelTrie, count_truncated, labels_of_matches
from lmtailor.inference.llamacpp import LlamaCppModel
from lmtailor.inference.predict import Mode, check_mode, default_mode, prepare_inputs
from lmtailor.measure.meter import Meter, estimate_flops
from lmtailor.prompting.exemplars import Exemplars, shot_count
from lmtailor.prompting.formats import build_messages, encode_prompt, encode_prompt_completion, stop_token_ids


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities from logits, in float64 (llama.cpp's logits are float32)."""
    x = logits.astype(np.float64)
    x -= x.max()
    return x - np.log(np.exp(x).sum())


def label_logps(model: LlamaCppModel, prompt: Sequence[int], labels: Sequence[Sequence[int]]) -> list[list[float]]:
    """Per-token log-probs of each label's ids after ``prompt``."""
    first = log_softmax(model.logits_after(prompt))
    out = []
    for lab in labels:
        logps = [float(first[lab[0]])]
        for j in range(1, len(lab)):
            logps.append(float(log_softmax(model.logits_after(list(prompt) + list(lab[:j])))[lab[j]]))
        out.append(logps)
    return out


def predict_llamacpp(model: LlamaCppModel, tokenizer, task: TaskSpec, rows: Sequence[Example],
                     exemplars: Exemplars, budget: Budget, meter: Meter, mode: Mode | None = None,
                     progress_desc: str = "", normalize: bool = False,
                     calibrate: bool = False) -> tuple[list[str], dict]:
    """Return a prediction per row (aligned with ``rows``) and details; counts tokens, rows and FLOPs into ``meter``.

    ``exemplars``: shared, or a ``RowExemplars``; ``calibrate`` as for ``predict`` (likelihood mode)."""
    mode = mode or default_mode(task)
    check_mode(task, mode)
    if calibrate:
        check_calibration(mode)
    texts, shots, cut_rows, cut_shots = prepare_inputs(tokenizer, task, rows, exemplars, budget.max_input_tokens)
    details: dict = {"mode": mode, "rows": len(rows), "shots": shot_count(exemplars), "truncated_inputs": cut_rows,
                     "truncated_exemplar_inputs": cut_shots, **model.describe()}
    if not rows:
        return [], details
    prompts = [encode_prompt(tokenizer, build_messages(task, text, row_shots, row.meta))
               for row, text, row_shots in zip(rows, texts, shots)]
    details["prompt_tokens"] = {"mean": round(sum(map(len, prompts)) / len(prompts), 1), "max": max(map(len, prompts))}
    start = model.evaluated
    bar = tqdm(total=len(rows), desc=progress_desc or f"{mode} (llama.cpp)", unit="row")
    try:
        if mode == "generate":
            predictions = _generate(model, tokenizer, prompts, budget, bar, details)
        else:
            first = build_messages(task, texts[0], shots[0], rows[0].meta)
            label_ids = [encode_prompt_completion(tokenizer, first, label)[1] for label in task.labels]
            if mode == "likelihood":
                cf = content_free_prompts(len(rows), lambda i, text: encode_prompt(
                    tokenizer, build_messages(task, text, shots[i], rows[i].meta))) if calibrate else None
                predictions = _likelihood(model, task, prompts, label_ids, normalize, bar, details,
                                          [row.id for row in rows], cf)
            else:
                predictions = _constrained(model, task, prompts, label_ids, bar, details)
    finally:
        bar.close()
    tokens = model.evaluated - start
    meter.add_tokens("inference", tokens)
    meter.add_examples("inference", len(rows))
    meter.add_flops("inference", estimate_flops(model.n_params, tokens, "inference"))
    details["tokens"] = tokens
    if "label_scores" in details:  # keyed by row id, like predict()
        details["label_scores"] = dict(zip((row.id for row in rows), details["label_scores"]))
    return predictions, details


def _scores(model, prompts, label_ids, normalize, on_row=None) -> list[list[float]]:
    scores = []
    for prompt in prompts:
        logps = label_logps(model, prompt, label_ids)
        scores.append([sum(lp) / len(lp) if normalize else sum(lp) for lp in logps])
        if on_row:
            on_row()
    return scores


def _likelihood(model, task, prompts, label_ids, normalize, bar, details, row_ids=(), cf=None) -> list[str]:
    scores = _scores(model, prompts, label_ids, normalize, lambda: bar.update(1))
    details.update({"labels": list(task.labels), "score": "mean token log-prob" if normalize else "sum of token "
                    "log-probs", "scoring_path": "llamacpp-kv-prefix", "notes": [],
                    "label_scores": [[round(x, 4) for x in row] for row in scores]})
    if cf is None:
        return choose_labels(task.labels, row_ids, scores, details)
    # content-free prompts: their tokens are counted with the rows' (model.evaluated covers both); a row's
    # variants follow one another, so llama.cpp's cache keeps their shared instruction and exemplars
    start = model.evaluated
    cf_scores = cf.score_grouped(lambda groups: _scores(model, [p for g in groups for p in g], label_ids, normalize))
    predictions = choose_labels(task.labels, row_ids, scores, details, cf, cf_scores)
    details["calibration"]["tokens"] = model.evaluated - start
    return predictions


def _constrained(model, task, prompts, label_ids, bar, details) -> list[str]:
    trie = LabelTrie(label_ids)
    stops = sorted({ids[-1] for ids in label_ids})
    longest = max(map(len, label_ids))
    matches = []
    for prompt in prompts:
        matches.append(trie.match(model.greedy(prompt, longest, stops, allowed=trie.allowed)))
        bar.update(1)
    # as in predict(): a miss stopped inside a label, names none, and is scored wrong
    predictions, details["no_label_match"] = labels_of_matches(matches, task.labels)
    return predictions


def _generate(model, tokenizer, prompts, budget, bar, details) -> list[str]:
    stops = stop_token_ids(tokenizer)
    answers = []
    for prompt in prompts:
        answers.append(model.greedy(prompt, budget.max_new_tokens, stops))
        bar.update(1)
    details["truncated_generations"] = count_truncated(answers, stops, budget.max_new_tokens)
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in answers]
