"""Predict the test rows with an encoder-decoder model (T5, Flan-T5, BART): label likelihood, label-constrained
greedy decoding, or free generation; the same contract and token accounting as ``inference.predict.predict``.

Token accounting (``meter.add_tokens("inference", n)``) counts the real tokens fed to the model: source tokens
(padding excluded) into the encoder, plus the tokens the decoder reads (decoder start + answer minus its last
token, i.e. as many as the answer has). In likelihood mode the encoder runs once per row, however many labels.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from lmtailor.data.example import Example
from lmtailor.data.seq2seq_format import build_sources, encode_source, encode_target
from lmtailor.errors import UserError
from lmtailor.inference.generation import Generated, LabelTrie
from lmtailor.inference.label_scoring import LabelScores
from lmtailor.inference.predict import MODES, Mode, default_mode
from lmtailor.measure.meter import Meter
from lmtailor.strategies.base import Budget
from lmtailor.tasks.base import TaskSpec


def _check(model, task: TaskSpec, mode: str) -> None:
    if mode not in MODES:
        raise UserError(f"unknown scoring mode {mode!r}; use one of {', '.join(MODES)}")
    if mode != "generate" and not task.labels:
        raise UserError(f"scoring mode {mode!r} chooses among the task's labels, but task {task.name!r} "
                        f"({task.type}) has none; use scoring: generate")
    if not getattr(model.config, "is_encoder_decoder", False):
        raise UserError(f"{type(model).__name__} is not an encoder-decoder model; predict it with "
                        "lmtailor.inference.predict.predict")


def predict_seq2seq(model, tokenizer, task: TaskSpec, rows: Sequence[Example], exemplars: Sequence[Example],
                    budget: Budget, meter: Meter, mode: Mode | None = None, progress_desc: str = "",
                    normalize: bool = False) -> tuple[list[str], dict]:
    """Return a prediction per row (aligned with ``rows``) and details; counts tokens and rows into ``meter``.

    Exemplars go into each row's source text (few-shot in the input). ``normalize`` (likelihood mode) ranks labels
    by mean instead of summed token log-probability.
    """
    mode = mode or default_mode(task)
    _check(model, task, mode)
    sources = build_sources(tokenizer, task, rows, exemplars, budget.max_input_tokens)
    details: dict = {"mode": mode, "rows": len(rows), "shots": len(exemplars),
                     "truncated_inputs": sources.truncated_inputs,
                     "truncated_exemplar_inputs": sources.truncated_exemplar_inputs}
    if not rows:
        return [], details
    encoded = [encode_source(tokenizer, text) for text in sources.texts]
    details["prompt_tokens"] = {"mean": round(sum(map(len, encoded)) / len(encoded), 1), "max": max(map(len, encoded))}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(rows), desc=progress_desc or mode, unit="row")
    try:
        if mode == "generate":
            predictions, tokens = _generate(model, tokenizer, encoded, budget, pad_id, bar, details)
        else:
            label_ids = [encode_target(tokenizer, label) for label in task.labels]
            if mode == "likelihood":
                predictions, tokens = _likelihood(model, task, encoded, label_ids, pad_id, bar, details, normalize)
            else:
                predictions, tokens = _constrained(model, task, encoded, label_ids, budget, pad_id, bar, details)
    finally:
        bar.close()
        model.train(was_training)
    meter.count_inference(model, tokens, len(rows))
    details["tokens"] = tokens
    if "label_scores" in details:  # keyed by row id, so a reader can line them up with predictions.jsonl
        details["label_scores"] = dict(zip((row.id for row in rows), details["label_scores"]))
    return predictions, details


def _likelihood(model, task, sources, label_ids, pad_id, bar, details, normalize):
    result = score_labels_seq2seq(model, sources, label_ids, pad_id, normalize=normalize,
                                  on_row=lambda: bar.update(1))
    details.update({"labels": list(task.labels), "score": "mean token log-prob" if normalize else "sum of token "
                    "log-probs", "scoring_path": result.path,
                    "label_scores": [[round(x, 4) for x in row] for row in result.scores]})
    return [task.labels[i] for i in result.best()], result.tokens


def _constrained(model, task, sources, label_ids, budget, pad_id, bar, details):
    trie = LabelTrie(label_ids)
    stops = sorted({ids[-1] for ids in label_ids})
    out = generate_seq2seq_ids(model, sources, max(map(len, label_ids)), stops, pad_id, budget.eval_batch_size,
                               trie=trie, on_batch=bar.update)
    matches = [trie.match(ids) for ids in out.ids]
    # Every path through the tree ends in a label, so a miss means generation stopped early: say so, pick label 0.
    details["unmatched"] = sum(m is None for m in matches)
    return [task.labels[m if m is not None else 0] for m in matches], out.tokens


def _generate(model, tokenizer, sources, budget, pad_id, bar, details):
    stops = [tokenizer.eos_token_id]
    out = generate_seq2seq_ids(model, sources, budget.max_new_tokens, stops, pad_id, budget.eval_batch_size,
                               on_batch=bar.update)
    # BART forces eos at the length limit, so a cut-off answer may still end with eos: count by length too.
    details["hit_max_new_tokens"] = sum(not ids or ids[-1] not in stops or len(ids) >= budget.max_new_tokens
                                        for ids in out.ids)
    texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in out.ids]
    return texts, out.tokens


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _pad_right(seqs: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    # Right padding for the encoder: BART's learned absolute positions would shift under left padding.
    width = max(len(s) for s in seqs)
    ids = torch.tensor([list(s) + [pad_id] * (width - len(s)) for s in seqs], device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
    return ids, mask


@torch.no_grad()
def score_labels_seq2seq(model, sources: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_id: int,
                         normalize: bool = False, on_row: Callable[[], None] | None = None) -> LabelScores:
    """Score each label's target ids given each source: the encoder runs once per row, then one decoder forward
    over all labels (the encoder states expanded to the label batch). Sum of token log-probs incl. eos (mean if
    ``normalize``)."""
    from transformers.modeling_outputs import BaseModelOutput

    if not labels or any(len(lab) == 0 for lab in labels):
        raise ValueError("every label needs at least one target token")
    device = _device(model)
    # -100 marks padding in labels; the model's own shift turns the labels into decoder inputs (start token first).
    label_batch, _ = _pad_right(labels, -100, device)
    decoder_inputs = model.prepare_decoder_input_ids_from_labels(labels=label_batch)
    result = LabelScores([], path="encoder-once")
    n = len(labels)
    for source in sources:
        ids = torch.tensor([list(source)], device=device)
        mask = torch.ones_like(ids)
        hidden = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        out = model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden.expand(n, -1, -1)),
                    attention_mask=mask.expand(n, -1), decoder_input_ids=decoder_inputs, use_cache=False)
        lp = torch.log_softmax(out.logits.float(), dim=-1)
        logps = [[lp[i, j, t].item() for j, t in enumerate(lab)] for i, lab in enumerate(labels)]
        result.scores.append([sum(x) / len(x) if normalize else sum(x) for x in logps])
        result.tokens += len(source) + sum(len(lab) for lab in labels)
        if on_row:
            on_row()
    return result


def _strip(new_ids: list[int], stop_ids: Sequence[int]) -> list[int]:
    """Cut a generated row after its first stop token (what follows is padding)."""
    for i, t in enumerate(new_ids):
        if t in stop_ids:
            return new_ids[: i + 1]
    return new_ids


@torch.no_grad()
def generate_seq2seq_ids(model, sources: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: Sequence[int],
                         pad_id: int, batch_size: int = 8, trie: LabelTrie | None = None,
                         on_batch: Callable[[int], None] | None = None) -> Generated:
    """Greedy-decode each source (only along ``trie`` when given) in right-padded batches of ``batch_size``.

    Returned ids are the answer tokens (decoder start token removed, stop token kept)."""
    from transformers import GenerationConfig

    device = _device(model)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=list(stop_ids), pad_token_id=pad_id)
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))  # similar lengths: little padding
    results: list[list[int]] = [[] for _ in sources]
    tokens = 0
    allowed_fn = None
    if trie is not None:
        # The decoder's sequence starts with its start token; finished or off-tree rows may only stop.
        allowed_fn = lambda _, seq: trie.allowed(seq[1:].tolist()) or list(stop_ids)  # noqa: E731
    for start in range(0, len(order), batch_size):
        batch = order[start: start + batch_size]
        ids, mask = _pad_right([sources[i] for i in batch], pad_id, device)
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                             prefix_allowed_tokens_fn=allowed_fn)
        for row, i in enumerate(batch):
            results[i] = _strip(out[row, 1:].tolist(), stop_ids)
            tokens += len(sources[i]) + len(results[i])
        if on_batch:
            on_batch(len(batch))
    return Generated(results, tokens)
