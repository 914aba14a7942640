"""The finetune strategy on a tiny llama: loss goes down, only the right weights move, artifacts reload and agree."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from lmtailor.core.budget import Budget
from lmtailor.core.context import RunContext
from lmtailor.core.example import DatasetSplits, Example
from lmtailor.core.strategy_output import StrategyOutput
from lmtailor.core.task_spec import TaskSpec
from lmtailor.errors import UserError
from lmtailor.measure.meter import Meter
from lmtailor.runtime import Runtime
from lmtailor.strategies import STRATEGIES
from lmtailor.strategies.finetune import FinetuneConfig, FinetuneStrategy

from colours import CPU, LABELS, TASK, colour_splits

BUDGET = Budget(max_input_tokens=32, max_new_tokens=8, max_seq_len=128, eval_batch_size=8)


SPLITS = colour_splits(24, 6, 6)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(**kw) -> FinetuneConfig:
    return FinetuneConfig.model_validate({"name": "finetune", **kw})


@dataclass
class Run:
    output: StrategyOutput
    meter: Meter
    model: torch.nn.Module  # the tuned model the strategy predicted with
    tokenizer: object


def _run(cfg: FinetuneConfig, out_dir: Path, model_ref: str = "tiny-llama", splits: DatasetSplits = SPLITS) -> Run:
    """Run the strategy, keeping hold of the in-memory tuned model it hands to ``predict``."""
    # the package re-exports the function under the module's name, so fetch the module itself
    predict_module = importlib.import_module("lmtailor.inference.predict")
    original, seen = predict_module.predict, {}

    def capture(model, tokenizer, *args, **kwargs):
        seen.update(model=model, tokenizer=tokenizer)
        return original(model, tokenizer, *args, **kwargs)

    meter = Meter()
    ctx = RunContext(task=TASK, data=splits, model_ref=model_ref, budget=BUDGET, seed=0, meter=meter,
                     out_dir=out_dir, runtime=CPU)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(predict_module, "predict", capture)
        with meter:
            output = FinetuneStrategy(cfg).run(ctx)
    return Run(output, meter, seen["model"], seen["tokenizer"])


@pytest.fixture(scope="module")
def lora_run(tiny_llama_dir, tmp_path_factory) -> Run:
    # 24 rows / batch 4 = 6 steps an epoch; 4 whole epochs, so the token count has an exact expected value
    cfg = _config(method="lora", epochs=4, batch_size=4, learning_rate=1e-2, logging_steps=1)
    return _run(cfg, tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="module")
def full_run(tiny_llama_dir, tmp_path_factory) -> Run:
    cfg = _config(method="full", epochs=2, batch_size=4, learning_rate=3e-3, logging_steps=1)
    return _run(cfg, tmp_path_factory.mktemp("full"))


def _logits(model, tokenizer, texts: list[str]) -> torch.Tensor:
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


PROBE = ["the river red stone", "one two blue cloud quiet"]


# --- LoRA ----------------------------------------------------------------------------------------------------------

def test_lora_lowers_training_and_validation_loss(lora_run):
    d = lora_run.output.details
    assert d["last_train_loss"] < d["first_train_loss"] - 0.3
    assert len(d["eval_log"]) == 4  # validation loss once per epoch
    assert d["eval_log"][-1]["eval_loss"] < d["eval_log"][0]["eval_loss"]
    assert d["val_loss"] == d["eval_log"][-1]["eval_loss"]
    assert d["steps"] == 24 and d["epochs"] == pytest.approx(4.0)
    assert d["train_data"]["truncated_inputs"] == d["train_data"]["truncated_targets"] == 0  # the budget fits


def test_lora_adapter_reloads_with_plain_peft_and_gives_the_same_logits(lora_run, tiny_llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = lora_run.output.artifacts["adapter"]
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    assert (adapter / "tokenizer_config.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, adapter).eval()
    tuned = lora_run.model.eval()
    expected = _logits(tuned, lora_run.tokenizer, PROBE)
    torch.testing.assert_close(_logits(reloaded, lora_run.tokenizer, PROBE), expected)
    untuned = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    assert not torch.allclose(_logits(untuned, lora_run.tokenizer, PROBE), expected, atol=1e-4)


def test_lora_trains_only_adapter_weights_and_serves_them_merged(lora_run, tiny_llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    fresh = dict(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).named_parameters())
    # The strategy predicts with the adapter merged into the base: every weight must be the untouched base weight
    # plus exactly what the saved adapter adds, so nothing but the adapter was trained.
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    expected = dict(PeftModel.from_pretrained(base, lora_run.output.artifacts["adapter"]).merge_and_unload()
                    .named_parameters())
    served = dict(lora_run.model.named_parameters())
    assert served.keys() == fresh.keys()  # a plain model: no lora_ or base_layer names left
    adapted = [n for n in served if not torch.equal(served[n].detach(), fresh[n].detach())]
    assert adapted and all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in adapted)
    for name, param in served.items():
        torch.testing.assert_close(param.detach(), expected[name].detach())
    assert "merged" in lora_run.output.details["lora"]["inference"]


def test_lora_meter_and_details(lora_run):
    m, d = lora_run.meter, lora_run.output.details
    assert 0 < m.trainable_params < m.total_params
    # every real token of the training rows, once per epoch (no padding counted)
    assert m.phases["train"].tokens == 4 * d["train_data"]["tokens"] == d["train_tokens"]
    assert m.flops["train"] > 0 and m.artifacts["adapter"] > 0
    assert all(m.phases[p].wall_s > 0 for p in ("load", "train", "inference"))
    assert m.phases["inference"].examples == len(SPLITS.test)
    assert d["method"] == "lora" and d["learning_rate"] == 1e-2
    assert d["lora"]["r"] == 16 and d["lora"]["target_modules"] == ["q_proj", "v_proj"]  # PEFT's llama default
    assert len(lora_run.output.predictions) == len(SPLITS.test)
    assert set(lora_run.output.predictions) <= set(LABELS)


# --- full fine-tuning ----------------------------------------------------------------------------------------------

def test_full_ft_lowers_loss_and_trains_every_weight(full_run):
    d, m = full_run.output.details, full_run.meter
    assert d["last_train_loss"] < d["first_train_loss"] - 0.3
    assert m.trainable_params == m.total_params > 0
    assert m.phases["train"].tokens == 2 * d["train_data"]["tokens"]
    assert m.artifacts["model"] > 0


def test_full_ft_model_reloads_and_predicts_the_same(full_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmtailor.inference.predict import predict

    path = full_run.output.artifacts["model"]
    assert (path / "model.safetensors").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.testing.assert_close(_logits(reloaded, tokenizer, PROBE), _logits(full_run.model.eval(), tokenizer, PROBE))
    predictions, _ = predict(reloaded, tokenizer, TASK, SPLITS.test, (), BUDGET, Meter())
    assert predictions == full_run.output.predictions


# --- the trainer's inputs ------------------------------------------------------------------------------------------

@pytest.fixture()
def make_trainer(tiny_llama_dir, tmp_path):
    from lmtailor.models import load_model
    from lmtailor.training.dataset import build_sft_rows
    from lmtailor.training.sft import build_trainer

    def make(cfg: FinetuneConfig, rows=SPLITS.train[:4]):
        loaded = load_model("tiny-llama", CPU)
        data = build_sft_rows(loaded.tokenizer, TASK, rows, BUDGET)
        trainer = build_trainer(loaded.model, loaded.tokenizer, cfg, cfg.method, data.dataset, None, CPU, 0,
                                tmp_path, BUDGET.max_seq_len)
        return trainer, loaded.tokenizer

    return make


@pytest.mark.parametrize("completion_only", [True, False])
def test_collated_labels_mask_the_prompt(make_trainer, completion_only):
    from lmtailor.training.dataset import encode_row

    trainer, tokenizer = make_trainer(_config(method="lora", completion_only_loss=completion_only,
                                              padding_free=False))  # padded: the layout checked below
    rows = SPLITS.train[:4]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    lengths = set()
    for i, row in enumerate(rows):
        enc = encode_row(tokenizer, TASK, row, BUDGET)
        p, n = len(enc.prompt_ids), len(enc.prompt_ids) + len(enc.completion_ids)
        lengths.add(n)
        labels = batch["labels"][i]
        assert batch["input_ids"][i, :n].tolist() == enc.prompt_ids + enc.completion_ids
        assert enc.completion_ids[-1] == tokenizer.eos_token_id  # the model learns to stop
        if completion_only:
            assert (labels[:p] == -100).all()
        else:
            assert labels[:p].tolist() == enc.prompt_ids
        assert labels[p:n].tolist() == enc.completion_ids
        assert (labels[n:] == -100).all() and (batch["attention_mask"][i, n:] == 0).all()  # padding
    assert len(lengths) > 1  # the batch really was padded


def test_cpu_training_is_fp32(make_trainer):
    from lmtailor.training.sft import sft_config

    trainer, _ = make_trainer(_config(method="full"))
    assert trainer.args.bf16 is False and trainer.args.fp16 is False and trainer.args.use_cpu is True
    assert trainer.args.report_to == [] and trainer.args.save_strategy == "steps" and trainer.args.save_steps == 500
    assert trainer.args.activation_checkpointing is False
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    full = _config(method="full")
    bf16 = sft_config(full, full.method, Runtime("cpu", "bf16", "native"), 0, Path("unused"), 64, False,
                      padding_free=False)
    assert bf16.bf16 is True and bf16.fp16 is False


# --- rows within the budget ----------------------------------------------------------------------------------------

def test_long_input_is_cut_so_the_answer_survives(tiny_llama_dir):
    from lmtailor.models import load_model
    from lmtailor.training.dataset import encode_row

    tokenizer = load_model("tiny-llama", CPU).tokenizer
    short = encode_row(tokenizer, TASK, Example("short", "blue", "blue"), BUDGET)
    room = len(short.prompt_ids) + len(short.completion_ids) + 10  # the template, the answer and ~10 input tokens
    row = Example("long", "the river stone cloud " * 60 + "blue", "blue")
    budget = Budget(max_input_tokens=200, max_seq_len=room)  # the input budget alone would overflow the sequence
    enc = encode_row(tokenizer, TASK, row, budget)
    assert len(enc.prompt_ids) + len(enc.completion_ids) <= room
    assert enc.input_truncated and not enc.target_truncated
    assert enc.completion_ids == short.completion_ids
    with pytest.raises(UserError, match="'long'.*max_seq_len=5"):
        encode_row(tokenizer, TASK, row, Budget(max_input_tokens=200, max_seq_len=5))


def test_overlong_answer_keeps_its_start(tiny_llama_dir):
    from lmtailor.models import load_model
    from lmtailor.training.dataset import encode_row

    tokenizer = load_model("tiny-llama", CPU).tokenizer
    task = TaskSpec("echo", "generation", "Repeat the input ten times.")
    row = Example("echo", "river", " ".join(["river"] * 200))
    enc = encode_row(tokenizer, task, row, Budget(max_input_tokens=8, max_seq_len=100))
    assert len(enc.prompt_ids) + len(enc.completion_ids) == 100
    assert enc.target_truncated and not enc.input_truncated
    full = encode_row(tokenizer, task, row, Budget(max_input_tokens=8, max_seq_len=10_000))
    assert enc.completion_ids == full.completion_ids[: len(enc.completion_ids)]


# --- config and errors ---------------------------------------------------------------------------------------------

def test_registered_and_labelled():
    assert STRATEGIES.get("finetune") is FinetuneStrategy
    assert FinetuneStrategy(_config(method="lora")).label() == "LoRA"
    assert FinetuneStrategy(_config(method="full")).label() == "full FT"
    assert FinetuneStrategy(_config(method="full", label="mine")).label() == "mine"
    assert FinetuneStrategy(_config(method="lora")).uses_training_data()


def test_every_config_field_is_described():
    missing = [n for n, f in FinetuneConfig.model_fields.items() if not f.description]
    assert not missing


@pytest.mark.parametrize("bad, message", [
    ({}, "method"),
    ({"method": "qlorra"}, "unknown fine-tuning method 'qlorra'"),
    ({"method": "full", "lora_r": 8}, r"LoRA settings \(lora_r\) do not apply"),
    ({"method": "lora", "eval_strategy": "steps"}, "needs eval_steps"),
    ({"method": "lora", "eval_steps": 3}, "only applies with eval_strategy: steps"),
    ({"method": "lora", "target_modules": []}, "empty list"),
    ({"method": "lora", "warmup_ratio": 1.5}, "warmup_ratio"),
    ({"method": "lora", "epochs": 0}, "epochs"),
    ({"method": "lora", "train_sizes": [0, 10]}, "train_sizes"),
    ({"method": "lora", "lora_rank": 8}, "lora_rank"),
])
def test_config_rejects_nonsense(bad, message):
    with pytest.raises(ValidationError, match=message):
        _config(**bad)


def test_default_learning_rates():
    from lmtailor.training.sft import learning_rate

    for knobs, expected in (({"method": "lora"}, 2e-4), ({"method": "full"}, 5e-5),
                            ({"method": "full", "learning_rate": 1e-4}, 1e-4)):
        cfg = _config(**knobs)
        assert learning_rate(cfg, cfg.method) == expected


def test_max_steps_mid_epoch_still_ends_with_a_validation_loss(tiny_llama_dir, tmp_path):
    splits = DatasetSplits(train=SPLITS.train, validation=SPLITS.validation, test=SPLITS.test[:1])
    run = _run(_config(method="lora", max_steps=2, batch_size=4), tmp_path, splits=splits)
    d = run.output.details
    assert d["steps"] == 2 and [e["step"] for e in d["eval_log"]] == [2] and d["val_loss"] is not None
    assert not (tmp_path / "checkpoints").exists()  # nothing checkpointed, no empty directory left behind


@pytest.mark.parametrize("ref", ["tiny-t5", "tiny-bart"])
def test_encoder_decoder_models_fine_tune_through_seq2seq(ref, tmp_path):
    run = _run(_config(method="lora", max_steps=2, batch_size=4), tmp_path, model_ref=ref)
    d = run.output.details
    assert d["steps"] == 2 and d["val_loss"] is not None
    assert (run.output.artifacts["adapter"] / "adapter_config.json").is_file()
    assert run.model.config.is_encoder_decoder and set(run.output.predictions) <= set(LABELS)


def test_empty_training_split_is_an_error(tmp_path):
    empty = DatasetSplits(train=[], validation=[], test=SPLITS.test)
    with pytest.raises(UserError, match="training split is empty"):
        _run(_config(method="lora"), tmp_path, splits=empty)


def test_input_only_trains_and_answers_on_the_bare_input(tmp_path):
    splits = DatasetSplits(train=SPLITS.train[:8], validation=SPLITS.validation, test=SPLITS.test)
    with_instruction = _run(_config(method="lora", max_steps=1, batch_size=4), tmp_path / "a", splits=splits)
    bare = _run(_config(method="lora", max_steps=1, batch_size=4, with_instruction=False), tmp_path / "b",
                splits=splits)
    assert FinetuneStrategy(_config(method="lora", with_instruction=False)).label() == "LoRA (input only)"
    d, b = with_instruction.output.details, bare.output.details
    assert b["with_instruction"] is False
    # training and test prompts both lose the instruction and label list, so both are cheaper
    assert b["train_data"]["tokens"] < d["train_data"]["tokens"]
    assert b["inference"]["prompt_tokens"]["mean"] < d["inference"]["prompt_tokens"]["mean"]
    assert set(bare.output.predictions) <= set(LABELS)


def test_encoder_model_is_fine_tuned_as_a_classifier(tiny_bert_dir, tmp_path):
    meter = Meter()
    ctx = RunContext(task=TASK, data=SPLITS, model_ref="tiny-bert", budget=BUDGET, seed=0, meter=meter,
                     out_dir=tmp_path, runtime=CPU)
    with meter:
        out = FinetuneStrategy(_config(method="lora", epochs=2, batch_size=4)).run(ctx)
    assert out.details["head"] == "sequence-classification" and out.details["labels"] == list(LABELS)
    assert len(out.predictions) == len(SPLITS.test) and set(out.predictions) <= set(LABELS)
    assert (out.artifacts["adapter"] / "adapter_config.json").is_file()
    assert 0 < meter.trainable_params < meter.total_params and meter.phases["train"].tokens > 0
    assert out.details["eval_log"] and "eval_accuracy" in out.details["eval_log"][-1]


def test_encoder_on_a_generation_task_is_a_clear_error(tiny_bert_dir, tmp_path):
    task = TaskSpec("echo", "generation", "Repeat.")
    ctx = RunContext(task=task, data=SPLITS, model_ref="tiny-bert", budget=BUDGET, seed=0, meter=Meter(),
                     out_dir=tmp_path, runtime=CPU)
    with pytest.raises(UserError, match="classifier only"):
        FinetuneStrategy(_config(method="full")).run(ctx)
