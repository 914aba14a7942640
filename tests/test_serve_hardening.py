"""lmtailor serve against hostile or broken clients, over real sockets: undecodable text, non-JSON POSTs (blind CSRF),
foreign Host headers (DNS rebinding), a client gone mid-upload, and a body that never finishes (slow loris).

The server is uvicorn on a free loopback port in this process (``BackgroundServer``) serving the tiny random Llama;
requests are raw bytes (``http.client`` or a socket), so headers are exactly what a browser or attacker could send.
"""

from __future__ import annotations

import http.client
import json
import logging
import select
import socket
import time

import pytest

from waiting import wait_for
from lmtailor.runtime import Runtime

NAME = "tiny"
GOOD = {"model": NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}
JSON = "application/json"


@pytest.fixture(scope="module")
def served(tiny_llama_dir, one_torch_thread):
    from lmtailor.serve.target import load_target

    return load_target(str(tiny_llama_dir), Runtime("cpu", "fp32", "test"), name=NAME)


def _server(served, **settings):
    from lmtailor.serve.app import create_app
    from lmtailor.serve.settings import ServeSettings
    from lmtailor.serve.server import BackgroundServer

    return BackgroundServer(create_app(served, ServeSettings(NAME, **settings)))


@pytest.fixture(scope="module")
def server(served):
    with _server(served, max_body_bytes=20_000) as s:
        yield s


@pytest.fixture(scope="module")
def impatient_server(served):
    """A server giving request bodies 1 s (module-scoped: started before ``server_logs`` attaches its handler, since
    uvicorn's start-up reconfigures its own loggers)."""
    with _server(served, read_timeout_s=1.0) as s:
        yield s


