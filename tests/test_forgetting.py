"""The forgetting probe: a held-out general set, perplexity and accuracy checked by hand, the runner's record."""

import json
import math

import pytest
import torch

from lmtailor.probing import forgetting
from lmtailor.measure.probe_set import (MAX_PASSAGES, PASSAGE_WORDS, TextSet, general_choice_items,
                                        general_text_set, pack_passages)
from lmtailor.runtime import detect_runtime

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FP32 = detect_runtime("fp32", "cpu")


def _shingles(text: str, n: int = 8) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def test_text_set_is_deterministic_nonempty_and_disjoint_from_the_pydoc_corpus():
    from lmtailor.retrieval.corpus import pydoc_documents

    first, second = general_text_set(), general_text_set()
    assert first == second and first.sha256 == second.sha256
    assert 20 <= len(first.passages) <= MAX_PASSAGES
    assert "python-license" in first.sources and "zen-of-python" in first.sources
    assert all(0 < len(p.split()) <= PASSAGE_WORDS for p in first.passages)
    assert any("Guido van Rossum" in p for p in first.passages)  # the licence's history, as prose
    assert not any("1.3 thru 1.5.2" in p for p in first.passages)  # the release table is not prose: dropped
    docs = pydoc_documents()
    corpus = set().union(*(_shingles(d.text) for d in docs))
    shared = [p for p in first.passages if _shingles(p) & corpus]
    assert not shared, shared[:2]  # no 8-word run of a passage appears in any docstring the tasks are built from


def test_passages_keep_whole_sentences_within_the_word_limit():
    text = "One two three. Four five six seven.\n\nEight nine.\n=====\n\nTen eleven twelve thirteen fourteen."
    # Sentences fill a passage up to 7 words, across paragraphs; the heading underline is dropped.
    assert pack_passages(text, words=7) == ["One two three. Four five six seven.",
                                            "Eight nine. Ten eleven twelve thirteen fourteen."]
    assert pack_passages("a b c d e f g h i j", words=4) == ["a b c d", "e f g h", "i j"]  # one long sentence


def test_choice_items_are_forty_deterministic_and_answered_by_their_rule():
    items = general_choice_items()
    assert items == general_choice_items() and len(items) == 40
    assert all(len(set(i.choices)) == len(i.choices) and 0 <= i.answer < len(i.choices) for i in items)
    for item in items:
        answer = item.choices[item.answer]
        if item.kind == "addition":
            a, b = item.question.removeprefix("What is ").rstrip("?").split(" + ")
            assert int(answer) == int(a) + int(b)
        elif item.kind == "comparison":
            assert int(answer) == max(int(c) for c in item.choices)
    days = [i for i in items if i.kind == "days"]
    assert days[0].question == "Which day comes after Monday?" and days[0].choices[days[0].answer] == "Tuesday"
    assert days[-1].choices[days[-1].answer] == "Monday"  # after Sunday
    assert len({i.answer for i in items}) >= 5  # the right answer is not always in the same place
    assert len({i.choices for i in items}) == 5 + 6  # five shared choice sets, and a pair per comparison


@pytest.fixture(scope="module")
def tiny_llama():
    from lmtailor.models import load_model

    loaded = load_model("tiny-llama", FP32)
    return loaded.model, loaded.tokenizer


