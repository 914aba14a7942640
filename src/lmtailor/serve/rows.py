"""Each request's row inside a batch that ``generate`` decodes: when it ends, and where its text goes.

``generate`` decodes the batch in lock-step and knows nothing of requests, so two hooks of transformers route each
row: a ``StoppingCriteria`` (``RowStopping``) that, every step, hands each row its new token and returns a per-row
bool tensor (its own max_tokens, its stop tokens and stop strings, cancellation); and a ``BaseStreamer``
(``RowStreamer``) that, right after, sends each row's new text to its request. Finished rows are padded by
``generate`` and ignored here.

Text is decoded from all of a row's answer ids each step (the prefix of a byte-level decode is stable), and only the
part that can no longer change is sent: text ending in an incomplete UTF-8 character ("\\ufffd") or in the start of
a stop string is held back until the next token settles it. Streaming and non-streaming answers are built from the
same deltas, so they are the same text.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

FinishReason = Literal["stop", "length", "cancelled"]


class RowState:
    """One request's answer as it is decoded: its ids, its visible text, and why it ended."""

    def __init__(self, tokenizer, max_tokens: int, stop_ids: Sequence[int], stop_strings: Sequence[str],
                 emit: Callable[[tuple], None], cancelled: Callable[[], bool]) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.stop_ids = frozenset(int(t) for t in stop_ids)
        self.stop_strings = tuple(stop_strings)
        self.emit = emit  # sends ("delta", text) and ("done", finish_reason, completion_tokens) to the request
        self.cancelled = cancelled
        self.ids: list[int] = []  # answer tokens, stop token excluded
        self.completion_tokens = 0  # tokens generated for this row, stop token included
        self.text = ""  # the answer's text, cut before a stop string
        self.finish_reason: FinishReason | None = None
        self._sent = 0
        self._closed = False

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def closed(self) -> bool:
        """Its end has been sent to the request."""
        return self._closed

    def accept(self, token: int) -> bool:
        """Take this step's token; return True when the row is finished (then later tokens are padding)."""
        if self.finished:
            return True
        if self.cancelled():
            self.finish_reason = "cancelled"
            return True
        self.completion_tokens += 1
        if token in self.stop_ids:
            self.finish_reason = "stop"
            return True
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = self._stop_string_at()
        if cut is not None:
            self.text = self.text[:cut]
            self.finish_reason = "stop"
        elif self.completion_tokens >= self.max_tokens:
            self.finish_reason = "length"
        return self.finished

    def _stop_string_at(self) -> int | None:
        found = [i for i in (self.text.find(s) for s in self.stop_strings) if i >= 0]
        return min(found) if found else None

    def _held_back(self) -> int:
        """Characters at the end that may still change: an incomplete character, or a stop string's beginning."""
        settled = self.text.rstrip("\ufffd")
        prefix = 0  # the longest end of the settled text that begins a stop string
        for stop in self.stop_strings:
            for k in range(min(len(stop) - 1, len(settled)), prefix, -1):
                if settled.endswith(stop[:k]):
                    prefix = k
                    break
        return len(self.text) - len(settled) + prefix

    def flush(self) -> None:
        """Send the text that is settled; once finished, the rest and the end."""
        if self._closed:
            return
        ready = self.text if self.finished else self.text[: len(self.text) - self._held_back()]
        if len(ready) > self._sent:
            self.emit(("delta", ready[self._sent:]))
            self._sent = len(ready)
        if self.finished:
            self._closed = True
            self.emit(("done", self.finish_reason, self.completion_tokens))

    def close(self, reason: FinishReason = "length") -> None:
        """End a row that generation left open (it stopped at the batch's token limit)."""
        if self.finish_reason is None:
            self.finish_reason = reason
        self.flush()


class RowStopping(StoppingCriteria):
    """Per-row stopping: each row's own max_tokens, stop tokens, stop strings and cancellation."""

    def __init__(self, rows: Sequence[RowState]) -> None:
        self.rows = list(rows)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        last = input_ids[:, -1].tolist()
        done = [row.accept(int(token)) for row, token in zip(self.rows, last)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class RowStreamer(BaseStreamer):
    """Sends each row's new text to its request after every decoding step."""

    def __init__(self, rows: Sequence[RowState]) -> None:
        self.rows = list(rows)
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate first puts the prompt (decoder-only) or the decoder start token
            self._prompt_seen = True
            return
        for row in self.rows:  # RowStopping has already given each row this step's token
            row.flush()

    def end(self) -> None:
        for row in self.rows:
            row.close("length")
