"""The FastAPI app: OpenAI's /v1/models, /v1/chat/completions and /v1/completions over one served model, and /health.

Requests first pass ``guard.py`` (a Host naming this server, a JSON content type on POST). Bodies are read by hand
(size limit on the declared and the actual bytes, a deadline for the whole body) and validated by ``protocol.py``, so
every bad request gets a 4xx in OpenAI's error shape, never FastAPI's 422; a client gone mid-upload is one log line.
Prompts are tokenized in the thread pool and decoded by the engine's worker thread; handlers only await their
request's event queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Annotated, Any, AsyncIterator

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from lmtailor.serve.auth import BearerAuth
from lmtailor.serve.engine import Engine, Job
from lmtailor.serve.guard import HostRule, RequestGuard
from lmtailor.serve.engines import DEFAULT_BATCHING, make_engine
from lmtailor.serve.prompting import (answer_budget, chat_prompt_ids, completion_prompt_ids, response_constraint,
                                      stop_ids)
from lmtailor.serve.protocol import (GREEDY_BELOW_TEMPERATURE, APIError, ChatRequest, CompletionRequest, error_body,
                                     parse_request, requested_max_tokens, stop_strings)
from lmtailor.serve.request_log import RequestLog, request_info
from lmtailor.serve.responses import SSE_DONE, Reply, sse
from lmtailor.serve.settings import ServeSettings
from lmtailor.serve.target import ServedModel

log = logging.getLogger("lmtailor.serve")
_DISCONNECT_POLL_S = 0.5
CLIENT_CLOSED = 499  # nginx's status for "the client closed the connection": logged, never received
async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, refused with 413 when its declared length or the bytes actually sent exceed ``limit``, and
    with 408 when it has not all arrived ``timeout_s`` after the headers (a slow upload would hold its connection and
    its handler forever). A client gone mid-body raises Starlette's ``ClientDisconnect`` (logged, not answered)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise APIError(400, f"invalid Content-Length header {declared!r}", None, "invalid_request",
                           headers=_CLOSE)
        if int(declared) > limit:
            raise _too_large(f"{int(declared)} bytes", limit)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(f"over {limit} bytes", limit)
                chunks.append(chunk)
    except TimeoutError:
        raise APIError(408, f"the request body did not arrive within {timeout_s:g} s ({size} bytes received); send "
                            "it at once (--read-timeout sets the limit)", None, "request_timeout",
                       headers=_CLOSE) from None
    return b"".join(chunks)


_CLOSE = {"Connection": "close"}  # the rest of the body is not read: the connection cannot carry another request


def _too_large(size: str, limit: int) -> APIError:
    return APIError(413, f"the request body is {size}; this server takes at most {limit} bytes (--max-body-bytes)",
                    None, "request_too_large", headers=_CLOSE)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, _: ClientDisconnect) -> Response:
        request_info(request)["cancelled"] = True  # one log line (RequestLog); nobody is left to read an answer
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        kind = "server_error" if e.status_code >= 500 else "invalid_request_error"
        return JSONResponse(error_body(str(e.detail), kind, None, code), status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        first = (e.errors() or [{}])[0]
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return JSONResponse(error_body(f"invalid '{param}': {first.get('msg', 'invalid request')}",
                                       "invalid_request_error", param, "invalid_value"), status_code=400)

    @app.exception_handler(Exception)
    async def server_error(_: Request, e: Exception) -> JSONResponse:
        log.exception("internal error")
        return JSONResponse(error_body(f"internal server error ({type(e).__name__})", "server_error"),
                            status_code=500)


class _Generation:
    """What the chat and completions routes share: parse, check, tokenize, queue, answer."""

    def __init__(self, served: ServedModel, settings: ServeSettings, engine: Engine) -> None:
        self.served = served
        self.settings = settings
        self.engine = engine
        self.stops = {True: stop_ids(served, chat=True), False: stop_ids(served, chat=False)}

    def _job(self, request: ChatRequest | CompletionRequest, chat: bool) -> Job:
        """Tokenize and check a parsed request (blocking: run in the thread pool)."""
        max_tokens = requested_max_tokens(request, self.settings.max_tokens_limit)
        strings = stop_strings(request)
        stops = self.stops[chat]
        if chat:
            prompt = chat_prompt_ids(self.served, request.messages)
            constraint = response_constraint(self.served, request.response_format, stops)
        else:
            prompt, constraint = completion_prompt_ids(self.served, request.prompt), None
        if constraint is not None and max_tokens is None:
            max_tokens = constraint.longest
        budget = answer_budget(self.served, len(prompt), max_tokens, self.settings.max_tokens_limit,
                               "messages" if chat else "prompt")
        temperature = 1.0 if request.temperature is None else request.temperature  # OpenAI's default
        return Job(prompt, budget, stops, strings,
                   temperature=0.0 if temperature < GREEDY_BELOW_TEMPERATURE else temperature,
                   top_p=1.0 if request.top_p is None else request.top_p, seed=request.seed, constraint=constraint,
                   whole=not request.stream)

    async def __call__(self, http: Request, chat: bool) -> Response:
        info = request_info(http)
        body = await read_body(http, self.settings.max_body_bytes, self.settings.read_timeout_s)
        request = parse_request(ChatRequest if chat else CompletionRequest, body)
        if request.model != self.settings.model_name:
            raise APIError(404, f"the model '{request.model}' does not exist: this server serves "
                                f"'{self.settings.model_name}' (GET /v1/models)", "model", "model_not_found")
        info.update(model=request.model, stream=request.stream)
        job = (await run_in_threadpool(self._job, request, chat)).bind()
        info["prompt_tokens"] = len(job.prompt)
        self.engine.start()  # the lifespan started it; this covers an app driven without its lifespan
        self.engine.submit(job)
        reply = Reply(self.settings.model_name, chat)
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return StreamingResponse(_stream(job, reply, include_usage, info), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _collect(job, reply, info, http)


async def _collect(job: Job, reply: Reply, info: dict[str, Any], http: Request) -> Response:
    """Wait for the whole answer (cancelling it if the client goes away) and return it."""
    checked = time.monotonic()
    while True:
        try:
            event = await asyncio.wait_for(job.events.get(), _DISCONNECT_POLL_S)
        except asyncio.TimeoutError:
            event = None
        if time.monotonic() - checked >= _DISCONNECT_POLL_S:  # events may arrive faster than the poll period
            checked = time.monotonic()
            if await http.is_disconnected():
                job.cancel()
                info["cancelled"] = True
                return Response(status_code=CLIENT_CLOSED)
        if event is None:
            continue
        if event[0] == "delta":  # not sent for a ``whole`` job (its text is kept in ``job.parts``), but kept if sent
            job.parts.append(event[1])
        elif event[0] == "done":  # ``job.parts`` is complete once "done" is sent
            info["completion_tokens"] = event[2]
            return JSONResponse(reply.complete("".join(job.parts), event[1], len(job.prompt), event[2]))
        else:
            raise APIError(500, event[1], None, None, "server_error")


async def _stream(job: Job, reply: Reply, include_usage: bool, info: dict[str, Any]) -> AsyncIterator[str]:
    """Server-sent events: the role (chat), text chunks, the finish reason, the usage if asked, then [DONE].

    A client that disconnects cancels this generator (Starlette listens for it), and with it the job's row."""
    info["cancelled"] = True  # until the answer is complete
    try:
        if reply.chat:
            yield sse(reply.chunk(role=True))
        while True:
            event = await job.events.get()
            if event[0] == "delta":
                yield sse(reply.chunk(event[1]))
            elif event[0] == "done":
                info["completion_tokens"] = event[2]
                info["cancelled"] = False
                yield sse(reply.chunk(None, finish_reason=event[1]))
                if include_usage:
                    yield sse(reply.usage_chunk(len(job.prompt), event[2]))
                break
            else:
                info["cancelled"] = False
                yield sse(error_body(event[1], "server_error"))
                break
        yield SSE_DONE
    finally:
        job.cancel()  # a no-op once the row has finished


