"""Generation and QA scorers on values computed by hand."""

from __future__ import annotations

import pytest

from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.tasks import TASK_TYPES
from lmtailor.tasks.evaluator import evaluate
from lmtailor.tasks.generation import Generation, bleu_chrf, rouge
from lmtailor.tasks.qa import Qa, exact_match, normalize_answer, token_f1


def _metrics(result: dict) -> dict[str, float]:
    return {m["name"]: m["value"] for m in result["metrics"]}


# --- generation -------------------------------------------------------------------------------------------------

def test_rouge_n_and_l_by_hand():
    # ref: the cat sat on the mat (6 tokens, 5 bigrams); pred: the cat sat (3 tokens, 2 bigrams)
    # ROUGE-1: 3 shared -> P=1, R=1/2, F=2/3.  ROUGE-2: 2 shared -> P=1, R=2/5, F=4/7.  LCS=3 -> ROUGE-L = 2/3.
    r = rouge(["the cat sat on the mat"], ["the cat sat"])
    assert r["rouge1"] == pytest.approx(2 / 3)
    assert r["rouge2"] == pytest.approx(4 / 7)
    assert r["rougeL"] == pytest.approx(2 / 3)
    # LCS counts order: "mat the" shares 2 unigrams with "the mat" but its LCS is 1 -> P=R=1/2
    assert rouge(["the mat"], ["mat the"]) == pytest.approx({"rouge1": 1.0, "rouge2": 0.0, "rougeL": 0.5})


def test_rouge_stems_and_keeps_non_latin_words():
    assert rouge(["returns the values"], ["return the value"])["rouge1"] == pytest.approx(1.0)  # Porter stemmer
    # rouge-score's own tokenizer drops every non-[a-z0-9] character: Greek would score 0 whatever the prediction.
    # ref 3 words, pred 2 of them -> P=1, R=2/3, F=0.8
    assert rouge(["γεια σου κόσμε"], ["γεια σου"])["rouge1"] == pytest.approx(0.8)
    # and "café" is not "caf" (which the ASCII tokenizer would make of it, matching "caf")
    assert rouge(["café"], ["caf"])["rouge1"] == 0.0
    assert rouge(["Café"], ["café"])["rouge1"] == pytest.approx(1.0)


def test_corpus_bleu_and_chrf_by_hand():
    # Every n-gram precision is 1 (the prediction is a prefix), so BLEU is the brevity penalty exp(1 - 7/6).
    scores = bleu_chrf(["the cat sat on the mat today"], ["the cat sat on the mat"])
    assert scores["bleu"] == pytest.approx(0.846482, abs=1e-5)
    # chrF (beta 2, char orders 1-6, averaged over orders present in both): abd vs abc:
    # 1-grams P=R=2/3, 2-grams P=R=1/2, 3-grams 0; orders 4-6 absent -> (2/3 + 1/2 + 0) / 3 = 7/18
    assert bleu_chrf(["abc"], ["abd"])["chrf"] == pytest.approx(7 / 18, abs=1e-4)
    # corpus-level: statistics are pooled over rows, not averaged per row
    assert bleu_chrf(["a b c d", "e f g h"], ["a b c d", "e f g h"]) == pytest.approx({"bleu": 1.0, "chrf": 1.0})


def test_generation_scores_every_metric_with_direction():
    r = Generation().score(["the cat sat", "a dog"], ["the  cat sat", "the bird flew"], None)
    m = _metrics(r)
    assert set(m) == {"rougeL", "rouge1", "rouge2", "exact_match", "bleu", "chrf"}
    assert all(x["higher_is_better"] is True for x in r["metrics"])
    assert r["metrics"][0]["name"] == Generation.primary_metric == "rougeL"
    assert m["exact_match"] == pytest.approx(0.5)
    # row 1 perfect (1.0); row 2 "a dog" vs "the bird flew": no shared token -> 0; mean 0.5
    assert m["rouge1"] == pytest.approx(0.5) and m["rougeL"] == pytest.approx(0.5)
    # no row has 4 tokens, so the corpus has no 4-gram and BLEU (without smoothing of empty orders) is 0; chrF is not
    assert m["bleu"] == 0.0 and 0.0 < m["chrf"] < 1.0


