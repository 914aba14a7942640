"""Load test of `lmtailor serve`: N concurrent clients for T seconds on a loopback port, then the numbers.

For each ``--batching`` mode in turn (default: static, then continuous, side by side in one run), starts the
server as its own process (the model given, default the tiny random Llama), waits for /health, runs ``--clients``
threads that each send chat completions back to back for ``--seconds``, and prints one column per mode:
requests/s, generated tokens/s, latency p50/p95/p99, the error count, the mean and largest batch (from /health),
whether the server still answers, and the ratio of the last mode to the first.
Bounded on purpose: at most 256 clients, 600 seconds, and loopback only (it refuses any other host).

    .venv/bin/python benchmarks/serve_load.py                       # 32 clients × 30 s on tiny-llama, both modes
    .venv/bin/python benchmarks/serve_load.py --clients 8 --seconds 10 --stream --batching continuous
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


@dataclass
class ModeResult:
    """One mode's load test: its clients' numbers, the wall time, the server's counters and whether it survived."""

    batching: str
    elapsed: float
    stats: list[ClientStats]
    engine: dict
    alive: bool
    log_path: str

    @property
    def latencies(self) -> list[float]:
        return [x for s in self.stats for x in s.latencies]

    @property
    def errors(self) -> list[str]:
        return [e for s in self.stats for e in s.errors]

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies) / self.elapsed

    @property
    def tokens_per_s(self) -> float:
        return sum(s.tokens for s in self.stats) / self.elapsed


# each mode's server options: continuous batching with and without the shared prompt prefix cache
MODES = {"static": ["--batching", "static"], "continuous": ["--batching", "continuous"],
         "continuous-no-prefix-cache": ["--batching", "continuous", "--no-prefix-cache"]}


def load_test(args: argparse.Namespace, batching: str) -> ModeResult:
    """Serve ``args.model`` in mode ``batching`` (``MODES``) and run the clients against it."""
    options = ["--model-name", "load-test", "--max-batch", str(args.max_batch), *MODES[batching]]
    options += ["--threads", str(args.threads)] if args.threads else []
    server = ServerProcess(args.model, options + (["--precision", args.precision] if args.precision else []))
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
        alive = server.alive() and server.healthy()
        engine = server_stats(server.port) if alive else {}
    return ModeResult(batching, elapsed, stats, engine, alive, str(server.log_path))


def mode_rows(r: ModeResult) -> list[tuple[str, str]]:
    """One mode's column of the table."""
    lat = r.latencies
    rows = [("duration", f"{r.elapsed:.1f} s"), ("requests ok", str(len(lat))), ("errors", str(len(r.errors))),
            ("requests/s", f"{r.requests_per_s:.1f}"), ("generated tokens/s", f"{r.tokens_per_s:.1f}")]
    rows += [(f"latency p{q}", f"{1000 * percentile(lat, q):.0f} ms" if lat else "-") for q in (50, 95, 99)]
    rows += [("latency mean", f"{1000 * statistics.mean(lat):.0f} ms" if lat else "-")]
    if r.engine.get("batches"):
        rows += [("batches (static) / decoding steps (continuous)", str(r.engine["batches"])),
                 ("prefill passes", str(r.engine.get("prefills", r.engine["batches"]))),
                 ("mean / largest batch", f"{r.engine['mean_batch']:.1f} / {r.engine['max_batch_seen']}"),
                 ("prompt tokens reused (prefix cache)", str(r.engine.get("prefix_tokens_reused", "-")))]
    rows += [("server up after", "yes" if r.alive else "NO"), ("server log", r.log_path)]
    return rows


def print_table(args: argparse.Namespace, results: list[ModeResult]) -> None:
    """A markdown table: one column per mode, and the last mode's ratio to the first for the throughput rows."""
    columns = [dict(mode_rows(r)) for r in results]
    print(f"model {args.model}, {args.clients} clients × {args.seconds:g} s, "
          f"{'stream' if args.stream else 'non-stream'}, max_tokens {args.max_tokens}, --max-batch {args.max_batch}, "
          f"--threads {args.threads or 'default'}, --precision {args.precision or 'auto'}; "
          f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print("| measure | " + " | ".join(r.batching for r in results) + " |")
    print("| --- |" + " --- |" * len(results))
    for key in columns[0]:
        print(f"| {key} | " + " | ".join(c.get(key, "-") for c in columns) + " |")
    if len(results) > 1 and results[0].requests_per_s and results[0].tokens_per_s:
        first, last = results[0], results[-1]
        print(f"| {last.batching} / {first.batching} | requests/s {last.requests_per_s / first.requests_per_s:.2f}x,"
              f" tokens/s {last.tokens_per_s / first.tokens_per_s:.2f}x |")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama", help="what to serve (default: the tiny random Llama)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens generated per request")
    parser.add_argument("--max-batch", type=int, default=32, help="the server's --max-batch")
    parser.add_argument("--batching", default="static,continuous",
                        help="modes to run one after the other (default static,continuous; also "
                             "continuous-no-prefix-cache: the server's --no-prefix-cache)")
    parser.add_argument("--stream", action="store_true", help="stream every answer (server-sent events)")
    parser.add_argument("--threads", type=int, default=None, help="the server's --threads (default: torch's own)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                        help="the server's --precision (default: what the hardware supports; fp32 is the AVX2 path)")
    parser.add_argument("--host", default=LOOPBACK, help="only 127.0.0.1: this test never leaves the machine")
    args = parser.parse_args(argv)
    args.batching = [m.strip() for m in args.batching.split(",") if m.strip()]
    if args.host != LOOPBACK:
        parser.error("the load test runs on loopback only (--host 127.0.0.1)")
    if not 1 <= args.clients <= 256 or not 0 < args.seconds <= 600:
        parser.error("--clients must be 1..256 and --seconds 0..600")
    if not args.batching or not set(args.batching) <= set(MODES):
        parser.error(f"--batching takes one or more of {', '.join(MODES)}, comma-separated")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = [load_test(args, mode) for mode in args.batching]
    print_table(args, results)
    for r in results:
        for e in sorted(set(r.errors))[:10]:
            print(f"error ({r.batching}): {e}", file=sys.stderr)
    return 0 if all(r.alive and not r.errors for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
