"""Shared-prefix label scoring of models whose layers attend through a sliding window (Gemma 2/3, Mistral): the
padding the scorer puts between the prefix and each row must not shrink that row's window (issue 19: Gemma 3's
4-shot scores were 2.7e-2 off in fp32 and fell back to one row at a time). Tiny random models with a window of 8
tokens and prompts of 20-40 tokens, so every row's window crosses the padding."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from lmtailor.inference import label_scoring
from lmtailor.inference.label_reference import BF16_CHECK_TOLERANCE, naive_label_scores, score_rows_uncached
from lmtailor.inference.label_scoring import score_labels

WINDOW = 8
LABELS = [[5], [6, 7], [8, 9, 10, 11]]


def _gemma3(attn: str = "sdpa"):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=WINDOW,
                              layer_types=["sliding_attention"] * 3 + ["full_attention"], initializer_range=0.3,
                              max_position_embeddings=128, pad_token_id=0, attn_implementation=attn)
    torch.manual_seed(0)
    return Gemma3ForCausalLM(config).eval()


def _mistral():
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, sliding_window=WINDOW, initializer_range=0.3,
                           max_position_embeddings=128, pad_token_id=0, attn_implementation="sdpa")
    torch.manual_seed(0)
    return MistralForCausalLM(config).eval()


def _prompts(n: int = 10, shared: int = 20) -> list[list[int]]:
    rng = random.Random(0)
    prefix = [rng.randrange(12, 64) for _ in range(shared)]
    return [prefix + [rng.randrange(12, 64) for _ in range(1 + (3 * i) % 17)] for i in range(n)]


def _largest_difference(scores, reference) -> float:
    return max(abs(s - r) / max(1.0, abs(r)) for row, ref in zip(scores, reference) for s, r in zip(row, ref))


@pytest.mark.parametrize("build", [_gemma3, lambda: _gemma3("eager"), _mistral], ids=["gemma3", "gemma3-eager",
                                                                                    "mistral"])
def test_cached_scores_of_sliding_window_models_equal_plain_forwards_in_fp32(build, one_torch_thread):
    model, prompts = build(), _prompts()
    result = score_labels(model, prompts, LABELS, pad_id=0, batch_size=8)
    assert result.path == "prefix-cache" and result.prefix_len == 20 and result.check["passed"]
    assert _largest_difference(result.scores, naive_label_scores(model, prompts, LABELS)) < 1e-5


def test_without_the_position_masks_the_padding_moves_the_scores(one_torch_thread, monkeypatch):
    """The test above can fail: with transformers' slot-based window the padded rows are visibly off, and the
    self-check sets the cache aside."""
    model, prompts = _gemma3(), _prompts()
    monkeypatch.setattr(label_scoring, "slides", lambda model: False)
    result = score_labels(model, prompts, LABELS, pad_id=0, batch_size=8, self_check=False)
    assert _largest_difference(result.scores, naive_label_scores(model, prompts, LABELS)) > 1e-3
    checked = score_labels(model, prompts, LABELS, pad_id=0, batch_size=8)
    assert checked.path == "no-cache" and not checked.check["passed"] and "in batches" in checked.notes[0]


def test_bf16_cached_scores_pass_the_check_against_fp32(one_torch_thread):
    model, prompts = _gemma3(), _prompts()
    reference = naive_label_scores(model, prompts, LABELS)
    result = score_labels(copy.deepcopy(model).to(torch.bfloat16), prompts, LABELS, pad_id=0, batch_size=8)
    assert result.path == "prefix-cache" and result.check["passed"]
    assert _largest_difference(result.scores, reference) < BF16_CHECK_TOLERANCE


def test_the_cache_free_fallback_scores_rows_in_batches_exactly(one_torch_thread):
    model, prompts = _gemma3(), _prompts(6)
    batched, tokens = score_rows_uncached(model, prompts, LABELS, pad_id=0)
    sums = [[sum(lab) for lab in row] for row in batched]
    assert _largest_difference(sums, naive_label_scores(model, prompts, LABELS)) < 1e-5
    # every real token of every (row, label) sequence, each label without its last token
    assert tokens == sum(len(p) * len(LABELS) + sum(len(lab) - 1 for lab in LABELS) for p in prompts)
