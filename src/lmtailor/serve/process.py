"""``lmtailor serve`` as a child process on a loopback port: for tests, the load test and ``make demo-api``.

``ServerProcess`` starts the server, waits until ``/health`` answers (failing with the server's log when it exits
first or never answers), and stops it on exit. ``python -m lmtailor.serve.process TARGET [serve options] -- CMD``
runs ``CMD`` while the server runs and returns its exit code.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A loopback port nobody listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((LOOPBACK, port)) == 0


class ServerProcess:
    """Run ``lmtailor serve TARGET --port PORT [args]`` on 127.0.0.1 for the duration of a ``with`` block."""

    def __init__(self, target: str, args: Sequence[str] = (), port: int | None = None,
                 startup_timeout_s: float = 300.0, env: dict[str, str] | None = None,
                 log_path: Path | None = None) -> None:
        self.target, self.args = target, list(args)
        self.port = port or free_port()
        self.startup_timeout_s = startup_timeout_s
        self.env = env
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"lmtailor-serve-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI base URL clients use: ``http://127.0.0.1:PORT/v1``."""
        return f"http://{LOOPBACK}:{self.port}/v1"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.is_file() else ""

    def __enter__(self) -> "ServerProcess":
        if port_in_use(self.port):
            raise RuntimeError(f"port {self.port} on {LOOPBACK} is already in use: stop what listens there or "
                               "choose another port")
        command = [sys.executable, "-m", "lmtailor.cli", "serve", self.target, "--host", LOOPBACK,
                   "--port", str(self.port), *self.args]
        with self.log_path.open("w", encoding="utf-8") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, **(self.env or {})})
        try:
            self.wait_healthy(self.startup_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        """Whether ``/health`` answers 200 now."""
        try:
            conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=2)
            conn.request("GET", "/health")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(f"lmtailor serve {self.target} exited (code {code}) before answering /health; "
                                   f"its log ({self.log_path}):\n{self.log()[-3000:]}")
            if self.healthy():
                return
            time.sleep(0.3)
        raise RuntimeError(f"lmtailor serve {self.target} did not answer /health within {timeout_s:.0f} s; its log "
                           f"({self.log_path}):\n{self.log()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    """``python -m lmtailor.serve.process TARGET [serve options] -- COMMAND...``: COMMAND runs while TARGET is served."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv or argv.index("--") == 0 or argv.index("--") == len(argv) - 1:
        print("usage: python -m lmtailor.serve.process TARGET [serve options, e.g. --port 8000] -- COMMAND...",
              file=sys.stderr)
        return 2
    split = argv.index("--")
    serve_args, command = argv[:split], argv[split + 1:]
    port = None
    if "--port" in serve_args:
        i = serve_args.index("--port")
        port = int(serve_args[i + 1])
        del serve_args[i:i + 2]
    target, options = serve_args[0], serve_args[1:]
    server = ServerProcess(target, options, port=port)
    print(f"starting lmtailor serve {target} on {server.base_url} (log: {server.log_path})", flush=True)
    with server:
        print(f"serving; running: {' '.join(command)}", flush=True)
        return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
