import pytest

from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.tasks.classification import Classification
from lmtailor.tasks.evaluator import evaluate
from lmtailor.tasks.generation import Generation


def _metric(result, name):
    return next(m["value"] for m in result["metrics"] if m["name"] == name)


def test_classification_accuracy_and_macro_f1_by_hand():
    refs = ["a", "a", "b", "b"]
    preds = ["a", "b", "b", "b"]
    r = Classification().score(refs, preds, ("a", "b"))
    assert _metric(r, "accuracy") == pytest.approx(0.75)
    # a: P=1, R=0.5, F1=2/3; b: P=2/3, R=1, F1=0.8 -> macro 0.7333
    assert _metric(r, "macro_f1") == pytest.approx((2 / 3 + 0.8) / 2)
    assert r["details"]["per_class"]["a"] == {"support": 2, "predicted": 1, "correct": 1, "f1": pytest.approx(0.6667, abs=1e-4)}


def test_classification_counts_predictions_outside_label_set():
    r = Classification().score(["a", "b"], ["a", "zzz"], ("a", "b"))
    assert r["details"]["predicted_outside_label_set"] == 1
    assert _metric(r, "accuracy") == 0.5


def test_generation_exact_match_and_rouge():
    r = Generation().score(["the cat sat", "a dog"], ["the  cat sat", "the bird flew"], None)
    assert _metric(r, "exact_match") == pytest.approx(0.5)
    assert 0.5 <= _metric(r, "rougeL") < 1.0


def test_evaluator_refuses_misaligned_predictions():
    task = TaskSpec("t", "classification", "pick", ("a", "b"))
    rows = [Example("1", "x", "a"), Example("2", "y", "b")]
    with pytest.raises(ValueError, match="1 predictions for 2 test rows"):
        evaluate(task, rows, ["a"])
    assert evaluate(task, rows, ["a", "a"])["primary_metric"] == "accuracy"
