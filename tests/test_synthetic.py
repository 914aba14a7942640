"""Synthetic data: each filter on hand-made cases, reply parsing, the generation loop with a scripted teacher
(provenance, rejection reasons, stats, meter, cache), and one smoke run with the tiny Llama as the teacher."""

from __future__ import annotations

import json
import random
from collections import Counter
from types import SimpleNamespace

import pytest

from lmtailor.augmentation import synthetic_filters as sf
from lmtailor.augmentation.synthetic import (SyntheticConfig, build_prompt, generate_synthetic, load_cached,
                                             write_synthetic)
from lmtailor.augmentation.synthetic_teacher import Completion, HFTeacher, Sampling, weights_digest
from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.errors import UserError
from lmtailor.measure.meter import Meter

SENTIMENT = TaskSpec("sentiment", "classification", "Classify the sentiment of the review.", ("pos", "neg"))
TRAIN = [
    Example("tr-1", "the food was wonderful and the staff were kind", "pos"),
    Example("tr-2", "cold soup, rude waiter, never again", "neg"),
    Example("tr-3", "a lovely evening with great wine", "pos"),
]
VALID = [Example("va-1", "the chairs were uncomfortable but fine", "neg")]
TEST = [Example("te-1", "The pasta tasted like cardboard soaked in water", "neg")]


def words(text: str) -> int:
    return len(text.split())


# --- parsing -----------------------------------------------------------------------------------------------------

def test_parse_well_formed_reply_and_ignores_later_examples():
    reply = "Input: the bread was stale\nand the butter rancid\nOutput: neg\n\nExample 4\nInput: x\nOutput: pos"
    assert sf.parse_example(reply) == sf.Parsed("the bread was stale\nand the butter rancid", "neg")
    assert sf.parse_example("Sure!\n**Input:** great view\n**Output:** pos") == sf.Parsed("great view", "pos")
    assert sf.parse_example("input: a\noutput: b\nInput: c\nOutput: d") == sf.Parsed("a", "b")


@pytest.mark.parametrize("reply, detail", [
    ("just some text", "no line starting with 'Input:'"),
    ("Input: a fine day out", "no line starting with 'Output:' after the input"),
    ("Output: pos\nInput: a fine day", "no line starting with 'Output:' after the input"),
    ("Input:\nOutput: pos", "the input is empty"),
    ("Input: a fine day\nOutput:   ", "the output is empty"),
])
def test_parse_malformed_reply_is_unparseable(reply, detail):
    assert sf.parse_example(reply) == sf.Rejected(sf.UNPARSEABLE, detail)


# --- filters -----------------------------------------------------------------------------------------------------

def test_label_filter_accepts_labels_loosely_and_rejects_others():
    assert sf.check_label(" Pos. ", ("pos", "neg")) is None
    assert sf.canonical_label('"NEG"', ("pos", "neg")) == "neg"
    rejected = sf.check_label("neutral", ("pos", "neg"))
    assert rejected == sf.Rejected(sf.LABEL_NOT_IN_SET, "output 'neutral' is none of pos, neg")
    assert sf.check_label("positive", ("pos", "neg")).reason == sf.LABEL_NOT_IN_SET


def test_length_filter_counts_characters_and_tokens():
    assert sf.check_length("short", words, min_chars=6, max_tokens=10) == sf.Rejected(
        sf.TOO_SHORT, "input has 5 characters, fewer than 6")
    assert sf.check_length("one two three four", words, min_chars=1, max_tokens=3) == sf.Rejected(
        sf.TOO_LONG, "input has 4 tokens, more than 3")
    assert sf.check_length("one two three", words, min_chars=13, max_tokens=3) is None


def test_exact_duplicate_of_real_rows_including_a_test_input():
    taken = sf.ExactIndex()
    for row in [*TRAIN, *VALID, *TEST]:
        taken.add(row.input, f"real row {row.id!r}")
    # case, punctuation and spacing do not make a copy new
    rejected = sf.check_exact_duplicate("the pasta tasted like cardboard,  soaked in water!", taken)
    assert rejected == sf.Rejected(sf.EXACT_DUPLICATE, "input equals that of real row 'te-1'")
    assert sf.check_exact_duplicate("Cold soup; rude waiter; never again.", taken).detail.endswith("'tr-2'")
    assert sf.check_exact_duplicate("the pasta tasted like cardboard", taken) is None


