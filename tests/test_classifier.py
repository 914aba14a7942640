"""Encoder classifiers on a tiny BERT: full and LoRA learn a toy task, save self-describing artifacts that reload."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from lmtailor.core.budget import Budget
from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.errors import UserError
from lmtailor.measure.meter import Meter
from lmtailor.models import load_model
from lmtailor.runtime import Runtime
from lmtailor.strategies.finetune import FinetuneConfig
from lmtailor.training.classifier import (LABELS_FILE, classifier_args, learning_rate, lora_config, predict_classifier,
                                          train_classifier)
from lmtailor.training.common import summarize_log
from lmtailor.training.trained import Trained

LABELS = ("red", "green", "blue")
TASK = TaskSpec("colours", "classification", "Which colour word does the text contain?", LABELS)
BUDGET = Budget(max_input_tokens=32, eval_batch_size=8)
CPU = Runtime("cpu", "fp32", "test")
WORDS = "the a of one two river stone cloud quiet bright small old".split()


def _rows(n: int, prefix: str, seed: int) -> list[Example]:
    """Rows whose label is the colour word hidden among filler words: learnable, not trivially by position."""
    rng = random.Random(seed)
    return [Example(f"{prefix}{i}", " ".join(rng.choices(WORDS, k=rng.randint(1, 5)) + [LABELS[i % 3]] +
                                             rng.choices(WORDS, k=rng.randint(1, 4))), LABELS[i % 3])
            for i in range(n)]


TRAIN, VAL, TEST = _rows(48, "train", 0), _rows(9, "val", 1), _rows(30, "test", 2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(**kw) -> FinetuneConfig:
    return FinetuneConfig.model_validate({"name": "finetune", "batch_size": 8, "logging_steps": 2, **kw})


def _loop_and_method(**kw):
    cfg = _config(**kw)
    return cfg, cfg.method


def _load(path):
    torch.manual_seed(0)  # the fresh head's initialisation
    return load_model(str(path), CPU, head="sequence-classification", num_labels=3)


@dataclass
class Run:
    trained: Trained
    base: dict[str, torch.Tensor]  # the weights before training
    tokenizer: object


def _train(tiny_bert_dir, out_dir: Path, **kw) -> Run:
    loaded = _load(tiny_bert_dir)
    base = {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}
    cfg = _config(**kw)
    trained = train_classifier(loaded.model, loaded.tokenizer, cfg, cfg.method, TASK, TRAIN, VAL, BUDGET, CPU, 0,
                               out_dir)
    return Run(trained, base, loaded.tokenizer)


@pytest.fixture(scope="module")
def full_run(tiny_bert_dir, tmp_path_factory) -> Run:
    return _train(tiny_bert_dir, tmp_path_factory.mktemp("full"), method="full", epochs=8, learning_rate=3e-3)


@pytest.fixture(scope="module")
def lora_run(tiny_bert_dir, tmp_path_factory) -> Run:
    return _train(tiny_bert_dir, tmp_path_factory.mktemp("lora"), method="lora", epochs=10, learning_rate=5e-3,
                  batch_size=4, target_modules="all-linear")


def _accuracy(model, tokenizer) -> float:
    predictions, _ = predict_classifier(model, tokenizer, TASK, TEST, BUDGET, Meter())
    return sum(p == row.target for p, row in zip(predictions, TEST)) / len(TEST)


@pytest.mark.parametrize("which", ["full_run", "lora_run"])
def test_training_lowers_the_loss_and_beats_chance(which, request):
    run: Run = request.getfixturevalue(which)
    log = summarize_log(run.trained.state.log_history)
    assert log["last_train_loss"] < 0.7 * log["first_train_loss"]
    accuracies = [e["eval_accuracy"] for e in run.trained.state.log_history if "eval_accuracy" in e]
    assert len(accuracies) == run.trained.state.epoch  # validation loss and accuracy every epoch
    assert _accuracy(run.trained.model, run.tokenizer) >= 0.6  # chance is 1/3
    assert run.trained.train.summary() == {"rows": 48, "tokens": run.trained.train.tokens, "truncated_inputs": 0}


def test_lora_trains_only_adapters_and_the_head(lora_run):
    model = lora_run.trained.model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert any("classifier" in n and "modules_to_save" in n for n in trainable)
    assert lora_run.trained.trainable < lora_run.trained.total / 5
    # the frozen encoder weights did not move; the head copy that was trained did
    state = model.state_dict()
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(state["base_model.model.bert.encoder.layer.0.attention.self.query.base_layer.weight"],
                       lora_run.base[key])
    assert not torch.equal(state["base_model.model.classifier.modules_to_save.default.weight"],
                           lora_run.base["classifier.weight"])


def test_full_training_moves_the_encoder(full_run):
    state = full_run.trained.model.state_dict()
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(state[key], full_run.base[key])
    assert full_run.trained.trainable == full_run.trained.total


def test_lora_adapter_reloads_with_plain_peft_and_gives_the_same_logits(lora_run, tiny_bert_dir):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    adapter = lora_run.trained.artifact
    assert lora_run.trained.artifact_name == "adapter" and (adapter / "adapter_model.safetensors").exists()
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3)
    reloaded = PeftModel.from_pretrained(base, adapter).eval()
    enc = lora_run.tokenizer([r.input for r in TEST[:6]], padding=True, return_tensors="pt")
    model = lora_run.trained.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**enc).logits, model(**enc).logits)
        merged = model.merge_and_unload()  # how the strategy serves it: adapter folded in, trained head swapped in
        torch.testing.assert_close(merged(**enc).logits, reloaded(**enc).logits, rtol=1e-4, atol=1e-5)
    assert json.loads((adapter / LABELS_FILE).read_text())["labels"] == list(LABELS)


@pytest.mark.parametrize("config_name, kwargs, head", [
    ("DebertaV2Config", {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                         "intermediate_size": 64}, {"pooler", "classifier"}),
    ("RobertaConfig", {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "intermediate_size": 64}, {"classifier"}),
])
def test_lora_trains_every_fresh_part_of_the_head(config_name, kwargs, head):
    """DeBERTa's pooler is as new as its classifier; PEFT's SEQ_CLS default would leave it frozen and random."""
    import transformers
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification

    config = getattr(transformers, config_name)(vocab_size=100, num_labels=3, **kwargs)
    model = AutoModelForSequenceClassification.from_config(config)
    peft_model = get_peft_model(model, lora_config(_config(method="lora").method, model))
    trained_heads = {n.split(".")[2] for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in n}
    assert trained_heads == head


def test_lora_without_a_peft_default_asks_for_target_modules():
    from transformers import AutoModelForSequenceClassification, DistilBertConfig

    model = AutoModelForSequenceClassification.from_config(
        DistilBertConfig(vocab_size=100, dim=32, n_layers=1, n_heads=2, hidden_dim=64, num_labels=3))
    with pytest.raises(UserError, match="target_modules"):
        lora_config(_config(method="lora").method, model)
    assert set(lora_config(_config(method="lora", target_modules="all-linear").method, model).modules_to_save) == {
        "pre_classifier", "classifier"}


def test_full_model_reloads_and_names_its_labels(full_run):
    from transformers import AutoModelForSequenceClassification

    path = full_run.trained.artifact
    assert full_run.trained.artifact_name == "model" and (path / "model.safetensors").exists()
    reloaded = AutoModelForSequenceClassification.from_pretrained(path).eval()
    assert reloaded.config.id2label == dict(enumerate(LABELS))
    assert reloaded.config.label2id == {label: i for i, label in enumerate(LABELS)}
    enc = full_run.tokenizer([r.input for r in TEST[:6]], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**enc).logits, full_run.trained.model.eval()(**enc).logits)


def test_predict_returns_labels_and_fills_the_meter(full_run):
    meter = Meter()
    rows = TEST[:5] + [Example("long", "red " * 100, "red")]
    predictions, details = predict_classifier(full_run.trained.model, full_run.tokenizer, TASK, rows,
                                              Budget(max_input_tokens=16, eval_batch_size=4), meter)
    assert len(predictions) == 6 and set(predictions) <= set(LABELS)
    assert details["truncated_inputs"] == 1
    assert set(details["label_probs"]) == {r.id for r in rows}
    assert all(abs(sum(p) - 1) < 1e-3 and len(p) == 3 for p in details["label_probs"].values())
    clock = meter.phases["inference"]
    assert clock.examples == 6 and clock.tokens == details["tokens"]
    # the long row contributes exactly 16 input tokens + [CLS]/[SEP], padding is never counted
    short = sum(len(full_run.tokenizer(r.input)["input_ids"]) for r in rows[:5])
    assert clock.tokens == short + 18
    params = sum(p.numel() for p in full_run.trained.model.parameters())
    assert meter.flops["inference"] == 2.0 * params * clock.tokens


def test_precision_is_fp32_on_cpu(full_run, tmp_path):
    cfg = _config(method="full")
    args = classifier_args(cfg, cfg.method, CPU, 0, tmp_path, has_eval=True)
    assert not args.bf16 and not args.fp16 and args.use_cpu
    assert args.save_strategy == "steps" and args.report_to == []  # resumable checkpoints (training/engine.py)
    assert {p.dtype for p in full_run.trained.model.parameters()} == {torch.float32}


def test_default_learning_rates_are_the_encoder_ones():
    assert learning_rate(*_loop_and_method(method="full")) == 5e-5
    assert learning_rate(*_loop_and_method(method="lora")) == 5e-4
    assert learning_rate(*_loop_and_method(method="lora", learning_rate=1e-3)) == 1e-3


def test_errors_name_the_problem(tiny_bert_dir, tmp_path):
    loaded = _load(tiny_bert_dir)
    bad = [Example("row7", "a purple thing", "purple")]
    with pytest.raises(UserError, match=r"row 'row7'.*'purple'"):
        full = _config(method="full")
        train_classifier(loaded.model, loaded.tokenizer, full, full.method, TASK, bad, [], BUDGET, CPU, 0, tmp_path)
    with pytest.raises(UserError, match="scoring"):
        scored = _config(method="full", scoring="generate")
        train_classifier(loaded.model, loaded.tokenizer, scored, scored.method, TASK, TRAIN, [], BUDGET, CPU, 0,
                         tmp_path)
    two = TaskSpec("pair", "classification", "", ("yes", "no"))
    with pytest.raises(UserError, match="3 outputs"):
        predict_classifier(loaded.model, loaded.tokenizer, two, TEST[:2], BUDGET, Meter())


@pytest.mark.integration
def test_minilm_fine_tunes_and_the_loss_falls(tmp_path):
    torch.manual_seed(0)
    loaded = load_model("minilm-l6", CPU, head="sequence-classification", num_labels=3)
    cfg = _config(method="full", max_steps=12, learning_rate=1e-4, eval_strategy="no", logging_steps=1)
    trained = train_classifier(loaded.model, loaded.tokenizer, cfg, cfg.method, TASK, TRAIN, [], BUDGET, CPU, 0,
                               tmp_path)
    log = summarize_log(trained.state.log_history)["train_log"]
    first, last = sum(e["loss"] for e in log[:3]) / 3, sum(e["loss"] for e in log[-3:]) / 3
    assert last < first
    assert trained.state.global_step == 12
    predictions, _ = predict_classifier(trained.model, loaded.tokenizer, TASK, TEST, BUDGET, Meter())
    assert set(predictions) <= set(LABELS)
