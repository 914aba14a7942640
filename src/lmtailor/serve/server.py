"""Run the app with uvicorn: in the foreground (``lmtailor serve``) or on a background thread (tests, load tests)."""

from __future__ import annotations

import socket
import threading
import time

from lmtailor.errors import UserError
from lmtailor.serve.settings import DEFAULT_READ_TIMEOUT_S


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready socket on ``host:port`` (port 0: a free one); a clear error when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}; is another server using the port? "
                        "Choose another with --port") from None
    sock.set_inheritable(True)
    return sock


def with_header_deadline(protocol: type, seconds: float) -> type:
    """uvicorn's HTTP protocol class, closing a connection whose next request's headers are not all in ``seconds``
    after it opened or after its previous answer.

    uvicorn has no such deadline (its keep-alive timer restarts on every byte): a client dribbling its headers would
    hold the connection forever, and enough such clients every file descriptor. The body's deadline is the app's
    (``app.read_body``). Only what both uvicorn protocols (h11, httptools) define is used: ``connection_made``,
    ``on_response_complete``, ``connection_lost``, ``cycle`` (replaced when a request's headers are complete),
    ``loop`` and ``transport``.
    """

    class HeaderDeadline(protocol):
        _deadline = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm(None)

        def on_response_complete(self) -> None:
            answered = self.cycle  # before super(): it may start a pipelined request, whose headers are in
            super().on_response_complete()
            self._arm(answered)

        def connection_lost(self, exc) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _arm(self, waiting_after) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(seconds, self._expire, waiting_after)

        def _expire(self, waiting_after) -> None:
            if self.cycle is waiting_after and not self.transport.is_closing():  # no new request's headers yet
                self.transport.close()

    HeaderDeadline.__name__ = HeaderDeadline.__qualname__ = f"HeaderDeadline{protocol.__name__}"
    return HeaderDeadline


def _config(app, host: str, port: int):
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    settings = getattr(app.state, "settings", None)
    seconds = getattr(settings, "read_timeout_s", DEFAULT_READ_TIMEOUT_S)
    # access_log off: the app logs one line per request itself, with latency and tokens (request_log.RequestLog)
    return uvicorn.Config(app, host=host, port=port, access_log=False, log_level="warning", lifespan="on",
                          timeout_graceful_shutdown=10, http=with_header_deadline(AutoHTTPProtocol, seconds))


def run_server(app, sock: socket.socket) -> None:
    """Serve ``app`` on a bound socket until interrupted (Ctrl-C or SIGTERM end it gracefully)."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    try:
        uvicorn.Server(_config(app, host, port)).run(sockets=[sock])
    except SystemExit as e:  # uvicorn exits when the app's start-up fails; it has logged why
        raise UserError(f"the server stopped during start-up (exit status {e.code}); see the messages above") from None


class BackgroundServer:
    """uvicorn serving ``app`` on a thread, on a free loopback port unless one is given.

    ``with BackgroundServer(create_app(...)) as server: requests.get(server.url + "/health")``
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.app = app
        self.host = host
        self._socket = bind_socket(host, port)
        self.port = self._socket.getsockname()[1]  # the port actually bound (a free one when 0 was asked for)
        self._server = uvicorn.Server(_config(app, host, self.port))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="lmtailor-serve-http", daemon=True)

    @property
    def url(self) -> str:
        """``http://HOST:PORT``; the OpenAI base URL is this plus ``/v1``."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> "BackgroundServer":
        """Start serving; return once the socket is bound and the engine runs."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.host} within {timeout_s} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask uvicorn to shut down (finishing open requests) and wait for it."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._socket.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
