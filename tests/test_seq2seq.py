"""Encoder-decoder models (tiny T5 and BART): formatting, prediction in every mode, LoRA and full fine-tuning."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from lmtailor.core.budget import Budget
from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.errors import UserError
from lmtailor.inference.backends.base import PredictRequest
from lmtailor.inference.generation import generate_ids
from lmtailor.inference.predict import predict
from lmtailor.inference.seq2seq import score_labels_seq2seq, seq2seq_labels
from lmtailor.measure.meter import Meter
from lmtailor.models import load_model
from lmtailor.prompting.seq2seq_format import (build_sources, encode_source, encode_target, encode_training_row,
                                               source_text)
from lmtailor.runtime import Runtime
from lmtailor.strategies.finetune import FinetuneConfig

CPU = Runtime("cpu", "fp32", "tests run in fp32 on the CPU")
LABELS = ("red", "green", "light blue sky")  # different token lengths, so the label batch is padded
TASK = TaskSpec("colours", "classification", "Which colour word does the text contain?", LABELS)
GEN_TASK = TaskSpec("echo", "generation", "Repeat the colour word.")
BUDGET = Budget(max_input_tokens=32, max_new_tokens=6, max_seq_len=96, eval_batch_size=3)
SHOTS = [Example("s0", "a red hill", "red"), Example("s1", "green water", "green")]


def _rows(n: int, prefix: str, seed: int) -> list[Example]:
    rng = random.Random(seed)
    words = "the a of one two river stone cloud quiet bright small old".split()
    return [Example(f"{prefix}{i}", " ".join(rng.choices(words, k=4)) + f" {LABELS[i % 3]} " +
                    " ".join(rng.choices(words, k=2)), LABELS[i % 3]) for i in range(n)]


TRAIN, VAL, TEST = _rows(24, "train", 0), _rows(6, "val", 1), _rows(5, "test", 2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def tiny_bart_dir(_private_cache):
    """A tiny random BART saved with its tokenizer; the dir behind the alias tiny-bart."""
    from lmtailor.models.tiny import tiny_model_dir

    return tiny_model_dir("bart")


@pytest.fixture(scope="module", params=["t5", "bart"])
def tiny(request):
    return load_model(str(request.getfixturevalue(f"tiny_{request.param}_dir")), CPU)


# --- formatting ----------------------------------------------------------------------------------------------------

def test_source_text_layouts():
    assert source_text(TASK, "the sky") == ("Which colour word does the text contain?\n"
                                            "Options: red, green, light blue sky\n\nthe sky")
    assert source_text(replace(TASK, instruction=""), "the sky") == "the sky"  # finetune's with_instruction: false
    few = source_text(TASK, "the sky", SHOTS)
    assert few.endswith("Input: a red hill\nAnswer: red\n\nInput: green water\nAnswer: green\n\n"
                        "Input: the sky\nAnswer:")
    assert few.startswith("Which colour word")
    assert "Options" not in source_text(GEN_TASK, "x")  # label options only for classification


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_targets_end_with_eos_and_sources_carry_the_family_specials(request, family):
    tok = load_model(str(request.getfixturevalue(f"tiny_{family}_dir")), CPU).tokenizer
    for label in LABELS:
        ids = encode_target(tok, label)
        assert ids[-1] == tok.eos_token_id and tok.decode(ids, skip_special_tokens=True) == label
    src = encode_source(tok, "the river")
    assert src[-1] == tok.eos_token_id
    assert (src[0] == tok.bos_token_id) == (family == "bart")


def test_inputs_are_cut_to_the_budget_and_counted(tiny_t5_dir):
    tok = load_model(str(tiny_t5_dir), CPU).tokenizer
    long = Example("long", "the river " * 40, "red")
    sources = build_sources(tok, TASK, [long, Example("short", "red", "red")], [Example("s", "stone " * 40, "red")],
                            max_input_tokens=8)
    assert sources.truncated_inputs == 1 and sources.truncated_exemplar_inputs == 1
    assert len(tok(sources.texts[0].split("Input: ")[-1].removesuffix("\nAnswer:"),
                   add_special_tokens=False)["input_ids"]) <= 8
    row = encode_training_row(tok, TASK, long, max_input_tokens=200, max_seq_len=60)
    assert row.input_truncated and len(row.source_ids) <= 60 and row.source_ids[-1] == tok.eos_token_id
    assert not row.target_truncated and row.target_ids == encode_target(tok, "red")
    with pytest.raises(UserError, match="max_seq_len"):
        encode_training_row(tok, TASK, long, max_input_tokens=200, max_seq_len=5)


# --- prediction ----------------------------------------------------------------------------------------------------

@torch.no_grad()
def _naive_scores(model, sources, labels, normalize):
    """One full forward per (row, label): the model's own loss over the label ids, times their count."""
    scores = []
    for src in sources:
        row = []
        for lab in labels:
            loss = model(input_ids=torch.tensor([src]), labels=torch.tensor([lab])).loss.item()
            row.append(-loss if normalize else -loss * len(lab))
        scores.append(row)
    return scores


