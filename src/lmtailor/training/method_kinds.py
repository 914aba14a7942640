"""The kinds of fine-tuning method, one class each: full, LoRA (and DoRA, QLoRA), IA3, prefix tuning, prompt
tuning, bottleneck adapters (AdapterHub), freeze, and any other PEFT method passed through by name.

Each says how it prepares the model and which PEFT config it builds; ``training/peft_methods.py`` registers the
named methods with their labels, settings and learning rates. Heavy libraries are imported inside the methods.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lmtailor.errors import UserError
from lmtailor.training.method_base import (FinetuneMethod, base_defaults, build_peft_config, default_target_modules,
                                           family_adapter, fp32_master_weights, head_modules)
from lmtailor.training.method_settings import PeftSettings


@dataclass(frozen=True)
class FullMethod(FinetuneMethod):
    """Every weight trains, in fp32 master weights."""

    def prepare(self, model, s, family, gradient_checkpointing=False):
        return fp32_master_weights(model)


@dataclass(frozen=True)
class LoraMethod(FinetuneMethod):
    """LoRA (Hu et al. 2021); DoRA (``use_dora``, Liu et al. 2024); QLoRA (Dettmers et al. 2023) on a 4-bit base."""

    use_dora: bool = False
    quantized: bool = False

    def peft_config_class(self):
        from peft import LoraConfig

        return LoraConfig

    def check(self, s, family, runtime=None):
        super().check(s, family, runtime)
        if self.quantized and runtime is not None:
            check_qlora_runtime(runtime)

    def quantization_config(self, runtime):
        if not self.quantized:
            return None
        from transformers import BitsAndBytesConfig

        # The QLoRA recipe: 4-bit NormalFloat, double quantization, matmuls in the run's compute dtype
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=runtime.dtype)

    def prepare(self, model, s, family, gradient_checkpointing=False):
        if not self.quantized:
            return model
        if not getattr(model, "is_loaded_in_4bit", False):
            raise UserError("method: qlora trains LoRA on a base model loaded in 4 bits, but this model was loaded "
                            "unquantized (e.g. after continued pre-training or from scratch); use method: lora")
        from peft import prepare_model_for_kbit_training

        # casts the remaining non-quantized weights (norms, head) to fp32 and enables input gradients
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)

    def peft_config(self, s, model, family):
        from peft import LoraConfig
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping

        targets = s.target_modules if s.target_modules is not None else \
            default_target_modules(model, mapping, "LoRA")
        defaults = {**base_defaults(model, family), "r": s.r, "lora_alpha": s.alpha,
                    "lora_dropout": s.dropout, "target_modules": targets, "bias": "none"}
        if self.use_dora:
            defaults["use_dora"] = True
        return build_peft_config(LoraConfig, defaults, s)

    def details(self, model, s):
        quantized = {"quantization": "4-bit NF4, double quantization (bitsandbytes)"} if self.quantized else {}
        return {**super().details(model, s), **quantized}


def lora_details(peft_model) -> dict:
    """A LoRA-wrapped model's rank, alpha, dropout and target modules, for the run record."""
    c = peft_model.peft_config["default"]
    targets = sorted(c.target_modules) if isinstance(c.target_modules, (set, list)) else c.target_modules
    return {"r": c.r, "alpha": c.lora_alpha, "dropout": c.lora_dropout, "target_modules": targets}


def check_qlora_runtime(runtime) -> None:
    """QLoRA needs a CUDA GPU and bitsandbytes: say so before anything is loaded, never fall back silently."""
    if runtime.hardware != "cuda":
        raise UserError(f"method: qlora quantizes the base model to 4 bits with bitsandbytes, which needs a CUDA "
                        f"GPU; this run is on {runtime.device}. Use method: lora (the same adapters on the "
                        "unquantized base) or run on a CUDA machine")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise UserError(f"method: qlora needs the bitsandbytes package, which is not importable ({e}); install it "
                        "(pip install bitsandbytes) or use method: lora") from e


