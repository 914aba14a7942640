"""Fine-tuning methods: one registry of what each method trains, and the functions every trainer uses with it.

``FINETUNE_METHODS`` holds the built-in methods: full, lora, dora, qlora, ia3, prefix, prompt-tuning, adapter
(AdapterHub's bottleneck adapters) and freeze. Any other PEFT method passes through under its PEFT name (loha, lokr,
vera, oft, boft, adalora, fourierft, ln_tuning, ...): its config class is built from ``peft_options`` plus the task
type and the default target modules. ``peft_options`` also extends the built-in methods' configs. The kinds of
method live in ``training/method_kinds.py``, what they share in ``training/method_base.py``.

Every trainer (``training/sft.py``, ``seq2seq.py``, ``classifier.py``) prepares its model with
``prepare_for_training`` / ``wrap_for_training``; the finetune strategy checks the method before loading anything,
names the artifact with ``artifact_kind`` and serves the tuned model with ``serve``.

Importing this module is cheap (no torch, PEFT or transformers): the config validator uses it.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

from lmtailor.errors import UserError
from lmtailor.registry import Registry
from lmtailor.training.method_base import (FAMILIES, TASK_TYPE, FinetuneMethod, check_peft_options,
                                           default_target_modules,
                                           fresh_modules, head_modules, peft_summary)
from lmtailor.training.method_kinds import (AdapterMethod, FreezeMethod, FullMethod, IA3Method, LoraMethod,
                                            PrefixMethod, PromptTuningMethod, pass_through, save_adapters)

if TYPE_CHECKING:
    from peft import PeftConfig

    from lmtailor.strategies.finetune import FinetuneConfig

__all__ = ["FAMILIES", "FINETUNE_METHODS", "TASK_TYPE", "FinetuneMethod", "artifact_kind", "check_method_settings",
           "default_target_modules", "finetune_method", "fresh_modules", "head_modules", "learning_rate",
           "method_label", "peft_summary", "prepare_for_training", "save_adapters", "save_override", "serve",
           "wrap_for_training"]

# The FinetuneConfig fields that only some methods read; a method refuses any of them it does not take.
_SETTING_GROUP = {"lora_r": "LoRA", "lora_alpha": "LoRA", "lora_dropout": "LoRA", "target_modules": "LoRA",
                  "num_virtual_tokens": "virtual-token", "trainable_layers": "freeze", "peft_options": "PEFT"}
METHOD_SETTINGS = tuple(_SETTING_GROUP)
_LORA = ("lora_r", "lora_alpha", "lora_dropout", "target_modules", "peft_options")
_VIRTUAL = ("num_virtual_tokens", "peft_options")

# Where the default learning rates come from (AdamW, linear decay after warm-up, as every trainer here uses):
# - full 5e-5: the Transformers default and the top of BERT's fine-tuning grid (Devlin et al. 2019: 5e-5, 3e-5,
#   2e-5); small models like SmolLM2-135M tolerate the top of the range. freeze trains fewer weights of the same
#   kind, so it keeps the full rate.
# - LoRA 2e-4: the QLoRA paper (Dettmers et al. 2023, appendix B.2: 2e-4 up to 13B) and the PEFT/TRL LoRA examples;
#   encoder classifiers 5e-4: the LoRA paper's RoBERTa-base GLUE runs (Hu et al. 2021, table 9: 4e-4 to 5e-4).
#   DoRA keeps LoRA's rates (Liu et al. 2024 reuse LoRA's hyper-parameters), QLoRA is LoRA on a 4-bit base.
# - IA3 3e-3: T-Few (Liu et al. 2022, section 3.3: (IA)^3 trained with a 3e-3 learning rate).
# - prefix tuning 1e-2: PEFT's prefix-tuning examples (1e-2 seq2seq, 3e-2 causal LM). Li & Liang (2021) used
#   5e-5..8e-5, but for a prefix re-parametrised through an MLP; PEFT's default trains the prefix directly.
# - prompt tuning 3e-2: PEFT's prompt-tuning causal-LM example. Lester et al. (2021) used 0.3, but with Adafactor,
#   whose relative steps are far smaller than AdamW's at the same nominal rate.
# - bottleneck adapters 1e-4: AdapterHub's training examples (Pfeiffer et al. 2020); Houlsby et al. (2019)
#   searched 3e-5..3e-3.
# - any other PEFT method: LoRA's rates, said so in the run record; set learning_rate for the method you pass.
_NO_KV_ENCODER = ("PEFT injects the prefix through the attention's KV cache, which encoder models (BERT and kin) do "
                  "not take in transformers 5; use prompt-tuning, lora or ia3")
_NO_SEQ2SEQ_PREFIX = ("PEFT puts the prefix into the decoder only (its docs: the encoder ignores it, unlike the "
                      "paper), and with transformers 5 PeftModel.generate drops it, so the tuned model could not be "
                      "served as trained; use prompt-tuning, lora or ia3")

FINETUNE_METHODS: Registry[FinetuneMethod] = Registry("fine-tuning method")
for _method in (
    FullMethod("full", "full FT", learning_rate=5e-5, encoder_learning_rate=5e-5, peft=False),
    LoraMethod("lora", "LoRA", _LORA),
    LoraMethod("dora", "DoRA", _LORA, use_dora=True),
    LoraMethod("qlora", "QLoRA", _LORA, quantized=True),
    IA3Method("ia3", "IA3", ("target_modules", "peft_options"), learning_rate=3e-3, encoder_learning_rate=3e-3),
    PrefixMethod("prefix", "prefix tuning", _VIRTUAL, learning_rate=1e-2, encoder_learning_rate=1e-2,
                 unsupported={"encoder": _NO_KV_ENCODER, "encoder-decoder": _NO_SEQ2SEQ_PREFIX}),
    PromptTuningMethod("prompt-tuning", "prompt tuning", _VIRTUAL, learning_rate=3e-2, encoder_learning_rate=3e-2),
    AdapterMethod("adapter", "adapters", ("peft_options",), learning_rate=1e-4, encoder_learning_rate=1e-4),
    FreezeMethod("freeze", "freeze", ("trainable_layers",), learning_rate=5e-5, encoder_learning_rate=5e-5,
                 peft=False),
):
    FINETUNE_METHODS.register(_method.name, _method)

# PEFT type names of the built-in methods, accepted as aliases (method: prefix_tuning is method: prefix)
_BUILT_IN_PEFT_TYPES = {"LORA": "lora", "IA3": "ia3", "PREFIX_TUNING": "prefix", "PROMPT_TUNING": "prompt-tuning"}
# Display names of pass-through methods, as their papers write them (others show their PEFT type)
_DISPLAY = {"LOHA": "LoHa", "LOKR": "LoKr", "VERA": "VeRA", "ADALORA": "AdaLoRA", "FOURIERFT": "FourierFT",
            "LN_TUNING": "LN tuning", "VBLORA": "VB-LoRA", "RANDLORA": "RandLoRA", "MISS": "MiSS", "SHIRA": "SHiRA",
            "ROAD": "RoAd", "DELORA": "DeLoRA", "GRALORA": "GraLoRA"}


def pass_through_names() -> list[str]:
    """PEFT method names that pass through (lower case, as written in an experiment)."""
    from peft import PEFT_TYPE_TO_CONFIG_MAPPING

    return sorted(str(t.value).lower() for t in PEFT_TYPE_TO_CONFIG_MAPPING
                  if str(t.value) not in _BUILT_IN_PEFT_TYPES)


def finetune_method(name: str) -> FinetuneMethod:
    """The method called ``name``: a built-in one, or any PEFT method by its PEFT type name."""
    if name in FINETUNE_METHODS:
        return FINETUNE_METHODS.get(name)
    peft_type = name.upper().replace("-", "_")
    if peft_type in _BUILT_IN_PEFT_TYPES:
        return FINETUNE_METHODS.get(_BUILT_IN_PEFT_TYPES[peft_type])
    method = pass_through(name, peft_type, _DISPLAY.get(peft_type, peft_type))
    if method is not None:
        return method
    known = FINETUNE_METHODS.names()
    near = difflib.get_close_matches(name, known + pass_through_names(), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    raise UserError(f"unknown fine-tuning method {name!r}.{hint} Built in: {', '.join(known)}; or any PEFT method "
                    f"by name: {', '.join(pass_through_names())}")


def check_method_settings(cfg: "FinetuneConfig") -> None:
    """Refuse method-specific settings written for a method that does not read them (e.g. lora_r with ia3)."""
    method = finetune_method(cfg.method)
    stray = [f for f in METHOD_SETTINGS if f in cfg.model_fields_set and f not in method.settings]
    if "peft_options" in stray and not cfg.peft_options:
        stray.remove("peft_options")  # an explicit empty dict asks for nothing
    if stray:
        groups: dict[str, list[str]] = {}
        for f in stray:
            groups.setdefault(_SETTING_GROUP[f], []).append(f)
        what = " and ".join(f"{group} settings ({', '.join(fields)})" for group, fields in groups.items())
        takes = ", ".join(method.settings) or "none of them"
        raise UserError(f"{what} do not apply to method: {cfg.method}; remove them (it takes: {takes})")
    config_class = method.peft_config_class() if cfg.peft_options else None
    if config_class is not None:  # unknown keys refused by validate, not only when the row runs
        check_peft_options(config_class, cfg)
    if cfg.padding_free and not method.padding_free_ok:
        raise UserError(f"padding_free cannot be used with method: {cfg.method}: its virtual tokens are put before "
                        "the whole flattened batch, not before each row; remove padding_free")


def artifact_kind(method: str) -> str:
    """The artifact a method leaves: "adapter" (PEFT or bottleneck adapters) or "model" (full, freeze)."""
    return "adapter" if finetune_method(method).peft else "model"


def learning_rate(cfg: "FinetuneConfig", family: str) -> float:
    """The configured learning rate, or the method's default for the model family."""
    return cfg.learning_rate if cfg.learning_rate is not None else \
        finetune_method(cfg.method).default_learning_rate(family)


