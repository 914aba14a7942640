"""The llama.cpp backend's engine: the contract and details of the transformers decoder-only path, another engine.

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

from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from lmtailor.inference.backends.base import Answers, PredictRequest
from lmtailor.inference.calibration import choose_labels
from lmtailor.inference.causal import chat_prompts, content_free, label_completion_ids
from lmtailor.inference.generation import LabelTrie, count_truncated, labels_of_matches
from lmtailor.inference.llamacpp import LlamaCppModel
from lmtailor.measure.meter import Meter, estimate_flops
from lmtailor.prompting.formats import stop_token_ids


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


def llamacpp_generate(model: LlamaCppModel, tokenizer, request: PredictRequest, meter: Meter) -> Answers:
    """Free greedy generation for each row; counts tokens, rows and FLOPs into ``meter``."""
    _, _, prompts, details = chat_prompts(tokenizer, request)
    details.update(model.describe())
    if not request.rows:
        return [], details
    return _counted(model, request, meter, details,
                    lambda bar: _generate(model, tokenizer, prompts, request.budget, bar, details))


def llamacpp_labels(model: LlamaCppModel, tokenizer, request: PredictRequest, meter: Meter) -> Answers:
    """Each row's label by likelihood or constrained decoding (``request.mode``); counts into ``meter``."""
    task, rows = request.task, request.rows
    texts, shots, prompts, details = chat_prompts(tokenizer, request)
    details.update(model.describe())
    if not rows:
        return [], details

    def body(bar) -> list[str]:
        label_ids = label_completion_ids(tokenizer, request, texts, shots)
        if request.mode == "constrained":
            return _constrained(model, task, prompts, label_ids, bar, details)
        return _likelihood(model, task, prompts, label_ids, request.normalize, bar, details,
                           [row.id for row in rows], content_free(tokenizer, request, shots))

    return _counted(model, request, meter, details, body)


def _counted(model: LlamaCppModel, request: PredictRequest, meter: Meter, details: dict,
             body: Callable[[tqdm], list[str]]) -> Answers:
    """Run ``body(bar) -> predictions`` under a progress bar; count what llama.cpp evaluated into ``meter``."""
    start = model.evaluated
    bar = tqdm(total=len(request.rows), desc=request.progress_desc or f"{request.mode} (llama.cpp)", unit="row")
    try:
        predictions = body(bar)
    finally:
        bar.close()
    tokens = model.evaluated - start
    meter.add_tokens("inference", tokens)
    meter.add_examples("inference", len(request.rows))
    meter.add_flops("inference", estimate_flops(model.n_params, tokens, "inference"))
    details["tokens"] = tokens
    if "label_scores" in details:  # keyed by row id, as the transformers backend does
        details["label_scores"] = dict(zip((row.id for row in request.rows), details["label_scores"]))
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
