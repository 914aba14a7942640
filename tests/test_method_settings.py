"""Nested method settings (``method: {name: lora, r: 16}``): one settings model per method in the registry, the flat
spelling of earlier versions read as the same config with a deprecation note, and what each method's entry owns.
No model is loaded here."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from lmtailor.cli import main
from lmtailor.strategies.continued_pretraining import ContinuedPretrainingConfig
from lmtailor.strategies.finetune import FinetuneConfig
from lmtailor.training.method_settings import LoraSettings, flat_spelling_notes
from lmtailor.training.peft_methods import FINETUNE_METHODS, artifact_kind, finetune_method


def _finetune(**kw) -> FinetuneConfig:
    return FinetuneConfig.model_validate({"name": "finetune", **kw})


@pytest.mark.parametrize("flat, nested", [
    ({"method": "lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": ["q_proj"],
      "peft_options": {"use_rslora": True}},
     {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["q_proj"],
      "peft_options": {"use_rslora": True}}),
    ({"method": "dora", "target_modules": "all-linear"}, {"name": "dora", "target_modules": "all-linear"}),
    ({"method": "prefix", "num_virtual_tokens": 7}, {"name": "prefix", "num_virtual_tokens": 7}),
    ({"method": "freeze", "trainable_layers": 1}, {"name": "freeze", "trainable_layers": 1}),
    ({"method": "loha", "peft_options": {"r": 4}}, {"name": "loha", "peft_options": {"r": 4}}),
    ({"method": "ia3"}, {"name": "ia3"}),
])
def test_the_flat_spelling_loads_to_the_identical_config(flat, nested):
    old = _finetune(**flat, epochs=2)
    new = _finetune(method=nested, epochs=2)
    assert old == new
    # the same keys count as written, so resuming (dump_experiment_as_written) writes back the same settings
    assert old.model_dump(exclude_unset=True) == new.model_dump(exclude_unset=True)
    assert new.model_dump(exclude_unset=True)["method"] == nested


def test_every_packaged_flat_spelling_gives_the_same_settings():
    """The packaged examples' old flat blocks (as shipped before the nesting) and their nested spelling now."""
    pairs = [
        ({"method": "lora", "with_instruction": False, "target_modules": "all-linear", "learning_rate": 1e-3,
          "epochs": 1, "batch_size": 4},
         {"method": {"name": "lora", "target_modules": "all-linear"}, "with_instruction": False,
          "learning_rate": 1e-3, "epochs": 1, "batch_size": 4}),
        ({"method": "prompt-tuning", "num_virtual_tokens": 20}, {"method": {"name": "prompt-tuning",
                                                                            "num_virtual_tokens": 20}}),
    ]
    for flat, nested in pairs:
        assert _finetune(**flat) == _finetune(**nested)
    cpt = {"name": "continued-pretraining", "corpus": "builtin:pydoc", "max_tokens": 8192, "learning_rate": 5e-4}
    old = ContinuedPretrainingConfig.model_validate(
        {**cpt, "method": "lora", "target_modules": "all-linear",
         "finetune": {"method": "lora", "target_modules": "all-linear", "epochs": 1}})
    new = ContinuedPretrainingConfig.model_validate(
        {**cpt, "method": {"name": "lora", "target_modules": "all-linear"},
         "finetune": {"method": {"name": "lora", "target_modules": "all-linear"}, "epochs": 1}})
    assert old == new and isinstance(new.method, LoraSettings) and new.method.r == 16  # the method's default


@pytest.mark.parametrize("knobs, message", [
    ({"method": "ia3", "lora_r": 8}, r"LoRA settings \(lora_r\) do not apply to method: ia3"),
    ({"method": "full", "num_virtual_tokens": 3}, "virtual-token settings"),
    ({"method": {"name": "lora", "r": 8}, "lora_alpha": 16}, "beside a nested method block"),
    ({"method": {"name": "ia3", "r": 8}}, "Extra inputs"),  # a key of another method's settings model
    ({"method": {"name": "lora", "target_modules": []}}, "target_modules is an empty list"),
    ({"method": {"name": "lorra"}}, "Did you mean 'lora'"),
    ({"method": {"name": "lora", "peft_options": {"rank": 4}}}, "rank is not a setting of PEFT's LoraConfig"),
    ({"method": "prefix", "padding_free": True}, "padding_free cannot be used with method: prefix"),
])
def test_settings_another_method_does_not_take_are_refused(knobs, message):
    with pytest.raises(ValidationError, match=message):
        _finetune(**knobs)


