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
from typing import TYPE_CHECKING, Any, Callable


from lmtailor.errors import UserError
from lmtailor.registry import Registry
from lmtailor.training.adapter_casts import skip_redundant_adapter_casts
from lmtailor.training.method_base import (FinetuneMethod, check_peft_options, default_target_modules, family_adapter,
                                           fresh_modules, head_modules, peft_summary)
from lmtailor.training.method_kinds import (AdapterMethod, FreezeMethod, FullMethod, IA3Method, LoraMethod,
                                            PrefixMethod, PromptTuningMethod, pass_through, save_adapters)
from lmtailor.training.method_settings import (AdapterSettings, FreezeSettings, FullSettings, IA3Settings,
                                               LoraSettings, MethodSettings, VirtualTokenSettings)

if TYPE_CHECKING:
    from peft import PeftConfig

    from lmtailor.core.training_loop import OptimizerSettings

__all__ = ["FINETUNE_METHODS", "FinetuneMethod", "MethodSettings",
           "artifact_kind", "check_method", "check_settings", "default_target_modules", "finetune_method",
           "fresh_modules", "head_modules", "learning_rate", "method_label",
           "peft_summary", "prepare_for_training", "save_adapters", "save_override", "serve", "wrap_for_training"]

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
    FullMethod("full", "full FT", FullSettings, learning_rate=5e-5, encoder_learning_rate=5e-5, peft=False,
               merges=False, flops_kind="full"),
    LoraMethod("lora", "LoRA", LoraSettings),
    LoraMethod("dora", "DoRA", LoraSettings, use_dora=True),
    # merging into 4-bit weights would round the update away: the adapter is kept beside the quantized base
    LoraMethod("qlora", "QLoRA", LoraSettings, quantized=True, merges=False),
    IA3Method("ia3", "IA3", IA3Settings, learning_rate=3e-3, encoder_learning_rate=3e-3),
    PrefixMethod("prefix", "prefix tuning", VirtualTokenSettings, learning_rate=1e-2, encoder_learning_rate=1e-2,
                 merges=False, unsupported={"encoder": _NO_KV_ENCODER, "encoder-decoder": _NO_SEQ2SEQ_PREFIX}),
    PromptTuningMethod("prompt-tuning", "prompt tuning", VirtualTokenSettings, learning_rate=3e-2,
                       encoder_learning_rate=3e-2, merges=False),
    AdapterMethod("adapter", "adapters", AdapterSettings, learning_rate=1e-4, encoder_learning_rate=1e-4,
                  merges=False),
    FreezeMethod("freeze", "freeze", FreezeSettings, learning_rate=5e-5, encoder_learning_rate=5e-5, peft=False,
                 merges=False, flops_kind="freeze"),
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


def check_settings(s: MethodSettings, padding_free: bool | None = None) -> None:
    """Refuse settings the method cannot take: unknown ``peft_options``, ``target_modules`` for a PEFT method
    without them, ``padding_free`` with virtual tokens."""
    method = finetune_method(s.name)
    if "target_modules" in s.model_fields_set and "target_modules" not in method.settings:
        raise UserError(f"LoRA settings (target_modules) do not apply to method: {s.name}; remove them (it takes: "
                        f"{', '.join(method.settings) or 'none of them'})")
    config_class = method.peft_config_class() if s.options else None
    if config_class is not None:  # unknown keys refused by validate, not only when the row runs
        check_peft_options(config_class, s)
    if padding_free and not method.padding_free_ok:
        raise UserError(f"padding_free cannot be used with method: {s.name}: its virtual tokens are put before "
                        "the whole flattened batch, not before each row; remove padding_free")


def check_method(s: MethodSettings, family: str, runtime=None, padding_free: bool | None = None) -> None:
    """Refuse, before any model is loaded, a family, device or setting the method cannot run with."""
    finetune_method(s.name).check(s, family, runtime)
    if padding_free and not family_adapter(family).padding_free:
        from lmtailor.models.families import adapters  # lmtailor.models is heavy: see family_adapter

        flattened = ", ".join(a.name for a in adapters() if a.padding_free)
        raise UserError(f"padding_free applies to {flattened} models only; this model is {family} "
                        "(encoder inputs and seq2seq targets are padded per batch). Remove padding_free.")


