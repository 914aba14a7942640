"""The generation worker: one thread owns the model and decodes waiting requests in padded batches.

Requests wait in a queue. Each round the worker takes the oldest waiting request and every other waiting one that
can share its ``generate`` call (same decoding settings: greedy together, sampled ones by temperature/top_p/seed;
same stop tokens; same answer constraint), up to ``max_batch``, and decodes them as one batch through
``generate_ids``. Each row stops on its own (``rows.py``), and its text reaches its request through the request's
asyncio queue (``loop.call_soon_threadsafe``), so the event loop never waits on the model.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import secrets
import threading
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from lmtailor.inference.generation import SamplingParams
from lmtailor.serve.prompting import Constraint
from lmtailor.serve.rows import RowState, RowStopping, RowStreamer

log = logging.getLogger("lmtailor.serve")
_STOP = object()
_held = threading.local()  # the events a worker thread holds back until its step ends (``one_wakeup_per_step``)


@contextmanager
def one_wakeup_per_step():
    """Hold back the events emitted inside the block and hand each event loop all of its own in one call at the end.

    A continuous batch's step emits a token for each of up to ``max_batch`` requests: one ``call_soon_threadsafe``
    each would wake the event loop (a write to its self-pipe and a GIL hand-over) as many times per step. Each
    request's events keep their order."""
    held: dict[asyncio.AbstractEventLoop, list] = {}
    _held.events = held
    try:
        yield
    finally:
        _held.events = None
        for loop, items in held.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the loop is closed: the server is shutting down
                pass


def _deliver(items: list[tuple[asyncio.Queue, tuple]]) -> None:
    for events, event in items:
        events.put_nowait(event)


@dataclass
class Job:
    """One request waiting for, or being, decoded; its events arrive on ``events`` in the request's event loop.

    Events: ``("delta", text)``, then ``("done", finish_reason, completion_tokens)``, or ``("error", message)``.
    With ``whole`` (a non-streamed answer) the deltas are not sent: they are kept in ``parts`` on the worker's side
    and read once ``done`` has arrived, so a request costs its event loop one wake-up, not one per token.
    """

    prompt: list[int]
    max_tokens: int
    stop_ids: tuple[int, ...]
    stop_strings: tuple[str, ...] = ()
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    constraint: Constraint | None = None
    whole: bool = False
    parts: list[str] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    def bind(self) -> "Job":
        """Attach the job to the running event loop (call from the request's coroutine)."""
        self.loop = asyncio.get_running_loop()
        self.events = asyncio.Queue()
        return self

    def cancel(self) -> None:
        """The client went away: stop decoding this row at the next step (or skip it if it has not started)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def batch_key(self) -> tuple:
        """Jobs with equal keys can share one ``generate`` call."""
        sampling = ("greedy",) if self.greedy else ("sample", self.temperature, self.top_p, self.seed)
        return sampling, self.stop_ids, self.constraint.key if self.constraint else None

    def emit(self, event: tuple) -> None:
        """Hand an event to the request's event loop (thread-safe; dropped if that loop is gone)."""
        if self.whole and event[0] == "delta":
            self.parts.append(event[1])  # read by the loop only after "done", which is sent after it
            return
        held = getattr(_held, "events", None)
        if held is not None:
            held.setdefault(self.loop, []).append((self.events, event))
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass


class Engine:
    """Owns the model; decodes submitted jobs in batches on its own thread.

    ``batch_sizes`` counts the batches decoded by size, and ``max_batch_seen`` is the largest: how well concurrent
    requests shared the model. ``cancelled`` counts requests dropped or cut short because their client went away.
    """

    batching = "static"

    def __init__(self, model, tokenizer, pad_id: int, max_batch: int = 8) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.model = model
        self.tokenizer = tokenizer
        self.pad_id = pad_id
        self.max_batch = max_batch
        self.batch_sizes: Counter[int] = Counter()
        self.cancelled = 0
        self._inbox: queue.Queue = queue.Queue()
        self._waiting: deque[Job] = deque()  # taken from the inbox, not yet decoded
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def max_batch_seen(self) -> int:
        return max(dict(self.batch_sizes), default=0)  # a snapshot: the worker thread adds to the counter

    def stats(self) -> dict[str, Any]:
        """Batches decoded, requests decoded, the largest batch, requests cancelled, and requests waiting."""
        sizes = dict(self.batch_sizes)
        batches, requests = sum(sizes.values()), sum(k * v for k, v in sizes.items())
        return {"batches": batches, "requests": requests, "max_batch_seen": max(sizes, default=0),
                "mean_batch": round(requests / batches, 2) if batches else 0.0, "cancelled": self.cancelled,
                "waiting": self._inbox.qsize() + len(self._waiting)}

    def describe(self) -> str:
        """How this engine batches, as the server's start-up lines say it."""
        return self.batching

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lmtailor-serve-engine", daemon=True)
                self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Finish the batch in progress, fail the jobs still waiting, and stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._inbox.put(_STOP)
            thread.join(timeout)

    def submit(self, job: Job) -> None:
        """Queue a bound job for decoding (never blocks); it is decoded once the worker runs (``start``)."""
        if job.loop is None:
            raise ValueError("bind the job to the event loop first (job.bind())")
        self._inbox.put(job)

    def _run(self) -> None:
        while True:
            if not self._waiting:
                item = self._inbox.get()
                if item is _STOP:
                    break
                self._waiting.append(item)
            if not self._collect():
                break
            batch = self._take_batch()
            if batch:
                self._decode(batch)
        for job in [*self._waiting, *self._drain_inbox()]:
            job.emit(("error", "the server is shutting down"))
        self._waiting.clear()

    def _collect(self) -> bool:
        """Move every job already in the inbox to the waiting list; False when asked to stop."""
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return True
            if item is _STOP:
                return False
            self._waiting.append(item)

    def _drain_inbox(self) -> list[Job]:
        jobs = []
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return jobs
            if item is not _STOP:
                jobs.append(item)

    def _take_batch(self) -> list[Job]:
        """The oldest waiting job and the waiting jobs that can share its batch, up to ``max_batch``."""
        live = [job for job in self._waiting if not job.cancelled]
        self.cancelled += len(self._waiting) - len(live)
        if not live:
            self._waiting.clear()
            return []
        key = live[0].batch_key()
        batch, rest = [], deque()
        for job in live:
            (batch if len(batch) < self.max_batch and job.batch_key() == key else rest).append(job)
        self._waiting = rest
        return batch

    def _decode(self, jobs: list[Job]) -> None:
        from transformers import StoppingCriteriaList

        from lmtailor.inference.generation import generate_ids

        self.batch_sizes[len(jobs)] += 1
        rows = [RowState(self.tokenizer, job.max_tokens, job.stop_ids, job.stop_strings, job.emit,
                         lambda job=job: job.cancelled) for job in jobs]
        first = jobs[0]
        sampling = None
        if not first.greedy:  # a seed-less request gets a fresh one: sampled answers are not reproducible then
            seed = first.seed if first.seed is not None else secrets.randbits(62)
            sampling = SamplingParams(first.temperature, first.top_p, seed)

        def routing(order: list[int]) -> dict:
            ordered = [rows[i] for i in order]
            return {"streamer": RowStreamer(ordered),
                    "stopping_criteria": StoppingCriteriaList([RowStopping(ordered)])}

        try:
            generate_ids(self.model, [job.prompt for job in jobs], max(job.max_tokens for job in jobs),
                         list(first.stop_ids), self.pad_id, batch_size=len(jobs),
                         trie=first.constraint.trie if first.constraint else None, sampling=sampling,
                         batch_kwargs=routing)
        except Exception as e:  # one bad batch must not take the server down: its requests get a 500
            log.exception("generation failed for a batch of %d", len(jobs))
            for row, job in zip(rows, jobs):
                if not row.closed:
                    job.emit(("error", f"generation failed: {type(e).__name__}: {e}"))
            return
        for row in rows:
            row.close("length")
        self.cancelled += sum(row.finish_reason == "cancelled" for row in rows)
