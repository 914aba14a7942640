"""The bottom layer names the meter and the runtime by protocols: the real classes must match them member for member."""

from __future__ import annotations

import inspect

import pytest

from lmtailor.core.context import RowMeter, RowRuntime
from lmtailor.measure.meter import Meter
from lmtailor.runtime import Runtime


def _members(protocol: type) -> list[str]:
    own = set(vars(protocol)) | set(getattr(protocol, "__annotations__", {}))
    return sorted(m for m in own if not m.startswith("_"))


def _parameters(fn) -> list[tuple[str, object]]:
    # names, kinds and defaults must agree; annotations may be narrower in the class than in the protocol
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("protocol, cls", [(RowMeter, Meter), (RowRuntime, Runtime)])
def test_the_real_class_has_every_member_of_its_protocol(protocol, cls):
    fields = getattr(cls, "__dataclass_fields__", {})
    for name in _members(protocol):
        assert hasattr(cls, name) or name in fields, f"{cls.__name__} has no {name!r} that {protocol.__name__} names"
        declared = vars(protocol).get(name)
        if inspect.isfunction(declared):
            assert _parameters(getattr(cls, name)) == _parameters(declared), f"{cls.__name__}.{name} differs"


def test_the_protocols_are_not_empty():
    # 12 meter methods a run calls, its two attributes; 6 runtime properties and describe()
    assert len(_members(RowMeter)) == 14 and len(_members(RowRuntime)) == 7