@dataclass(frozen=True)
class IA3Method(FinetuneMethod):
    """(IA)^3 (Liu et al. 2022): learnt vectors rescale keys, values and feed-forward activations."""

    def peft_config_class(self):
        from peft import IA3Config

        return IA3Config

    def peft_config(self, s, model, family):
        from peft import IA3Config
        from peft.utils.constants import (TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as ff_mapping,
                                          TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as mapping)

        if s.target_modules is None:
            targets = default_target_modules(model, mapping, "IA3")
            feedforward = None if targets is None else default_target_modules(model, ff_mapping, "IA3 feed-forward")
        else:  # the feed-forward modules must be a subset of the targets: keep the default ones named there
            targets = s.target_modules
            known = ff_mapping.get(model.config.model_type, [])
            feedforward = [m for m in known if isinstance(targets, list) and m in targets]
        defaults = {**base_defaults(model, family), "target_modules": targets, "feedforward_modules": feedforward}
        return build_peft_config(IA3Config, defaults, s)


@dataclass(frozen=True)
class PrefixMethod(FinetuneMethod):
    """Prefix tuning (Li & Liang 2021): trained key/value vectors prepended in every attention layer."""

    padding_free_ok: bool = False

    def peft_config_class(self):
        from peft import PrefixTuningConfig

        return PrefixTuningConfig

    def peft_config(self, s, model, family):
        from peft import PrefixTuningConfig

        defaults = {**base_defaults(model, family), "num_virtual_tokens": s.num_virtual_tokens}
        return build_peft_config(PrefixTuningConfig, defaults, s)


@dataclass(frozen=True)
class PromptTuningMethod(FinetuneMethod):
    """Prompt tuning (Lester et al. 2021): trained embeddings of virtual tokens prepended to the input.

    They start as the embeddings of randomly sampled vocabulary tokens (PEFT's SAMPLE_VOCAB): Lester et al. found
    sampled-vocabulary initialisation far better than random vectors (section 3.1, figure 3b). Text
    initialisation: ``peft_options: {prompt_tuning_init_text: "Classify the colour"}``; random vectors:
    ``{prompt_tuning_init: RANDOM}``.
    """

    padding_free_ok: bool = False

    def peft_config_class(self):
        from peft import PromptTuningConfig

        return PromptTuningConfig

    def peft_config(self, s, model, family):
        from peft import PromptTuningConfig

        defaults = {**base_defaults(model, family), "num_virtual_tokens": s.num_virtual_tokens,
                    "prompt_tuning_init": "SAMPLE_VOCAB"}
        if s.options.get("prompt_tuning_init_text"):
            # PEFT tokenizes the text with the tokenizer it loads from this path: the model's own
            defaults.update(prompt_tuning_init="TEXT", tokenizer_name_or_path=model.name_or_path)
        return build_peft_config(PromptTuningConfig, defaults, s)


ADAPTERS_UNAVAILABLE = (
    "method: adapter trains bottleneck adapters through AdapterHub's `adapters` library, which {problem}. The "
    "latest release (adapters 1.3.0) requires transformers ~=4.57 and fails to import with the installed "
    "transformers {transformers} (ImportError: cannot import name 'HfFolder' from huggingface_hub). Use method: "
    "lora or ia3 (PEFT), or install a release of `adapters` built for this transformers")


@dataclass(frozen=True)
class AdapterMethod(FinetuneMethod):
    """Bottleneck adapters (Houlsby et al. 2019; "seq_bn", Pfeiffer et al. 2020) through AdapterHub's ``adapters``.

    Not re-implemented here: when the library does not import, the method says why and what to use instead.
    """

    def check(self, s, family, runtime=None):
        super().check(s, family, runtime)
        adapters_library()

    def prepare(self, model, s, family, gradient_checkpointing=False):
        adapters = adapters_library()
        adapters.init(model)
        model.add_adapter("default", config=adapters.SeqBnConfig(**s.options))
        model.train_adapter("default")  # freezes everything else
        if family_adapter(family).fresh_head:  # the fresh classification head trains too
            for name in head_modules(model):
                getattr(model, name).requires_grad_(True)
        return model

    def details(self, model, s):
        return {"adapters": {"library": "adapters", "config": "seq_bn", **s.options}}


