"""The continuously batching worker: requests join the running batch at the next decoding step and leave it when done.

Where ``Engine`` (static batching) decodes a batch to its end while new requests wait, this worker loops over
single steps of a ``DecodeBatch``: before each step it admits waiting requests into the free places (up to
``max_batch`` rows), prefilling them together; each step decodes one token for every row; a row that is finished
(its own max_tokens, stop token or stop string, or its client gone) sends its end and leaves at once. Every row
keeps its own temperature, top_p, seed, stop tokens, stop strings and answer constraint (``token_choice.py``), so
any requests can share a step. As in vLLM and TGI, waiting requests are admitted at every step: a short prefill
beside a batch that would otherwise run half empty.

``batch_sizes`` counts decoding steps by the rows they decoded, so the mean batch is the mean number of requests
that shared a step; the prefills that admitted them are counted apart (``prefills``, ``prefill_rows``).
"""

from __future__ import annotations

import logging
from typing import Any

from lmtailor.serve.decode_batch import DecodeBatch, LiveRow
from lmtailor.serve.engine import _STOP, Engine, Job, one_wakeup_per_step
from lmtailor.serve.rows import RowState
from lmtailor.serve.token_choice import Chooser

log = logging.getLogger("lmtailor.serve")


def live_row(job: Job, tokenizer) -> LiveRow:
    """The batch row of ``job``: its prompt, its token choice and its answer's state."""
    chooser = Chooser(job.temperature, job.top_p, job.seed, job.constraint.trie if job.constraint else None,
                      tuple(job.stop_ids))
    state = RowState(tokenizer, job.max_tokens, job.stop_ids, job.stop_strings, job.emit, lambda: job.cancelled)
    return LiveRow(list(job.prompt), chooser, state)


class ContinuousEngine(Engine):
    """``Engine`` whose waiting requests join the decoding batch at every step (continuous batching)."""

    batching = "continuous"

    def __init__(self, model, tokenizer, pad_id: int, max_batch: int = 8, reuse_prefix: bool = True) -> None:
        super().__init__(model, tokenizer, pad_id, max_batch)
        self.batch = DecodeBatch(model, pad_id, reuse_prefix)
        self.requests = 0  # admitted, each in one prefill
        self.prefills = 0

    def stats(self) -> dict[str, Any]:
        """As ``Engine.stats``, with ``batches`` the decoding steps, ``mean_batch`` their mean rows, ``requests`` the
        requests admitted, ``prefills`` the forward passes that admitted them and ``prefix_tokens_reused`` the prompt
        tokens they did not compute again (``prefix_cache.py``)."""
        sizes = dict(self.batch_sizes)
        steps = sum(sizes.values())
        return {"batches": steps, "requests": self.requests, "max_batch_seen": max(sizes, default=0),
                "mean_batch": round(sum(k * v for k, v in sizes.items()) / steps, 2) if steps else 0.0,
                "prefills": self.prefills,
                "prefix_tokens_reused": self.batch.prefix.reused_tokens if self.batch.prefix else 0,
                "cancelled": self.cancelled, "waiting": self._inbox.qsize() + len(self._waiting)}

    def describe(self) -> str:
        cache = "on" if self.batch.prefix else "off (turned off, or not for this model's layers)"
        return f"{self.batching} (shared prompt prefix cache: {cache})"

    def _run(self) -> None:
        while True:
            if not self._waiting and not self.batch:
                item = self._inbox.get()
                if item is _STOP:
                    break
                self._waiting.append(item)
            if not self._collect():
                break
            with one_wakeup_per_step():  # the joining rows' first tokens and this step's: one wake-up
                self._admit()
                self._guarded(self._step)
        while self.batch:  # as Engine.close promises: the requests being decoded finish, the waiting ones fail
            with one_wakeup_per_step():
                self._guarded(self._step)
        self._fail_all("the server is shutting down")

    def _admit(self) -> None:
        """Prefill the oldest waiting requests that fit into the batch's free places."""
        free = self.max_batch - len(self.batch)
        jobs = []
        while self._waiting and len(jobs) < free:
            job = self._waiting.popleft()
            if job.cancelled:
                self.cancelled += 1
            else:
                jobs.append(job)
        if jobs:
            rows = [live_row(job, self.tokenizer) for job in jobs]
            self.requests += len(rows)
            self.prefills += 1
            try:
                self.batch.admit(rows)
            except Exception as e:  # the batch is untouched: only the joining requests fail (a 500)
                log.exception("prefill failed for %d requests", len(rows))
                _fail(rows, f"generation failed: {type(e).__name__}: {e}")
                return
            self._count_cancelled(rows)

    def _step(self) -> None:
        if self.batch:
            rows = list(self.batch.rows)
            self.batch_sizes[len(rows)] += 1
            self.batch.step()
            self._count_cancelled(rows)

    def _count_cancelled(self, rows: list[LiveRow]) -> None:
        # ``rows`` were all unfinished before this admission or step: each cancelled row is counted once
        self.cancelled += sum(row.state.finish_reason == "cancelled" for row in rows)

    def _guarded(self, work) -> None:
        """Run one step; if it fails, its rows get an error (a 500) and the worker goes on."""
        try:
            work()
        except Exception as e:  # one bad forward must not take the server down
            log.exception("generation failed for a batch of %d", len(self.batch))
            _fail(self.batch.clear(), f"generation failed: {type(e).__name__}: {e}")

    def _fail_all(self, message: str) -> None:
        _fail(self.batch.clear(), message)
        for job in [*self._waiting, *self._drain_inbox()]:
            job.emit(("error", message))
        self._waiting.clear()


def _fail(rows: list[LiveRow], message: str) -> None:
    """Send ``message`` as the error of every row that has not ended yet."""
    for row in rows:
        if not row.state.closed:
            row.state.emit(("error", message))
