"""Load test of `lmtailor serve`: N concurrent clients for T seconds on a loopback port, then the numbers.

Starts the server as its own process (the model given, default the tiny random Llama), waits for /health, runs
``--clients`` threads that each send chat completions back to back for ``--seconds``, and prints requests/s,
generated tokens/s, latency p50/p95/p99 and the error count, then checks that the server still answers.
Bounded on purpose: at most 256 clients, 600 seconds, and loopback only (it refuses any other host).

    .venv/bin/python benchmarks/serve_load.py                       # 32 clients × 30 s on tiny-llama
    .venv/bin/python benchmarks/serve_load.py --clients 8 --seconds 10 --stream
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field

from lmtailor.serve.process import LOOPBACK, ServerProcess


@dataclass
class ClientStats:
    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: list[str] = field(default_factory=list)


def one_request(conn: http.client.HTTPConnection, body: bytes, stream: bool) -> int:
    """Send one chat completion; return the completion tokens (raises on any error)."""
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")
    if not stream:
        return int(json.loads(payload)["usage"]["completion_tokens"])
    events = [line[6:] for line in payload.decode().splitlines() if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        raise RuntimeError("stream did not end with data: [DONE]")
    usage = [json.loads(e).get("usage") for e in events[:-1]]
    return int(next(u for u in reversed(usage) if u)["completion_tokens"])


def client(port: int, model: str, deadline: float, max_tokens: int, stream: bool, index: int,
           stats: ClientStats) -> None:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=120)
    n = 0
    while time.monotonic() < deadline:
        request = {"model": model, "max_tokens": max_tokens, "temperature": 0,
                   "messages": [{"role": "user", "content": f"Client {index}, request {n}: say something."}]}
        if stream:
            request.update(stream=True, stream_options={"include_usage": True})
        t0 = time.perf_counter()
        try:
            stats.tokens += one_request(conn, json.dumps(request).encode(), stream)
            stats.latencies.append(time.perf_counter() - t0)
        except Exception as e:  # every failure is counted and shown; the test goes on
            stats.errors.append(f"{type(e).__name__}: {e}")
            conn.close()
            conn = http.client.HTTPConnection(LOOPBACK, port, timeout=120)
        n += 1
    conn.close()


def server_stats(port: int) -> dict:
    """The engine's counters from /health (batches, requests, the largest batch)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    conn.request("GET", "/health")
    return json.loads(conn.getresponse().read())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama", help="what to serve (default: the tiny random Llama)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens generated per request")
    parser.add_argument("--max-batch", type=int, default=32, help="the server's --max-batch")
    parser.add_argument("--stream", action="store_true", help="stream every answer (server-sent events)")
    parser.add_argument("--host", default=LOOPBACK, help="only 127.0.0.1: this test never leaves the machine")
    args = parser.parse_args(argv)
    if args.host != LOOPBACK:
        parser.error("the load test runs on loopback only (--host 127.0.0.1)")
    if not 1 <= args.clients <= 256 or not 0 < args.seconds <= 600:
        parser.error("--clients must be 1..256 and --seconds 0..600")
    server = ServerProcess(args.model, ["--model-name", "load-test", "--max-batch", str(args.max_batch)])
    with server:
        stats = [ClientStats() for _ in range(args.clients)]
        start = time.monotonic()
        deadline = start + args.seconds
        threads = [threading.Thread(target=client, args=(server.port, "load-test", deadline, args.max_tokens,
                                                         args.stream, i, stats[i]))
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        latencies = [x for s in stats for x in s.latencies]
        errors = [e for s in stats for e in s.errors]
        tokens = sum(s.tokens for s in stats)
        alive = server.alive() and server.healthy()
        engine = server_stats(server.port) if alive else {}
    rows = [("model", args.model), ("clients", args.clients), ("duration", f"{elapsed:.1f} s"),
            ("mode", "stream" if args.stream else "non-stream"), ("max_tokens", args.max_tokens),
            ("requests ok", len(latencies)), ("errors", len(errors)),
            ("requests/s", f"{len(latencies) / elapsed:.1f}"), ("generated tokens/s", f"{tokens / elapsed:.1f}")]
    if latencies:
        rows += [(f"latency p{q}", f"{1000 * percentile(latencies, q):.0f} ms") for q in (50, 95, 99)]
        rows += [("latency mean", f"{1000 * statistics.mean(latencies):.0f} ms")]
    if engine.get("batches"):
        rows += [("batches decoded", engine["batches"]),
                 ("mean / largest batch", f"{engine['requests'] / engine['batches']:.1f} / {engine['max_batch_seen']}")]
    rows += [("server up after", "yes (answers /health)" if alive else "NO"),
             ("machine", f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"),
             ("server log", str(server.log_path))]
    print("| measure | value |\n| --- | --- |")
    for k, v in rows:
        print(f"| {k} | {v} |")
    for e in sorted(set(errors))[:10]:
        print(f"error: {e}", file=sys.stderr)
    return 0 if alive and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
