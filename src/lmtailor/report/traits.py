"""What each row's strategy is, read from its record: the report's one way to tell floors, prompted and trained
rows apart and to place a row on the spectrum, so no report module knows a strategy by its name.

A record written since strategies declare their traits (``strategies/traits.py``) carries them as ``traits``; an
older one has none, and gets what its strategy declares today for the record's config (through the ``STRATEGIES``
registry), so the report of an old run reads as it did.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import get_args

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from lmtailor.errors import UserError
from lmtailor.strategies import STRATEGIES, Strategy
from lmtailor.strategies.traits import StrategyTraits


def traits_of(record: dict) -> StrategyTraits | None:
    """The traits of the record's strategy: stored in the record, else what its strategy declares for its config;
    None for a record of a strategy this lmtailor does not know."""
    stored = record.get("traits")
    if stored is not None:
        try:
            return StrategyTraits.from_record(stored)
        except (ValueError, TypeError) as e:
            raise UserError(f"row {record.get('row_id')!r}: its record's traits cannot be read ({e}); re-run the "
                            "row, or delete the key to have them derived from its strategy") from None
    name = record.get("strategy")
    if not isinstance(name, str) or name not in STRATEGIES:
        return None  # a strategy this lmtailor does not know (a plugin not loaded): no rung of its own
    return _declared(STRATEGIES.get(name), json.dumps(record.get("config") or {}, sort_keys=True))


@lru_cache(maxsize=256)
def _declared(cls: type[Strategy], config_json: str) -> StrategyTraits | None:
    """What strategy class ``cls`` declares for this config (its own traits when the config cannot say)."""
    try:
        return cls(_as_stored(cls.Config, json.loads(config_json))).traits()
    except (AttributeError, TypeError, ValueError):
        return cls.TRAITS


def _as_stored(model: type[BaseModel], values: dict) -> BaseModel:
    """The config ``values`` as the record stores them, nested blocks included, without validating again: the row's
    config was validated when it ran, and a dump holds every field at its default, which some configs refuse (a
    LoRA row's ``num_virtual_tokens``)."""
    fields = model.model_fields
    return model.model_construct(**{k: _as_stored(sub, v) if isinstance(v, dict) and (sub := _model_in(fields[k]))
                                    else v for k, v in values.items() if k in fields})


def _model_in(field: FieldInfo) -> type[BaseModel] | None:
    """The config model a field holds (``FinetuneConfig``, ``AugmentConfig | None``), if any."""
    for t in (field.annotation, *get_args(field.annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def group_traits(groups: list[dict], records: list[dict]) -> dict[str, StrategyTraits | None]:
    """Each summary group's traits (its first row's: a group is one label of one strategy), by group id."""
    by_id = {r["row_id"]: r for r in records}
    out = {}
    for g in groups:
        first = next((by_id[i] for i in g.get("rows") or [] if i in by_id), None)
        out[g["id"]] = traits_of(first) if first is not None else None
    return out


def rungs_in_order(traits: list[StrategyTraits | None]) -> list[str]:
    """The distinct rung names of ``traits``, cheapest first on the spectrum (``StrategyTraits.order``)."""
    order: dict[str, tuple] = {}
    for t in traits:
        if t is not None:
            order[t.rung] = min(order.get(t.rung, t.order), t.order)
    return sorted(order, key=order.__getitem__)