def method_label(cfg: "FinetuneConfig") -> str:
    """The row label of the method: "LoRA", "full FT", "freeze top 2", "LoHa", ..."""
    return finetune_method(cfg.method).row_label(cfg)


def prepare_for_training(model, cfg: "FinetuneConfig", family: str) -> tuple[Any, "PeftConfig | None"]:
    """(model, PEFT config) for a trainer: the model prepared by the method, and the config to wrap it with
    (None for full, freeze and bottleneck adapters)."""
    method = finetune_method(cfg.method)
    method.check(cfg, family)
    model = method.prepare(model, cfg, family)
    return model, method.peft_config(cfg, model, family)


def wrap_for_training(model, cfg: "FinetuneConfig", family: str):
    """The model ready for a Trainer: prepared, and wrapped with PEFT where the method uses PEFT."""
    model, config = prepare_for_training(model, cfg, family)
    if config is None:
        return model
    from peft import get_peft_model

    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise UserError(f"method: {cfg.method}: PEFT could not apply it to {type(model).__name__}: {e}") from e


def save_override(cfg: "FinetuneConfig") -> dict[str, Any]:
    """Keyword arguments for ``train_and_save``: bottleneck adapters save through their own library; every other
    method through ``save_pretrained`` (the default)."""
    return {"save": save_adapters} if isinstance(finetune_method(cfg.method), AdapterMethod) else {}


