"""Prediction on a tiny model: cached label likelihood equals the naive computation, batching changes nothing."""

from __future__ import annotations

import pytest
import torch

from lmtailor.core.budget import Budget
from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.inference.generation import LabelTrie, generate_ids
from lmtailor.inference.label_reference import naive_label_scores
from lmtailor.inference.label_scoring import common_prefix_len, score_labels
from lmtailor.inference.predict import predict
from lmtailor.measure.meter import Meter
from lmtailor.models import load_model
from lmtailor.prompting.formats import build_messages, encode_prompt, encode_prompt_completion, stop_token_ids
from lmtailor.runtime import Runtime

CPU = Runtime("cpu", "fp32", "test")
# Labels of different token lengths, so the batched label pass is right-padded.
TASK = TaskSpec("colours", "classification", "Which colour word does the text contain?",
                ("red", "green", "light blue sky"))
ROWS = [Example(f"r{i}", text, label) for i, (text, label) in enumerate([
    ("the river is red", "red"), ("a green stone on the old bridge", "green"), ("sky", "light blue sky"),
    ("quiet bright cloud, green again", "green")])]
SHOTS = [Example("s0", "a red hill", "red"), Example("s1", "green water", "green")]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return load_model(str(tiny_llama_dir), CPU)


def _prompts_and_labels(tok, shots):
    prompts = [encode_prompt(tok, build_messages(TASK, r.input, shots)) for r in ROWS]
    first = build_messages(TASK, ROWS[0].input, shots)
    labels = [encode_prompt_completion(tok, first, lab)[1] for lab in TASK.labels]
    return prompts, labels


@pytest.mark.parametrize("shots", [(), SHOTS])
@pytest.mark.parametrize("normalize", [False, True])
def test_cached_label_scores_equal_one_forward_per_label(tiny, shots, normalize):
    prompts, labels = _prompts_and_labels(tiny.tokenizer, shots)
    assert len({len(lab) for lab in labels}) > 1
    result = score_labels(tiny.model, prompts, labels, tiny.tokenizer.pad_token_id, normalize=normalize)
    assert result.path == "prefix-cache" and result.prefix_len == common_prefix_len(prompts) > 0
    reference = naive_label_scores(tiny.model, prompts, labels, normalize=normalize)
    assert torch.allclose(torch.tensor(result.scores), torch.tensor(reference), atol=1e-4)
    uncached = score_labels(tiny.model, prompts, labels, tiny.tokenizer.pad_token_id, prefix_cache=False,
                            normalize=normalize)
    assert uncached.path == "no-cache"
    assert torch.allclose(torch.tensor(uncached.scores), torch.tensor(reference), atol=1e-4)
    assert result.tokens < uncached.tokens  # the shared prefix was computed once


def test_label_trie_allows_only_paths_to_labels():
    trie = LabelTrie([[5, 6], [5, 7, 8], [9]])
    assert sorted(trie.allowed([])) == [5, 9]
    assert sorted(trie.allowed([5])) == [6, 7]
    assert trie.allowed([6]) == []
    assert trie.match([5, 7, 8]) == 1 and trie.match([5, 7]) is None


def test_batched_left_padded_generation_equals_one_row_at_a_time(tiny):
    tok = tiny.tokenizer
    prompts, _ = _prompts_and_labels(tok, ())
    stops = stop_token_ids(tok)
    batched = generate_ids(tiny.model, prompts, 6, stops, tok.pad_token_id, batch_size=4)
    single = [generate_ids(tiny.model, [p], 6, stops, tok.pad_token_id, batch_size=1).ids[0] for p in prompts]
    assert batched.ids == single
    assert batched.tokens == sum(len(p) + len(g) for p, g in zip(prompts, single))


@pytest.mark.parametrize("mode", ["likelihood", "constrained"])
def test_label_modes_always_answer_with_a_label(tiny, mode):
    meter = Meter()
    preds, details = predict(tiny.model, tiny.tokenizer, TASK, ROWS, SHOTS, Budget(), meter, mode=mode)
    assert len(preds) == len(ROWS) and set(preds) <= set(TASK.labels)
    assert details["mode"] == mode and details["tokens"] > 0
    assert meter.phases["inference"].tokens == details["tokens"] and meter.phases["inference"].examples == 4
    if mode == "likelihood":
        assert set(details["label_scores"]) == {r.id for r in ROWS}
    else:
        assert details["no_label_match"] == 0


def test_likelihood_prediction_is_the_argmax_of_the_naive_scores(tiny):
    preds, _ = predict(tiny.model, tiny.tokenizer, TASK, ROWS, (), Budget(), Meter(), mode="likelihood")
    prompts, labels = _prompts_and_labels(tiny.tokenizer, ())
    reference = naive_label_scores(tiny.model, prompts, labels)
    assert preds == [TASK.labels[max(range(3), key=row.__getitem__)] for row in reference]


def test_generate_mode_returns_text_and_counts_truncated_inputs(tiny):
    task = TaskSpec("echo", "generation", "Repeat the input.")
    rows = [Example("a", "word " * 40, "word"), Example("b", "short", "short")]
    preds, details = predict(tiny.model, tiny.tokenizer, task, rows, (), Budget(max_input_tokens=10,
                             max_new_tokens=3), Meter())
    assert len(preds) == 2 and all(isinstance(p, str) for p in preds)
    assert details["truncated_inputs"] == 1 and details["mode"] == "generate"


def test_label_mode_on_a_task_without_labels_is_a_clear_error(tiny):
    from lmtailor.errors import UserError

    task = TaskSpec("echo", "generation", "Repeat the input.")
    with pytest.raises(UserError, match="scoring: generate"):
        predict(tiny.model, tiny.tokenizer, task, ROWS, (), Budget(), Meter(), mode="likelihood")