def test_generation_empty_predictions_and_empty_test_set():
    m = _metrics(Generation().score(["the cat sat", "a dog"], ["", "   "], None))
    assert m == {"rougeL": 0.0, "rouge1": 0.0, "rouge2": 0.0, "exact_match": 0.0, "bleu": 0.0, "chrf": 0.0}
    assert Generation().score(["a", "b"], ["", "b"], None)["details"]["empty_predictions"] == 1
    assert all(v == 0.0 for v in _metrics(Generation().score([], [], None)).values())
    with pytest.raises(ValueError, match="1 predictions for 2 references"):
        Generation().score(["a", "b"], ["a"], None)


# --- question answering -----------------------------------------------------------------------------------------

def test_squad_normalization():
    assert normalize_answer("  The Cat,  sat!  ") == "cat sat"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("theory of a thesis") == "theory of thesis"  # articles only as whole words
    assert normalize_answer("«Ñandú»¿") == "ñandú"  # Unicode case and punctuation
    assert normalize_answer("(iterable, /)") == "iterable"


def test_exact_match_and_token_f1_by_hand():
    # gold -> [quick, brown, fox], pred -> [quick, fox, jumps]: 2 shared, P=R=2/3, F1=2/3
    assert token_f1("the quick brown fox", "a quick fox jumps") == pytest.approx(2 / 3)
    assert exact_match("the quick brown fox", "a quick fox jumps") == 0.0
    assert exact_match("The Quick, brown fox.", "quick brown fox") == 1.0
    # tokens are a bag: [x, x, y] and [x, y, y] share one x and one y -> P=R=2/3
    assert token_f1("x x y", "x y y") == pytest.approx(2 / 3)
    # empty predictions: 0, unless the gold normalises to nothing too (SQuAD 2.0 convention)
    assert token_f1("paris", "") == 0.0 and exact_match("paris", "") == 0.0
    assert token_f1("the", "") == 1.0 and exact_match("the", " . ") == 1.0
    assert token_f1("Ωμέγα", "ωμέγα!") == 1.0


def test_qa_takes_the_best_gold_answer():
    refs = [["Paris", "City of Paris"], ["Paris", "City of Paris"], "bdb", "42"]
    preds = ["the city of paris", "Paris France", "bdb.", ""]
    r = Qa().score(refs, preds, None)
    m = _metrics(r)
    # row 1: EM 1 (second answer); row 2: F1 max(2/3 vs "paris", 0.4 vs "city of paris") = 2/3; row 3: EM 1; row 4: 0
    assert m["exact_match"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx((1 + 2 / 3 + 1 + 0) / 4)
    assert r["metrics"][0]["name"] == Qa.primary_metric == "f1"
    assert all(x["higher_is_better"] is True for x in r["metrics"])
    assert r["details"] == {"n": 4, "empty_predictions": 1}
    with pytest.raises(ValueError, match="empty answers list"):
        Qa().score([[]], ["x"], None)


def test_qa_references_come_from_meta_answers_or_the_target():
    rows = [Example("1", "q", "Paris", {"answers": ["Paris", "City of Paris"]}), Example("2", "q", "bdb")]
    assert Qa.references(rows) == [["Paris", "City of Paris"], ["bdb"]]


def test_evaluator_scores_a_qa_task_through_the_registry():
    assert TASK_TYPES.get("qa") is Qa and Qa.output == "text"
    task = TaskSpec("pydoc-qa", "qa", "Answer the question.")
    rows = [Example("1", "Which module defines Bdb?", "bdb"), Example("2", "What does f return?", "a list of names")]
    result = evaluate(task, rows, ["The bdb", "a list"])
    assert result["primary_metric"] == "f1"
    m = _metrics(result)
    # row 2: [list, of, names] vs [list]: P=1, R=1/3 -> F1 = 0.5
    assert m["exact_match"] == pytest.approx(0.5) and m["f1"] == pytest.approx((1 + 0.5) / 2)
