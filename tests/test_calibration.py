"""Contextual calibration: the arithmetic by hand, then the engines (tiny models) against a naive recomputation."""

from __future__ import annotations

import math

import pytest
import torch

from lmtailor.core.budget import Budget
from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.errors import UserError
from lmtailor.inference.calibration import (CONTENT_FREE_INPUTS, ContentFreePrompts, calibrate, content_free_log_prior,
                                            content_free_prompts)
from lmtailor.inference.label_reference import naive_label_scores
from lmtailor.inference.predict import predict
from lmtailor.measure.meter import Meter
from lmtailor.models import load_model
from lmtailor.prompting.exemplars import RowExemplars
from lmtailor.prompting.formats import build_messages, encode_prompt, encode_prompt_completion
from lmtailor.runtime import Runtime

CPU = Runtime("cpu", "fp32", "test")
TASK = TaskSpec("colours", "classification", "Which colour word does the text contain?",
                ("red", "green", "light blue sky"))
ROWS = [Example(f"r{i}", text, label) for i, (text, label) in enumerate([
    ("the river is red", "red"), ("a green stone on the old bridge", "green"), ("sky", "light blue sky"),
    ("quiet bright cloud, green again", "green")])]
SHOTS = [Example("s0", "a red hill", "red"), Example("s1", "green water", "green")]
log = math.log


def test_a_strong_label_prior_is_divided_out_by_hand():
    # Content-free inputs give label probabilities (over the label set) of [.8 .1 .1], [.6 .3 .1] and [.7 .2 .1]:
    # their mean is p_cf = [.7 .2 .1] (a mean of probabilities, not of logs). The scores are log-probs over the whole
    # vocabulary, so they are not normalised over the labels: ×0.01 changes nothing after the softmax.
    cf_scores = [[log(0.8 * 0.01), log(0.1 * 0.01), log(0.1 * 0.01)], [log(0.6), log(0.3), log(0.1)],
                 [log(0.7 * 0.5), log(0.2 * 0.5), log(0.1 * 0.5)]]
    prior = content_free_log_prior(cf_scores)
    assert [math.exp(p) for p in prior] == pytest.approx([0.7, 0.2, 0.1])
    # Row 0: p = [.5 .3 .2]; raw argmax is label 0, but p / p_cf = [.714 1.5 2.0]: label 2.
    # Row 1: p = [.9 .05 .05]; p / p_cf = [1.286 .25 .5]: label 0 stays.
    rows = [[log(0.05), log(0.03), log(0.02)], [log(0.9), log(0.05), log(0.05)]]
    cf = ContentFreePrompts(prompts=[[1], [2], [3]], of_row=[[0, 1, 2], [0, 1, 2]])
    result = calibrate(rows, cf, cf_scores)
    assert result.raw_best == [0, 0] and result.best == [2, 0]
    details = result.details(("a", "b", "c"), ("x0", "x1"))
    assert details["p_content_free"] == {"a": 0.7, "b": 0.2, "c": 0.1}
    assert details["changed_predictions"] == 1 and details["uncalibrated_prediction_counts"] == {"a": 2}


def test_rows_with_their_own_prompts_get_their_own_prior():
    # Row 0's content-free prompts favour label 0 (p_cf = [.9 .1]), row 1's favour label 1 (p_cf = [.1 .9]).
    # Both rows score p = [.6 .4]: row 0 -> [.667 4.0] label 1; row 1 -> [6.0 .444] label 0.
    cf_scores = [[log(0.9), log(0.1)]] * 3 + [[log(0.1), log(0.9)]] * 3
    cf = ContentFreePrompts(prompts=list(range(6)), of_row=[[0, 1, 2], [3, 4, 5]])
    result = calibrate([[log(0.6), log(0.4)]] * 2, cf, cf_scores)
    assert result.best == [1, 0]
    details = result.details(("a", "b"), ("x0", "x1"))
    assert details["p_content_free_by_row"] == {"x0": [0.9, 0.1], "x1": [0.1, 0.9]}
    assert details["p_content_free_mean"] == {"a": 0.5, "b": 0.5}


def test_equal_content_free_prompts_are_scored_once():
    # rows 0 and 2 share a prompt (same exemplars): 2 distinct prompts × 3 content-free inputs
    cf = content_free_prompts(3, lambda i, text: [i % 2, len(text)])
    assert len(cf.prompts) == 6 and cf.of_row[0] == cf.of_row[2] != cf.of_row[1]
    assert len(CONTENT_FREE_INPUTS) == 3


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir, one_torch_thread):
    return load_model(str(tiny_llama_dir), CPU)


def _labels(tok, shots):
    return [encode_prompt_completion(tok, build_messages(TASK, ROWS[0].input, shots), lab)[1] for lab in TASK.labels]


def _expected(model, tok, row_shots: list[list[Example]]) -> tuple[list[list[float]], list[list[float]]]:
    """Naive scores of every row and log p_cf of every row's own prompt: one full forward per (prompt, label)."""
    labels = _labels(tok, row_shots[0])
    prompts = [encode_prompt(tok, build_messages(TASK, r.input, s)) for r, s in zip(ROWS, row_shots)]
    scores = naive_label_scores(model, prompts, labels)
    priors = []
    for shots in row_shots:
        cf = [encode_prompt(tok, build_messages(TASK, text, shots)) for text in CONTENT_FREE_INPUTS]
        priors.append(content_free_log_prior(naive_label_scores(model, cf, labels)))
    return scores, priors


