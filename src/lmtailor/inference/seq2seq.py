"""The transformers backend's encoder-decoder path (T5, Flan-T5, BART): label likelihood, label-constrained greedy
decoding, or free generation; the same contract and token accounting as the decoder-only path (``causal.py``).

Token accounting (``meter.add_tokens("inference", n)``) counts the real tokens fed to the model: source tokens
(padding excluded) into the encoder, plus the tokens the decoder reads (decoder start + answer minus its last
token, i.e. as many as the answer has). In likelihood mode the encoder runs once per row, however many labels.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from lmtailor.errors import UserError
from lmtailor.inference.backends.base import Answers, PredictRequest
from lmtailor.inference.calibration import choose_labels, content_free_prompts
from lmtailor.inference.generation import count_truncated, generate_ids, pad_batch
from lmtailor.inference.hf_rows import constrained_labels, pad_token_id, run_rows
from lmtailor.inference.label_scoring import LabelScores
from lmtailor.measure.meter import Meter
from lmtailor.models.families import model_family
from lmtailor.prompting.exemplars import shot_count
from lmtailor.prompting.seq2seq_format import build_sources, encode_source, encode_target, source_text


def _sources(model, tokenizer, request: PredictRequest):
    """Each row's source text (few-shot in the input), encoded; and the details every mode starts from."""
    if not model_family(model).seq2seq:
        raise UserError(f"{type(model).__name__} is not an encoder-decoder model; its predictor routes it to the "
                        "decoder-only path (inference/backends/transformers.py)")
    rows = request.rows
    sources = build_sources(tokenizer, request.task, rows, request.exemplars, request.budget.max_input_tokens)
    details: dict = {"mode": request.mode, "rows": len(rows), "shots": shot_count(request.exemplars),
                     "truncated_inputs": sources.truncated_inputs,
                     "truncated_exemplar_inputs": sources.truncated_exemplar_inputs}
    encoded = [encode_source(tokenizer, text) for text in sources.texts]
    if encoded:
        details["prompt_tokens"] = {"mean": round(sum(map(len, encoded)) / len(encoded), 1),
                                    "max": max(map(len, encoded))}
    return sources, encoded, details


def seq2seq_generate(model, tokenizer, request: PredictRequest, meter: Meter) -> Answers:
    """Free greedy generation for each row; counts tokens and rows into ``meter``."""
    _, encoded, details = _sources(model, tokenizer, request)
    if not request.rows:
        return [], details
    pad_id = pad_token_id(tokenizer)
    return run_rows(model, request.rows, meter, details, request.progress_desc or str(request.mode),
                    lambda bar: _generate(model, tokenizer, encoded, request.budget, pad_id, bar, details))


def seq2seq_labels(model, tokenizer, request: PredictRequest, meter: Meter) -> Answers:
    """Each row's label by likelihood or constrained decoding (``request.mode``); counts into ``meter``.

    ``calibrate`` scores content-free sources with each row's instruction and exemplars (``inference/calibration.py``).
    """
    task, rows = request.task, request.rows
    sources, encoded, details = _sources(model, tokenizer, request)
    if not rows:
        return [], details
    pad_id = pad_token_id(tokenizer)

    def body(bar) -> tuple[list[str], int]:
        start = model.config.decoder_start_token_id
        label_ids = [encode_target(tokenizer, label, start) for label in task.labels]
        if request.mode == "constrained":
            return constrained_labels(model, task, encoded, label_ids, request.budget, pad_id, bar, details)
        cf = content_free_prompts(len(rows), lambda i, text: encode_source(tokenizer, source_text(
            task, text, sources.shots[i], rows[i].meta))) if request.calibrate else None
        return _likelihood(model, task, encoded, label_ids, pad_id, bar, details, request.normalize,
                           [row.id for row in rows], cf)

    return run_rows(model, rows, meter, details, request.progress_desc or str(request.mode), body)


def _likelihood(model, task, sources, label_ids, pad_id, bar, details, normalize, row_ids=(), cf=None):
    result = score_labels_seq2seq(model, sources, label_ids, pad_id, normalize=normalize,
                                  on_row=lambda: bar.update(1))
    details.update({"labels": list(task.labels), "score": "mean token log-prob" if normalize else "sum of token "
                    "log-probs", "scoring_path": result.path,
                    "label_scores": [[round(x, 4) for x in row] for row in result.scores]})
    if cf is None:
        return choose_labels(task.labels, row_ids, result.scores, details), result.tokens
    scored = score_labels_seq2seq(model, cf.prompts, label_ids, pad_id, normalize=normalize)  # the same way
    predictions = choose_labels(task.labels, row_ids, result.scores, details, cf, scored.scores)
    details["calibration"]["tokens"] = scored.tokens  # inference cost: counted with the rows' tokens
    return predictions, result.tokens + scored.tokens


def _generate(model, tokenizer, sources, budget, pad_id, bar, details):
    stops = [tokenizer.eos_token_id]
    out = generate_ids(model, sources, budget.max_new_tokens, stops, pad_id, budget.eval_batch_size,
                               on_batch=bar.update)
    # BART forces eos at the length limit, so a cut-off answer may still end with eos: count by length too.
    details["truncated_generations"] = count_truncated(out.ids, stops, budget.max_new_tokens,
                                                       stop_forced_at_limit=True)
    texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in out.ids]
    return texts, out.tokens


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _is_prompt_learning(model) -> bool:
    config = getattr(model, "active_peft_config", None)
    return config is not None and config.is_prompt_learning


@torch.no_grad()
def score_labels_seq2seq(model, sources: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_id: int,
                         normalize: bool = False, on_row: Callable[[], None] | None = None) -> LabelScores:
    """Score each label's target ids given each source: the encoder runs once per row, then one decoder forward
    over all labels (the encoder states expanded to the label batch; a prompt-tuned PeftModel runs whole). Sum of
    token log-probs incl. eos (mean if ``normalize``)."""
    from transformers.modeling_outputs import BaseModelOutput

    if not labels or any(len(lab) == 0 for lab in labels):
        raise ValueError("every label needs at least one target token")
    device = _device(model)
    # -100 marks padding in labels; the model's own shift turns the labels into decoder inputs (start token first).
    label_batch, _ = pad_batch(labels, -100, device)
    decoder_inputs = model.prepare_decoder_input_ids_from_labels(labels=label_batch)
    # A prompt-tuned PeftModel prepends its virtual tokens inside its own forward, which calling the encoder
    # directly would skip: it runs whole, the encoder once per label.
    whole = _is_prompt_learning(model)
    result = LabelScores([], path="full-forward" if whole else "encoder-once")
    n = len(labels)
    for source in sources:
        ids = torch.tensor([list(source)], device=device)
        mask = torch.ones_like(ids)
        if whole:
            out = model(input_ids=ids.expand(n, -1), attention_mask=mask.expand(n, -1),
                        decoder_input_ids=decoder_inputs, use_cache=False)
        else:
            hidden = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
            out = model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden.expand(n, -1, -1)),
                        attention_mask=mask.expand(n, -1), decoder_input_ids=decoder_inputs, use_cache=False)
        lp = torch.log_softmax(out.logits.float(), dim=-1)
        logps = [[lp[i, j, t].item() for j, t in enumerate(lab)] for i, lab in enumerate(labels)]
        result.scores.append([sum(x) / len(x) if normalize else sum(x) for x in logps])
        encoded = n * (len(source) + model.active_peft_config.num_virtual_tokens) if whole else len(source)
        result.tokens += encoded + sum(len(lab) for lab in labels)
        if on_row:
            on_row()
    return result
