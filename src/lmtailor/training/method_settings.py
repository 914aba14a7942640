"""One settings model per kind of fine-tuning method, the way PEFT's config classes work:
``method: {name: lora, r: 16, alpha: 32}`` in an experiment file.

Each built-in method of ``training/peft_methods.py`` names its model here (``FinetuneMethod.settings_model``); the
finetune strategy's ``method:`` field is the discriminated union of them (``method_field.MethodField``). The flat
spelling of earlier versions (``method: lora`` with ``lora_r: 16`` beside it) is converted on load by
``nest_flat_settings``, and ``lmtailor validate`` prints a deprecation note for it (``flat_spelling_notes``).

Importing this module is cheap (pydantic only): the config validator uses it.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

TargetModules = list[str] | Literal["all-linear"] | None
_TARGETS = ("modules that get adapters: names, 'all-linear', or unset for PEFT's architecture default")
_OPTIONS = ("extra settings passed as they are to the method's PEFT config class, e.g. {use_rslora: true} for lora "
            "or {r: 8, alpha: 16} for loha")


class MethodSettings(BaseModel):
    """The settings of one fine-tuning method; ``name`` picks the method (FINETUNE_METHODS, or a PEFT type)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the method: full, freeze, lora, dora, qlora, ia3, prefix, prompt-tuning, adapter, "
                                  "or any other PEFT method by its PEFT name (loha, lokr, vera, oft, ...)")

    @property
    def options(self) -> dict[str, Any]:
        """``peft_options`` where the method takes them, else none."""
        return dict(getattr(self, "peft_options", {}) or {})


def _targets_not_empty(value: Any) -> Any:
    if isinstance(value, list) and not value:
        raise ValueError("target_modules is an empty list; name modules, use 'all-linear', or leave it unset")
    return value


class FullSettings(MethodSettings):
    """Full fine-tuning: every weight trains; no settings of its own."""

    name: Literal["full"] = Field(description="full: every weight trains (fp32 master weights)")


class FreezeSettings(MethodSettings):
    """Freeze tuning: only the top layers, the final norm and the head train."""

    name: Literal["freeze"] = Field(description="freeze: only the top trainable_layers layers and the head train")
    trainable_layers: int = Field(
        2, ge=1, description="how many of the top transformer layers train (with the head and final norm)")


class LoraSettings(MethodSettings):
    """LoRA and its kin (DoRA, QLoRA): PEFT's ``LoraConfig``."""

    name: Literal["lora", "dora", "qlora"] = Field(description="lora, dora (weight-decomposed) or qlora (4-bit base)")
    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (the update is scaled by alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: TargetModules = Field(None, description=_TARGETS)
    peft_options: dict[str, Any] = Field(default_factory=dict, description=_OPTIONS)

    _targets = field_validator("target_modules")(_targets_not_empty)


class IA3Settings(MethodSettings):
    """(IA)^3: PEFT's ``IA3Config``."""

    name: Literal["ia3"] = Field(description="ia3: learnt vectors rescale keys, values and feed-forward activations")
    target_modules: TargetModules = Field(None, description=_TARGETS)
    peft_options: dict[str, Any] = Field(default_factory=dict, description=_OPTIONS)

    _targets = field_validator("target_modules")(_targets_not_empty)


class VirtualTokenSettings(MethodSettings):
    """Prefix tuning and prompt tuning: trained virtual tokens."""

    name: Literal["prefix", "prompt-tuning"] = Field(description="prefix or prompt-tuning")
    num_virtual_tokens: int = Field(20, ge=1, description="number of trained virtual tokens")
    peft_options: dict[str, Any] = Field(default_factory=dict, description=_OPTIONS)


class AdapterSettings(MethodSettings):
    """Bottleneck adapters (AdapterHub's ``SeqBnConfig``, configured through ``peft_options``)."""

    name: Literal["adapter"] = Field(description="adapter: bottleneck adapters (AdapterHub)")
    peft_options: dict[str, Any] = Field(default_factory=dict, description="settings of adapters' SeqBnConfig")


class PeftSettings(MethodSettings):
    """Any other PEFT method, by its PEFT name, configured through ``peft_options``."""

    target_modules: TargetModules = Field(None, description=_TARGETS + " (methods whose config has them)")
    peft_options: dict[str, Any] = Field(default_factory=dict, description=_OPTIONS)

    _targets = field_validator("target_modules")(_targets_not_empty)


# --- the flat spelling of earlier versions -------------------------------------------------------------------------

# flat key beside ``method:`` -> its name inside the nested ``method:`` block
FLAT_KEYS = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "target_modules": "target_modules",
             "num_virtual_tokens": "num_virtual_tokens", "trainable_layers": "trainable_layers",
             "peft_options": "peft_options"}