def _post(server, path: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST"):
    """(status, parsed JSON body) of one request over a fresh connection; headers exactly as given."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None
    finally:
        conn.close()


def _headers(server, content_type: str | None = JSON, host: str | None = None) -> dict[str, str]:
    headers = {"Host": host if host is not None else f"127.0.0.1:{server.port}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return headers


def _openai_error(status: int, body, expected_status: int, code: str) -> dict:
    assert status == expected_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["code"] == code, body
    return body["error"]


def _still_serves(server) -> None:
    status, body = _post(server, "/v1/chat/completions", json.dumps(GOOD).encode(), _headers(server))
    assert status == 200 and body["usage"]["completion_tokens"] == 2, body


# --- undecodable text ---------------------------------------------------------------------------------------------

GOOD_JSON = json.dumps(GOOD)
UNDECODABLE = [
    # (id, path, raw body, status, code, param); \udbff below is JSON's escape, i.e. the bytes backslash-u-d-b-f-f
    ("lone surrogate in chat content", "/v1/chat/completions",
     GOOD_JSON.replace('"Hi"', '"Hi \\udbff"').encode(), 400, "invalid_value", "messages.0.content"),
    ("lone low surrogate in a prompt", "/v1/completions",
     b'{"model": "tiny", "prompt": "a\\udc00b", "max_tokens": 2}', 400, "invalid_value", "prompt"),
    ("lone surrogate in a prompt list", "/v1/completions",
     b'{"model": "tiny", "prompt": ["ok", "\\ud800"], "max_tokens": 2}', 400, "invalid_value", "prompt.1"),
    ("lone surrogate in a stop string", "/v1/chat/completions",
     GOOD_JSON.replace('"max_tokens"', '"stop": ["\\udbff"], "max_tokens"').encode(), 400, "invalid_value", "stop.0"),
    ("lone surrogate in the model name", "/v1/chat/completions",
     GOOD_JSON.replace('"tiny"', '"\\udbff"').encode(), 400, "invalid_value", "model"),
    ("lone surrogate as a key", "/v1/chat/completions",
     GOOD_JSON.replace('"max_tokens"', '"\\udbff": 1, "max_tokens"').encode(), 400, "invalid_value", "\\udbff"),
    ("reversed surrogate pair", "/v1/completions",
     b'{"model": "tiny", "prompt": "\\ude00\\ud83d", "max_tokens": 2}', 400, "invalid_value", "prompt"),
    ("invalid UTF-8 bytes", "/v1/completions", b'{"model": "tiny", "prompt": "\xff\xfe", "max_tokens": 2}', 400,
     "invalid_json", None),
]


@pytest.mark.parametrize("path, body, status, code, param", [u[1:] for u in UNDECODABLE],
                         ids=[u[0] for u in UNDECODABLE])
def test_undecodable_text_is_a_400_in_openai_shape(server, path, body, status, code, param):
    error = _openai_error(*_post(server, path, body, _headers(server)), status, code)
    assert error["param"] == param
    _still_serves(server)


def test_a_real_surrogate_pair_is_text(server):
    # \ud83d\ude00 is one character (U+1F600), not a lone surrogate: it must be served
    body = GOOD_JSON.replace('"Hi"', '"Hi \\ud83d\\ude00"').encode()
    status, reply = _post(server, "/v1/chat/completions", body, _headers(server))
    assert status == 200 and reply["usage"]["completion_tokens"] == 2


# --- requests that were 500s: an empty prompt, a temperature so small that logits / T overflow -------------------

def test_empty_prompt_is_a_400(server):
    # the tiny Llama adds no BOS token: "" is zero tokens, which generate cannot take (it was a 500)
    body = b'{"model": "tiny", "prompt": "", "max_tokens": 2}'
    error = _openai_error(*_post(server, "/v1/completions", body, _headers(server)), 400, "invalid_value")
    assert error["param"] == "prompt" and "empty" in error["message"]
    _still_serves(server)


def test_text_part_without_text_is_a_400(server):
    body = json.dumps({**GOOD, "messages": [{"role": "user", "content": [{"type": "text"}]}]}).encode()
    error = _openai_error(*_post(server, "/v1/chat/completions", body, _headers(server)), 400,
                          "missing_required_parameter")
    assert error["param"] == "messages.0.content.0.text"


def test_vanishing_temperature_decodes_greedily(server):
    # logits / 1e-300 overflow float32 to inf and sampling failed (a 500); below 1e-5 the server decodes greedily
    answers = []
    for temperature in (0, 1e-300, 9e-6):
        body = json.dumps({**GOOD, "max_tokens": 8, "temperature": temperature}).encode()
        status, reply = _post(server, "/v1/chat/completions", body, _headers(server))
        assert status == 200, reply
        answers.append(reply["choices"][0]["message"]["content"])
    assert answers[1] == answers[0] and answers[2] == answers[0]


# --- content type: only JSON on POST (blind CSRF) -----------------------------------------------------------------

@pytest.mark.parametrize("content_type", [None, "text/plain", "text/plain;charset=UTF-8",
                                          "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                          "application/json-patch+json", "application/json; charset=latin-1"])
def test_non_json_post_is_refused_with_415(server, content_type):
    error = _openai_error(*_post(server, "/v1/chat/completions", GOOD_JSON.encode(), _headers(server, content_type)),
                          415, "unsupported_media_type")
    assert "application/json" in error["message"]
    _still_serves(server)


@pytest.mark.parametrize("content_type", [JSON, "Application/JSON", "application/json; charset=utf-8",
                                          'application/json;charset="UTF-8"'])
def test_json_content_types_are_served(server, content_type):
    status, reply = _post(server, "/v1/chat/completions", GOOD_JSON.encode(), _headers(server, content_type))
    assert status == 200 and reply["object"] == "chat.completion"


# --- Host header (DNS rebinding) ----------------------------------------------------------------------------------

# (bound address, --allowed-hosts, Host header value, accepted?)
HOSTS = [
    ("127.0.0.1", (), "127.0.0.1:8000", True),
    ("127.0.0.1", (), "127.0.0.1", True),
    ("127.0.0.1", (), "localhost:8000", True),
    ("127.0.0.1", (), "LOCALHOST.", True),  # case and the root's trailing dot do not make another name
    ("127.0.0.1", (), "127.9.9.9:1", True),  # any 127/8 address is this machine
    ("127.0.0.1", (), "[::1]:8000", True),
    ("127.0.0.1", (), "evil.example:8000", False),  # the rebinding attacker's own name
    ("127.0.0.1", (), "127.0.0.1.nip.io", False),  # a public name that resolves to loopback is still a name
    ("127.0.0.1", (), "localhost.evil.example", False),
    ("127.0.0.1", (), "10.0.0.1", False),  # not an address this socket is bound to
    ("127.0.0.1", (), "127.0.0.1:80@evil.example", False),  # malformed
    ("127.0.0.1", (), "127.0.0.1:port", False),
    ("127.0.0.1", (), "", False),
    ("127.0.0.1", ("box.lan",), "box.lan:8000", True),
    ("127.0.0.1", ("box.lan",), "BOX.LAN", True),
    ("127.0.0.1", ("box.lan",), "other.lan", False),
    ("127.0.0.1", ("*",), "anything.example", True),
    ("localhost", (), "127.0.0.1:8000", True),
    ("::1", (), "[::1]:8000", True),
    ("::1", (), "[0:0:0:0:0:0:0:1]", True),
    ("::1", (), "evil.example", False),
    ("0.0.0.0", (), "192.168.1.5:8000", True),  # a wildcard bind: any IP literal reaches this socket
    ("0.0.0.0", (), "localhost", True),
    ("0.0.0.0", (), "evil.example", False),
    ("192.168.1.5", (), "192.168.1.5:8000", True),
    ("192.168.1.5", (), "192.168.1.6", False),
    ("192.168.1.5", (), "localhost", False),  # loopback does not reach a server bound to one LAN address
    ("box.lan", (), "box.lan:8000", True),  # the --host name itself
    ("box.lan", (), "evil.example", False),
]


@pytest.mark.parametrize("bound, extra, header, accepted", HOSTS)
def test_host_rule(bound, extra, header, accepted):
    from lmtailor.serve.guard import HostRule, host_of

    host = host_of(header)
    assert (host is not None and HostRule.of(bound, extra).allows(host)) is accepted


@pytest.mark.parametrize("host, code", [("evil.example:{port}", "host_not_allowed"),
                                        ("127.0.0.1.nip.io:{port}", "host_not_allowed"),
                                        ("127.0.0.1:{port}, evil.example", "invalid_host")])
def test_foreign_host_is_refused_on_every_route(server, host, code):
    host = host.format(port=server.port)
    for method, path, body in (("POST", "/v1/chat/completions", GOOD_JSON.encode()), ("GET", "/v1/models", b""),
                               ("GET", "/health", b"")):
        error = _openai_error(*_post(server, path, body, _headers(server, host=host), method), 400, code)
        assert "Host" in error["message"]
    _still_serves(server)


def test_missing_host_is_refused_and_loopback_names_are_served(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.0\r\n\r\n")  # HTTP/1.0 may leave Host out; browsers never do
        answer = _read_all(s)
    assert answer.startswith(b"HTTP/1.1 400") and b'"invalid_host"' in answer
    for host in (f"localhost:{server.port}", f"[::1]:{server.port}", "127.0.0.2"):
        status, body = _post(server, "/v1/chat/completions", GOOD_JSON.encode(), _headers(server, host=host))
        assert status == 200, (host, body)


def test_allowed_hosts_setting_adds_names(served):
    with _server(served, allowed_hosts=("box.lan",)) as server:
        status, _ = _post(server, "/health", b"", _headers(server, host="box.lan:8000"), "GET")
        assert status == 200
        _openai_error(*_post(server, "/health", b"", _headers(server, host="other.lan"), "GET"), 400,
                      "host_not_allowed")


# --- a client gone mid-upload, a body that never ends -------------------------------------------------------------

def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _request_head(port: int, length: int) -> bytes:
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {JSON}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def server_logs():
    """Every record of lmtailor's and uvicorn's loggers (uvicorn's do not propagate to the root, so caplog misses them).

    "uvicorn.error" is where uvicorn writes "Exception in ASGI application" and its traceback."""
    handler = _Records()
    loggers = [logging.getLogger(name) for name in ("lmtailor.serve", "uvicorn.error")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
    logging.getLogger("lmtailor.serve").setLevel(logging.INFO)
    yield handler.records
    for logger, level in zip(loggers, levels):
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_client_gone_mid_upload_is_one_log_line(server, server_logs):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(_request_head(server.port, 1000) + b'{"model": "tiny", "mess')  # 23 of the 1000 bytes promised
        time.sleep(0.3)
    assert wait_for(lambda: any(" 499 " in r.getMessage() for r in server_logs)), [r.getMessage() for r in server_logs]
    time.sleep(0.3)  # anything logged after the request line (a traceback from uvicorn) would arrive now
    lines = [r.getMessage() for r in server_logs]
    assert len(server_logs) == 1, lines
    record = server_logs[0]
    assert record.levelno == logging.INFO and record.exc_info is None
    assert record.getMessage().startswith("POST /v1/chat/completions 499 ") and record.getMessage().endswith(
        " client_gone")
    _still_serves(server)


def test_log_line_keeps_the_path_encoded(server, server_logs):
    status, _ = _post(server, "/v1/models/a%0A2026-01-01%20INFO%20forged", b"", _headers(server), "GET")
    assert status == 404
    # the previous test's request may still be logged (after its answer was sent): look for this one's line
    assert wait_for(lambda: any(r.getMessage().startswith("GET ") for r in server_logs))
    line = next(r.getMessage() for r in server_logs if r.getMessage().startswith("GET "))
    assert line.startswith("GET /v1/models/a%0A2026-01-01%20INFO%20forged 404 ") and "\n" not in line


def test_slow_body_gets_a_408_and_its_connection_is_closed(impatient_server, server_logs):
    """One byte every 0.1 s of a 10,000-byte body: without a deadline the handler would wait ~17 minutes."""
    server = impatient_server
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        s.sendall(_request_head(server.port, 10_000))
        start = time.monotonic()
        for _ in range(100):  # 10 s of dribbling at most; the server should answer after about 1 s
            if select.select([s], [], [], 0.1)[0]:  # the answer has come: stop sending, read it
                break
            s.sendall(b" ")
        answer = _read_all(s)  # returns at EOF: the server closed the connection
        elapsed = time.monotonic() - start
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == "request_timeout" and "1 s" in error["message"] and "--read-timeout" in error["message"]
    assert elapsed < 9, elapsed  # well before the 10 s of dribbling were over
    _still_serves(server)
    assert [r.getMessage().split()[:3] for r in server_logs][0] == ["POST", "/v1/chat/completions", "408"]
    assert all(r.exc_info is None and r.levelno < logging.WARNING for r in server_logs), server_logs


def test_headers_dribbled_or_never_sent_are_cut_off(impatient_server):
    """uvicorn restarts its keep-alive timer on every byte: without the header deadline (1 s here) a client sending
    a header byte every 0.1 s would keep its connection for the whole 10 s below, and one sending nothing forever."""
    server = impatient_server
    head = _request_head(server.port, 2)
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as dribbling, \
            socket.create_connection(("127.0.0.1", server.port), timeout=20) as idle:
        start = time.monotonic()
        closed_after = None
        for i in range(100):
            if select.select([dribbling], [], [], 0.1)[0]:
                break
            try:
                dribbling.sendall(head[i:i + 1])
            except OSError:  # closed while sending
                break
        try:
            assert _read_all(dribbling) == b""  # closed without an answer: there was no request to answer
        except ConnectionResetError:
            pass
        closed_after = time.monotonic() - start
        assert closed_after < 9, closed_after
        assert _read_all(idle) == b""  # the idle connection had the same deadline and is closed by now too
    _still_serves(server)  # a request whose headers arrive at once is served as always


def test_a_request_slower_than_the_deadline_is_not_cut_off(impatient_server):
    """The header deadline stops once the headers are in: an answer taking longer than 1 s is still delivered."""
    model = impatient_server.app.state.served.model
    handle = model.register_forward_hook(lambda *_: time.sleep(0.3))  # 8 tokens: about 2.4 s
    try:
        body = json.dumps({**GOOD, "max_tokens": 8}).encode()
        status, reply = _post(impatient_server, "/v1/chat/completions", body, _headers(impatient_server))
        assert status == 200 and reply["usage"]["completion_tokens"] == 8
    finally:
        handle.remove()


@pytest.mark.parametrize("bound, extra, described", [
    ("127.0.0.1", (), "localhost and loopback addresses"),
    ("::1", ("box.lan",), "localhost and loopback addresses, box.lan"),
    ("0.0.0.0", (), "localhost and IP addresses"),
    ("192.168.1.5", ("Box.Lan.",), "192.168.1.5, box.lan"),
    ("127.0.0.1", ("*",), "any (--allowed-hosts *)"),
])
def test_host_rule_described_for_the_start_up_lines(bound, extra, described):
    from lmtailor.serve.guard import HostRule

    assert HostRule.of(bound, extra).describe() == described
