"""An OpenAI-compatible endpoint as the teacher of synthetic data (the ``Teacher`` of ``synthetic_teacher.py``).

- **Identity.** The weights behind a remote model name are unknown (and a provider may change them), so the identity
  is a digest of the model name and base URL: the synthetic-data cache trusts the name, as the response cache does.
- **Tokens.** There is no tokenizer: ``count_tokens`` and ``truncate`` use the rule of thumb of ``remote/predict.py``
  (``CHARS_PER_TOKEN`` characters per token). The token counts a completion reports come from the response's usage.
- **Sampling.** Each prompt gets its own seed, derived from ``Sampling.seed`` and the prompt's position in the call,
  so the requests differ (identical prompts still give different samples), every request is cacheable, and a rerun
  sends the same requests and so gets the same samples back from the response cache, paying nothing.
- **reply_start.** A chat API cannot be made to continue a given start of its reply, so the prompt asks for it, and
  it is put in front of a reply that does not begin with it: the returned text always includes it, as with
  ``HFTeacher``.
- **Money.** The ``Teacher`` protocol carries no meter, so ``meter`` is an attribute: each request is counted in its
  ``data`` phase (``Meter.add_api_call``), priced by ``pricing.api_usd``. Tokens and examples of the data phase are
  counted by ``generate_synthetic`` from the completions, as for a local teacher.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Sequence

from lmtailor.augmentation.synthetic_teacher import Completion, Sampling
from lmtailor.measure.meter import Meter
from lmtailor.remote.client import ApiResult, OpenAIEndpoint
from lmtailor.remote.predict import approx_token_count, cut_to_approx_tokens

log = logging.getLogger(__name__)


def prompt_seed(seed: int, position: int) -> int:
    """The seed of the ``position``-th prompt of a call sampled with ``seed``: 31 bits of sha256, which every
    OpenAI-compatible server takes as an integer seed."""
    digest = hashlib.sha256(f"{seed}\0{position}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF


def with_reply_start(text: str, reply_start: str) -> str:
    """``text`` beginning with ``reply_start``: as it is when it already does (after leading blanks), else prefixed."""
    if not reply_start:
        return text
    stripped = text.lstrip()
    if stripped.startswith(reply_start):
        return stripped
    glue = "" if reply_start[-1].isspace() or stripped[:1].isspace() else " "
    return f"{reply_start}{glue}{stripped}"


class RemoteTeacher:
    """An ``openai:MODEL@URL`` endpoint writing synthetic rows; its bill goes to ``meter``'s ``data`` phase."""

    def __init__(self, endpoint: OpenAIEndpoint, meter: Meter | None = None) -> None:
        self.endpoint, self.meter = endpoint, meter
        self.ref = endpoint.ref.ref
        self._warned = False

    def identity(self) -> str:
        """A digest of model name and base URL: what the answers depend on that this process can know."""
        what = f"openai\0{self.endpoint.model}\0{self.endpoint.base_url}"
        return hashlib.sha256(what.encode()).hexdigest()[:24]

    def parameter_count(self) -> int | None:
        return None  # a remote model's size is unknown: no FLOP estimate

    def count_tokens(self, text: str) -> int:
        return approx_token_count(text)

    def truncate(self, text: str, max_tokens: int) -> str:
        return cut_to_approx_tokens(text, max_tokens)[0]

    def complete(self, prompts: Sequence[list[dict]], sampling: Sampling) -> list[Completion]:
        """Sample one reply per prompt, ``max_concurrency`` requests at a time, each with its own seed."""
        bodies = [self._body(messages, sampling, prompt_seed(sampling.seed, i)) for i, messages in enumerate(prompts)]
        if self.meter is None and not self._warned:
            log.warning("%s: no meter was given, so this teacher's API cost is not counted", self.ref)
            self._warned = True
        results = self.endpoint.chat_completions(bodies, on_result=self._count)
        return [Completion(with_reply_start(r.text, sampling.reply_start), r.input_tokens, r.output_tokens)
                for r in results]

    def _body(self, messages: list[dict], sampling: Sampling, seed: int) -> dict:
        chat = [{"role": m["role"], "content": m["content"]} for m in messages]
        if sampling.reply_start and chat and chat[-1]["role"] == "user":
            chat[-1] = {"role": "user", "content": f"{chat[-1]['content']}\n\nBegin your reply with "
                                                   f"\"{sampling.reply_start}\"."}
        return {"messages": chat, "max_tokens": sampling.max_new_tokens, "temperature": sampling.temperature,
                "top_p": sampling.top_p, "seed": seed}

    def _count(self, _: int, r: ApiResult) -> None:
        if self.meter is not None:
            usd = self.meter.pricing.api_usd(self.endpoint.model, r.input_tokens, r.output_tokens)
            self.meter.add_api_call("data", r.input_tokens, r.output_tokens, usd, sent=not r.cached,
                                    latency_s=r.latency_s, model=self.endpoint.model)