@pytest.mark.parametrize("shots", [(), SHOTS])
@pytest.mark.parametrize("normalize", [False, True])
def test_likelihood_equals_one_forward_per_label(tiny, shots, normalize):
    tok = tiny.tokenizer
    sources = [encode_source(tok, t) for t in build_sources(tok, TASK, TEST, shots, 32).texts]
    labels = [encode_target(tok, lab) for lab in LABELS]
    assert len({len(lab) for lab in labels}) > 1
    result = score_labels_seq2seq(tiny.model, sources, labels, tok.pad_token_id, normalize=normalize)
    reference = _naive_scores(tiny.model, sources, labels, normalize)
    torch.testing.assert_close(torch.tensor(result.scores), torch.tensor(reference), atol=1e-4, rtol=1e-4)
    assert result.tokens == sum(len(s) + sum(map(len, labels)) for s in sources)


@pytest.mark.parametrize("mode", ["likelihood", "constrained"])
def test_label_modes_answer_with_a_label_and_count(tiny, mode):
    meter = Meter()
    preds, details = predict(tiny.model, tiny.tokenizer, TASK, TEST, SHOTS, BUDGET, meter, mode=mode)
    assert len(preds) == len(TEST) and set(preds) <= set(LABELS)
    assert details["mode"] == mode and details["shots"] == 2
    assert meter.phases["inference"].tokens == details["tokens"] > 0
    assert meter.phases["inference"].examples == len(TEST) and meter.flops["inference"] > 0
    if mode == "constrained":
        assert details["no_label_match"] == 0
    else:
        assert list(details["label_scores"]) == [r.id for r in TEST]


def test_generate_returns_text_and_batching_changes_nothing(tiny):
    meter = Meter()
    preds, details = predict(tiny.model, tiny.tokenizer, GEN_TASK, TEST, (), BUDGET, meter)
    assert details["mode"] == "generate" and len(preds) == len(TEST)
    assert all(isinstance(p, str) for p in preds)  # an untrained model may stop at once: text is tested after FT
    tok = tiny.tokenizer
    sources = [encode_source(tok, t) for t in build_sources(tok, GEN_TASK, TEST, (), 32).texts]
    stops = [tok.eos_token_id]
    batched = generate_ids(tiny.model, sources, 6, stops, tok.pad_token_id, batch_size=3)
    single = [generate_ids(tiny.model, [s], 6, stops, tok.pad_token_id, batch_size=1).ids[0]
              for s in sources]
    assert batched.ids == single
    assert [tok.decode(ids, skip_special_tokens=True).strip() for ids in single] == preds
    assert batched.tokens == details["tokens"] == sum(len(s) + len(g) for s, g in zip(sources, single))


def test_wrong_model_or_mode_is_a_clear_error(tiny, tiny_llama_dir):
    with pytest.raises(UserError, match="has none"):
        predict(tiny.model, tiny.tokenizer, GEN_TASK, TEST, (), BUDGET, Meter(), mode="likelihood")
    with pytest.raises(UserError, match="unknown scoring mode"):
        predict(tiny.model, tiny.tokenizer, TASK, TEST, (), BUDGET, Meter(), mode="beam")
    llama = load_model(str(tiny_llama_dir), CPU)
    with pytest.raises(UserError, match="not an encoder-decoder"):  # the path itself refuses the wrong family
        seq2seq_labels(llama.model, llama.tokenizer, PredictRequest(TASK, TEST, BUDGET, mode="likelihood"), Meter())


# --- training ------------------------------------------------------------------------------------------------------

def _config(**kw) -> FinetuneConfig:
    return FinetuneConfig.model_validate({"name": "finetune", **kw})


def _train(model_dir, cfg: FinetuneConfig, out_dir):
    from lmtailor.training.seq2seq import train_seq2seq

    loaded = load_model(str(model_dir), CPU)
    trained = train_seq2seq(loaded.model, loaded.tokenizer, cfg, cfg.method, TASK, TRAIN, VAL, BUDGET, CPU, 0,
                            out_dir)
    return trained, loaded.tokenizer


PROBE_SOURCES = ["the river red stone", "one two light blue sky cloud quiet"]
PROBE_TARGETS = ["red", "light blue sky"]


def _logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(PROBE_SOURCES, return_tensors="pt", padding=True)
    labels = tokenizer(text_target=PROBE_TARGETS, return_tensors="pt", padding=True)["input_ids"]
    with torch.no_grad():
        return model(**batch, labels=labels).logits


@pytest.fixture(scope="module", params=["t5", "bart"])
def lora_run(request, tmp_path_factory):
    model_dir = request.getfixturevalue(f"tiny_{request.param}_dir")
    # 24 rows / batch 4 = 6 steps an epoch; 4 whole epochs, so the token count has an exact expected value
    cfg = _config(method="lora", epochs=4, batch_size=4, learning_rate=1e-2, logging_steps=1)
    trained, tok = _train(model_dir, cfg, tmp_path_factory.mktemp(f"lora-{request.param}"))
    return request.param, model_dir, trained, tok


