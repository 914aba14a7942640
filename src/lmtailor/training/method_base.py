"""What every fine-tuning method shares: the ``FinetuneMethod`` base class and the helpers its kinds build on
(PEFT configs extended by ``peft_options``, default target modules, modules trained in full, the record summary).

Target modules default to PEFT's own per-architecture tables (``peft.utils.constants``); a transformers
``EncoderDecoderModel`` (BERT2BERT), which those tables lack, gets the union of its encoder's and decoder's defaults.
Modules a warm start left random (``config.warm_start_new_modules``) and an encoder classifier's fresh head are
trained in full (``modules_to_save``), whatever the method: a low-rank update of frozen random weights learns little.

Importing this module is cheap (no torch, PEFT or transformers): the config validator reaches it.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lmtailor.errors import UserError

if TYPE_CHECKING:
    from peft import PeftConfig

    from lmtailor.models.families import FamilyAdapter
    from lmtailor.runtime import Runtime
    from lmtailor.training.method_settings import MethodSettings


def family_adapter(family: str) -> "FamilyAdapter":
    """The adapter of the family called ``family``. Imported when asked, not at the top: importing
    ``lmtailor.models`` loads torch and transformers, and the config validator reads this module."""
    from lmtailor.models.families import family_of

    return family_of(family)


@dataclass(frozen=True)
class FinetuneMethod:
    """A fine-tuning method: its settings model, what it trains, whether its adapter merges, its FLOP count kind,
    its default learning rates and the families it supports. The one place each of these is decided."""

    name: str
    label: str
    settings_model: type = object  # its pydantic settings model (training/method_settings.py)
    # the settings it reads beside ``name``: unset, every field of its settings model
    settings: tuple[str, ...] | None = None
    learning_rate: float = 2e-4  # language models (decoder-only and encoder-decoder)
    encoder_learning_rate: float = 5e-4  # a family whose fresh head trains with the method (encoder classifiers)
    unsupported: dict[str, str] = field(default_factory=dict)  # family name -> why not (data, read by ``check``)
    peft: bool = True  # trains an adapter (artifact "adapter"), else the model's own weights (artifact "model")
    # its adapter folds into the base weights (LoRA, IA3, ...): served merged, and merged after pre-training;
    # virtual tokens (prefix, prompt tuning) and bottleneck adapters have no weights to fold into
    merges: bool = True
    # a batch's rows can be flattened into one sequence (padding_free); not when virtual tokens are put before the
    # input, since they would go before the whole flattened batch instead of before each row
    padding_free_ok: bool = True
    # the training FLOP estimate's kind (measure/meter.estimate_flops): "full" when every weight trains, "freeze",
    # else "peft" (the backward still carries activation gradients through the frozen weights)
    flops_kind: str = "peft"
    learning_rate_source: str = "the method's default"

    def __post_init__(self) -> None:
        if self.settings is None:
            fields = getattr(self.settings_model, "model_fields", {})
            object.__setattr__(self, "settings", tuple(f for f in fields if f != "name"))

    @property
    def artifact_kind(self) -> str:
        """The artifact it leaves: "adapter" (PEFT or bottleneck adapters) or "model" (full, freeze)."""
        return "adapter" if self.peft else "model"

    def default_learning_rate(self, family: str) -> float:
        """The default peak learning rate for a model of ``family`` (its adapter says whether a fresh head trains)."""
        return self.learning_rate_with(fresh_head=family_adapter(family).fresh_head)

    def learning_rate_with(self, fresh_head: bool) -> float:
        """The default peak learning rate with a fresh head training beside the method (an encoder classifier's:
        the encoder one) or without one (a language model)."""
        return self.encoder_learning_rate if fresh_head else self.learning_rate

    def row_label(self, s: "MethodSettings") -> str:
        """The result row's label ("LoRA", "freeze top 2", ...)."""
        return self.label

    def check(self, s: "MethodSettings", family: str, runtime: "Runtime | None" = None) -> None:
        """Refuse, before any model is loaded, a family or device this method cannot run with."""
        reason = self.unsupported.get(family_adapter(family).name)
        if reason is not None:
            raise UserError(f"method: {s.name} does not support {family} models: {reason}")

    def peft_config_class(self) -> type | None:
        """PEFT's config class that ``peft_options`` extend (None: the method has none to check them against)."""
        return None

    def quantization_config(self, runtime: "Runtime") -> Any:
        """The ``quantization_config`` to load the base model with (None: load it as usual)."""
        return None

    def prepare(self, model, s: "MethodSettings", family: str, gradient_checkpointing: bool = False):
        """The base model made ready before a PEFT wrapper goes on (or before training, for non-PEFT methods)."""
        return model

    def peft_config(self, s: "MethodSettings", model, family: str) -> "PeftConfig | None":
        """PEFT's config for this method (None: the method trains the model's own weights)."""
        return None

    def details(self, model, s: "MethodSettings") -> dict[str, Any]:
        """What the run record says about the method beyond the common fields."""
        return {"peft": peft_summary(model)} if self.peft else {}


