"""Talk to an OpenAI-compatible endpoint (``openai:MODEL@BASE_URL``): chat completions, concurrency, the cache.

Built on the official ``openai`` SDK, whose client already retries what is worth retrying (its
``_base_client.SyncAPIClient.request`` / ``_should_retry``, checked in openai 3.57):

- it retries connection errors, timeouts and answers 408, 409, 429 and every 5xx (a server may force or forbid a
  retry with ``x-should-retry: true|false``), at most ``max_retries`` times, so a request is sent at most
  ``max_retries + 1`` times;
- it waits what the server asks (``retry-after-ms``, else ``retry-after`` in seconds or as an HTTP date) when that is
  between 0 and 120 s (an answer asking for longer is not retried), else exponential backoff 0.5 s × 2^retry,
  capped at 8 s, minus up to 25 % jitter;
- ``timeout`` bounds each attempt (connect, read, write), not the whole request with its retries.

Other 4xx answers are not retried: they fail at once, with the server's message and a hint for 401/403/404.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from lmtailor.core.api_settings import ApiSettings
from lmtailor.errors import UserError
from lmtailor.remote.cache import ResponseCache, cacheable, request_key
from lmtailor.remote.reference import EndpointRef, is_loopback

log = logging.getLogger(__name__)

# Sent instead of a key to a loopback endpoint run without one: the SDK refuses to start without some key, and the
# request itself then omits the Authorization header (see ``_headers``), so this string never leaves the process.
_NO_KEY = "no-key"


@dataclass(frozen=True)
class ApiResult:
    """One answer: its text, its token usage (0 when the server reported none: see ``usage_known``), why it stopped,
    the seconds it took when it was sent (retries and backoff included), and whether it came from the cache."""

    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: str | None
    latency_s: float
    cached: bool
    usage_known: bool = True  # False: the response had no ``usage``; the tokens are unknown, not zero


class EndpointError(UserError):
    """A request that failed for good (after the SDK's retries): the status, the server's message, URL and retries."""

    def __init__(self, message: str, *, status: int | None, server_message: str, url: str, retries: int) -> None:
        super().__init__(message)
        self.status, self.server_message, self.url, self.retries = status, server_message, url, retries


class OpenAIEndpoint:
    """An OpenAI-compatible endpoint with the experiment's ``api:`` settings: key, limits, retries, cache."""

    def __init__(self, ref: EndpointRef, settings: ApiSettings, cache_root: Path | None = None) -> None:
        import openai

        self.ref, self.settings = ref, settings
        self.model, self.base_url = ref.model, ref.base_url
        key = os.environ.get(settings.key_env) or None
        if key is None and not is_loopback(ref.base_url):
            raise UserError(f"{ref.ref}: the API key variable {settings.key_env} is not set; export it "
                            f"(export {settings.key_env}=...) before running, or name another variable with "
                            "api.key_env in the experiment file (the key itself never goes in the file)")
        if key is None:
            log.info("%s: %s is not set; this loopback endpoint is called without an API key", ref.ref,
                     settings.key_env)
        elif ref.base_url.startswith("http://") and not is_loopback(ref.base_url):
            log.warning("%s: the API key is sent over plain http:// to another machine; use https://", ref.ref)
        self.has_key = key is not None
        self.cache = ResponseCache(cache_root) if settings.cache else None
        self._attempt = threading.local()  # the SDK's retry count of this thread's latest attempt (see _hook)

        def _hook(request) -> None:  # the SDK numbers each attempt in this header; it sends in the calling thread
            self._attempt.retries = int(request.headers.get("x-stainless-retry-count", 0))

        self._client = openai.OpenAI(
            base_url=ref.base_url, api_key=key or _NO_KEY, max_retries=settings.max_retries,
            timeout=settings.timeout_s, http_client=openai.DefaultHttpxClient(event_hooks={"request": [_hook]}))

    def _headers(self) -> dict:
        import openai

        return {} if self.has_key else {"Authorization": openai.Omit()}

    # -- requests ---------------------------------------------------------------------------------------------

    def chat_completions(self, bodies: Sequence[Mapping[str, Any]],
                         on_result: Callable[[int, ApiResult], None] | None = None) -> list[ApiResult]:
        """Answer chat-completion request ``bodies`` (without ``model``), at most ``max_concurrency`` in flight.

        Returns the results in the order of ``bodies``. Answers in the cache send nothing; a body repeated within the
        call is sent once. ``on_result(index, result)`` runs in the calling thread as each answer arrives (progress
        bars, meters). Every answer is cached as soon as it arrives, so when a request fails for good (an
        ``EndpointError``; requests not yet started are cancelled) a rerun resends only what had not been answered.
        """
        results: list[ApiResult | None] = [None] * len(bodies)
        pending: dict[str, list[int]] = {}  # cache key -> indices waiting for that answer
        uncacheable: list[int] = []
        for i, body in enumerate(bodies):
            if self.cache is None or not cacheable(body):
                uncacheable.append(i)
                continue
            key = request_key(self.base_url, self.model, body)
            entry = self.cache.get(key) if key not in pending else None
            if entry is not None:
                results[i] = ApiResult(**entry, cached=True)
                if on_result:
                    on_result(i, results[i])
            else:
                pending.setdefault(key, []).append(i)
        jobs = [(indices, bodies[indices[0]], key) for key, indices in pending.items()]
        jobs += [([i], bodies[i], None) for i in uncacheable]
        if jobs:
            self._send_all(jobs, results, on_result)
        return results  # type: ignore[return-value]  # every slot is filled (or _send_all raised)

    def _send_all(self, jobs, results: list, on_result) -> None:
        workers = min(self.settings.max_concurrency, len(jobs))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lmtailor-api")
        try:
            futures = {pool.submit(self._send_and_store, body, key): indices for indices, body, key in jobs}
            waiting = set(futures)
            while waiting:
                done, waiting = wait(waiting, return_when=FIRST_EXCEPTION)
                for future in done:
                    result = future.result()  # raises the request's EndpointError
                    for n, i in enumerate(futures[future]):
                        # a repeat of a body answered in this call was sent once: it costs nothing again
                        results[i] = result if n == 0 else _as_cached(result)
                        if on_result:
                            on_result(i, results[i])
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _send_and_store(self, body: Mapping[str, Any], key: str | None) -> ApiResult:
        result = self.chat_completion(body)
        if key is not None and self.cache is not None:
            self.cache.put(key, asdict(result))
        return result

    def chat_completion(self, body: Mapping[str, Any]) -> ApiResult:
        """Send one chat-completion request (``body`` without ``model``; no cache) and return its answer."""
        import openai

        body = dict(body)
        messages = body.pop("messages")
        started = time.perf_counter()
        self._attempt.retries = 0
        try:
            # Everything but model and messages goes as extra_body: the JSON sent is exactly ``body``, whatever
            # parameters this SDK version types, so the cache key describes the real request.
            response = self._client.chat.completions.create(model=self.model, messages=messages, extra_body=body,
                                                            extra_headers=self._headers())
        except openai.APIError as e:
            raise self._error(e, "POST", "/chat/completions", "response_format" in body) from None
        latency = time.perf_counter() - started
        choices = getattr(response, "choices", None) or []
        if not choices or getattr(choices[0], "message", None) is None:
            raise EndpointError(f"{self.ref.ref}: the answer from {self.base_url}/chat/completions has no "
                                "choices[0].message; is this an OpenAI-compatible chat endpoint?", status=200,
                                server_message="", url=f"{self.base_url}/chat/completions",
                                retries=self._attempt.retries)
        usage = getattr(response, "usage", None)
        prompt = getattr(usage, "prompt_tokens", None)
        completion = getattr(usage, "completion_tokens", None)
        known = isinstance(prompt, int) and isinstance(completion, int)
        return ApiResult(text=choices[0].message.content or "", input_tokens=prompt if known else 0,
                         output_tokens=completion if known else 0, finish_reason=choices[0].finish_reason,
                         latency_s=latency, cached=False, usage_known=known)

    def list_models(self) -> list[str]:
        """The model names the endpoint serves (``GET BASE_URL/models``)."""
        import openai

        self._attempt.retries = 0
        try:
            return [m.id for m in self._client.models.list(extra_headers=self._headers())]
        except openai.APIError as e:
            raise self._error(e, "GET", "/models", False) from None

    # -- errors -----------------------------------------------------------------------------------------------

    def _error(self, e, method: str, path: str, structured: bool) -> EndpointError:
        import openai

        url, retries = f"{self.base_url}{path}", getattr(self._attempt, "retries", 0)
        tries = f" after {retries} {'retry' if retries == 1 else 'retries'}" if retries else ""
        if isinstance(e, openai.APIStatusError):
            status, said = e.status_code, _server_message(e)
            what = f"{method} {url} failed with HTTP {status}{tries}: {said or '(no error message)'}"
            hint = self._hint(status, said, structured, path)
        else:
            status, said = None, str(e)
            timeout = isinstance(e, openai.APITimeoutError)
            what = f"{method} {url} got no answer{tries}: {said}"
            hint = (f"a response took longer than api.timeout_s={self.settings.timeout_s:g} s; raise it" if timeout
                    else "is the server running and is the URL right (start a local one with lmtailor serve)?")
        return EndpointError(f"{self.ref.ref}: {what.rstrip('.')}. {hint[:1].upper()}{hint[1:]}", status=status,
                             server_message=said, url=url, retries=retries)

    def _hint(self, status: int, said: str, structured: bool, path: str) -> str:
        key_env, model = self.settings.key_env, self.model
        if status == 401:
            if self.has_key:
                return f"the endpoint rejected the key in {key_env}; check that it is a valid key for {self.base_url}"
            return f"the endpoint wants an API key: export {key_env}=... (api.key_env names the variable)"
        if status == 403:
            return f"the key in {key_env} may not use model {model!r} at this endpoint; check the key's permissions"
        if status == 404 and path == "/models":
            return "the endpoint does not list its models at GET /models; is the base URL right (it ends in /v1)?"
        if status == 404:
            return (f"the endpoint does not know model {model!r} (or the path); the models it serves are listed by "
                    f"GET {self.base_url}/models{self._served_models()}")
        if status == 429:
            return "still rate-limited after the retries: lower api.max_concurrency or raise api.max_retries"
        if status in (408, 409) or status >= 500:
            return "the server kept failing; check its logs, or raise api.max_retries / api.timeout_s"
        if structured and "response_format" in said:
            return ("the endpoint does not take the JSON-schema response_format that constrained scoring sends; use "
                    "scoring: generate (free text, parsed for a label)")
        return "the endpoint refused the request"

    def _served_models(self) -> str:
        """" (it serves: a, b)" for the 404 hint, best effort: "" when the listing fails too."""
        try:
            names = [m.id for m in self._client.with_options(max_retries=0).models.list(
                extra_headers=self._headers())]
        except Exception:  # noqa: BLE001 -- only a hint; the 404 is the error being reported
            return ""
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        return f" (it serves: {shown})" if names else ""


def _server_message(e) -> str:
    """The message of an OpenAI-shaped error body ({"error": {"message", "type", "code"}}), else the body's text."""
    body = e.body  # the SDK already unwrapped "error" when the body had one
    if isinstance(body, dict):
        message = body.get("message")
        extra = ", ".join(f"{k}={body[k]}" for k in ("type", "code") if body.get(k))
        if isinstance(message, str) and message:
            return f"{message} ({extra})" if extra else message
        return str(body)
    text = body if isinstance(body, str) else ""
    return text.strip()[:500]


def _as_cached(result: ApiResult) -> ApiResult:
    return ApiResult(result.text, result.input_tokens, result.output_tokens, result.finish_reason, result.latency_s,
                     cached=True, usage_known=result.usage_known)