# the flat names a search space could vary -> their nested names (training/search_space.py reads both)
OLD_SEARCH_NAMES = {flat: f"method.{FLAT_KEYS[flat]}" for flat in ("lora_r", "lora_alpha", "lora_dropout",
                                                                   "num_virtual_tokens", "trainable_layers")}
_GROUP = {"lora_r": "LoRA", "lora_alpha": "LoRA", "lora_dropout": "LoRA", "target_modules": "LoRA",
          "num_virtual_tokens": "virtual-token", "trainable_layers": "freeze", "peft_options": "PEFT"}


def nest_flat_settings(values: dict[str, Any], settings_fields: Callable[[str], tuple[str, ...]]) -> dict[str, Any]:
    """``values`` (a strategy block) with a flat ``method: NAME`` and its flat keys turned into one nested
    ``method: {name: NAME, ...}``; ``settings_fields(name)`` gives the nested keys the method takes. Keys of another
    method are refused (``lora_r`` with ``method: ia3``), as before the nesting."""
    flat = [k for k in FLAT_KEYS if k in values]
    method = values.get("method")
    if not isinstance(method, str):
        if flat and isinstance(method, dict):
            raise ValueError(f"{', '.join(flat)} beside a nested method block: move them into method: (as "
                             f"{', '.join(FLAT_KEYS[k] for k in flat)})")
        return values
    takes = settings_fields(method)
    stray = [k for k in flat if FLAT_KEYS[k] not in takes]
    if "peft_options" in stray and not values.get("peft_options"):
        stray.remove("peft_options")  # an explicit empty dict asks for nothing
    if stray:
        groups: dict[str, list[str]] = {}
        for k in stray:
            groups.setdefault(_GROUP[k], []).append(k)
        what = " and ".join(f"{group} settings ({', '.join(keys)})" for group, keys in groups.items())
        flat_takes = [k for k, v in FLAT_KEYS.items() if v in takes]
        raise ValueError(f"{what} do not apply to method: {method}; remove them (it takes: "
                         f"{', '.join(flat_takes) or 'none of them'})")
    rest = {k: v for k, v in values.items() if k not in FLAT_KEYS}
    nested = {FLAT_KEYS[k]: values[k] for k in flat if FLAT_KEYS[k] in takes}
    return {**rest, "method": {"name": method, **nested}}


def nested_spelling(block: dict[str, Any]) -> str:
    """The nested ``method:`` spelling of a flat block, for the deprecation note."""
    inner = [f"{FLAT_KEYS[k]}: {_yaml_value(block[k])}" for k in FLAT_KEYS if k in block]
    return "method: {" + ", ".join([f"name: {block['method']}", *inner]) + "}"


def _yaml_value(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)


def flat_spelling_notes(raw: dict[str, Any], source: str) -> list[str]:
    """Deprecation notes for the flat method spelling in an experiment's raw ``strategies:`` (fine-tuning blocks
    and the ``finetune:`` blocks of continued pre-training and scratch), and for the flat names in their
    ``search.space``."""
    notes = []
    for i, item in enumerate(raw.get("strategies") or []):
        if not isinstance(item, dict):
            continue
        blocks = [(f"strategies.{i}", item)]
        if isinstance(item.get("finetune"), dict):
            blocks.append((f"strategies.{i}.finetune", item["finetune"]))
        for where, block in blocks:
            flat = [k for k in FLAT_KEYS if k in block]
            if isinstance(block.get("method"), str) and flat:
                notes.append(f"{source}: {where}: {', '.join(flat)} beside method: {block['method']} is the old "
                             f"flat spelling (still read, deprecated); write {nested_spelling(block)}")
            space = block.get("search", {}).get("space") if isinstance(block.get("search"), dict) else None
            old = [k for k in (space if isinstance(space, dict) else {}) if k in OLD_SEARCH_NAMES]
            if old:
                notes.append(f"{source}: {where}.search.space: {', '.join(old)} are the old flat names (still "
                             f"read, deprecated); write {', '.join(OLD_SEARCH_NAMES[k] for k in old)}")
    return notes