def build_peft_config(config_class, defaults: dict[str, Any], s: "MethodSettings"):
    """A PEFT config of ``config_class`` from ``defaults``, extended (and overridden) by ``s.peft_options``;
    unknown options and values PEFT refuses are UserErrors naming the option."""
    options = s.options
    check_peft_options(config_class, s)
    known = {f.name for f in dataclasses.fields(config_class)}
    if "modules_to_save" in options and defaults.get("modules_to_save"):  # the head / fresh modules must still train
        options["modules_to_save"] = sorted(set(defaults["modules_to_save"]) | set(options["modules_to_save"] or []))
    kwargs = {k: v for k, v in {**defaults, **options}.items() if k in known}
    try:
        return config_class(**kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"method: {s.name}: PEFT refused the config ({config_class.__name__}): {e}; check "
                        "method.peft_options and method.target_modules") from e


def check_peft_options(config_class, s: "MethodSettings") -> None:
    """Refuse ``peft_options`` keys that are not fields of ``config_class``, naming them and the valid ones."""
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(s.options) - known)
    if unknown:
        near = sorted({m for k in unknown for m in difflib.get_close_matches(str(k), known, n=2, cutoff=0.6)})
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise UserError(f"method.peft_options: {', '.join(map(str, unknown))}{hint} is not a setting of PEFT's "
                        f"{config_class.__name__} (method: {s.name}); its settings are: "
                        f"{', '.join(sorted(known - {'peft_type', 'task_type', 'auto_mapping'}))}")


def default_target_modules(model, mapping: dict[str, Any], method: str) -> list[str] | None:
    """PEFT's default targets for the model: None when PEFT's own table knows the model type (PEFT fills them in);
    for an ``EncoderDecoderModel`` (BERT2BERT), the union of its encoder's and decoder's defaults."""
    config = model.config
    if config.model_type in mapping:
        return None
    parts = [getattr(config, side, None) for side in ("encoder", "decoder")]
    targets = sorted({m for part in parts if part is not None for m in mapping.get(part.model_type, [])})
    if targets:
        return targets
    raise UserError(f"PEFT has no default {method} target modules for model type {config.model_type!r}; set "
                    "method.target_modules in the finetune strategy (names of the model's linear layers, e.g. [q_proj, "
                    "v_proj], or all-linear)")


def head_modules(model) -> list[str]:
    """An encoder classifier's fresh head: every top-level module outside the encoder (DeBERTa's pooler and
    DistilBERT's pre_classifier too, beside ``classifier``), trained and saved in full."""
    encoder = getattr(model, model.base_model_prefix, None)
    return [name for name, module in model.named_children()
            if module is not encoder and any(True for _ in module.parameters())]


def fresh_modules(model, family: str) -> list[str] | None:
    """Modules trained in full beside any method: a fresh head (an encoder classifier's), a warm start's random
    modules."""
    if family_adapter(family).fresh_head:
        return head_modules(model)
    return list(getattr(model.config, "warm_start_new_modules", None) or []) or None


def base_defaults(model, family: str) -> dict[str, Any]:
    """The config fields every PEFT method of a family shares: the task type and the modules trained in full."""
    return {"task_type": family_adapter(family).peft_task_type, "modules_to_save": fresh_modules(model, family)}


def fp32_master_weights(model):
    """The model in fp32 (a no-op when it already is): AdamW updates on half-precision weights mostly round away."""
    import torch

    return model.float() if model.dtype != torch.float32 else model


def peft_summary(model) -> dict[str, Any] | None:
    """The PEFT config of a PeftModel as JSON-ready values, without PEFT's bookkeeping and empty fields."""
    import json

    configs = getattr(model, "peft_config", None)
    if not configs:
        return None
    config = configs.get("default") or next(iter(configs.values()))
    skip = {"base_model_name_or_path", "revision", "peft_version", "auto_mapping", "inference_mode",
            "tokenizer_kwargs", "megatron_core"}
    raw = {k: (sorted(v) if isinstance(v, (set, frozenset)) else v) for k, v in config.to_dict().items()
           if k not in skip and v not in (None, False, "", [], {}) and not (isinstance(v, set) and not v)}
    return json.loads(json.dumps(raw, default=str))