@pytest.fixture(scope="module", params=["t5", "bart"])
def full_run(request, tmp_path_factory):
    model_dir = request.getfixturevalue(f"tiny_{request.param}_dir")
    cfg = _config(method="full", epochs=4, batch_size=4, learning_rate=1e-2, logging_steps=1)
    trained, tok = _train(model_dir, cfg, tmp_path_factory.mktemp(f"full-{request.param}"))
    return request.param, model_dir, trained, tok


def _assert_learnt(trained, epochs: int):
    from lmtailor.training.common import summarize_log

    s = summarize_log(trained.state.log_history)
    assert s["last_train_loss"] < s["first_train_loss"] - 0.3
    assert len(s["eval_log"]) == epochs  # validation loss once per epoch
    assert s["eval_log"][-1]["eval_loss"] < s["eval_log"][0]["eval_loss"]
    # every real source and target token, once per epoch, no padding
    assert trained.state.num_input_tokens_seen == epochs * trained.train.tokens
    assert trained.train.truncated_inputs == trained.train.truncated_targets == 0


def test_lora_lowers_the_loss_and_trains_only_adapters(lora_run):
    family, _, trained, _ = lora_run
    _assert_learnt(trained, epochs=4)
    assert trained.state.global_step == 24
    assert 0 < trained.trainable < trained.total
    names = [n for n, p in trained.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    default = {"t5": {"q", "v"}, "bart": {"q_proj", "v_proj"}}[family]  # PEFT's defaults for the architecture
    assert set(trained.model.peft_config["default"].target_modules) == default


def test_lora_adapter_reloads_with_plain_peft_and_gives_the_same_logits(lora_run):
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    _, model_dir, trained, tok = lora_run
    adapter = trained.artifact
    assert trained.artifact_name == "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    assert (adapter / "tokenizer_config.json").is_file() and not (adapter.parent / "checkpoints").exists()
    base = AutoModelForSeq2SeqLM.from_pretrained(model_dir, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, adapter).eval()
    expected = _logits(trained.model.eval(), tok)
    torch.testing.assert_close(_logits(reloaded, tok), expected)
    untuned = AutoModelForSeq2SeqLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    assert not torch.allclose(_logits(untuned, tok), expected, atol=1e-4)
    # the merged model, as the strategy would serve it, predicts like the adapter model
    merged = trained.model.merge_and_unload()
    a, _ = predict(merged, tok, TASK, TEST, (), BUDGET, Meter())
    b, _ = predict(reloaded, tok, TASK, TEST, (), BUDGET, Meter())
    assert a == b and set(a) <= set(LABELS)


def test_full_ft_lowers_the_loss_and_reloads(full_run):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    _, _, trained, tok = full_run
    _assert_learnt(trained, epochs=4)
    assert trained.trainable == trained.total > 0
    path = trained.artifact
    assert trained.artifact_name == "model" and (path / "model.safetensors").is_file()
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.testing.assert_close(_logits(reloaded, tokenizer), _logits(trained.model.eval(), tok))
    a, _ = predict(reloaded, tokenizer, TASK, TEST, (), BUDGET, Meter())
    b, _ = predict(trained.model, tok, TASK, TEST, (), BUDGET, Meter())
    assert a == b


def test_a_tuned_model_generates_the_answer_text(full_run):
    _, _, trained, tok = full_run
    meter = Meter()
    preds, details = predict(trained.model, tok, TASK, TEST, (), BUDGET, meter, mode="generate")
    assert sum(p in LABELS for p in preds) >= len(TEST) - 1  # it learnt to write a label and stop
    assert details["truncated_generations"] == 0


def test_training_args_follow_the_runtime(tmp_path, tiny_t5_dir):
    from lmtailor.training.seq2seq import build_seq2seq_rows, build_seq2seq_trainer, seq2seq_training_args

    loaded = load_model(str(tiny_t5_dir), CPU)
    rows = build_seq2seq_rows(loaded.tokenizer, TASK, TRAIN[:4], BUDGET)
    full = _config(method="full")
    trainer = build_seq2seq_trainer(loaded.model, loaded.tokenizer, full, full.method, rows.dataset, None, CPU,
                                    0, tmp_path)
    args = trainer.args
    assert args.bf16 is False and args.fp16 is False and args.use_cpu is True
    assert args.report_to == [] and args.save_strategy == "steps" and args.eval_strategy == "no"
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    batch = trainer.data_collator([rows.dataset[i] for i in range(4)])
    assert (batch["labels"] == -100).any()  # targets of different lengths are padded with -100, not pad ids
    assert batch["decoder_input_ids"][:, 0].eq(loaded.model.config.decoder_start_token_id).all()
    full = _config(method="full")
    bf16 = seq2seq_training_args(full, full.method, Runtime("cpu", "bf16", "native"), 0, tmp_path, False)
    assert bf16.bf16 is True and bf16.fp16 is False


def test_completion_only_loss_false_is_refused(tmp_path, tiny_t5_dir):
    with pytest.raises(UserError, match="completion_only_loss"):
        _train(tiny_t5_dir, _config(method="lora", completion_only_loss=False), tmp_path)