def _check_choices(preds: list[str], scores, priors) -> None:
    """Each prediction is argmax(score - log p_cf), wherever the best beats the runner-up by more than 1e-3."""
    checked = 0
    for pred, row, prior in zip(preds, scores, priors):
        adjusted = sorted(((s - p, i) for i, (s, p) in enumerate(zip(row, prior))), reverse=True)
        if adjusted[0][0] - adjusted[1][0] > 1e-3:
            assert pred == TASK.labels[adjusted[0][1]]
            checked += 1
    assert checked >= 2


def test_calibrated_predict_matches_the_naive_recomputation(tiny):
    tok = tiny.tokenizer
    plain, plain_details = predict(tiny.model, tok, TASK, ROWS, SHOTS, Budget(), Meter())
    meter = Meter()
    preds, details = predict(tiny.model, tok, TASK, ROWS, SHOTS, Budget(), meter, calibrate=True)
    scores, priors = _expected(tiny.model, tok, [SHOTS] * len(ROWS))
    cal = details["calibration"]
    assert cal["content_free_prompts"] == 3  # one shared prompt: three content-free prompts in all
    assert list(cal["p_content_free"].values()) == pytest.approx([math.exp(p) for p in priors[0]], abs=1e-3)
    _check_choices(preds, scores, priors)
    assert cal["uncalibrated_prediction_counts"] == {k: plain.count(k) for k in set(plain)}
    # the content-free prompts are inference cost: counted on top of the rows' tokens, rows counted once
    assert details["tokens"] > plain_details["tokens"]
    assert meter.phases["inference"].tokens == details["tokens"] and meter.phases["inference"].examples == len(ROWS)


def test_per_row_exemplars_score_each_row_in_its_own_prompt(tiny):
    tok = tiny.tokenizer
    row_shots = [SHOTS, SHOTS[::-1], SHOTS[:1], SHOTS]
    preds, details = predict(tiny.model, tok, TASK, ROWS, RowExemplars(row_shots), Budget(), Meter(), calibrate=True)
    scores, priors = _expected(tiny.model, tok, row_shots)
    got = [details["label_scores"][r.id] for r in ROWS]
    assert torch.allclose(torch.tensor(got), torch.tensor(scores), atol=1e-3)  # rounded to 4 decimals in details
    cal = details["calibration"]
    assert cal["content_free_prompts"] == 9  # rows 0 and 3 share their exemplars: 3 distinct prompts × 3
    for row, prior in zip(ROWS, priors):
        assert cal["p_content_free_by_row"][row.id] == pytest.approx([math.exp(p) for p in prior], abs=1e-3)
    _check_choices(preds, scores, priors)
    assert details["shots"] == 2


def test_calibration_runs_on_an_encoder_decoder_model(one_torch_thread):
    t5 = load_model("tiny-t5", CPU)
    meter = Meter()
    preds, details = predict(t5.model, t5.tokenizer, TASK, ROWS, SHOTS, Budget(), meter, calibrate=True)
    assert set(preds) <= set(TASK.labels) and details["calibration"]["content_free_prompts"] == 3
    plain, plain_details = predict(t5.model, t5.tokenizer, TASK, ROWS, SHOTS, Budget(), Meter())
    assert details["tokens"] > plain_details["tokens"]


@pytest.mark.parametrize("mode", ["constrained", "generate"])
def test_calibration_without_label_scores_is_refused(tiny, mode):
    with pytest.raises(UserError, match="only scoring: likelihood"):
        predict(tiny.model, tiny.tokenizer, TASK, ROWS, SHOTS, Budget(), Meter(), mode=mode, calibrate=True)
    generation = TaskSpec("echo", "generation", "Repeat the text.")
    with pytest.raises(UserError, match="only scoring: likelihood"):
        predict(tiny.model, tiny.tokenizer, generation, ROWS, (), Budget(), Meter(), calibrate=True)


def test_grouped_prompts_share_their_own_prefix_and_score_like_one_forward_each(tiny):
    from lmtailor.inference.label_scoring import score_labels, score_prompt_groups

    tok = tiny.tokenizer
    labels = _labels(tok, SHOTS)
    # two groups whose prompts share exemplars within the group but not across groups
    groups = [[encode_prompt(tok, build_messages(TASK, text, shots)) for text in CONTENT_FREE_INPUTS]
              for shots in (SHOTS, SHOTS[::-1])]
    grouped = score_prompt_groups(tiny.model, groups, labels, tok.pad_token_id)
    flat = [p for g in groups for p in g]
    reference = naive_label_scores(tiny.model, flat, labels)
    assert torch.allclose(torch.tensor(grouped.scores), torch.tensor(reference), atol=1e-4)
    # each group's exemplars run once: fewer tokens than one prefix shared by all six (the instruction only)
    assert grouped.tokens < score_labels(tiny.model, flat, labels, tok.pad_token_id).tokens