def artifact_kind(method: str) -> str:
    """The artifact a method leaves: "adapter" (PEFT or bottleneck adapters) or "model" (full, freeze)."""
    return finetune_method(method).artifact_kind


def learning_rate(loop: "OptimizerSettings", s: MethodSettings, fresh_head: bool) -> float:
    """The configured learning rate, or the method's default for a trainer that trains a fresh head beside the
    method (the classifier's: ``encoder_learning_rate``) or not (a language model's: ``learning_rate``)."""
    return loop.learning_rate if loop.learning_rate is not None else \
        finetune_method(s.name).learning_rate_with(fresh_head)


def method_label(s: MethodSettings) -> str:
    """The row label of the method: "LoRA", "full FT", "freeze top 2", "LoHa", ..."""
    return finetune_method(s.name).row_label(s)


def prepare_for_training(model, s: MethodSettings, family: str,
                         gradient_checkpointing: bool = False) -> tuple[Any, "PeftConfig | None"]:
    """(model, PEFT config) for a trainer: the model prepared by the method, and the config to wrap it with
    (None for full, freeze and bottleneck adapters)."""
    method = finetune_method(s.name)
    method.check(s, family)
    model = method.prepare(model, s, family, gradient_checkpointing)
    return model, method.peft_config(s, model, family)


def wrap_for_training(model, s: MethodSettings, family: str, gradient_checkpointing: bool = False):
    """The model ready for a Trainer: prepared, and wrapped with PEFT where the method uses PEFT."""
    model, config = prepare_for_training(model, s, family, gradient_checkpointing)
    if config is None:
        return model
    from peft import get_peft_model

    try:
        model = get_peft_model(model, config)
    except ValueError as e:
        raise UserError(f"method: {s.name}: PEFT could not apply it to {type(model).__name__}: {e}") from e
    skip_redundant_adapter_casts(model)  # no fp32 round trip of adapter inputs under bf16 autocast
    return model


def save_override(s: MethodSettings) -> dict[str, Callable]:
    """Keyword arguments for ``train_and_save``: bottleneck adapters save through their own library; every other
    method through ``save_pretrained`` (the default)."""
    return {"save": save_adapters} if isinstance(finetune_method(s.name), AdapterMethod) else {}


def serve(model, dtype=None) -> tuple[Any, str]:
    """The tuned model as it is served, and how: adapters of a method that merges (``FinetuneMethod.merges``) are
    merged (inference then costs what the base model's does); prompt-learning adapters (virtual tokens) and 4-bit
    bases are not.

    ``dtype``: the run's compute dtype. Full and freeze fine-tuning train fp32 master weights, and merging an fp32
    adapter can promote a layer to fp32: served like that, a tuned row would pay fp32 inference (5x slower than bf16
    on a CPU with AMX) where its base model paid bf16, and be probed for forgetting in another precision than it.
    """
    from peft import PeftModel

    if isinstance(model, PeftModel) and getattr(model.get_base_model(), "is_loaded_in_4bit", False):
        return model, "adapter kept beside the 4-bit base (merging into 4-bit weights would round the update away)"
    if not isinstance(model, PeftModel):
        served, how = model, "the trained weights, as saved"
    elif not peft_model_merges(model):
        served, how = model, "through the PeftModel: virtual tokens have no weights to merge into"
    else:
        served, how = model.merge_and_unload(), "adapter merged into the base weights"
    if dtype is not None and any(p.dtype != dtype for p in served.parameters() if p.is_floating_point()):
        served = served.to(dtype)
        how += f", in the run's compute dtype ({str(dtype).removeprefix('torch.')})"
    return served, how


def peft_model_merges(model) -> bool:
    """Whether a PeftModel's adapter folds into its base weights: its method's ``merges`` (the method named by its
    PEFT type), so serving, pre-training and export decide it in one place."""
    return peft_type_merges(str(model.active_peft_config.peft_type.value))


def peft_type_merges(peft_type: str) -> bool:
    """``FinetuneMethod.merges`` of the method with PEFT type ``peft_type`` (LORA, IA3, PREFIX_TUNING, LOHA...)."""
    name = _BUILT_IN_PEFT_TYPES.get(peft_type, peft_type.lower())
    try:
        return finetune_method(name).merges
    except UserError:
        return False
