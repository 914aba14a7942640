"""The ``method:`` field of a config (fine-tuning, continued pre-training): ``MethodField``, the discriminated union
of every registered method's settings model, and ``NestedMethod``, its validators.

Importing this module is cheap (pydantic only, no torch, PEFT or transformers): the config validator uses it.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BaseModel, Discriminator, PlainValidator, Tag, field_validator, model_validator

from lmtailor.errors import UserError
from lmtailor.training.method_settings import MethodSettings, PeftSettings, nest_flat_settings
from lmtailor.training.peft_methods import FINETUNE_METHODS, finetune_method

__all__ = ["MethodField", "NestedMethod", "known_method", "nest_method"]


def _tag(value: Any) -> str | None:
    """The union member a ``method:`` value validates as: its built-in method's name (any PEFT pass-through:
    "peft"); an error's key path then reads e.g. ``method.lora.rr``."""
    name = value.get("name") if isinstance(value, dict) else getattr(value, "name", None)
    if not isinstance(name, str):
        return None
    try:
        method = finetune_method(name)
    except UserError:
        return None
    if method.name not in FINETUNE_METHODS:
        return "peft"
    return method.name if method.name in _UNION_TAGS else _LATER


def _registered_later(value: Any) -> MethodSettings:
    """Settings of a method registered after this module was imported (a plugin's, a test's), validated with its
    own settings model: the union below is built once, at import, from the methods registered then."""
    if isinstance(value, MethodSettings):
        return value
    return finetune_method(value["name"]).settings_model.model_validate(value)


_LATER = "registered-later"
_UNION_TAGS = frozenset(FINETUNE_METHODS.names())


def _union_members() -> tuple:
    members = [Annotated[FINETUNE_METHODS.get(n).settings_model, Tag(n)] for n in sorted(_UNION_TAGS)]
    return (*members, Annotated[PeftSettings, Tag("peft")],
            Annotated[Any, PlainValidator(_registered_later, json_schema_input_type=dict[str, Any]), Tag(_LATER)])


# The ``method:`` field of a fine-tuning config: each registered method's settings model, picked by ``name``;
# a method registered later validates through its own settings model all the same.
MethodField = Annotated[Union[_union_members()], Discriminator(_tag)]


def _takes(name: str) -> tuple[str, ...]:
    return finetune_method(name).settings


def nest_method(values: Any) -> Any:
    """A config block's ``method`` as a nested mapping: the flat spelling converted (``nest_flat_settings``), a
    PEFT alias (prefix_tuning) turned into the built-in name. An unknown name is left for ``known_method``."""
    if not isinstance(values, dict):
        return values
    method = values.get("method")
    name = method if isinstance(method, str) else method.get("name") if isinstance(method, dict) else None
    if not isinstance(name, str):
        return values
    try:
        canonical = finetune_method(name).name
    except UserError:
        return values  # reported on the method key by known_method
    if canonical in FINETUNE_METHODS and canonical != name:
        values = {**values, "method": canonical if isinstance(method, str) else {**method, "name": canonical}}
    return nest_flat_settings(values, _takes)


def known_method(value: Any) -> Any:
    """A ``method:`` value whose name is a method (else the error lists the nearest names): a field validator."""
    name = value.get("name") if isinstance(value, dict) else value if isinstance(value, str) else None
    if isinstance(name, str):
        try:
            finetune_method(name)
        except UserError as e:
            raise ValueError(str(e)) from None
    return {"name": value} if isinstance(value, str) else value


class NestedMethod(BaseModel):
    """The ``method:`` field's validators, shared by every config that has one (fine-tuning, continued
    pre-training): the flat spelling (method: lora, lora_r: 8) read as the nested one, an unknown method refused
    with the nearest names. The config declares the field itself (``method: MethodField``)."""

    @model_validator(mode="before")
    @classmethod
    def _nested_method(cls, values: Any) -> Any:
        return nest_method(values)

    _known_method = field_validator("method", mode="before", check_fields=False)(known_method)