def test_near_duplicate_uses_rouge_l_f1():
    index = sf.RougeIndex([("the cat sat on the mat", "real row 'r1'"), ("a dog ran in the park", "real row 'r2'")])
    # LCS "the cat sat on mat" = 5 of 6 tokens each side: F1 = 5/6
    assert index.closest("the cat sat on a mat", 0.7) == (pytest.approx(5 / 6), "real row 'r1'")
    rejected = sf.check_near_duplicate("the cat sat on a mat", index, 0.7)
    assert rejected == sf.Rejected(sf.NEAR_DUPLICATE, "ROUGE-L 0.83 (>= 0.7) to real row 'r1'")
    assert sf.check_near_duplicate("the cat sat on a mat", index, 0.9) is None  # 0.83 < 0.9
    assert sf.check_near_duplicate("a bird flew over the lake", index, 0.7) is None


def test_rouge_index_finds_the_same_best_match_as_scoring_every_pair():
    from rouge_score import rouge_scorer

    rng = random.Random(0)
    vocab = "a b c d e f g h i j".split()
    texts = [" ".join(rng.choices(vocab, k=rng.randint(3, 9))) for _ in range(60)]
    index = sf.RougeIndex((t, str(i)) for i, t in enumerate(texts))
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    for _ in range(30):
        query = " ".join(rng.choices(vocab, k=rng.randint(3, 9)))
        best = max(scorer.score(t, query)["rougeL"].fmeasure for t in texts)
        hit = index.closest(query, 0.5)
        assert (hit is None) == (best < 0.5)
        if hit is not None:
            assert hit[0] == pytest.approx(best)


def test_novelty_rejects_a_reply_close_to_the_seeds_it_was_shown():
    seeds = sf.RougeIndex([(TRAIN[0].input, "seed row 'tr-1'")])
    close = "the food was wonderful and the staff were rude"  # 8 of 9 tokens in order: F1 0.89
    assert sf.check_novelty(close, seeds, 0.7) == sf.Rejected(
        sf.NOT_NOVEL, "ROUGE-L 0.89 (>= 0.7) to seed row 'tr-1', shown in its prompt")
    assert sf.check_novelty("noisy room but the dessert saved it", seeds, 0.7) is None


def test_label_balance_quota():
    assert sf.label_quotas(["a", "b", "c"], 7) == {"a": 3, "b": 2, "c": 2}
    quotas = sf.label_quotas(["pos", "neg"], 4)
    assert sf.check_label_quota("pos", Counter(pos=1, neg=2), quotas) is None
    assert sf.check_label_quota("pos", Counter(pos=2), quotas) == sf.Rejected(
        sf.LABEL_QUOTA_FULL, "label 'pos' already has its 2 rows")


# --- the generation loop with a scripted teacher -------------------------------------------------------------------

class ScriptedTeacher:
    """Stands in for HFTeacher: returns fixed replies in order and records the prompts it was sent."""

    ref = "scripted-teacher"

    def __init__(self, replies: list[str]) -> None:
        self.replies = list(replies)
        self.prompts: list[str] = []
        self.samplings: list[Sampling] = []

    def identity(self) -> str:
        return "scripted-v1"

    def parameter_count(self) -> int:
        return 1000

    def count_tokens(self, text: str) -> int:
        return words(text)

    def truncate(self, text: str, max_tokens: int) -> str:
        return " ".join(text.split()[:max_tokens])

    def complete(self, prompts, sampling):
        assert sampling.reply_start == "Input:"  # replies are started in the requested layout
        self.samplings.append(sampling)
        out = []
        for messages in prompts:
            assert [m["role"] for m in messages] == ["user"]
            self.prompts.append(messages[0]["content"])
            text = self.replies.pop(0)
            out.append(Completion(text, prompt_tokens=words(messages[0]["content"]), completion_tokens=words(text)))
        return out


REPLIES = [
    "Input: the dessert was a dream, light and sweet\nOutput: pos",           # 1 kept (pos)
    "Input: The pasta tasted like cardboard soaked in water.\nOutput: neg",   # 2 copies the test input
    "I cannot write reviews.",                                                # 3 unparseable
    "Input: service was slow and the fries were soggy\nOutput: neutral",      # 4 label not in set
    "Input: meh\nOutput: neg",                                                # 5 too short
    "Input: cold soup, rude waiter, never ever again\nOutput: neg",           # 6 near-duplicate of tr-2
    "Input: service was slow and the fries were soggy\nOutput: neg",          # 7 kept (neg)
    "Input: the dessert was a dream, light and sweet!\nOutput: pos",          # 8 exact duplicate of row 1
    "Input: friendly owner, fair prices, cosy room\nOutput: Pos.",            # 9 kept (pos, canonicalized)
    "Input: the terrace view made the whole night special\nOutput: pos",      # 10 pos quota full
    "Input: my steak arrived burnt and nobody apologised\nOutput: neg",       # 11 kept (neg): 4 rows reached
    "Input: an extra reply generated in the same batch\nOutput: neg",         # 12 surplus
]


