"""Run the app with uvicorn: in the foreground (``lmtailor serve``) or on a background thread (tests, load tests)."""

from __future__ import annotations

import socket
import threading
import time

from lmtailor.errors import UserError


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


def _config(app, host: str, port: int):
    import uvicorn

    # access_log off: the app logs one line per request itself, with latency and tokens (app.RequestLog)
    return uvicorn.Config(app, host=host, port=port, access_log=False, log_level="warning", lifespan="on",
                          timeout_graceful_shutdown=10)


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