def test_a_peft_alias_and_a_pass_through_method_validate():
    assert _finetune(method="prefix_tuning").method.name == "prefix"  # PEFT's type name of a built-in method
    loha = _finetune(method={"name": "loha", "target_modules": ["q_proj"], "peft_options": {"r": 4}}).method
    assert (type(loha).__name__, loha.target_modules, loha.options) == ("PeftSettings", ["q_proj"], {"r": 4})


# What each built-in method's entry owns, written out by hand (PEFT's adapters merge unless they are virtual tokens,
# bottleneck adapters or sit on a 4-bit base; only full and freeze leave a whole model).
OWNED = {  # name: (settings model, FLOP kind, merges, artifact, decoder lr, encoder lr)
    "full": ("FullSettings", "full", False, "model", 5e-5, 5e-5),
    "freeze": ("FreezeSettings", "freeze", False, "model", 5e-5, 5e-5),
    "lora": ("LoraSettings", "peft", True, "adapter", 2e-4, 5e-4),
    "dora": ("LoraSettings", "peft", True, "adapter", 2e-4, 5e-4),
    "qlora": ("LoraSettings", "peft", False, "adapter", 2e-4, 5e-4),
    "ia3": ("IA3Settings", "peft", True, "adapter", 3e-3, 3e-3),
    "prefix": ("VirtualTokenSettings", "peft", False, "adapter", 1e-2, 1e-2),
    "prompt-tuning": ("VirtualTokenSettings", "peft", False, "adapter", 3e-2, 3e-2),
    "adapter": ("AdapterSettings", "peft", False, "adapter", 1e-4, 1e-4),
}


@pytest.mark.parametrize("name", FINETUNE_METHODS.names())
def test_each_method_owns_its_settings_flops_merging_artifact_and_learning_rates(name):
    method = finetune_method(name)
    owned = (method.settings_model.__name__, method.flops_kind, method.merges, artifact_kind(name),
             method.default_learning_rate("decoder-only"), method.default_learning_rate("encoder"))
    assert owned == OWNED[name]
    assert method.settings == tuple(f for f in method.settings_model.model_fields if f != "name")
    assert type(_finetune(method=name).method) is method.settings_model  # the union picks the method's model


def test_pass_through_methods_merge_unless_they_are_virtual_tokens():
    assert finetune_method("loha").merges and finetune_method("loha").flops_kind == "peft"
    assert not finetune_method("p_tuning").merges


def test_search_space_reads_nested_names_and_the_old_flat_ones():
    cfg = _finetune(method="lora", search={"space": {"lora_r": [4, 8], "method.alpha": [8]}})
    assert set(cfg.search.space) == {"method.r", "method.alpha"}
    with pytest.raises(ValidationError, match=r"method\.r is set by hand and also searched"):
        _finetune(method={"name": "lora", "r": 8}, search={})
    with pytest.raises(ValidationError, match=r"search.space: method.num_virtual_tokens do not apply to method: lora"):
        _finetune(method="lora", search={"space": {"num_virtual_tokens": [10]}})


ROWS = [{"input": f"item number {i} colour", "target": ["red", "blue"][i % 2]} for i in range(40)]


def test_validate_prints_a_deprecation_note_for_the_flat_spelling(tmp_path, capsys):
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    path = tmp_path / "exp.yaml"
    path.write_text("name: flat\ntask: {type: classification, instruction: \"Name the colour.\"}\n"
                    "data: {source: data.jsonl}\nmodels: [tiny-llama]\nforgetting: false\nstrategies:\n"
                    "  - {name: finetune, method: lora, lora_alpha: 8, target_modules: all-linear,\n"
                    "     search: {space: {lora_r: [4, 8], lora_alpha: null}}}\n"
                    "  - {name: finetune, method: {name: lora, r: 8}}\n", encoding="utf-8")
    assert main(["validate", str(path)]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert (f"note: {path}: strategies.0: lora_alpha, target_modules beside method: lora is the old flat spelling "
            "(still read, deprecated); write method: {name: lora, alpha: 8, target_modules: all-linear}") in said
    assert (f"note: {path}: strategies.0.search.space: lora_r, lora_alpha are the old flat names (still read, "
            "deprecated); write method.r, method.alpha") in said
    assert "strategies.1" not in said  # the nested spelling gets no note
    notes = flat_spelling_notes({"strategies": [{"name": "scratch", "finetune": {"method": "freeze",
                                                                                 "trainable_layers": 1}}]}, "f.yaml")
    assert notes == ["f.yaml: strategies.0.finetune: trainable_layers beside method: freeze is the old flat spelling "
                     "(still read, deprecated); write method: {name: freeze, trainable_layers: 1}"]