def serve(model, dtype=None) -> tuple[Any, str]:
    """The tuned model as it is served, and how: adapters that fold into the weights are merged (inference then
    costs what the base model's does); prompt-learning adapters (virtual tokens) and 4-bit bases are not.

    ``dtype``: the run's compute dtype. Full and freeze fine-tuning train fp32 master weights, and merging an fp32
    adapter can promote a layer to fp32: served like that, a tuned row would pay fp32 inference (5x slower than bf16
    on a CPU with AMX) where its base model paid bf16, and be probed for forgetting in another precision than it.
    """
    from peft import PeftModel

    if isinstance(model, PeftModel) and getattr(model.get_base_model(), "is_loaded_in_4bit", False):
        return model, "adapter kept beside the 4-bit base (merging into 4-bit weights would round the update away)"
    if not isinstance(model, PeftModel):
        served, how = model, "the trained weights, as saved"
    elif model.active_peft_config.is_prompt_learning or model.active_peft_config.is_adaption_prompt:
        served, how = model, "through the PeftModel: virtual tokens have no weights to merge into"
    else:
        served, how = model.merge_and_unload(), "adapter merged into the base weights"
    if dtype is not None and any(p.dtype != dtype for p in served.parameters() if p.is_floating_point()):
        served = served.to(dtype)
        how += f", in the run's compute dtype ({str(dtype).removeprefix('torch.')})"
    return served, how