def _hand_nll(model, ids: list[int]) -> tuple[float, int]:
    """Summed NLL of tokens 1..n-1 given the ones before, from one unbatched forward."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -sum(logp[t - 1, ids[t]].item() for t in range(1, len(ids))), len(ids) - 1


def test_causal_perplexity_equals_a_hand_computation(tiny_llama):
    model, tok = tiny_llama
    assert tok("a", add_special_tokens=True)["input_ids"][0] != tok.bos_token_id  # no BOS: the first token is given
    short, long = "The river runs past the old stone bridge.", "Fine-tuning adapts the weights; prompting adapts " \
        "the input; retrieval brings the right passage to the model when it needs it."
    nll_s, n_s = _hand_nll(model, tok(short, add_special_tokens=False)["input_ids"])
    got = forgetting.text_perplexity(model, tok, "decoder-only", [short])
    assert got.tokens == n_s and got.truncated == 0
    assert got.value == pytest.approx(math.exp(nll_s / n_s), rel=1e-4)
    # Two passages of different lengths share a right-padded batch: padding must change nothing.
    nll_l, n_l = _hand_nll(model, tok(long, add_special_tokens=False)["input_ids"])
    both = forgetting.text_perplexity(model, tok, "decoder-only", [short, long], batch_size=2)
    assert both.tokens == n_s + n_l
    assert both.value == pytest.approx(math.exp((nll_s + nll_l) / (n_s + n_l)), rel=1e-4)
    cut = forgetting.text_perplexity(model, tok, "decoder-only", [long], max_tokens=5)
    assert cut.truncated == 1 and cut.tokens == 4


@pytest.mark.parametrize("kind", ["prompt-tuning", "prefix"])
def test_perplexity_of_a_virtual_token_model_scores_the_passage_tokens_after_its_virtual_tokens(tiny_llama, kind):
    """A prompt-tuned PeftModel returns logits for its virtual tokens too; a prefix-tuned one puts them in the
    cache. Either way the probe scores exactly the passage's tokens, given the virtual tokens before them."""
    import copy

    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

    base, tok = tiny_llama
    config_class = PromptTuningConfig if kind == "prompt-tuning" else PrefixTuningConfig
    torch.manual_seed(0)
    model = get_peft_model(copy.deepcopy(base), config_class(task_type="CAUSAL_LM", num_virtual_tokens=4)).eval()
    text, other = "The river runs past the old stone bridge.", "A longer passage, so the batch needs padding here."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -len(ids):]
    logp = torch.log_softmax(logits.float(), dim=-1)
    nll = -sum(logp[t - 1, ids[t]].item() for t in range(1, len(ids)))
    got = forgetting.text_perplexity(model, tok, "decoder-only", [text, other], batch_size=1)
    alone = forgetting.text_perplexity(model, tok, "decoder-only", [text])
    assert alone.tokens == len(ids) - 1
    assert alone.value == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-4)
    assert got.tokens > alone.tokens


def test_encoder_decoder_perplexity_scores_the_second_half_given_the_first(tiny_t5_dir):
    from lmtailor.models import load_model

    loaded = load_model("tiny-t5", FP32)
    model, tok = loaded.model, loaded.tokenizer
    text = "one two three four five six"
    source = tok("one two three")["input_ids"]
    target = tok(text_target="four five six")["input_ids"]  # ends with </s>, which is scored too
    with torch.no_grad():
        labels = torch.tensor([target])
        logits = model(input_ids=torch.tensor([source]),
                       decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels=labels)).logits[0]
    logp = torch.log_softmax(logits.float(), dim=-1)
    nll = -sum(logp[i, t].item() for i, t in enumerate(target))
    got = forgetting.text_perplexity(model, tok, "encoder-decoder", [text])
    assert got.tokens == len(target)
    assert got.value == pytest.approx(math.exp(nll / len(target)), rel=1e-4)


