"""The one meter: every strategy run is measured here, the same way, so the comparison does not lie.

Records wall and CPU time per phase, peak RSS (sampled by a thread, so it is the peak of *this* run, not of
the process's lifetime), CUDA peak memory, tokens per phase, parameters, artifact size, latency and money.

Set-up found in a cache is charged at what it cost the first time (``charge_cached``, ``measure/setup_cost.py``), tool
set-up no deployment pays is kept out of every clock (``tooling``), and what else loaded the machine while the row
ran is recorded beside the times (``machine``, ``measure/machine_load.py``).

Under several processes (``accelerate launch``) each process meters itself and ``combine_process_records`` makes
the row's one record (see its docstring for what is summed, what is the slowest process's and what is counted once).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import psutil

from lmtailor.distributed import is_main_process
from lmtailor.measure.machine_load import LoadWatch, machine_was_busy
from lmtailor.measure.pricing import Pricing
from lmtailor.measure.setup_cost import SetupCost

log = logging.getLogger("lmtailor")

# "index": building a retrieval index (embedding a corpus): a one-time set-up cost like training.
PHASES = ("load", "data", "index", "pretrain", "search", "train", "inference")
# Phases paid once before serving (the "set-up" cost): making extra training data (augmentation, a teacher's
# synthetic rows), building a retrieval index, (continued) pre-training and fine-tuning.
SETUP_PHASES = ("data", "index", "pretrain", "search", "train")  # "search": hyperparameter trials
# The meters open in this process, innermost last: ``tooling`` finds the row's meter without being handed it.
_ACTIVE: list["Meter"] = []


def release_freed_memory() -> None:
    """Hand memory that Python and PyTorch have freed back to the operating system, so RSS measures what is in use.

    glibc keeps freed heap memory for reuse, and after a large block is freed it raises its mmap threshold, so even
    tens-of-megabyte tensors then come from (and stay in) the heap: after a full fine-tune, the process's RSS stays
    gigabytes above what the next row uses, and that row's "peak memory" would be the earlier row's. ``malloc_trim``
    returns it (measured: 2.1 GB of freed 4 MB tensors stayed resident until trimmed, then RSS fell to 0.2 GB).
    A no-op where there is no glibc (macOS, Windows, musl).
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


@dataclass
class _PhaseClock:
    wall_s: float = 0.0
    cpu_s: float = 0.0
    tokens: int = 0
    examples: int = 0


