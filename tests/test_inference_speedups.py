"""The batched inference paths give what one row at a time gives (fp32 tiny model), and logits are computed only
where a score reads them."""

from __future__ import annotations

import pytest
import torch

from lmtailor.inference.generation import generate_ids
from lmtailor.inference.label_reference import naive_label_scores
from lmtailor.inference.label_scoring import score_labels
from lmtailor.models import load_model
from lmtailor.runtime import Runtime

CPU = Runtime("cpu", "fp32", "test")
PAD = 0
# Token ids well inside the tiny vocabulary; suffix lengths 1..9, so a batch pads by up to 8 tokens.
SHARED = [11, 12, 13, 14, 15]
SUFFIXES = [[40], [41, 42, 43], [44, 45, 46, 47, 48, 49, 50, 51, 52], [53, 54], [55, 56, 57, 58, 59], [60, 61]]
# One-token, two-token and four-token labels: the label batch is right-padded, one label has no second pass.
LABELS = [[70], [71, 72], [73, 74, 75, 76], [77, 72]]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return load_model(str(tiny_llama_dir), CPU)


def _close(scores, reference):
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(reference), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("batch_size", [1, 4, 8])
@pytest.mark.parametrize("shared", [SHARED, []], ids=["shared-prefix", "no-prefix"])
def test_batched_label_scores_equal_one_full_forward_per_label(tiny, one_torch_thread, batch_size, shared):
    prompts = [shared + s for s in SUFFIXES]
    result = score_labels(tiny.model, prompts, LABELS, PAD, batch_size=batch_size)
    assert result.path == ("prefix-cache" if shared else "batched") and not result.notes
    assert result.prefix_len == len(shared)
    _close(result.scores, naive_label_scores(tiny.model, prompts, LABELS))
    # tokens: the prefix once, every suffix, every label but its last token per row, the self-check's two labels
    check = 2 * (len(shared) + 1) + 3  # shortest row, shared + [40]: labels [70] and [73, 74, 75, 76]
    suffix_tokens = sum(len(s) for s in SUFFIXES)
    assert result.tokens == len(shared) + suffix_tokens + len(prompts) * sum(len(l) - 1 for l in LABELS) + check


def test_normalized_batched_scores_equal_the_mean_of_the_naive_ones(tiny, one_torch_thread):
    prompts = [SHARED + s for s in SUFFIXES]
    result = score_labels(tiny.model, prompts, LABELS, PAD, normalize=True, batch_size=3)
    _close(result.scores, naive_label_scores(tiny.model, prompts, LABELS, normalize=True))


def test_scores_come_back_in_row_order_whatever_the_batching(tiny, one_torch_thread):
    prompts = [SHARED + s for s in reversed(SUFFIXES)]
    one = score_labels(tiny.model, prompts, LABELS, PAD, prefix_cache=False)
    batched = score_labels(tiny.model, prompts, LABELS, PAD, batch_size=5)
    assert one.path == "no-cache"
    _close(batched.scores, one.scores)


def test_only_label_positions_reach_the_output_layer(tiny, one_torch_thread):
    """The vocabulary projection sees the last suffix position of each row, then each (row, label)'s label inputs:
    never the prompt positions."""
    prompts = [SHARED + s for s in SUFFIXES]
    seen: list[int] = []
    hook = tiny.model.get_output_embeddings().register_forward_hook(
        lambda _m, args, _out: seen.append(args[0].shape[:-1].numel()))
    try:
        score_labels(tiny.model, prompts, LABELS, PAD, batch_size=8)
    finally:
        hook.remove()
    width = max(map(len, LABELS)) - 1
    rows = len(prompts)
    # prefix (1 position), suffix pass (1 per row), label pass (rows × labels × width), then the self-check's
    # cache-free forward of the shortest row's two picked labels (the longest label's length each)
    assert seen == [1, rows, rows * len(LABELS) * width, 2 * (width + 1)]


def test_batched_generation_equals_one_row_at_a_time_with_uneven_batches(tiny, one_torch_thread):
    prompts = [SHARED + s for s in SUFFIXES]
    stops = [tiny.tokenizer.eos_token_id]
    single = [generate_ids(tiny.model, [p], 7, stops, PAD, batch_size=1).ids[0] for p in prompts]
    for batch_size in (4, 6):
        assert generate_ids(tiny.model, prompts, 7, stops, PAD, batch_size=batch_size).ids == single


def test_generation_without_stop_tokens_runs_to_the_token_limit(tiny, one_torch_thread):
    prompts = [SHARED + s for s in SUFFIXES]
    out = generate_ids(tiny.model, prompts, 5, [], PAD, batch_size=4)
    assert [len(ids) for ids in out.ids] == [5] * len(prompts)
    single = [generate_ids(tiny.model, [p], 5, [], PAD, batch_size=1).ids[0] for p in prompts]
    assert out.ids == single


def test_the_lm_head_gets_a_contiguous_input_even_when_the_weights_are_frozen(tiny_llama_dir, one_torch_thread):
    """A strided (batch, 1, hidden) input with frozen weights sends torch.matmul to a batched matmul over a copy
    of the vocabulary matrix per row (models/loading.contiguous_head_input); the head must see it contiguous."""
    loaded = load_model(str(tiny_llama_dir), CPU)
    model = loaded.model.requires_grad_(False)  # as a merged LoRA model's base is
    seen = []
    model.get_output_embeddings().register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]])
    with torch.no_grad():
        last = model(input_ids=ids, logits_to_keep=1).logits
        full = model(input_ids=ids).logits
    assert seen == [True, True]
    torch.testing.assert_close(last[:, -1], full[:, -1])
    seen.clear()
    generate_ids(model, [[5, 6, 7], [8, 9, 10, 11]], max_new_tokens=3, stop_ids=[], pad_id=PAD)
    assert seen and all(seen)  # the prefill's last position and every decoding step