def _config(**overrides) -> SyntheticConfig:
    base = dict(teacher="scripted-teacher", rows=4, seeds_per_prompt=2, batch_size=4, min_input_chars=10,
                max_input_tokens=12, seed=7)
    return SyntheticConfig(**{**base, **overrides})


def test_generation_keeps_filtered_rows_with_provenance_and_logs_every_rejection(tmp_path):
    teacher = ScriptedTeacher(REPLIES)
    with Meter() as meter:
        result = generate_synthetic(SENTIMENT, TRAIN, VALID + TEST, _config(), teacher, meter, cache_dir=tmp_path)

    assert [(r.input, r.target) for r in result.rows] == [
        ("the dessert was a dream, light and sweet", "pos"), ("service was slow and the fries were soggy", "neg"),
        ("friendly owner, fair prices, cosy room", "pos"), ("my steak arrived burnt and nobody apologised", "neg")]
    first = result.rows[0]
    assert first.id.startswith("syn-") and len({r.id for r in result.rows}) == 4
    assert first.meta["origin"] == "synthetic" and first.meta["teacher"] == "scripted-teacher"
    assert first.meta["attempt"] == 1 and first.meta["requested_label"] == "pos"
    assert len(first.meta["seed_ids"]) == 2 and set(first.meta["seed_ids"]) <= {"tr-1", "tr-2", "tr-3"}
    assert [r.meta["attempt"] for r in result.rows] == [1, 7, 9, 11]

    reasons = [(r["attempt"], r["reason"]) for r in result.rejections]
    assert reasons == [(2, sf.EXACT_DUPLICATE), (3, sf.UNPARSEABLE), (4, sf.LABEL_NOT_IN_SET), (5, sf.TOO_SHORT),
                       (6, sf.NEAR_DUPLICATE), (8, sf.EXACT_DUPLICATE), (10, sf.LABEL_QUOTA_FULL), (12, sf.SURPLUS)]
    by_attempt = {r["attempt"]: r for r in result.rejections}
    assert by_attempt[2]["detail"] == "input equals that of real row 'te-1'"
    assert by_attempt[2]["raw_output"] == REPLIES[1]
    assert "real row 'tr-2'" in by_attempt[6]["detail"]
    assert "tr-2" not in by_attempt[6]["seed_ids"]  # shown as a seed, it would be rejected as not novel
    assert by_attempt[8]["detail"] == f"input equals that of synthetic row {first.id!r}"

    stats = result.stats
    assert (stats["kept"], stats["attempts"], stats["rejected"], stats["short_by"]) == (4, 12, 8, 0)
    assert stats["labels"] == {"pos": 2, "neg": 2}
    assert stats["rejected_by_reason"][sf.EXACT_DUPLICATE] == 2 and stats["cached"] is False
    assert stats["completion_tokens"] == sum(words(r) for r in REPLIES)
    data = meter.phases["data"]
    assert data.tokens == stats["prompt_tokens"] + stats["completion_tokens"] and data.examples == 12
    assert meter.flops["data"] == 2.0 * 1000 * data.tokens
    assert meter.phases["inference"].tokens == 0


def test_prompts_show_seeds_and_ask_for_labels_round_robin(tmp_path):
    teacher = ScriptedTeacher(REPLIES)
    with Meter() as meter:
        generate_synthetic(SENTIMENT, TRAIN, VALID + TEST, _config(), teacher, meter, cache_dir=tmp_path)
    assert _asked_labels(teacher) == ["pos", "neg"] * 6
    assert "Each output is exactly one of these labels: pos, neg." in teacher.prompts[0]
    assert teacher.prompts[0].count("\nInput: ") == 2 + 1  # two seeds and the layout to reply in
    assert [s.seed for s in teacher.samplings] == [7 * 1_000_003 + b for b in range(3)]
    assert {(s.temperature, s.top_p) for s in teacher.samplings} == {(0.7, 0.5)}


def _asked_labels(teacher: ScriptedTeacher) -> list[str]:
    return [p.rsplit("whose output is ", 1)[1].split(".")[0] for p in teacher.prompts]


