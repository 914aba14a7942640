"""One log line per HTTP request: method, path (as sent), status, latency, and the generation's tokens and model."""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("lmtailor.serve")
_LOG_KEY = "lmtailor.request_log"


class RequestLog:
    """ASGI middleware: one log line per request (method, path, status, latency; tokens, stream, model)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        info: dict[str, Any] = {}
        scope[_LOG_KEY] = info
        status = [500]
        start = time.perf_counter()
        logged = [False]

        def write() -> None:
            ms = (time.perf_counter() - start) * 1000
            extra = ""
            if "model" in info:
                extra = (f" prompt_tokens={info.get('prompt_tokens', '-')} completion_tokens="
                         f"{info.get('completion_tokens', '-')} stream={'yes' if info.get('stream') else 'no'} "
                         f"model={info['model']}")
            if info.get("cancelled"):
                extra += " client_gone"
            log.info("%s %s %d %.1fms%s", scope["method"], _logged_path(scope), status[0], ms, extra)
            logged[0] = True

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body") and not logged[0]:
                write()  # before the answer's last bytes leave: a client that has its answer finds its line logged
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if not logged[0]:  # no complete answer was sent (an error, a client gone mid-stream)
                write()


def _logged_path(scope) -> str:
    """The path as the client sent it (still percent-encoded): a decoded %0A would forge a second log line."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else scope["path"]
    return path.encode("ascii", "backslashreplace").decode("ascii")


def request_info(request) -> dict[str, Any]:
    """What the route adds to its request's log line (model, tokens, stream, cancelled)."""
    return request.scope.setdefault(_LOG_KEY, {})
