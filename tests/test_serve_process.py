"""`lmtailor serve` as a real process on a loopback port: start-up output, auth, endpoints, errors, shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

KEY = "process-test-key-4f2a"
SERVE = [sys.executable, "-m", "lmtailor.cli", "serve"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LMTAILOR_API_KEY"}
    return {**env, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", **extra}


def _output(path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="module")
def server(tiny_llama_dir, tmp_path_factory):
    """`lmtailor serve tiny-llama` with a key from the environment; always killed at the end."""
    import requests

    logs = tmp_path_factory.mktemp("serve-process")
    port = _free_port()
    out, err = logs / "stdout.txt", logs / "stderr.txt"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen([*SERVE, "tiny-llama", "--port", str(port), "--precision", "fp32",
                                 "--max-body-bytes", "5000", "--max-tokens-limit", "32"],
                                stdout=stdout, stderr=stderr, env=_env(LMTAILOR_API_KEY=KEY))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited ({proc.returncode}):\n{_output(out)}\n{_output(err)}")
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no /health within 90 s:\n{_output(out)}\n{_output(err)}")
            time.sleep(0.2)
        yield {"url": url, "proc": proc, "stdout": out, "stderr": err}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def test_refuses_to_bind_off_loopback_without_a_key(tiny_llama_dir):
    result = subprocess.run([*SERVE, "tiny-llama", "--host", "0.0.0.0", "--port", str(_free_port())],
                            capture_output=True, text=True, timeout=120, env=_env())
    assert result.returncode == 2, result.stdout + result.stderr
    assert "without an API key" in result.stdout + result.stderr
    assert "LMTAILOR_API_KEY" in result.stdout + result.stderr


def test_start_up_says_what_is_served_and_where(server):
    text = _output(server["stdout"])
    assert "tiny-llama" in text and "decoder-only" in text
    assert "dtype=fp32" in text and f"{server['url']}/v1" in text
    assert "Host header: localhost and loopback addresses" in text
    assert KEY not in text


def test_auth_and_endpoints_over_http(server):
    import requests

    url, auth = server["url"], {"Authorization": f"Bearer {KEY}"}
    assert requests.get(url + "/health", timeout=5).json()["status"] == "ok"  # open without a key
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {KEY}"}):
        answer = requests.get(url + "/v1/models", headers=headers, timeout=5)
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"
    assert [m["id"] for m in requests.get(url + "/v1/models", headers=auth, timeout=5).json()["data"]] == [
        "tiny-llama"]

    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8,
            "temperature": 0}
    reply = requests.post(url + "/v1/chat/completions", json=body, headers=auth, timeout=30).json()
    text = reply["choices"][0]["message"]["content"]
    assert reply["usage"]["completion_tokens"] == 8 and reply["usage"]["total_tokens"] == (
        reply["usage"]["prompt_tokens"] + 8)
    with requests.post(url + "/v1/chat/completions", json={**body, "stream": True}, headers=auth, stream=True,
                       timeout=30) as stream:
        lines = [line.decode() for line in stream.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == text

    completion = requests.post(url + "/v1/completions", json={"model": "tiny-llama", "prompt": "The quick",
                                                              "max_tokens": 4, "temperature": 0},
                               headers=auth, timeout=30)
    assert completion.status_code == 200 and completion.json()["object"] == "text_completion"


@pytest.mark.parametrize("data, status, code", [
    (b"{not json", 400, "invalid_json"),
    (json.dumps({"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "max_tokens": 33}), 400,
     "invalid_value"),
    (json.dumps({"model": "other", "messages": [{"role": "user", "content": "x"}]}), 404, "model_not_found"),
    (json.dumps({"model": "tiny-llama", "messages": [{"role": "user", "content": "x" * 6000}]}), 413,
     "request_too_large"),
])
def test_malformed_requests_over_http_then_a_good_one(server, data, status, code):
    import requests

    url, auth = server["url"], {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    answer = requests.post(url + "/v1/chat/completions", data=data, headers=auth, timeout=30)
    assert answer.status_code == status and answer.json()["error"]["code"] == code
    good = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert requests.post(url + "/v1/chat/completions", json=good, headers=auth, timeout=30).status_code == 200


def test_one_log_line_per_request_without_the_key(server):
    import requests

    requests.get(server["url"] + "/health", timeout=5)
    deadline = time.monotonic() + 5
    while "GET /health 200" not in _output(server["stderr"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    log = _output(server["stderr"])
    assert "GET /health 200" in log
    generation = [line for line in log.splitlines() if "POST /v1/chat/completions 200" in line]
    assert generation and all("ms" in line and "prompt_tokens=" in line and "completion_tokens=" in line
                              and "model=tiny-llama" in line for line in generation)
    assert any("stream=yes" in line for line in generation) and any("stream=no" in line for line in generation)
    assert KEY not in log


def test_hostile_requests_get_4xx_and_a_disconnect_is_one_log_line(server):
    """The process's own stderr: a client gone mid-upload is one line (499 client_gone), never a traceback."""
    import requests

    url, port = server["url"], int(server["url"].rsplit(":", 1)[1])
    auth = {"Authorization": f"Bearer {KEY}"}
    body = json.dumps({"model": "tiny-llama", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    plain = requests.post(url + "/v1/chat/completions", data=body, headers={**auth, "Content-Type": "text/plain"},
                          timeout=30)
    assert plain.status_code == 415 and plain.json()["error"]["code"] == "unsupported_media_type"
    rebound = requests.get(url + "/v1/models", headers={**auth, "Host": f"evil.example:{port}"}, timeout=30)
    assert rebound.status_code == 400 and rebound.json()["error"]["code"] == "host_not_allowed"
    surrogate = requests.post(url + "/v1/chat/completions", data=body.replace('"Hi"', '"\\udbff"'),
                              headers={**auth, "Content-Type": "application/json"}, timeout=30)
    assert surrogate.status_code == 400 and surrogate.json()["error"]["param"] == "messages.0.content"

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {KEY}\r\n"
                   "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\"").encode())
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while " 499 " not in _output(server["stderr"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert requests.get(url + "/health", timeout=5).status_code == 200  # a later line: the 499's is complete
    log = _output(server["stderr"])
    gone = [line for line in log.splitlines() if " 499 " in line]
    assert len(gone) == 1 and "POST /v1/chat/completions 499" in gone[0] and gone[0].endswith("client_gone"), log
    assert "Traceback" not in log and " 500 " not in log and "ERROR" not in log


def test_sigterm_shuts_down_cleanly(server):
    proc = server["proc"]
    proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells how the process ended
    assert proc.wait(30) in (0, -signal.SIGTERM), _output(server["stderr"])
    assert "Traceback" not in _output(server["stderr"])