def test_a_label_with_its_share_is_no_longer_asked_for(tmp_path):
    replies = ["Input: the dessert was a dream, light and sweet\nOutput: pos",
               "Input: friendly owner, fair prices, cosy room\nOutput: pos",  # asked for neg, pos is kept: pos full
               "Input: service was slow and the fries were soggy\nOutput: neg",
               "Input: my steak arrived burnt and nobody apologised\nOutput: neg"]
    teacher = ScriptedTeacher(replies)
    with Meter() as meter:
        result = generate_synthetic(SENTIMENT, TRAIN, [], _config(batch_size=1), teacher, meter, cache_dir=tmp_path)
    assert _asked_labels(teacher) == ["pos", "neg", "neg", "neg"]
    assert [r.target for r in result.rows] == ["pos", "pos", "neg", "neg"] and result.rejections == []


def test_build_prompt_layout():
    task = TaskSpec("summaries", "generation", "Summarize the docstring in one line.")
    prompt = build_prompt(task, [Example("a", "def f(): ...", "Do f.")], None)
    assert prompt == ("Task: Summarize the docstring in one line.\n\nExamples:\n\nExample 1\nInput: def f(): ...\n"
                      "Output: Do f.\n\nWrite one new example of this task, different from the examples above. "
                      "Reply in exactly this layout and nothing else:\nInput: <the new input>\nOutput: <its output>")


def test_seed_inputs_are_cut_to_the_token_limit_in_prompts(tmp_path):
    long_train = [Example("long", " ".join(f"w{i}" for i in range(50)), "pos")]
    teacher = ScriptedTeacher(["nothing useful"])
    with Meter() as meter:
        generate_synthetic(SENTIMENT, long_train, [], _config(rows=1, max_attempts=1, batch_size=1), teacher,
                           meter, cache_dir=tmp_path)
    assert "Input: " + " ".join(f"w{i}" for i in range(12)) + "\nOutput: pos" in teacher.prompts[0]
    assert "w12" not in teacher.prompts[0]


def test_attempt_limit_stops_short_and_says_so(tmp_path):
    teacher = ScriptedTeacher(["no layout here"] * 3)
    with Meter() as meter:
        result = generate_synthetic(SENTIMENT, TRAIN, [], _config(max_attempts=3), teacher, meter,
                                    cache_dir=tmp_path)
    assert result.rows == [] and len(result.rejections) == 3
    assert (result.stats["attempts"], result.stats["short_by"], result.stats["acceptance_rate"]) == (3, 4, 0.0)


def test_rerun_loads_the_cache_and_generates_nothing(tmp_path):
    with Meter() as meter:
        first = generate_synthetic(SENTIMENT, TRAIN, VALID + TEST, _config(), ScriptedTeacher(REPLIES), meter,
                                   cache_dir=tmp_path)
    first_tokens, first_flops = meter.phases["data"].tokens, meter.flops["data"]
    again_teacher = ScriptedTeacher([])
    with Meter() as meter:
        again = generate_synthetic(SENTIMENT, TRAIN, VALID + TEST, _config(), again_teacher, meter,
                                   cache_dir=tmp_path)
    assert again_teacher.prompts == []
    # nothing generated now, but the teacher's first-run tokens and FLOPs are charged again (Meter.charge_cached)
    assert meter.phases["data"].tokens == first_tokens and meter.flops["data"] == first_flops
    assert again.rows == first.rows and [r.meta for r in again.rows] == [r.meta for r in first.rows]
    assert again.rejections == first.rejections
    assert again.stats["cached"] is True and again.stats["kept"] == 4

    # anything the result depends on changes the key: here the novelty threshold
    other = ScriptedTeacher(REPLIES)
    with Meter() as meter:
        generate_synthetic(SENTIMENT, TRAIN, VALID + TEST, _config(novelty_rouge_l=0.6), other, meter,
                           cache_dir=tmp_path)
    assert len(other.prompts) == 12


def test_cache_without_manifest_is_not_trusted(tmp_path):
    with Meter() as meter:
        result = generate_synthetic(SENTIMENT, TRAIN, VALID + TEST, _config(), ScriptedTeacher(REPLIES), meter,
                                    cache_dir=tmp_path)
    where = tmp_path / result.stats["cache_key"]
    assert load_cached(where) is not None
    (where / "manifest.json").unlink()
    assert load_cached(where) is None


def test_write_synthetic_puts_rows_and_rejections_in_the_run_directory(tmp_path):
    with Meter() as meter:
        result = generate_synthetic(SENTIMENT, TRAIN, VALID + TEST, _config(), ScriptedTeacher(REPLIES), meter,
                                    cache_dir=tmp_path / "cache")
    paths = write_synthetic(tmp_path / "run", "synthetic-finetune-m0-s0", result)
    assert paths["rows"] == tmp_path / "run" / "synthetic" / "synthetic-finetune-m0-s0.jsonl"
    rows = [json.loads(line) for line in paths["rows"].read_text().splitlines()]
    rejections = [json.loads(line) for line in paths["rejections"].read_text().splitlines()]
    assert [r["id"] for r in rows] == [r.id for r in result.rows]
    assert rows[0]["meta"]["origin"] == "synthetic" and rows[0]["meta"]["seed_ids"]
    assert [r["reason"] for r in rejections] == [r["reason"] for r in result.rejections]
    assert set(rejections[0]) >= {"attempt", "raw_output", "reason", "detail"}