class _RssSampler(threading.Thread):
    """Polls the process RSS; ru_maxrss would report the whole process's lifetime peak instead of this run's."""

    def __init__(self, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.proc = psutil.Process(os.getpid())
        self.peak = self.proc.memory_info().rss
        self.window_peak = self.peak  # the peak since the current phase began (see Meter.phase)
        self._stop_event = threading.Event()

    def sample(self) -> int:
        rss = self.proc.memory_info().rss
        self.peak, self.window_peak = max(self.peak, rss), max(self.window_peak, rss)
        return rss

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.sample()

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.sample()
        return self.peak


def _cpu_seconds() -> float:
    t = psutil.Process(os.getpid()).cpu_times()
    return t.user + t.system


def dir_size_bytes(path: Path) -> int:
    """Return the size on disk of a file or of everything under a directory."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _main_process() -> bool:
    return is_main_process()


@dataclass
class _ApiUsage:
    """Calls to an API-backed model (``openai:MODEL@URL``) in one phase, priced from the responses' token usage."""

    requests: int = 0
    sent: int = 0  # requests that went over the network (the rest were answered from the on-disk response cache)
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float = 0.0  # the price of all these answers, cached or not: what the configuration costs
    usd_spent: float = 0.0  # what this run paid (sent requests only)
    latency_s: list[float] = field(default_factory=list)  # per request, as measured when it was sent
    models: set[str] = field(default_factory=set)  # the API model names asked (for the "unpriced" mark)

    def record(self, pricing: Pricing | None = None) -> dict:
        lat = sorted(self.latency_s)
        unpriced = sorted(m for m in self.models if pricing is not None and pricing.is_unpriced(m))
        return {"requests": self.requests, "models": sorted(self.models), "unpriced_models": unpriced,
                "sent": self.sent, "cache_hits": self.requests - self.sent,
                "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "usd": self.usd, "usd_spent_this_run": self.usd_spent,
                "latency_s_p50": lat[len(lat) // 2] if lat else None,
                "latency_s_max": lat[-1] if lat else None}


@dataclass
class Meter:
    """Measures one strategy run. Use as a context manager; strategies mark phases and count tokens."""

    pricing: Pricing = field(default_factory=Pricing)
    hardware: str = "cpu"
    phases: dict[str, _PhaseClock] = field(default_factory=lambda: {p: _PhaseClock() for p in PHASES})
    trainable_params: int | None = None
    total_params: int | None = None
    artifacts: dict[str, int] = field(default_factory=dict)
    flops: dict[str, float] = field(default_factory=dict)
    _sampler: _RssSampler | None = None
    _start_wall: float = 0.0
    _start_cpu: float = 0.0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    rss_start: int = 0
    rss_peak: int = 0
    cuda_peak: int | None = None
    # per phase: a row's peak alone mixes training with inference (label scoring can hold more logits than a
    # training step), and "PEFT needs less memory" is a statement about the training phase
    phase_rss_peak: dict[str, int] = field(default_factory=dict)
    phase_cuda_peak: dict[str, int] = field(default_factory=dict)
    _cuda_seen: int = 0
    api: dict[str, _ApiUsage] = field(default_factory=dict)  # by phase: API calls (inference, or a teacher's data)
    # set-up paid from a cache entry (Meter.charge_cached) and tool set-up kept out of every clock (tooling)
    charged: list[dict] = field(default_factory=list)
    tooling_items: list[dict] = field(default_factory=list)
    _charged_wall: float = 0.0
    _charged_cpu: float = 0.0
    _excluded_wall: float = 0.0
    _excluded_cpu: float = 0.0
    _in_tooling: bool = False
    _load: LoadWatch | None = None
    machine: dict | None = None

    def __enter__(self) -> "Meter":
        release_freed_memory()  # else a row's peak RSS starts from what earlier rows freed but the allocator kept
        _ACTIVE.append(self)
        self._load = LoadWatch().start()
        self._sampler = _RssSampler()
        self.rss_start = self._sampler.peak
        self._sampler.start()
        if self.hardware == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        self._start_wall, self._start_cpu = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        measured_wall, measured_cpu = time.perf_counter() - self._start_wall, _cpu_seconds() - self._start_cpu
        if self._load is not None:
            self.machine = self._load.record(measured_wall)
            if machine_was_busy(self.machine):
                log.warning("other processes used %.1f cores on average while this row ran: its time and $ are "
                            "inflated (the report's honesty checks name it)", self.machine["other_cores_avg"])
        _ACTIVE[:] = [m for m in _ACTIVE if m is not self]  # by identity: two dataclass meters may compare equal
        # billed time: what ran here, minus tool set-up, plus set-up charged from cache entries
        self.wall_s = measured_wall - self._excluded_wall + self._charged_wall
        self.cpu_s = measured_cpu - self._excluded_cpu + self._charged_cpu
        assert self._sampler is not None
        self.rss_peak = self._sampler.stop()
        if self.hardware == "cuda":
            import torch

            self.cuda_peak = max(self._cuda_seen, int(torch.cuda.max_memory_allocated()))

    @contextmanager
    def phase(self, name: str) -> Iterator[_PhaseClock]:
        """Time a phase (one of ``PHASES``); time accumulates over repeated entries."""
        if name not in self.phases:
            raise ValueError(f"unknown meter phase {name!r}; use one of {', '.join(self.phases)}")
        clock = self.phases[name]
        sampler = self._sampler if self._sampler is not None and self._sampler.is_alive() else None
        outer = None
        if sampler is not None:  # open a window: this phase's peak, from its own start
            outer, sampler.window_peak = sampler.window_peak, sampler.sample()
        cuda = self.hardware == "cuda"
        if cuda:
            import torch

            self._cuda_seen = max(self._cuda_seen, int(torch.cuda.max_memory_allocated()))
            torch.cuda.reset_peak_memory_stats()
        w, c = time.perf_counter(), _cpu_seconds()
        excluded_w, excluded_c = self._excluded_wall, self._excluded_cpu
        try:
            yield clock
        finally:
            # tool set-up inside the phase (a GGUF conversion during "load") is not the phase's cost
            clock.wall_s += time.perf_counter() - w - (self._excluded_wall - excluded_w)
            clock.cpu_s += _cpu_seconds() - c - (self._excluded_cpu - excluded_c)
            if sampler is not None:
                sampler.sample()
                inner = sampler.window_peak
                self.phase_rss_peak[name] = max(self.phase_rss_peak.get(name, 0), inner)
                sampler.window_peak = max(outer, inner)  # an enclosing phase's window includes this one
            if cuda:
                peak = int(torch.cuda.max_memory_allocated())
                self.phase_cuda_peak[name] = max(self.phase_cuda_peak.get(name, 0), peak)
                self._cuda_seen = max(self._cuda_seen, peak)

    @contextmanager
    def tooling(self, what: str) -> Iterator[None]:
        """Time tool set-up that no deployment would pay (converting a GGUF, building a model into the cache) and
        keep it out of every clock and every $ of this row: it is recorded apart, under ``tooling``."""
        if self._in_tooling:  # nested tool work is already inside the outer one's time
            yield
            return
        self._in_tooling = True
        w, c = time.perf_counter(), _cpu_seconds()
        try:
            yield
        finally:
            dw, dc = time.perf_counter() - w, _cpu_seconds() - c
            self._in_tooling = False
            self._excluded_wall += dw
            self._excluded_cpu += dc
            self.tooling_items.append({"what": what, "wall_s": round(dw, 3), "cpu_s": round(dc, 3)})

    def mark(self, phase: str) -> SetupCost:
        """A snapshot of ``phase``'s counters: ``cost_since(mark)`` is then the cost of the work done in between."""
        clock, api = self.phases[phase], self.api.get(phase, _ApiUsage())
        return SetupCost(phase, clock.wall_s, clock.cpu_s, clock.tokens, clock.examples, self.flops.get(phase, 0.0),
                         self.hardware, api.requests, api.input_tokens, api.output_tokens, api.usd)

    def cost_since(self, mark: SetupCost) -> SetupCost:
        """What ``mark.phase`` cost since ``mark`` was taken: the set-up cost to store with a cache entry."""
        now = self.mark(mark.phase)
        return SetupCost(mark.phase, now.wall_s - mark.wall_s, now.cpu_s - mark.cpu_s, now.tokens - mark.tokens,
                         now.examples - mark.examples, now.flops - mark.flops, self.hardware,
                         now.api_requests - mark.api_requests, now.api_input_tokens - mark.api_input_tokens,
                         now.api_output_tokens - mark.api_output_tokens, now.api_usd - mark.api_usd)

    def charge_cached(self, cost: SetupCost | None, source: str, phase: str | None = None) -> None:
        """Charge set-up work found in a cache as if this row had done it: its seconds, CPU seconds, tokens and API
        bill go into ``phase`` (default: the phase it was measured in) and into the row's time and $, and the
        record lists it under ``charged_from_cache`` with ``source``. ``cost`` None: the cache entry predates stored
        costs, so nothing can be charged; the record says so (``unknown``)."""
        if cost is None:
            self.charged.append({"phase": phase, "source": source, "unknown": True})
            return
        phase = phase or cost.phase
        clock = self.phases[phase]
        clock.wall_s += cost.wall_s
        clock.cpu_s += cost.cpu_s
        clock.tokens += int(cost.tokens)
        clock.examples += int(cost.examples)
        if cost.flops:
            self.add_flops(phase, cost.flops)
        if cost.api_requests:  # priced when it was done; counted as answered from a cache: this run paid nothing
            usage = self.api.setdefault(phase, _ApiUsage())
            usage.requests += cost.api_requests
            usage.input_tokens += cost.api_input_tokens
            usage.output_tokens += cost.api_output_tokens
            usage.usd += cost.api_usd
        self._charged_wall += cost.wall_s
        self._charged_cpu += cost.cpu_s
        item = {"phase": phase, "source": source, "wall_s": round(cost.wall_s, 3), "cpu_s": round(cost.cpu_s, 3),
                "tokens": int(cost.tokens), "api_usd": cost.api_usd}
        if cost.hardware != self.hardware:
            item["measured_on"] = cost.hardware  # seconds of another device, charged at this row's price
        self.charged.append(item)

    def add_tokens(self, phase: str, n: int) -> None:
        """Count ``n`` real (non-padding) tokens processed in ``phase``."""
        self.phases[phase].tokens += int(n)

    def add_examples(self, phase: str, n: int) -> None:
        """Count ``n`` examples processed in ``phase`` (inference latency is time / examples)."""
        self.phases[phase].examples += int(n)

    def count_inference(self, model, tokens: int, examples: int) -> None:
        """Count one prediction pass over ``examples`` rows: real tokens, rows, and the FLOP estimate for ``model``."""
        self.add_tokens("inference", tokens)
        self.add_examples("inference", examples)
        self.add_flops("inference", estimate_flops(sum(p.numel() for p in model.parameters()), tokens, "inference"))

    def add_api_call(self, phase: str, input_tokens: int, output_tokens: int, usd: float, sent: bool,
                     latency_s: float | None = None, model: str | None = None) -> None:
        """Count one request to an API-backed model in ``phase``: its token usage, its price, and whether it was
        sent (``sent=False``: answered from the response cache, so this run paid nothing for it).

        An API row's inference money is the provider's bill for its tokens, not this machine's time (which only
        waits for the answers); a teacher's API bill is part of the set-up cost.
        """
        if phase not in self.phases:
            raise ValueError(f"unknown meter phase {phase!r}; use one of {', '.join(self.phases)}")
        usage = self.api.setdefault(phase, _ApiUsage())
        usage.requests += 1
        usage.sent += int(sent)
        usage.input_tokens += int(input_tokens)
        usage.output_tokens += int(output_tokens)
        usage.usd += float(usd)
        usage.usd_spent += float(usd) if sent else 0.0
        if latency_s is not None:
            usage.latency_s.append(float(latency_s))
        if model is not None:
            usage.models.add(model)

    def set_params(self, trainable: int, total: int) -> None:
        self.trainable_params, self.total_params = int(trainable), int(total)

    def add_artifact(self, name: str, path: Path) -> None:
        """Record the on-disk size of a saved artifact (adapter, model, index).

        Only the main process writes artifacts, so only it measures them: another process would see a directory
        still being written (or, on another machine, none).
        """
        if _main_process():
            self.artifacts[name] = dir_size_bytes(path)

    def add_flops(self, phase: str, flops: float) -> None:
        """Add an estimate of floating-point operations (see ``estimate_flops``)."""
        self.flops[phase] = self.flops.get(phase, 0.0) + float(flops)

    def setup_wall_s(self) -> float:
        """Wall time of the one-time set-up phases (``SETUP_PHASES``)."""
        return sum(self.phases[p].wall_s for p in SETUP_PHASES)

    def record(self) -> dict:
        """Everything measured, with money, as a JSON-ready dict."""
        train, infer = self.phases["train"], self.phases["inference"]
        per_example = infer.wall_s / infer.examples if infer.examples else None
        rate = self.pricing.usd_per_hour(self.hardware)
        api_setup = sum(u.usd for p, u in self.api.items() if p in SETUP_PHASES)
        api_infer = self.api.get("inference")
        if api_infer is not None and infer.examples:
            per_1k = api_infer.usd / infer.examples * 1000  # the provider's bill; this machine only waits
        else:
            per_1k = self.pricing.usd(self.hardware, per_example * 1000) if per_example else None
        return {
            "hardware": self.hardware,
            "world_size": 1,  # this process alone; combine_process_records makes the record of several
            "wall_s": round(self.wall_s, 3),
            "cpu_s": round(self.cpu_s, 3),
            "phases": {k: {"wall_s": round(v.wall_s, 3), "cpu_s": round(v.cpu_s, 3), "tokens": v.tokens,
                           "examples": v.examples} for k, v in self.phases.items()},
            "peak_rss_bytes": self.rss_peak,
            "peak_rss_bytes_by_phase": dict(self.phase_rss_peak),
            "rss_at_start_bytes": self.rss_start,
            "cuda_peak_bytes": self.cuda_peak,
            "cuda_peak_bytes_by_phase": dict(self.phase_cuda_peak) if self.hardware == "cuda" else None,
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "artifact_bytes": self.artifacts,
            "flops": self.flops,
            "inference_latency_s_per_example": per_example,
            "tokens_per_s": {"train": train.tokens / train.wall_s if train.wall_s else None,
                             "inference": infer.tokens / infer.wall_s if infer.wall_s else None},
            "usd": {
                "rate_per_hour": rate,
                # one-time set-up: extra data (a teacher's API bill too), index building, pre-training and training
                "train": self.pricing.usd(self.hardware, self.setup_wall_s()) + api_setup,
                "total": self.pricing.usd(self.hardware, self.wall_s) + sum(u.usd for u in self.api.values()),
                "inference_per_1k": per_1k,
            },
            "api": {phase: usage.record(self.pricing) for phase, usage in self.api.items()} or None,
            "charged_from_cache": _charged_record(self.charged),
            "tooling": {"wall_s": round(sum(t["wall_s"] for t in self.tooling_items), 3),
                        "cpu_s": round(sum(t["cpu_s"] for t in self.tooling_items), 3),
                        "items": list(self.tooling_items)} if self.tooling_items else None,
            "machine": self.machine,
        }


def _charged_record(charged: list[dict]) -> dict | None:
    """The record's ``charged_from_cache``: set-up seconds charged from cache entries, in total and per entry."""
    if not charged:
        return None
    known = [c for c in charged if not c.get("unknown")]
    return {"wall_s": round(sum(c["wall_s"] for c in known), 3), "cpu_s": round(sum(c["cpu_s"] for c in known), 3),
            "unknown": sum(1 for c in charged if c.get("unknown")), "items": list(charged)}


@contextmanager
def tooling(what: str) -> Iterator[None]:
    """``Meter.tooling`` on the meter of the row running now (nothing to keep out when no row is being metered)."""
    if not _ACTIVE:
        yield
        return
    with _ACTIVE[-1].tooling(what):
        yield


def estimate_flops(params: int, tokens: int, kind: str, trainable: int | None = None) -> float:
    """Estimate FLOPs with the usual dense-transformer rules (Kaplan et al. 2020).

    inference: 2·N per token. full training: 6·N per token (forward 2N, backward 4N).
    PEFT training: 4·N + 2·T per token — the backward still propagates activation gradients through all N
    frozen weights (2N) but computes weight gradients only for the T trainable ones (2T).
    freeze (only the top layers train): 2·N + 4·T per token — the backward stops below the lowest trained layer, so
    it runs (activation and weight gradients, 4T) through the T trained weights only.
    """
    if kind == "inference":
        return 2.0 * params * tokens
    if kind == "full":
        return 6.0 * params * tokens
    if kind == "peft":
        return (4.0 * params + 2.0 * (trainable or 0)) * tokens
    if kind == "freeze":
        return (2.0 * params + 4.0 * (trainable or 0)) * tokens
    raise ValueError(f"unknown FLOP estimate kind {kind!r}")


def _max_by_phase(per_process: list[dict | None]) -> dict[str, int]:
    """Each phase's largest peak over the processes (what each device must hold in that phase)."""
    out: dict[str, int] = {}
    for peaks in per_process:
        for name, value in (peaks or {}).items():
            out[name] = max(out.get(name, 0), value)
    return out


def combine_process_records(records: list[dict], billed_units: int = 1) -> dict:
    """One meter record for a row that ran on several processes, from each process's ``Meter.record()`` (rank order).

    - time: wall time is the slowest process's (per phase too); CPU time is summed.
    - memory: ``peak_rss_bytes`` / ``cuda_peak_bytes`` are the largest process's (what each device must hold), with
      the ``_sum`` over processes and every process's own in ``processes``.
    - tokens, examples, FLOPs, parameters, artifacts: the main process's, counted once. They are totals already:
      the Trainer all-gathers the tokens every process trained on (``num_input_tokens_seen``), epochs × rows is the
      global count, and every process answers the whole test set (the same work, not a share of it). Summing them
      would count the work world-size times. Each process's counts stay in ``processes`` for checking.
    - money: set-up and total time are billed for ``billed_units`` (one GPU per process, or one CPU machine per
      machine); inference per 1k is one serving process's latency, as in a single-process row.
    """
    if len(records) == 1:
        return records[0]
    main = records[0]
    phases = {name: {"wall_s": max(r["phases"][name]["wall_s"] for r in records),
                     "cpu_s": round(sum(r["phases"][name]["cpu_s"] for r in records), 3),
                     "tokens": clock["tokens"], "examples": clock["examples"]}
              for name, clock in main["phases"].items()}
    wall = max(r["wall_s"] for r in records)
    infer, train = phases["inference"], phases["train"]
    latency = infer["wall_s"] / infer["examples"] if infer["examples"] else None
    cuda = [r["cuda_peak_bytes"] for r in records if r["cuda_peak_bytes"] is not None]
    biggest = max(records, key=lambda r: r["peak_rss_bytes"])  # its start goes with its peak
    rate = main["usd"]["rate_per_hour"]
    setup = sum(phases[p]["wall_s"] for p in SETUP_PHASES if p in phases)  # records may predate a phase
    return {
        **main,
        "world_size": len(records),
        "wall_s": wall,
        "cpu_s": round(sum(r["cpu_s"] for r in records), 3),
        "phases": phases,
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in records),
        "peak_rss_bytes_sum": sum(r["peak_rss_bytes"] for r in records),
        "peak_rss_bytes_by_phase": _max_by_phase([r.get("peak_rss_bytes_by_phase") for r in records]),
        "cuda_peak_bytes_by_phase": _max_by_phase([r.get("cuda_peak_bytes_by_phase") for r in records]) or None,
        "rss_at_start_bytes": biggest["rss_at_start_bytes"],
        "cuda_peak_bytes": max(cuda) if cuda else None,
        "cuda_peak_bytes_sum": sum(cuda) if cuda else None,
        "inference_latency_s_per_example": latency,
        "tokens_per_s": {"train": train["tokens"] / train["wall_s"] if train["wall_s"] else None,
                         "inference": infer["tokens"] / infer["wall_s"] if infer["wall_s"] else None},
        "usd": {"rate_per_hour": rate, "billed_units": billed_units,
                "train": rate * billed_units * setup / 3600.0,
                "total": rate * billed_units * wall / 3600.0,
                "inference_per_1k": rate * latency * 1000 / 3600.0 if latency else None},
        "processes": [{"rank": i, "wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "peak_rss_bytes": r["peak_rss_bytes"],
                       "rss_at_start_bytes": r["rss_at_start_bytes"], "cuda_peak_bytes": r["cuda_peak_bytes"],
                       "tokens": {k: v["tokens"] for k, v in r["phases"].items() if v["tokens"]}}
                      for i, r in enumerate(records)],
    }
