"""docs/ARCHITECTURE.md's recipe "How to add a fine-tuning method", proven from outside lmtailor: a method defined in
one module (its settings model and its kind, below) and registered with one line after lmtailor was imported, as a
plugin would, validates through ``method:`` with its own settings, trains a finetune row through the runner on a tiny
model, and is recorded under its own name and label; unregistered, its name is unknown again."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import pytest
from pydantic import Field, ValidationError

from lmtailor.config import validate_experiment
from lmtailor.rundir.layout import RunDir
from lmtailor.strategies.finetune import FinetuneConfig
from lmtailor.training.method_base import FinetuneMethod, base_defaults, build_peft_config, default_target_modules
from lmtailor.training.method_settings import MethodSettings
from lmtailor.training.peft_methods import FINETUNE_METHODS, method_label


# --- the plugin: one settings model, one kind ------------------------------------------------------------------------

class RsLoraSettings(MethodSettings):
    """Rank-stabilised LoRA (Kalajdzievski 2023): the update scaled by alpha / sqrt(r) instead of alpha / r."""

    name: Literal["rslora"] = Field(description="rslora: LoRA scaled by alpha / sqrt(r)")
    r: int = Field(8, ge=1, description="rank")
    alpha: int = Field(8, ge=1, description="scaling numerator (the update is scaled by alpha / sqrt(r))")


@dataclass(frozen=True)
class RsLoraMethod(FinetuneMethod):
    """PEFT's LoraConfig with ``use_rslora``."""

    def peft_config_class(self):
        from peft import LoraConfig

        return LoraConfig

    def peft_config(self, s, model, family):
        from peft import LoraConfig
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping

        defaults = {**base_defaults(model, family), "r": s.r, "lora_alpha": s.alpha, "use_rslora": True,
                    "target_modules": default_target_modules(model, mapping, "rsLoRA")}
        return build_peft_config(LoraConfig, defaults, s)


@pytest.fixture()
def rslora():
    """The plugin's one registry line, undone after the test."""
    FINETUNE_METHODS.register("rslora", RsLoraMethod("rslora", "rsLoRA", RsLoraSettings, learning_rate=1e-2))
    try:
        yield
    finally:
        FINETUNE_METHODS.unregister("rslora")


def _config(method) -> FinetuneConfig:
    return FinetuneConfig.model_validate({"name": "finetune", "method": method})


def test_a_method_registered_after_import_validates_with_its_own_settings(rslora):
    cfg = _config({"name": "rslora", "r": 4})
    assert isinstance(cfg.method, RsLoraSettings) and (cfg.method.r, cfg.method.alpha) == (4, 8)
    assert isinstance(_config("rslora").method, RsLoraSettings)  # a bare name takes the defaults
    assert method_label(cfg.method) == "rsLoRA"
    assert cfg.model_dump(mode="json")["method"] == {"name": "rslora", "r": 4, "alpha": 8}
    with pytest.raises(ValidationError, match=r"method\.registered-later\.r\n.*greater than or equal to 1"):
        _config({"name": "rslora", "r": 0})
    with pytest.raises(ValidationError, match=r"method\.registered-later\.dropout\n.*Extra inputs"):
        _config({"name": "rslora", "dropout": 0.1})
    # the built-in methods still validate through their own members of the union
    assert _config({"name": "lora", "r": 4}).method.dropout == 0.05


def test_an_unregistered_plugin_name_is_unknown_with_the_nearest_names():
    with pytest.raises(ValidationError, match="unknown fine-tuning method 'rslora'"):
        _config({"name": "rslora"})


def test_a_plugin_method_trains_a_row_through_the_runner_and_is_recorded(rslora, tmp_path, tiny_llama_dir):
    from lmtailor.runner import run_experiment

    rows = [{"input": f"the {c} one {i}", "target": c} for i in range(8) for c in ("red", "green")]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    exp = {"name": "plugin", "models": [str(tiny_llama_dir)], "forgetting": False,
           "data": {"source": str(data), "seed": 0, "validation_fraction": 0.25, "test_fraction": 0.25},
           "task": {"type": "classification", "labels": ["red", "green"], "instruction": "Which colour?"},
           "budget": {"max_input_tokens": 32, "max_new_tokens": 4, "max_seq_len": 64, "eval_batch_size": 8},
           "runtime": {"precision": "fp32", "threads": 1},
           "strategies": [{"name": "finetune", "method": {"name": "rslora", "r": 4}, "epochs": 1, "batch_size": 4}]}
    run_dir = run_experiment(validate_experiment(exp), tmp_path, tmp_path / "runs")
    (row,) = [r.as_dict() for r in RunDir(run_dir).records() if r.strategy == "finetune"]
    assert row["status"] == "ok", row.get("error")
    assert row["config"]["method"] == {"name": "rslora", "r": 4, "alpha": 8}
    assert row["label"].startswith("rsLoRA")
    peft = row["details"]["peft"]
    assert (peft["peft_type"], peft["r"], peft["lora_alpha"], peft["use_rslora"]) == ("LORA", 4, 8, True)
    assert row["details"]["steps"] == 2 and "merged" in row["details"]["serving"]