def test_bad_inputs_are_user_errors(tmp_path):
    with Meter() as meter:
        with pytest.raises(UserError, match="at least one training row"):
            generate_synthetic(SENTIMENT, [], [], _config(), ScriptedTeacher([]), meter, cache_dir=tmp_path)
        unlabeled = TaskSpec("x", "classification", "Classify.", None)
        with pytest.raises(UserError, match="without labels"):
            generate_synthetic(unlabeled, TRAIN, [], _config(), ScriptedTeacher([]), meter, cache_dir=tmp_path)
        alpaca = [Example("a1", "some input text", TRAIN[0].target, {"instruction": "Rate it."})]
        with pytest.raises(UserError, match="row 'a1' carries its own instruction"):
            generate_synthetic(SENTIMENT, alpaca, [], _config(), ScriptedTeacher([]), meter, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="extra"):
        SyntheticConfig(teacher="t", rowz=3)


# --- the real tiny Llama as teacher --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_teacher(tiny_llama_dir, one_torch_thread):
    import torch
    from transformers import AutoModelForCausalLM

    from lmtailor.models.loading import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32)
    return HFTeacher(model, load_tokenizer(str(tiny_llama_dir)), "tiny-llama")


def test_tiny_llama_teacher_runs_end_to_end(tiny_teacher, tmp_path):
    from lmtailor.prompting.formats import encode_prompt

    cfg = _config(teacher="tiny-llama", rows=2, max_attempts=4, max_new_tokens=12, max_input_tokens=64)
    with Meter() as meter:
        result = generate_synthetic(SENTIMENT, TRAIN, VALID + TEST, cfg, tiny_teacher, meter, cache_dir=tmp_path)
    stats = result.stats
    assert len(result.rows) + len(result.rejections) == stats["attempts"] == 4
    assert 0 < stats["completion_tokens"] <= 4 * 12
    assert meter.phases["data"].tokens == stats["prompt_tokens"] + stats["completion_tokens"]
    assert meter.flops["data"] > 0

    prompt = [{"role": "user", "content": "Task: say something."}]
    replies = tiny_teacher.complete([prompt, prompt], Sampling(0.7, 0.5, 8, seed=3))
    assert [r.prompt_tokens for r in replies] == [len(encode_prompt(tiny_teacher.tokenizer, prompt))] * 2
    again = tiny_teacher.complete([prompt, prompt], Sampling(0.7, 0.5, 8, seed=3))
    assert [r.text for r in again] == [r.text for r in replies]  # the sampling seed fixes the replies

    started = tiny_teacher.complete([prompt], Sampling(0.7, 0.5, 8, seed=3, reply_start="Input:"))[0]
    start_ids = tiny_teacher.tokenizer("Input:", add_special_tokens=False)["input_ids"]
    assert started.text.startswith("Input:")  # the reply continues the forced start, which the text includes
    assert started.prompt_tokens == len(encode_prompt(tiny_teacher.tokenizer, prompt)) + len(start_ids)


def test_weights_digest_follows_the_weights(tiny_teacher):
    import torch

    model = tiny_teacher.model
    before = weights_digest(model)
    assert weights_digest(model) == before
    param = next(model.parameters())
    with torch.no_grad():
        param.view(-1)[0] += 1.0
        changed = weights_digest(model)
        param.view(-1)[0] -= 1.0
    assert changed != before


def test_encoder_teacher_is_refused():
    from transformers import BertConfig

    with pytest.raises(UserError, match="encoder"):
        HFTeacher(SimpleNamespace(config=BertConfig()), None, "tiny-bert")


def test_encoder_decoder_teacher_samples_without_a_chat_template(tiny_t5_dir, one_torch_thread):
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from lmtailor.models.loading import load_tokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(str(tiny_t5_dir), dtype=torch.float32)
    teacher = HFTeacher(model, load_tokenizer(str(tiny_t5_dir)), "tiny-t5")
    prompt = [{"role": "user", "content": "Task: say something."}]
    replies = teacher.complete([prompt], Sampling(0.7, 0.5, 6, seed=0))
    assert replies[0].prompt_tokens == len(teacher.tokenizer("Task: say something.")["input_ids"])
    assert 0 < replies[0].completion_tokens <= 6