def adapters_library():
    """AdapterHub's ``adapters`` module, or a UserError saying why it cannot be used."""
    import transformers

    try:
        import adapters
    except ImportError as e:
        problem = "is not installed" if isinstance(e, ModuleNotFoundError) and e.name == "adapters" else \
            f"does not import ({type(e).__name__}: {e})"
        raise UserError(ADAPTERS_UNAVAILABLE.format(problem=problem, transformers=transformers.__version__)) from e
    return adapters


def save_adapters(model, tokenizer, path):
    """Save a bottleneck adapter (``adapters`` library) as safetensors, with the tokenizer."""
    model.save_adapter(str(path), "default", use_safetensors=True)
    tokenizer.save_pretrained(path)
    return path


@dataclass(frozen=True)
class FreezeMethod(FinetuneMethod):
    """Only the top ``trainable_layers`` transformer layers, the final norm and the head train (in fp32)."""

    def row_label(self, s):
        return f"freeze top {s.trainable_layers}"

    def prepare(self, model, s, family, gradient_checkpointing=False):
        from lmtailor.training.freeze import freeze_below_top

        model = fp32_master_weights(model)
        freeze_below_top(model, s.trainable_layers, family)
        return model

    def details(self, model, s):
        from lmtailor.training.freeze import freeze_summary

        return {"freeze": freeze_summary(model)}


@dataclass(frozen=True)
class PassThroughMethod(FinetuneMethod):
    """Any other PEFT method, by its PEFT type name, configured through ``peft_options``."""

    peft_type: str = ""

    def peft_config_class(self):
        from peft import PEFT_TYPE_TO_CONFIG_MAPPING

        return PEFT_TYPE_TO_CONFIG_MAPPING[self.peft_type]

    def peft_config(self, s, model, family):
        from peft import PEFT_TYPE_TO_CONFIG_MAPPING
        from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

        config_class = PEFT_TYPE_TO_CONFIG_MAPPING[self.peft_type]
        fields = {f.name for f in dataclasses.fields(config_class)}
        defaults = base_defaults(model, family)
        if "target_modules" in fields and "target_modules" not in s.options:
            mapping = getattr(PEFT_TYPE_TO_TUNER_MAPPING.get(self.peft_type), "target_module_mapping", None) or {}
            defaults["target_modules"] = s.target_modules if s.target_modules is not None else \
                default_target_modules(model, mapping, self.label)
        return build_peft_config(config_class, defaults, s)


def pass_through(name: str, peft_type: str, label: str) -> PassThroughMethod | None:
    """The method for PEFT type ``peft_type`` (None when PEFT has none): its settings are ``peft_options`` and, if
    its config has them, ``target_modules``. Prompt-learning types other than prefix and prompt tuning are refused:
    serving their virtual tokens is implemented for those two only."""
    from peft import PEFT_TYPE_TO_CONFIG_MAPPING

    from lmtailor.models.families import adapters

    config_class = {str(t.value): c for t, c in PEFT_TYPE_TO_CONFIG_MAPPING.items()}.get(peft_type)
    if config_class is None:
        return None
    fields = {f.name for f in dataclasses.fields(config_class)}
    unsupported = {}
    if "num_virtual_tokens" in fields:  # prompt learning (p_tuning, multitask prompt tuning, ...)
        reason = "lmtailor serves prompt-learning adapters of the prefix and prompt-tuning kinds only; use those"
        unsupported = {adapter.name: reason for adapter in adapters()}  # every family
    settings = ("peft_options",) + (("target_modules",) if "target_modules" in fields else ())
    return PassThroughMethod(name, label, PeftSettings, settings=settings, unsupported=unsupported,
                             peft_type=peft_type, merges=not unsupported and peft_type != "ADAPTION_PROMPT",
                             learning_rate_source="LoRA's default (no per-method default for pass-through PEFT "
                                                  "methods; set learning_rate for this one)")