def _model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "lmtailor"}


def create_app(served: ServedModel, settings: ServeSettings, batching: str = DEFAULT_BATCHING) -> FastAPI:
    """The app serving ``served`` under ``settings.model_name``; its engine (``engines.py``: ``batching``
    continuous or static) starts with the app and stops with it.

    ``app.state.engine`` is the ``Engine`` (``engine.batch_sizes``, ``engine.max_batch_seen``, ``engine.stats()``).
    """
    engine = make_engine(served, settings.max_batch, batching, settings.prefix_cache)
    generation = _Generation(served, settings, engine)
    auth = BearerAuth(settings.api_key)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        engine.start()
        try:
            yield
        finally:
            await run_in_threadpool(engine.close)

    app = FastAPI(title="lmtailor serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.served, app.state.settings = engine, served, settings
    app.add_middleware(RequestGuard, rule=HostRule.of(settings.host, settings.allowed_hosts))
    app.add_middleware(RequestLog)  # added last: outermost, so the guard's refusals are logged too
    _install_error_handlers(app)

    def require_key(authorization: Annotated[str | None, Header()] = None) -> None:
        auth(authorization)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])

    @v1.get("/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(settings.model_name, created)]}

    @v1.get("/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id != settings.model_name:
            raise APIError(404, f"the model '{model_id}' does not exist: this server serves "
                                f"'{settings.model_name}'", "model", "model_not_found")
        return _model_card(settings.model_name, created)

    @v1.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generation(request, chat=True)

    @v1.post("/completions")
    async def completions(request: Request) -> Response:
        return await generation(request, chat=False)

    app.include_router(v1)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", **engine.stats()}

    return app
