"""A constrained answer that names no label is wrong on every path, and answers cut at ``max_new_tokens`` are
counted on every generation path (transformers decoder-only and encoder-decoder, llama.cpp; the API path's
tests are in test_remote_client.py).

A miss happens when decoding stops on a stop token inside a label. It used to become ``labels[0]`` on the local
paths, so a no-answer scored right whenever the truth was the first label; the API path already said "". Each
test here puts a no-match on a row whose gold label IS ``labels[0]``: the old code scored it right.
"""

from __future__ import annotations

import pytest

import importlib
from lmtailor.core.budget import Budget
from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.inference.generation import NO_LABEL, Generated, LabelTrie, count_truncated, labels_of_matches
from lmtailor.inference.llamacpp_predict import _constrained, _generate
from lmtailor.tasks.classification import Classification

# the modules whose generate_ids a test replaces: label-constrained decoding (both families), decoder-only generation
hf_rows_module = importlib.import_module("lmtailor.inference.hf_rows")
causal_module = importlib.import_module("lmtailor.inference.causal")
TASK = TaskSpec("t", "classification", "Pick.", ("a", "b"))
# label token ids: "a" = [5, 9, 3], "b" = [7, 3]; stops = last tokens = {3}. Nothing here reaches a stop early,
# so the miss is given as [5, 9] (what decoding would return had 9 been a stop token too: a strict prefix).
LABEL_IDS = [[5, 9, 3], [7, 3]]
ROWS = [Example("x", "one", "a"), Example("y", "two", "b")]


def _accuracy(predictions: list[str]) -> float:
    return Classification().score([r.target for r in ROWS], predictions, TASK.labels)["metrics"][0]["value"]


def test_a_miss_is_no_label_not_label_zero():
    trie = LabelTrie(LABEL_IDS)
    matches = [trie.match([5, 9]), trie.match([7, 3])]
    assert matches == [None, 1]
    assert labels_of_matches(matches, TASK.labels) == ([NO_LABEL, "b"], 1)


@pytest.mark.parametrize("model_dir", ["tiny_llama_dir", "tiny_t5_dir"])
def test_transformers_constrained_miss_is_scored_wrong(monkeypatch, request, model_dir):
    # both families of the transformers backend decode label modes through hf_rows.constrained_labels. The real decoding runs,
    # then row x's answer is cut after its first token: every label ends on its stop token, so one token is a
    # strict prefix of a label, the miss decoding gives when it stops inside a label.
    from lmtailor.inference.predict import predict
    from lmtailor.measure.meter import Meter
    from lmtailor.models import load_model
    from lmtailor.runtime import Runtime

    real = hf_rows_module.generate_ids

    def cut_first(*args, **kwargs):
        out = real(*args, **kwargs)
        return Generated([out.ids[0][:1]] + out.ids[1:], out.tokens)

    monkeypatch.setattr(hf_rows_module, "generate_ids", cut_first)
    loaded = load_model(str(request.getfixturevalue(model_dir)), Runtime("cpu", "fp32", "test"))
    predictions, details = predict(loaded.model, loaded.tokenizer, TASK, ROWS, (), Budget(), Meter(),
                                   mode="constrained")
    assert predictions[0] == NO_LABEL and predictions[1] in TASK.labels
    assert details["no_label_match"] == 1
    # row x (gold "a" = labels[0]) is wrong; before the fix it read "a" and was right
    assert Classification().score([r.target for r in ROWS], predictions, TASK.labels)["details"][
        "per_class"]["a"]["correct"] == 0


class _FakeLlama:
    """What llamacpp_predict calls of a LlamaCppModel: ``greedy(prompt, max_new, stops, allowed=None)``."""

    def __init__(self, answers: list[list[int]]) -> None:
        self.answers = iter(answers)

    def greedy(self, prompt, max_new_tokens, stops, allowed=None):
        return next(self.answers)


class _Bar:
    def update(self, n: int) -> None:
        pass


def test_llamacpp_constrained_miss_is_scored_wrong():
    details: dict = {}
    predictions = _constrained(_FakeLlama([[5, 9], [7, 3]]), TASK, [[1], [2]], LABEL_IDS, _Bar(), details)
    assert predictions == ["", "b"] and details["no_label_match"] == 1
    assert _accuracy(predictions) == 0.5


class _Tok:
    eos_token_id = 3

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def test_llamacpp_generation_counts_answers_cut_at_max_new_tokens(monkeypatch):
    import lmtailor.inference.llamacpp_predict as lp

    monkeypatch.setattr(lp, "stop_token_ids", lambda tok: [3])
    # max_new_tokens 3: [4, 4, 4] ran out (cut); [4, 3] stopped; [4, 4, 3] stopped exactly at the limit (not cut)
    details: dict = {}
    texts = _generate(_FakeLlama([[4, 4, 4], [4, 3], [4, 4, 3]]), _Tok(), [[1], [2], [3]],
                      Budget(max_new_tokens=3), _Bar(), details)
    assert len(texts) == 3 and details["truncated_generations"] == 1


def test_count_truncated_by_hand():
    answers = [[4, 4, 4], [4, 3], [4, 4, 3], []]
    # cut: only [4, 4, 4] (3 tokens, no stop); [4, 4, 3] ended on the stop token at the limit; [] never ran out
    assert count_truncated(answers, [3], 3) == 1
    # a model that forces its stop token at the limit (BART): a full-length answer is cut even ending on it
    assert count_truncated(answers, [3], 3, stop_forced_at_limit=True) == 2


@pytest.mark.parametrize("model_dir", ["tiny_llama_dir", "tiny_t5_dir"])
def test_transformers_generation_counts_truncated_generations(monkeypatch, request, model_dir):
    from lmtailor.inference.predict import predict
    from lmtailor.measure.meter import Meter
    from lmtailor.models import load_model
    from lmtailor.prompting.formats import stop_token_ids
    from lmtailor.runtime import Runtime

    loaded = load_model(str(request.getfixturevalue(model_dir)), Runtime("cpu", "fp32", "test"))
    seq2seq = model_dir == "tiny_t5_dir"
    stop = loaded.tokenizer.eos_token_id if seq2seq else stop_token_ids(loaded.tokenizer)[0]
    # max_new_tokens 2: row a ran out at 2 tokens with no stop (cut), row b stopped after one token
    # (seq2seq counts any full-length answer as cut, since BART forces eos at the limit: row b is one token there)
    answers = [[4, 4], [4, stop]] if not seq2seq else [[4, 4], [stop]]
    monkeypatch.setattr(causal_module, "generate_ids", lambda *a, **k: Generated(answers, 0))
    seq2seq_module = importlib.import_module("lmtailor.inference.seq2seq")
    monkeypatch.setattr(seq2seq_module, "generate_ids", lambda *a, **k: Generated(answers, 0))
    task = TaskSpec("echo", "generation", "Repeat the input.")
    rows = [Example("a", "red", "red"), Example("b", "green", "green")]
    _, details = predict(loaded.model, loaded.tokenizer, task, rows, (), Budget(max_new_tokens=2), Meter())
    assert details["truncated_generations"] == 1
