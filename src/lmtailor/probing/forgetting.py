"""Catastrophic-forgetting probe: general capability measured the same way before and after training.

Two measurements on the general probe set (``measure/probe_set.py``: held-out English prose and general
multiple-choice questions, built offline, never used for training):

- **Perplexity** = exp(mean token negative log-likelihood) over the passages, each cut to ``PASSAGE_MAX_TOKENS``
  tokens. Decoder-only models predict every token from the ones before it (after BOS when the tokenizer adds one).
  Encoder-decoder models have no left-to-right objective over a single text, so each passage is split in half
  by words and the decoder predicts the second half given the first as the source: a continuation perplexity,
  named as such in the result and comparable only with itself.
- **Accuracy** on the questions, scored the way classification rows are: each choice's answer tokens given the
  prompt, through the model's own instruction format (``prompting/formats.py`` and ``inference/label_scoring.py`` for
  decoders; ``prompting/seq2seq_format.py`` and ``inference/seq2seq.py`` for encoder-decoders).

An encoder classifier has neither: its masked-LM head was replaced by a classification head, so there is no
distribution over text to measure. Its probe says so (``None`` with the reason), never a made-up number.

The runner probes every tuned model and its base model (once per model per run) and records the change.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lmtailor.core.task_spec import TaskSpec
from lmtailor.inference.generation import pad_batch
from lmtailor.inference.label_scoring import score_labels
from lmtailor.inference.hf_rows import pad_token_id
from lmtailor.inference.seq2seq import score_labels_seq2seq
from lmtailor.measure.probe_set import ChoiceItem, TextSet, general_choice_items, general_text_set
from lmtailor.prompting.formats import build_messages, encode_prompt, encode_prompt_completion, tokenize_text
from lmtailor.prompting.seq2seq_format import encode_source, encode_target, source_text
from lmtailor.models.families import family_of

PROBE_VERSION = 1
PASSAGE_MAX_TOKENS = 128
# Logits are batch x length x vocabulary floats: cap them per forward (64M floats, 256 MB in fp32), so a model
# with Gemma 3's 262k-entry vocabulary probes in smaller batches instead of running out of memory.
LOGITS_BUDGET = 2**26
INSTRUCTION = "Answer the question."


@dataclass
class Perplexity:
    """Perplexity over a text set, with what was scored."""

    value: float | None
    tokens: int  # tokens whose likelihood was scored
    truncated: int  # passages cut to the token limit


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _vocab_size(model) -> int:
    head = model.get_output_embeddings()
    return head.weight.shape[0] if head is not None else model.config.get_text_config(decoder=True).vocab_size


def _batches(rows: list, width: Callable[[Any], int], vocab: int, max_batch: int) -> list[list]:
    """Rows longest first, in batches that keep the logits within ``LOGITS_BUDGET``."""
    rows = sorted(rows, key=width, reverse=True)
    out, i = [], 0
    while i < len(rows):
        size = max(1, min(max_batch, LOGITS_BUDGET // max(1, width(rows[i]) * vocab)))
        out.append(rows[i:i + size])
        i += size
    return out


def _nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
    """Summed token NLL of ``targets`` (-100 = not scored) under ``logits``, in fp32; and the tokens scored."""
    nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")
    return nll.item(), int((targets != -100).sum())


def _causal_ids(tokenizer, passages: Sequence[str], max_tokens: int) -> tuple[list[list[int]], int]:
    # BOS first exactly when the tokenizer puts it there by default, as prompts get it (prompting/formats.py).

    ids = [tokenize_text(tokenizer, text) for text in passages]
    return [row[:max_tokens] for row in ids], sum(len(row) > max_tokens for row in ids)


@torch.no_grad()
def _causal_perplexity(model, tokenizer, passages, max_tokens, batch_size, on_row) -> Perplexity:
    rows, truncated = _causal_ids(tokenizer, passages, max_tokens)
    total, tokens = 0.0, 0
    for batch in _batches(rows, len, _vocab_size(model), batch_size):
        inputs, mask = pad_batch(batch, pad_token_id(tokenizer), _device(model))
        # a prompt-tuned PeftModel returns logits for its virtual tokens first: keep those of the passage's tokens
        logits = model(input_ids=inputs, attention_mask=mask).logits[:, -inputs.shape[1]:-1]
        targets = inputs[:, 1:].masked_fill(mask[:, 1:] == 0, -100)  # padding is never a target
        nll, n = _nll_sum(logits, targets)
        total, tokens = total + nll, tokens + n
        on_row(len(batch))
    return Perplexity(math.exp(total / tokens) if tokens else None, tokens, truncated)


def _continuation_pairs(tokenizer, model, passages, max_tokens) -> tuple[list[tuple[list[int], list[int]]], int]:
    """(source, target) ids per passage: first half of the words as the source, second half as the target,
    each within half the token limit (a source keeps its end token; a cut target loses its eos)."""
    half_budget, pairs, truncated = max_tokens // 2, [], 0
    for text in passages:
        words = text.split()
        if len(words) < 2:
            continue
        half = len(words) // 2
        source = encode_source(tokenizer, " ".join(words[:half]))
        target = encode_target(tokenizer, " ".join(words[half:]), model.config.decoder_start_token_id)
        cut = len(source) > half_budget or len(target) > half_budget
        truncated += cut
        if len(source) > half_budget:
            source = source[:half_budget - 1] + source[-1:]
        pairs.append((source, target[:half_budget]))
    return pairs, truncated


@torch.no_grad()
def _continuation_perplexity(model, tokenizer, passages, max_tokens, batch_size, on_row) -> Perplexity:
    pairs, truncated = _continuation_pairs(tokenizer, model, passages, max_tokens)
    total, tokens = 0.0, 0
    for batch in _batches(pairs, lambda p: len(p[1]), _vocab_size(model), batch_size):
        sources, mask = pad_batch([s for s, _ in batch], pad_token_id(tokenizer), _device(model))
        labels, _ = pad_batch([t for _, t in batch], -100, _device(model))
        # The model's own shift turns labels into decoder inputs (start token first, -100 read as padding).
        decoder_inputs = model.prepare_decoder_input_ids_from_labels(labels=labels)
        logits = model(input_ids=sources, attention_mask=mask, decoder_input_ids=decoder_inputs).logits
        nll, n = _nll_sum(logits, labels)
        total, tokens = total + nll, tokens + n
        on_row(len(batch))
    return Perplexity(math.exp(total / tokens) if tokens else None, tokens, truncated)


def text_perplexity(model, tokenizer, family: str, passages: Sequence[str], max_tokens: int = PASSAGE_MAX_TOKENS,
                    batch_size: int = 8, on_row: Callable[[int], None] | None = None) -> Perplexity:
    """Perplexity over ``passages`` the way the model's family defines it (``FamilyAdapter.perplexity``): causal for
    decoder-only models, continuation for encoder-decoders."""
    on_row = on_row or (lambda n: None)
    kind = family_of(family).perplexity
    if kind is None:
        raise ValueError(f"perplexity needs a model with a language-model head, not a {family} model")
    return _PERPLEXITY[kind](model, tokenizer, passages, max_tokens, batch_size, on_row)


# How each kind of perplexity a family declares is computed.
_PERPLEXITY = {"causal": _causal_perplexity, "continuation": _continuation_perplexity}


def _item_task(item: ChoiceItem):
    return TaskSpec("general-probe", "classification", INSTRUCTION, labels=item.choices)


@torch.no_grad()
def _choice_scores(model, tokenizer, family: str, items: Sequence[ChoiceItem]) -> list[list[float]]:
    """Per item, the summed log-probability of each choice's answer tokens (end token included) after the item's
    prompt. The items share one choice set, as the rows of a classification task share its labels."""
    task = _item_task(items[0])
    pad_id = pad_token_id(tokenizer)
    if family_of(family).seq2seq:
        start = model.config.decoder_start_token_id
        labels = [encode_target(tokenizer, choice, start) for choice in task.labels]
        sources = [encode_source(tokenizer, source_text(task, item.question)) for item in items]
        return score_labels_seq2seq(model, sources, labels, pad_id).scores

    messages = [build_messages(task, item.question) for item in items]
    # The answer follows the same generation prompt in every item, so its tokens are the same for all of them.
    labels = [encode_prompt_completion(tokenizer, messages[0], choice)[1] for choice in task.labels]
    prompts = [encode_prompt(tokenizer, m) for m in messages]
    # A lone item has no prefix to share; its choices run as one batch either way.
    return score_labels(model, prompts, labels, pad_id, prefix_cache=len(items) > 1).scores


def choice_accuracy(model, tokenizer, family: str, items: Sequence[ChoiceItem],
                    on_item: Callable[[int], None] | None = None) -> tuple[float | None, dict[str, list[int]]]:
    """Share of items whose highest-scoring choice is the answer; and [correct, total] per kind of item."""
    groups: dict[tuple[str, ...], list[ChoiceItem]] = {}
    for item in items:  # items with the same choices are scored together (insertion order: deterministic)
        groups.setdefault(item.choices, []).append(item)
    by_kind: dict[str, list[int]] = {}
    for group in groups.values():
        for item, scores in zip(group, _choice_scores(model, tokenizer, family, group)):
            counts = by_kind.setdefault(item.kind, [0, 0])
            counts[0] += int(max(range(len(scores)), key=scores.__getitem__) == item.answer)
            counts[1] += 1
        if on_item:
            on_item(len(group))
    correct = sum(c for c, _ in by_kind.values())
    return (correct / len(items) if items else None), by_kind


def probe(model, tokenizer, family: str, runtime=None, budget=None, text_set: TextSet | None = None,
          items: Sequence[ChoiceItem] | None = None) -> dict:
    """Probe a model's general capability: perplexity on the general text set and accuracy on the general
    questions (each ``None`` with a note when the model cannot be measured that way), and what it took.

    ``budget.eval_batch_size`` caps the passages per forward; ``runtime`` is recorded. Runs in eval mode without
    gradients and leaves the model's training flag as it found it.
    """
    text_set = text_set or general_text_set()
    items = general_choice_items() if items is None else list(items)
    result: dict[str, Any] = {
        "version": PROBE_VERSION, "family": family, "precision": getattr(runtime, "precision", None),
        "text_set": {"sha256": text_set.sha256, "sources": list(text_set.sources), "missing": list(text_set.missing)},
        "passages": len(text_set.passages), "items": len(items), "perplexity": None, "accuracy": None,
    }
    started = time.perf_counter()
    adapter = family_of(family)  # an unknown family name is an error that suggests the nearest
    reason = adapter.no_probe_reason
    if reason is not None:
        result.update(perplexity_note=reason, accuracy_note=reason, seconds=0.0)
        return result
    if not text_set.passages:
        result["perplexity_note"] = (f"no general text on this Python (looked for {', '.join(text_set.missing)}); "
                                     "see lmtailor/measure/probe_set.py")
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(text_set.passages) + len(items), desc="forgetting probe", unit="item")
    try:
        if text_set.passages:
            ppl = text_perplexity(model, tokenizer, family, text_set.passages,
                                  batch_size=getattr(budget, "eval_batch_size", 8), on_row=bar.update)
            result.update(perplexity=ppl.value, perplexity_kind=adapter.perplexity_kind, scored_tokens=ppl.tokens,
                          truncated_passages=ppl.truncated, max_tokens=PASSAGE_MAX_TOKENS)
        accuracy, by_kind = choice_accuracy(model, tokenizer, family, items, on_item=bar.update)
        result.update(accuracy=accuracy, correct=sum(c for c, _ in by_kind.values()), accuracy_by_kind=by_kind)
    finally:
        bar.close()
        model.train(was_training)
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def probe_model_ref(ref: str, runtime, budget=None) -> dict:
    """Load the model ``ref`` names, probe it, free it. A family with nothing to probe (an encoder) is not loaded."""
    from lmtailor.models import load_model
    from lmtailor.models.loading import adapter_of

    family = adapter_of(ref, runtime.trust_remote_code)
    if family.no_probe_reason is not None:
        return {"model": ref, **probe(None, None, family.name, runtime, budget)}
    started = time.perf_counter()
    loaded = load_model(ref, runtime)
    load_s = time.perf_counter() - started
    try:
        return {"model": ref, **probe(loaded.model, loaded.tokenizer, loaded.family, runtime, budget),
                "load_seconds": round(load_s, 3)}
    finally:
        del loaded
        gc.collect()


def forgetting_change(base: dict, tuned: dict) -> dict:
    """The tuned model's change from its base: perplexity (absolute and %), accuracy in points (None where either
    probe has no value, or where they were run on different text sets and so cannot be compared)."""
    out: dict[str, Any] = {"delta_perplexity": None, "delta_perplexity_pct": None, "delta_accuracy_pts": None}
    if base.get("text_set", {}).get("sha256") != tuned.get("text_set", {}).get("sha256"):
        out["note"] = "base and tuned probes used different general text sets: not comparable"
        return out
    b, t = base.get("perplexity"), tuned.get("perplexity")
    if b is not None and t is not None and base.get("perplexity_kind") == tuned.get("perplexity_kind"):
        out["delta_perplexity"] = t - b
        out["delta_perplexity_pct"] = 100.0 * (t / b - 1.0)
    b, t = base.get("accuracy"), tuned.get("accuracy")
    if b is not None and t is not None and base.get("items") == tuned.get("items"):
        out["delta_accuracy_pts"] = 100.0 * (t - b)
    return out