def test_probe_changes_when_the_model_is_trained_on_unrelated_text(tiny_llama):
    import copy

    base_model, tok = tiny_llama
    model = copy.deepcopy(base_model)
    text_set = TextSet(general_text_set().passages[:8], ("python-license",), ())
    items = general_choice_items()[:12]
    before = forgetting.probe(model, tok, "decoder-only", FP32, None, text_set=text_set, items=items)
    assert before["passages"] == 8 and before["items"] == 12 and before["perplexity_kind"] == "causal"
    assert 0.0 <= before["accuracy"] <= 1.0 and before["seconds"] > 0
    assert before["text_set"]["sha256"] == text_set.sha256
    # A few steps on a text that has nothing to do with English prose.
    ids = torch.tensor([tok("0 1 2 3 4 5 6 7 8 9 " * 6, add_special_tokens=False)["input_ids"]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(10):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = forgetting.probe(model, tok, "decoder-only", FP32, None, text_set=text_set, items=items)
    assert model.training  # the probe put the model back as it found it
    assert after["perplexity"] > 1.2 * before["perplexity"]  # it forgot (what little) English it had
    change = forgetting.forgetting_change(before, after)
    assert change["delta_perplexity"] == pytest.approx(after["perplexity"] - before["perplexity"])
    assert change["delta_perplexity_pct"] == pytest.approx(100 * (after["perplexity"] / before["perplexity"] - 1))
    assert change["delta_accuracy_pts"] == pytest.approx(100 * (after["accuracy"] - before["accuracy"]))


def test_accuracy_counts_the_choice_with_the_highest_likelihood(tiny_llama, monkeypatch):
    model, tok = tiny_llama
    items = general_choice_items()
    days = [i for i in items if i.kind == "days"]
    groups = []

    def scores(m, t, f, group):  # "knows" the answer of the first two items it is given, none of the others
        groups.append(len(group))
        return [[float((i == item.answer) == (k < 2)) for i in range(len(item.choices))]
                for k, item in enumerate(group)]

    monkeypatch.setattr(forgetting, "_choice_scores", scores)
    comparisons = [i for i in items if i.kind == "comparison"][:2]
    accuracy, by_kind = forgetting.choice_accuracy(model, tok, "decoder-only", items[:4] + comparisons + days)
    assert groups == [4, 1, 1, 7]  # items sharing their choices are scored together
    assert by_kind == {"addition": [2, 4], "comparison": [2, 2], "days": [2, 7]} and accuracy == 6 / 13


def test_grouped_choice_scores_equal_scoring_each_item_alone(tiny_llama):
    model, tok = tiny_llama
    days = [i for i in general_choice_items() if i.kind == "days"]
    together = forgetting._choice_scores(model, tok, "decoder-only", days)
    alone = [forgetting._choice_scores(model, tok, "decoder-only", [item])[0] for item in days]
    flat = [x for row in together for x in row]
    # The shared prefix cache changes no score beyond float noise (label_scoring's own check allows 2e-3).
    assert flat == pytest.approx([x for row in alone for x in row], rel=1e-3)


def test_encoder_classifier_gets_no_perplexity_and_says_why(tiny_bert_dir, monkeypatch):
    from lmtailor.models import detect_family, load_model

    loaded = load_model("tiny-bert", FP32, head="sequence-classification", num_labels=3)
    result = forgetting.probe(loaded.model, loaded.tokenizer, detect_family(loaded.model.config), FP32, None)
    assert result["perplexity"] is None and result["accuracy"] is None
    assert "classification head" in result["perplexity_note"] and result["accuracy_note"]
    # The base model of an encoder is not even loaded: there is nothing to probe.
    monkeypatch.setattr("lmtailor.models.load_model", lambda *a, **k: pytest.fail("loaded an encoder"))
    base = forgetting.probe_model_ref("tiny-bert", FP32)
    assert base["perplexity"] is None and base["model"] == "tiny-bert"
    assert forgetting.forgetting_change(base, result)["delta_perplexity"] is None


def test_probes_on_different_text_sets_are_not_compared():
    a = {"text_set": {"sha256": "a"}, "perplexity": 10.0, "accuracy": 0.5, "items": 40}
    b = {"text_set": {"sha256": "b"}, "perplexity": 12.0, "accuracy": 0.4, "items": 40}
    change = forgetting.forgetting_change(a, b)
    assert change["delta_perplexity"] is None and change["delta_accuracy_pts"] is None and "different" in change["note"]


def _experiment(tmp_path, strategies: list[str], extra: str = "") -> str:
    with (tmp_path / "rows.jsonl").open("w") as f:
        for i in range(40):
            label = ("red", "green")[i % 2]
            f.write(json.dumps({"text": f"the {label} stone number {i}", "colour": label}) + "\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text("name: forgetting\n"
                   "task: {type: classification, instruction: 'Which colour word does the text contain?'}\n"
                   "data: {source: rows.jsonl, input_field: text, target_field: colour, max_test: 6}\n"
                   "models: [tiny-llama]\n"
                   "strategies:\n" + "".join(f"  - {s}\n" for s in strategies) +
                   "budget: {max_input_tokens: 32, max_seq_len: 128}\n"
                   "runtime: {precision: fp32}\n" + extra)
    return str(exp)


def test_runner_records_forgetting_for_trained_rows_and_probes_the_base_model_once(tmp_path, monkeypatch):
    from lmtailor.cli import main

    calls = []
    real_probe = forgetting.probe
    monkeypatch.setattr(forgetting, "probe", lambda *a, **k: calls.append(a[2]) or real_probe(*a, **k))
    exp = _experiment(tmp_path, ["{name: prompt, shots: 0}",
                                 "{name: finetune, method: lora, max_steps: 2, batch_size: 4}",
                                 "{name: finetune, method: full, max_steps: 2, batch_size: 4}"])
    assert main(["run", exp, "--out", str(tmp_path / "runs")]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    records = {r["label"]: r for r in (json.loads(p.read_text()) for p in (run_dir / "results").glob("*.json"))}
    assert all(r["status"] == "ok" for r in records.values())
    assert "forgetting" not in records["zero-shot"]  # nothing was trained: nothing to forget
    assert len(calls) == 3  # two tuned models and the base model once, not once per row
    base = json.loads((run_dir / "probes" / "tiny-llama.json").read_text())
    assert base["model"] == "tiny-llama" and base["perplexity"] > 0
    for label in ("LoRA", "full FT"):
        f = records[label]["forgetting"]
        assert f["base"] == base and f["base_model"] == "tiny-llama" and "error" not in f
        assert f["tuned"]["perplexity"] > 0 and f["tuned"]["seconds"] > 0
        assert f["delta_perplexity"] == pytest.approx(f["tuned"]["perplexity"] - base["perplexity"])
        assert f["delta_accuracy_pts"] == pytest.approx(100 * (f["tuned"]["accuracy"] - base["accuracy"]))
    table = (run_dir / "results.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| approach"))
    assert "| forgetting |" in header and "Forgetting: the trained model against its base model" in table
    lora_line = next(line for line in table.splitlines() if line.startswith("| LoRA"))
    assert f"ppl {records['LoRA']['forgetting']['delta_perplexity_pct']:+.1f}%" in lora_line


def test_a_failed_probe_is_recorded_and_the_row_stands(tmp_path, monkeypatch):
    from lmtailor.cli import main

    def boom(*args, **kwargs):
        raise RuntimeError("probe exploded")

    monkeypatch.setattr(forgetting, "probe", boom)
    exp = _experiment(tmp_path, ["{name: finetune, method: lora, max_steps: 1, batch_size: 4}"])
    assert main(["run", exp, "--out", str(tmp_path / "runs")]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    (record,) = [r for r in (json.loads(p.read_text()) for p in (run_dir / "results").glob("*.json"))
                 if r["strategy"] != "baseline"]  # the trivial baseline row every run adds trains nothing
    assert record["status"] == "ok" and record["metrics"]
    assert record["forgetting"]["error"]["type"] == "RuntimeError"
    assert record["forgetting"]["error"]["probe"] == "tuned"
    assert "probe failed: RuntimeError" in (run_dir / "results.md").read_text()


def test_the_probe_can_be_switched_off(tmp_path, monkeypatch):
    from lmtailor.cli import main

    monkeypatch.setattr(forgetting, "probe", lambda *a, **k: pytest.fail("probed with forgetting: false"))
    exp = _experiment(tmp_path, ["{name: finetune, method: lora, max_steps: 1, batch_size: 4}"], "forgetting: false\n")
    assert main(["run", exp, "--out", str(tmp_path / "runs")]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    (record,) = [r for r in (json.loads(p.read_text()) for p in (run_dir / "results").glob("*.json"))
                 if r["strategy"] != "baseline"]  # the trivial baseline row every run adds trains nothing
    assert record["status"] == "ok" and "forgetting" not in record
    assert not (run_dir / "probes").exists()
    assert "| forgetting |" not in (run_dir / "results.md").read_text()
