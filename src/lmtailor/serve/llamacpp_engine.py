"""The serve ``Engine`` decoding through llama.cpp (``--backend llamacpp``), one request at a time.

llama.cpp holds one sequence here, so requests are decoded one after another; consecutive requests reuse the
prompt prefix they share in its KV cache (``inference/llamacpp.py``). The queue, jobs, events, per-row stopping
and streaming are the transformers engine's.
"""

from __future__ import annotations

import logging
import secrets

from lmtailor.inference.generation import SamplingParams
from lmtailor.serve.engine import Engine, Job
from lmtailor.serve.rows import RowState

log = logging.getLogger("lmtailor.serve")


class LlamaCppEngine(Engine):
    """``Engine`` whose model is an ``inference.llamacpp.LlamaCppModel``."""

    batching = "no"  # one llama.cpp sequence: requests are decoded one after the other

    def __init__(self, model, tokenizer, pad_id: int, max_batch: int = 8) -> None:
        super().__init__(model, tokenizer, pad_id, max_batch=1)  # one llama.cpp sequence

    def _decode(self, jobs: list[Job]) -> None:
        self.batch_sizes[len(jobs)] += 1
        for job in jobs:
            self._decode_one(job)

    def _decode_one(self, job: Job) -> None:
        row = RowState(self.tokenizer, job.max_tokens, job.stop_ids, job.stop_strings, job.emit,
                       lambda: job.cancelled)
        sampling = None
        if not job.greedy:  # a seed-less request gets a fresh one, as in Engine
            sampling = SamplingParams(job.temperature, job.top_p,
                                      job.seed if job.seed is not None else secrets.randbits(62))

        def on_token(token: int) -> bool:
            finished = row.accept(token)
            row.flush()
            return finished

        try:
            self.model.decode(job.prompt, job.max_tokens, job.stop_ids,
                              allowed=job.constraint.trie.allowed if job.constraint else None,
                              sampling=sampling, on_token=on_token)
        except Exception as e:  # one bad request must not take the server down: it gets a 500
            log.exception("llama.cpp generation failed")
            if not row.closed:
                job.emit(("error", f"generation failed: {type(e).__name__}: {e}"))
            return
        row.close("length")
        self.cancelled += row.finish_reason == "cancelled"
