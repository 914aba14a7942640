"""What else loaded the machine while a row ran: the signal that says whether its time (and $) can be trusted.

A row's wall time is only this configuration's cost when the machine was not also running other work: on a
machine shared with other jobs the same zero-shot answers measured 28 minutes per 1k against under 9 on an idle one.
The meter reads the system-wide CPU time (``psutil.cpu_times``) and this process's at the start and end of a row, so
the CPU seconds other processes used in between are known exactly, without sampling; the load average (1, 5 and 15
minutes) at both ends, the core count and torch's thread count are recorded beside it.

"Busy" is defined from that measurement: other processes used more than ``BUSY_OTHER_CORES`` cores on average
while the row ran. Half a core is well above an idle desktop's background (a few percent of one core) and well
below one competing single-threaded job; with torch using every core, each core taken by another job slows the
row's compute by about that share. The counters are the kernel's for the whole machine: in a container limited to
fewer cores than its host, other containers' work counts too, so a flag there means "check", not "certainly slow".

The kernel counts CPU time in clock ticks (10 ms), per core: over a row of a few milliseconds (the trivial baseline)
one tick of anyone's work reads as several cores. Other processes' CPU time is therefore judged net of what the
counters cannot resolve (two readings of every core's counter and of this process's), so a row too short to tell
is never called busy.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import psutil

BUSY_OTHER_CORES = 0.5
try:
    TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")  # the granularity of the kernel's CPU-time counters
except (AttributeError, ValueError, OSError):  # no sysconf (Windows): the usual 100 Hz
    TICK_S = 0.01


def _system_busy_seconds() -> float:
    """CPU seconds all processes have spent busy (everything but idle and I/O wait), summed over cores."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    return sum(t) - idle


def _own_cpu_seconds() -> float:
    t = psutil.Process(os.getpid()).cpu_times()
    # children: the time of processes this one started and waited for (a llama.cpp helper, a tokenizer pool)
    return t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # Windows has no load average
        return None


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")  # never import torch just to ask: an API row does not load it
    return int(torch.get_num_threads()) if torch is not None else None


@dataclass
class LoadWatch:
    """Started when a row's meter starts, read when it stops."""

    system_start: float = 0.0
    own_start: float = 0.0
    loadavg_start: list[float] | None = None

    def start(self) -> "LoadWatch":
        self.system_start, self.own_start, self.loadavg_start = _system_busy_seconds(), _own_cpu_seconds(), _loadavg()
        return self

    def record(self, wall_s: float) -> dict:
        """The machine's load over the ``wall_s`` seconds since ``start``, as the result record's ``machine``."""
        system = _system_busy_seconds() - self.system_start
        own = _own_cpu_seconds() - self.own_start
        other = max(0.0, system - own)  # the two clocks tick at different granularities: never below zero
        return {
            "cores": psutil.cpu_count(logical=True),
            "torch_threads": _torch_threads(),
            "loadavg_start": self.loadavg_start,
            "loadavg_end": _loadavg(),
            "wall_s": round(wall_s, 3),
            "own_cpu_s": round(own, 3),
            "other_cpu_s": round(other, 3),
            "own_cores_avg": round(own / wall_s, 3) if wall_s > 0 else None,
            "other_cores_avg": round(other / wall_s, 3) if wall_s > 0 else None,
            "busy_threshold_cores": BUSY_OTHER_CORES,
        }


def counter_resolution_s(cores: int | None) -> float:
    """CPU seconds the counters cannot resolve in ``other_cpu_s``: one tick at each end, for every core's counter
    (the system-wide sum) and for this process's."""
    return 2 * TICK_S * ((cores or 1) + 1)


def machine_was_busy(machine: dict | None) -> bool | None:
    """Whether other processes used more than ``BUSY_OTHER_CORES`` cores on average while the row ran (the
    record's ``machine``), net of the counters' resolution; None when the record has no such measurement (written
    before it was kept)."""
    if not machine or machine.get("other_cores_avg") is None:
        return None
    threshold = machine.get("busy_threshold_cores", BUSY_OTHER_CORES)
    if machine.get("other_cpu_s") is None or not machine.get("wall_s"):
        return machine["other_cores_avg"] > threshold
    resolved = machine["other_cpu_s"] - counter_resolution_s(machine.get("cores"))
    return resolved > threshold * machine["wall_s"]
