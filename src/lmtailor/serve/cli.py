"""The ``lmtailor serve`` command: its arguments and what it prints. The work is in ``target.py`` and ``app.py``."""

from __future__ import annotations

import argparse
import logging
import sys

from lmtailor.serve.auth import check_bind, resolve_api_key
from lmtailor.serve.settings import (DEFAULT_MAX_BATCH, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_TOKENS_LIMIT,
                                     DEFAULT_READ_TIMEOUT_S, ServeSettings)
from lmtailor.serve.server import bind_socket, run_server

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _seconds(value: str) -> float:
    number = float(value)
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {value}")
    return number


def _hosts(value: str) -> tuple[str, ...]:
    names = tuple(h.strip() for h in value.split(",") if h.strip())
    if not names:
        raise argparse.ArgumentTypeError("give one or more host names separated by commas, or * for any")
    return names


def _port(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535, got {number}")
    return number


def _add_batching_options(p: argparse.ArgumentParser) -> None:
    from lmtailor.serve.engines import DEFAULT_BATCHING, ENGINES

    p.add_argument("--max-batch", type=_positive, default=DEFAULT_MAX_BATCH,
                   help=f"most requests decoded together in one batch (default {DEFAULT_MAX_BATCH})")
    p.add_argument("--batching", choices=sorted(ENGINES), default=DEFAULT_BATCHING,
                   help="continuous: waiting requests join the running batch at its next decoding step (default; "
                        "encoder-decoder models and prefix/prompt tuning fall back to static); static: a batch is "
                        "decoded to its end while new requests wait")
    p.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                   help="continuous batching: prefill every prompt whole instead of reusing the keys and values of "
                        "the prompt prefix requests share (a chat template's system turn)")


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to the ``lmtailor`` parser's subparsers."""
    p = subparsers.add_parser(
        "serve", help="serve a model, an adapter, a merged export or a run's trained row over an OpenAI-compatible "
                      "HTTP API",
        description="Serve one model over an OpenAI-compatible API (/v1/models, /v1/chat/completions, "
                    "/v1/completions, streaming and not; /health). Concurrent requests are decoded together in "
                    "batches. Binds to 127.0.0.1 unless --host says otherwise; any other address needs an API key.")
    p.add_argument("target", metavar="RUN_OR_MODEL",
                   help="a run directory (with --row, or its only trained row), a PEFT adapter directory "
                        "(adapter_config.json: served on its base, merged when the method allows), a model directory "
                        "(e.g. a merged export), a model alias (tiny-llama, smollm2-135m-instruct, ...) or a hub id")
    p.add_argument("--row", default=None, metavar="ROW_ID", help="which trained row of a run directory to serve")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only); anything but loopback needs "
                        "an API key")
    p.add_argument("--port", type=_port, default=8000, help="port to listen on (default 8000; 0 picks a free one)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1 routes (default: the environment variable "
                        "LMTAILOR_API_KEY; prefer it: a command-line argument is visible in the process list)")
    p.add_argument("--model-name", default=None,
                   help="the model name clients send (default: the alias or hub id, the directory name, or the row id)")
    _add_batching_options(p)
    p.add_argument("--max-tokens-limit", type=_positive, default=DEFAULT_MAX_TOKENS_LIMIT,
                   help=f"largest max_tokens a request may ask for (default {DEFAULT_MAX_TOKENS_LIMIT})")
    p.add_argument("--max-body-bytes", type=_positive, default=DEFAULT_MAX_BODY_BYTES,
                   help=f"largest request body accepted, in bytes (default {DEFAULT_MAX_BODY_BYTES})")
    p.add_argument("--read-timeout", type=_seconds, default=DEFAULT_READ_TIMEOUT_S, metavar="SECONDS",
                   help="a request's headers must have arrived this long after the connection opened (or its "
                        "previous answer), else the connection is closed, and its body this long after the headers, "
                        f"else 408 (default {DEFAULT_READ_TIMEOUT_S:g})")
    p.add_argument("--allowed-hosts", type=_hosts, default=(), metavar="NAME[,NAME...]",
                   help="more Host header values to accept, e.g. the machine's DNS name or a reverse proxy's (* "
                        "accepts any). Always accepted: IP addresses of the bound address (any loopback address "
                        "when bound to loopback, any address when bound to 0.0.0.0 or ::), localhost when loopback "
                        "reaches the server, and the --host value; any other Host is refused (DNS rebinding)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="compute dtype (default auto: bf16 where the hardware does it natively, else fp32)")
    p.add_argument("--backend", choices=("transformers", "llamacpp"), default="transformers",
                   help="engine: transformers, or llamacpp (serves the model's GGUF through llama.cpp: an embedded "
                        "model with a GGUF, a .gguf path, or a run row after lmtailor export --merge --gguf; "
                        "decoder-only; needs the llamacpp extra; one request at a time, --precision ignored)")
    p.add_argument("--threads", type=_positive, default=None,
                   help="CPU threads for torch (and llama.cpp) (default: torch's own, one per physical core)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run Python code shipped inside the model directory (off by default)")
    p.set_defaults(func=cmd_serve)
    return p


def _log_requests_one_per_line() -> None:
    """Request lines go to stderr as plain single lines (a rich handler would wrap them at the terminal width)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("lmtailor.serve")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run ``lmtailor serve`` with parsed arguments: load the target, print what is served and where, serve."""
    from dataclasses import replace

    from rich.console import Console

    from lmtailor.runtime import detect_runtime, set_threads
    from lmtailor.serve.app import create_app
    from lmtailor.serve.guard import HostRule
    from lmtailor.serve.target import load_target

    console = Console()
    api_key = resolve_api_key(args.api_key)
    check_bind(args.host, api_key)  # before loading anything
    sock = bind_socket(args.host, args.port)  # a taken port fails now, not after the model has loaded
    try:
        runtime = detect_runtime(args.precision, trust_remote_code=args.trust_remote_code)
        set_threads(args.threads)
        if args.precision != "auto":
            runtime = replace(runtime, reason="set by --precision")
        served = load_target(args.target, runtime, row=args.row, name=args.model_name, backend=args.backend)
        settings = ServeSettings(served.name, api_key, args.max_batch, args.max_tokens_limit, args.max_body_bytes,
                                 args.read_timeout, args.host, tuple(args.allowed_hosts), args.prefix_cache)
        app = create_app(served, settings, args.batching)
        host, port = sock.getsockname()[:2]
        shown_host = f"[{host}]" if ":" in host else host
        for line in (f"serving {served.description}",
                     f"model name: {settings.model_name}; context {served.context_length or 'unknown'} tokens; "
                     f"batching: {app.state.engine.describe()}, up to {app.state.engine.max_batch} requests at a time; "
                     f"max_tokens up to {settings.max_tokens_limit}",
                     f"precision: {runtime.describe()}",
                     f"API key: {'required (Authorization: Bearer ...)' if api_key else 'none (loopback only)'}; "
                     f"Host header: {HostRule.of(args.host, settings.allowed_hosts).describe()} (--allowed-hosts)",
                     f"OpenAI base URL: http://{shown_host}:{port}/v1  (health: http://{shown_host}:{port}/health)"):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        _log_requests_one_per_line()
        run_server(app, sock)
    finally:
        sock.close()
    return 0
