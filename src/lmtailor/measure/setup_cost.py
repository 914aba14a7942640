"""What a first-time piece of set-up cost, kept with its cache entry so every row that reuses it is charged the same.

A cache (synthetic rows, a dense index, the embedding store) saves time on a rerun, but a deployment pays the work
once whatever happened to be on this machine. So the work's cost (seconds, CPU seconds, tokens, an API bill) is
measured when it is done (``Meter.mark`` / ``Meter.cost_since``), stored beside the result, and charged to the row's
meter on a cache hit (``Meter.charge_cached``), which records that it came from the cache. A rerun then reports the
same set-up cost as the first run, within timing noise.

Tool set-up that no deployment would pay (a GGUF converted to safetensors, a model built into the cache) is the
opposite case: ``meter.tooling`` keeps its time out of every clock and every $ of the row, and records it apart.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lmtailor.io import write_json_atomic

SETUP_COST_FILE = "setup_cost.json"


@dataclass
class SetupCost:
    """The cost of one piece of work in one meter phase, as the meter measured (or would have measured) it."""

    phase: str
    wall_s: float = 0.0
    cpu_s: float = 0.0
    tokens: int = 0
    examples: int = 0
    flops: float = 0.0
    hardware: str = "cpu"  # where the seconds were measured: seconds of another device are not this one's
    # API calls made for the work (a remote teacher): requests, tokens and their price at the time
    api_requests: int = 0
    api_input_tokens: int = 0
    api_output_tokens: int = 0
    api_usd: float = 0.0
    parts: list[dict] = field(default_factory=list)  # where the seconds came from, when assembled from several

    def as_dict(self) -> dict:
        """A JSON-ready dict, rounded so a stored cost reads cleanly."""
        out = asdict(self)
        for key in ("wall_s", "cpu_s"):
            out[key] = round(out[key], 4)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "SetupCost":
        """The cost stored by ``as_dict`` (unknown keys from a newer lmtailor are ignored)."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def plus(self, other: "SetupCost") -> "SetupCost":
        """The sum of two costs of the same phase."""
        return SetupCost(self.phase, self.wall_s + other.wall_s, self.cpu_s + other.cpu_s,
                         self.tokens + other.tokens, self.examples + other.examples, self.flops + other.flops,
                         self.hardware, self.api_requests + other.api_requests,
                         self.api_input_tokens + other.api_input_tokens,
                         self.api_output_tokens + other.api_output_tokens, self.api_usd + other.api_usd,
                         self.parts + other.parts)


def save_setup_cost(folder: Path, cost: SetupCost) -> None:
    """Write ``cost`` beside a cache entry (atomically)."""
    write_json_atomic(Path(folder) / SETUP_COST_FILE, cost.as_dict())


def load_setup_cost(folder: Path) -> SetupCost | None:
    """The cost stored beside a cache entry; None when the entry predates stored costs or the file is unreadable."""
    path = Path(folder) / SETUP_COST_FILE
    try:
        return SetupCost.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
