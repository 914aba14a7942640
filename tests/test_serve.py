"""lmtailor serve, in process: endpoints, streaming, usage, validation, auth, batching, constrained output, targets.

The served Llama is the tiny one with its weights pushed away from the initialization (noise of std 0.3): a freshly
initialised tiny model with tied embeddings only repeats its last token, so texts would be equal by accident. The
runtime is fp32, so a row decodes to the same tokens alone and inside a batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path

import pytest
import torch

from waiting import wait_for
from lmtailor.errors import UserError
from lmtailor.runtime import Runtime

FP32 = Runtime("cpu", "fp32", "test")
NAME = "noisy-llama"
HELLO = [{"role": "user", "content": "Hello there"}]
LOCAL = "http://127.0.0.1"  # TestClient's default Host, testserver, does not name a loopback server (guard.py)


@pytest.fixture(scope="module")
def noisy_llama_dir(tiny_llama_dir, tmp_path_factory, one_torch_thread) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.add_(torch.randn(p.shape, generator=generator) * 0.3)
    out = tmp_path_factory.mktemp("noisy-llama")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def served(noisy_llama_dir):
    from lmtailor.serve.target import load_target

    return load_target(str(noisy_llama_dir), FP32, name=NAME)


@pytest.fixture(scope="module")
def client(served):
    from fastapi.testclient import TestClient

    from lmtailor.serve.app import create_app
    from lmtailor.serve.settings import ServeSettings

    app = create_app(served, ServeSettings(NAME, max_tokens_limit=64, max_body_bytes=20_000))
    with TestClient(app, base_url=LOCAL) as c:
        yield c


def _reference(served, prompt: list[int], max_tokens: int) -> tuple[list[int], str]:
    """Greedy ids and text of one prompt decoded alone, stop token removed."""
    from lmtailor.inference.generation import generate_ids
    from lmtailor.serve.prompting import stop_ids

    stops = stop_ids(served, chat=True)
    ids = generate_ids(served.model, [prompt], max_tokens, stops, served.tokenizer.pad_token_id).ids[0]
    return ids, served.tokenizer.decode([t for t in ids if t not in stops], skip_special_tokens=True)


def _chat_prompt(served, messages) -> list[int]:
    from lmtailor.prompting.formats import encode_prompt

    return encode_prompt(served.tokenizer, messages)


def _events(lines) -> list[dict]:
    """The JSON payloads of a server-sent-event stream, checking its framing and the final [DONE]."""
    data = [line for line in lines if line]
    assert all(line.startswith("data: ") for line in data), data
    assert data[-1] == "data: [DONE]"
    return [json.loads(line[len("data: "):]) for line in data[:-1]]


def _stream(client, path: str, body: dict, headers: dict | None = None) -> list[dict]:
    with client.stream("POST", path, json={**body, "stream": True}, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return _events(response.iter_lines())


def _streamed_text(events: list[dict], chat: bool) -> str:
    key = "delta" if chat else None
    parts = [(c[key].get("content") or "") if chat else c["text"] for e in events for c in e["choices"]]
    return "".join(parts)


def _finish(events: list[dict]) -> str:
    return [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]][-1]


def _error(response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    if code is not None:
        assert body["error"]["code"] == code, body
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]


# --- endpoints, streaming and usage -------------------------------------------------------------------------------

def test_models_and_health(client):
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [NAME]
    assert client.get(f"/v1/models/{NAME}").json()["id"] == NAME
    _error(client.get("/v1/models/other"), 404, "model_not_found")
    health = client.get("/health").json()
    assert health["status"] == "ok" and {"batches", "requests", "max_batch_seen", "waiting"} <= set(health)


def test_chat_streaming_equals_non_streaming_and_reference(client, served):
    body = {"model": NAME, "messages": HELLO, "max_tokens": 30, "temperature": 0}
    reply = client.post("/v1/chat/completions", json=body).json()
    assert reply["object"] == "chat.completion" and reply["model"] == NAME
    choice = reply["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    prompt = _chat_prompt(served, HELLO)
    ids, text = _reference(served, prompt, 30)
    assert choice["message"]["content"] == text and len(text) > 10
    assert reply["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": len(ids),
                              "total_tokens": len(prompt) + len(ids)}

    events = _stream(client, "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}})
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == events[0]["id"] for e in events)
    assert _streamed_text(events, chat=True) == text
    assert len([e for e in events if e["choices"] and e["choices"][0]["delta"].get("content")]) > 3
    assert _finish(events) == "length"
    assert events[-1]["choices"] == [] and events[-1]["usage"] == reply["usage"]


def test_completions_streaming_equals_non_streaming(client, served):
    from lmtailor.prompting.formats import tokenize_text

    body = {"model": NAME, "prompt": "The quick brown fox", "max_tokens": 25, "temperature": 0}
    reply = client.post("/v1/completions", json=body).json()
    assert reply["object"] == "text_completion"
    prompt = tokenize_text(served.tokenizer, body["prompt"])
    ids, text = _reference(served, prompt, 25)
    assert reply["choices"][0]["text"] == text
    assert reply["usage"]["prompt_tokens"] == len(prompt) and reply["usage"]["completion_tokens"] == len(ids)
    events = _stream(client, "/v1/completions", body)
    assert _streamed_text(events, chat=False) == text and _finish(events) == "length"
    assert all("usage" not in e for e in events)  # only with stream_options.include_usage


def test_stop_strings_and_max_tokens(client, served):
    _, text = _reference(served, _chat_prompt(served, HELLO), 30)
    stop = text[6:8]
    cut = text[: text.find(stop)]
    body = {"model": NAME, "messages": HELLO, "max_tokens": 30, "temperature": 0, "stop": [stop, "\x00never"]}
    reply = client.post("/v1/chat/completions", json=body).json()["choices"][0]
    assert (reply["message"]["content"], reply["finish_reason"]) == (cut, "stop")
    events = _stream(client, "/v1/chat/completions", body)
    assert (_streamed_text(events, chat=True), _finish(events)) == (cut, "stop")

    ids, _ = _reference(served, _chat_prompt(served, HELLO), 3)
    short = client.post("/v1/chat/completions", json={**body, "stop": None, "max_tokens": 3}).json()
    assert short["usage"]["completion_tokens"] == 3 and short["choices"][0]["finish_reason"] == "length"
    assert short["choices"][0]["message"]["content"] == served.tokenizer.decode(ids, skip_special_tokens=True)


def test_max_tokens_defaults_to_what_the_context_and_limit_leave(client):
    reply = client.post("/v1/completions", json={"model": NAME, "prompt": "import os", "temperature": 0}).json()
    assert reply["usage"]["completion_tokens"] == 64  # the app's max_tokens_limit; no eos from this prompt


# --- validation: each malformed request gets its 4xx in OpenAI's shape, and the server keeps serving ---------------

GOOD = {"model": NAME, "messages": HELLO, "max_tokens": 2, "temperature": 0}
MALFORMED = [
    # (id, path, raw body or dict, status, code, param)
    ("bad json", "/v1/chat/completions", b'{"model": ', 400, "invalid_json", None),
    ("not an object", "/v1/chat/completions", b"[1, 2]", 400, "invalid_json", None),
    ("NaN is not JSON", "/v1/chat/completions", json.dumps(GOOD)[:-1].encode() + b', "top_p": NaN}', 400,
     "invalid_json", None),
    ("nested too deeply", "/v1/chat/completions", b"[" * 9_000 + b"]" * 9_000, 400, "invalid_json", None),
    ("missing model", "/v1/chat/completions", {"messages": HELLO}, 400, "missing_required_parameter", "model"),
    ("missing messages", "/v1/chat/completions", {"model": NAME}, 400, "missing_required_parameter", "messages"),
    ("missing prompt", "/v1/completions", {"model": NAME}, 400, "missing_required_parameter", "prompt"),
    ("empty messages", "/v1/chat/completions", {**GOOD, "messages": []}, 400, "invalid_value", "messages"),
    ("content wrong type", "/v1/chat/completions", {**GOOD, "messages": [{"role": "user", "content": 5}]}, 400,
     "invalid_type", "messages.0.content"),
    ("max_tokens string", "/v1/chat/completions", {**GOOD, "max_tokens": "5"}, 400, "invalid_type", "max_tokens"),
    ("stream not bool", "/v1/chat/completions", {**GOOD, "stream": "yes"}, 400, "invalid_type", "stream"),
    ("max_tokens 0", "/v1/chat/completions", {**GOOD, "max_tokens": 0}, 400, "invalid_value", "max_tokens"),
    ("max_tokens over limit", "/v1/completions", {"model": NAME, "prompt": "a", "max_tokens": 65}, 400,
     "invalid_value", "max_tokens"),
    ("max_completion_tokens over limit", "/v1/chat/completions",
     {**GOOD, "max_tokens": None, "max_completion_tokens": 100}, 400, "invalid_value", "max_completion_tokens"),
    ("temperature over 2", "/v1/chat/completions", {**GOOD, "temperature": 2.5}, 400, "invalid_value", "temperature"),
    ("temperature negative", "/v1/chat/completions", {**GOOD, "temperature": -0.1}, 400, "invalid_value",
     "temperature"),
    ("top_p 0", "/v1/chat/completions", {**GOOD, "top_p": 0}, 400, "invalid_value", "top_p"),
    ("top_p over 1", "/v1/chat/completions", {**GOOD, "top_p": 1.5}, 400, "invalid_value", "top_p"),
    ("n 2", "/v1/chat/completions", {**GOOD, "n": 2}, 400, "unsupported_value", "n"),
    ("logprobs", "/v1/chat/completions", {**GOOD, "logprobs": True}, 400, "unsupported_parameter", "logprobs"),
    ("tools", "/v1/chat/completions", {**GOOD, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400,
     "unsupported_parameter", "tools"),
    ("presence penalty", "/v1/chat/completions", {**GOOD, "presence_penalty": 0.5}, 400, "unsupported_parameter",
     "presence_penalty"),
    ("frequency penalty", "/v1/completions", {"model": NAME, "prompt": "a", "frequency_penalty": 1}, 400,
     "unsupported_parameter", "frequency_penalty"),
    ("echo", "/v1/completions", {"model": NAME, "prompt": "a", "echo": True}, 400, "unsupported_parameter", "echo"),
    ("unknown field", "/v1/chat/completions", {**GOOD, "frobnicate": 1}, 400, "unrecognized_parameter",
     "frobnicate"),
    ("tool role", "/v1/chat/completions", {**GOOD, "messages": [{"role": "tool", "content": "x"}]}, 400,
     "invalid_value", "messages.0.role"),
    ("image part", "/v1/chat/completions",
     {**GOOD, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400,
     "unsupported_value", "messages.0.content.0"),
    ("five stops", "/v1/chat/completions", {**GOOD, "stop": ["a", "b", "c", "d", "e"]}, 400, "invalid_value", "stop"),
    ("several prompts", "/v1/completions", {"model": NAME, "prompt": ["a", "b"]}, 400, "unsupported_value", "prompt"),
    ("json_object", "/v1/chat/completions", {**GOOD, "response_format": {"type": "json_object"}}, 400,
     "unsupported_value", "response_format"),
    ("two-property schema", "/v1/chat/completions", {**GOOD, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "string", "enum": ["x"]},
                                                                  "b": {"type": "string", "enum": ["y"]}},
                                "required": ["a", "b"]}}}}, 400, "unsupported_value", "response_format"),
    ("unknown model", "/v1/chat/completions", {**GOOD, "model": "gpt-4o"}, 404, "model_not_found", "model"),
    ("prompt over context", "/v1/completions", {"model": NAME, "prompt": "a b " * 600, "max_tokens": 5}, 400,
     "context_length_exceeded", "prompt"),
    ("prompt + max_tokens over context", "/v1/completions", {"model": NAME, "prompt": "a b " * 250,
                                                             "max_tokens": 64}, 400, "context_length_exceeded",
     "prompt"),
    ("declared body too large", "/v1/chat/completions",
     {**GOOD, "messages": [{"role": "user", "content": "x" * 30_000}]}, 413, "request_too_large", None),
]


@pytest.mark.parametrize("path, body, status, code, param", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_request_gets_openai_error_and_server_keeps_serving(client, path, body, status, code, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    error = _error(client.post(path, content=content, headers={"content-type": "application/json"}), status, code,
                   param)
    assert error["message"]
    if status == 400 and param and code in ("unsupported_parameter", "unsupported_value"):
        assert "not supported" in error["message"] or "must be 1" in error["message"]
    assert client.post("/v1/chat/completions", json=GOOD).status_code == 200


def test_body_too_large_without_content_length_is_counted_as_read(client):
    chunks = (b'{"model": "' + b"x" * 1000 + b'", ' for _ in range(30))  # chunked: no Content-Length to trust
    _error(client.post("/v1/completions", content=chunks, headers={"content-type": "application/json"}), 413,
           "request_too_large")
    assert client.post("/v1/chat/completions", json=GOOD).status_code == 200


def test_context_check_counts_prompt_and_answer_tokens(served, client):
    from lmtailor.prompting.formats import tokenize_text

    text = "a b " * 240
    n = len(tokenize_text(served.tokenizer, text))
    assert 512 - 64 < n < 512  # the context is 512; the server's max_tokens limit 64
    body = {"model": NAME, "prompt": text, "temperature": 0}
    _error(client.post("/v1/completions", json={**body, "max_tokens": 512 - n + 1}), 400, "context_length_exceeded")
    ok = client.post("/v1/completions", json={**body, "max_tokens": 512 - n})
    assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == n
    default = client.post("/v1/completions", json=body).json()  # max_tokens not given: what the context leaves
    assert default["usage"]["completion_tokens"] == 512 - n


def test_json_schema_enum_answers_are_enum_values(client):
    labels = ["positive", "negative", "neutral"]
    schema = {"type": "object", "properties": {"label": {"type": "string", "enum": labels}}, "required": ["label"],
              "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "sentiment", "schema": schema, "strict": True}}
    answers = []
    for i, text in enumerate(["I love it", "Terrible.", "def f(): pass", "Numbers like 0, 1, 2"]):
        for temperature in (0, 1.0):
            body = {"model": NAME, "messages": [{"role": "user", "content": text}], "response_format": fmt,
                    "temperature": temperature, "seed": i}
            choice = client.post("/v1/chat/completions", json=body).json()["choices"][0]
            assert choice["finish_reason"] == "stop", choice
            answers.append(json.loads(choice["message"]["content"])["label"])
    assert set(answers) <= set(labels) and len(set(answers)) > 1  # constrained, yet not a constant answer
    events = _stream(client, "/v1/chat/completions", {**body, "temperature": 0})
    assert json.loads(_streamed_text(events, chat=True))["label"] in labels


def test_sampling_with_a_seed_is_reproducible(client):
    body = {"model": NAME, "messages": HELLO, "max_tokens": 12, "temperature": 1.0, "top_p": 0.9}
    texts = [client.post("/v1/chat/completions", json={**body, "seed": seed}).json()["choices"][0]["message"]
             ["content"] for seed in (1, 1, 2)]
    assert texts[0] == texts[1] and texts[0] != texts[2]


def test_generation_failure_is_a_500_and_the_server_recovers(client, served, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(served.model, "forward", broken)  # both engines (static: generate; continuous) call it
    error = _error(client.post("/v1/chat/completions", json=GOOD), 500)
    assert "out of memory (simulated)" in error["message"]
    events = _stream(client, "/v1/chat/completions", GOOD)
    assert "out of memory (simulated)" in events[-1]["error"]["message"]
    monkeypatch.undo()
    assert client.post("/v1/chat/completions", json=GOOD).status_code == 200


# --- auth ---------------------------------------------------------------------------------------------------------

def test_api_key_required_on_v1_routes_not_on_health(served, caplog):
    from fastapi.testclient import TestClient

    from lmtailor.serve.app import create_app
    from lmtailor.serve.settings import ServeSettings

    key = "s3cret-key-123"
    app = create_app(served, ServeSettings(NAME, api_key=key))
    caplog.set_level(logging.DEBUG)
    with TestClient(app, base_url=LOCAL) as c:
        assert c.get("/health").status_code == 200
        _error(c.get("/v1/models"), 401, "invalid_api_key")
        _error(c.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key")
        _error(c.get("/v1/models", headers={"Authorization": key}), 401, "invalid_api_key")  # no scheme
        _error(c.post("/v1/chat/completions", json=GOOD), 401, "invalid_api_key")
        good = {"Authorization": f"Bearer {key}"}
        assert c.get("/v1/models", headers=good).status_code == 200
        assert c.post("/v1/chat/completions", json=GOOD, headers=good).status_code == 200
    assert any("/v1/chat/completions 200" in r.getMessage() for r in caplog.records)
    assert not any(key in r.getMessage() for r in caplog.records)
    assert key not in repr(ServeSettings(NAME, api_key=key))


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("192.168.1.5", False),
                                            ("::", False), ("example.com", False)])
def test_binding_off_loopback_needs_a_key(host, loopback):
    from lmtailor.serve.auth import check_bind, is_loopback

    assert is_loopback(host) is loopback
    check_bind(host, "key")
    if loopback:
        check_bind(host, None)
    else:
        with pytest.raises(UserError, match="without an API key"):
            check_bind(host, None)


def test_api_key_from_environment(monkeypatch):
    from lmtailor.serve.auth import resolve_api_key

    monkeypatch.delenv("LMTAILOR_API_KEY", raising=False)
    assert resolve_api_key(None) is None
    monkeypatch.setenv("LMTAILOR_API_KEY", "from-env")
    assert resolve_api_key(None) == "from-env" and resolve_api_key("given") == "given"


# --- batching -----------------------------------------------------------------------------------------------------

def test_one_batch_keeps_each_rows_limits_and_text(served):
    """Eight jobs queued before the worker starts are decoded as one batch; each row keeps its own max_tokens and
    stop strings, and its text is the text it gets alone."""
    from lmtailor.inference.predict import pad_token_id
    from lmtailor.prompting.formats import encode_prompt
    from lmtailor.serve.engine import Engine, Job
    from lmtailor.serve.prompting import stop_ids

    stops = stop_ids(served, chat=True)
    texts = ["Hello there", "What is 2+2?", "The quick brown fox", "def add(a, b):", "Yes. No. Maybe.",
             "import os, json", "A small model", "Summarize the docstring"]
    prompts = [encode_prompt(served.tokenizer, [{"role": "user", "content": t}]) for t in texts]
    limits = [5, 30, 12, 30, 1, 20, 30, 8]
    references = [_reference(served, p, n)[1] for p, n in zip(prompts, limits)]
    stop_of = {1: references[1][4:6], 3: references[3][10:12]}  # two rows end on a stop string
    expected = [ref[: ref.find(stop_of[i])] if i in stop_of else ref for i, ref in enumerate(references)]

    async def run() -> list[tuple]:
        engine = Engine(served.model, served.tokenizer, pad_token_id(served.tokenizer), max_batch=8)
        jobs = [Job(p, n, stops, (stop_of[i],) if i in stop_of else ()).bind()
                for i, (p, n) in enumerate(zip(prompts, limits))]
        for job in jobs:
            engine.submit(job)
        engine.start()
        results = []
        for job in jobs:
            parts = []
            while (event := await job.events.get())[0] == "delta":
                parts.append(event[1])
            results.append(("".join(parts), *event[1:]))
        await asyncio.to_thread(engine.close)
        assert dict(engine.batch_sizes) == {8: 1}
        return results

    results = asyncio.run(run())
    assert [r[0] for r in results] == expected
    assert [r[1] for r in results] == ["stop" if i in stop_of else "length" for i in range(8)]
    assert [r[2] for r in results if r[1] == "length"] == [n for i, n in enumerate(limits) if i not in stop_of]


def test_batches_group_by_sampling_settings(served):
    from lmtailor.serve.engine import Engine, Job

    async def run() -> Engine:
        engine = Engine(served.model, served.tokenizer, 0, max_batch=3)
        specs = [0.0, 0.7, 0.0, 0.7, 0.0, 0.0, 1.0]  # greedy x4 (batches of 3 + 1), 0.7 x2, 1.0 x1
        jobs = [Job([5, 6, 7], 2, (2,), temperature=t, seed=1).bind() for t in specs]
        for job in jobs:
            engine.submit(job)
        engine.start()
        for job in jobs:
            while (await job.events.get())[0] == "delta":
                pass
        await asyncio.to_thread(engine.close)
        return engine

    engine = asyncio.run(run())
    assert dict(engine.batch_sizes) == {3: 1, 2: 1, 1: 2}


def test_concurrent_http_requests_are_batched_and_answer_as_alone(served):
    import time

    import requests

    from lmtailor.serve.app import create_app
    from lmtailor.serve.settings import ServeSettings
    from lmtailor.serve.server import BackgroundServer

    bodies = [{"model": NAME, "messages": [{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}],
               "max_tokens": 40 - 3 * i, "temperature": 0} for i in range(8)]
    app = create_app(served, ServeSettings(NAME, max_batch=8))
    with BackgroundServer(app) as server:
        url = server.url + "/v1/chat/completions"
        alone = [requests.post(url, json=b, timeout=60).json()["choices"][0]["message"]["content"] for b in bodies]
        assert app.state.engine.max_batch_seen == 1
        barrier = threading.Barrier(len(bodies))
        together: list[str | None] = [None] * len(bodies)

        def send(i: int) -> None:
            barrier.wait()
            together[i] = requests.post(url, json=bodies[i], timeout=60).json()["choices"][0]["message"]["content"]

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
        # 10 ms per forward pass: the first request takes long enough for the others to queue, however busy the CPU
        slow = served.model.register_forward_hook(lambda *_: time.sleep(0.01))
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        finally:
            slow.remove()
        assert app.state.engine.max_batch_seen > 1, app.state.engine.batch_sizes
        assert requests.get(server.url + "/health", timeout=5).json()["max_batch_seen"] > 1
    assert together == alone


def test_cancelled_row_stops_early(served):
    from lmtailor.serve.engine import Engine, Job

    async def run():
        engine = Engine(served.model, served.tokenizer, 0)
        job = Job(_chat_prompt(served, HELLO), 400, (2,)).bind()
        engine.submit(job)
        engine.start()
        first = await job.events.get()
        job.cancel()
        while (event := await job.events.get())[0] == "delta":
            pass
        await asyncio.to_thread(engine.close)
        return first, event

    first, event = asyncio.run(run())
    assert first[0] == "delta" and event[:2] == ("done", "cancelled") and event[2] < 400


@pytest.fixture
def slow_served(served):
    """The served model, 20 ms per forward pass: a long answer takes seconds, time enough to hang up on it."""
    import time

    handle = served.model.register_forward_hook(lambda *_: time.sleep(0.02))
    yield served
    handle.remove()


def test_client_hanging_up_cancels_its_row(slow_served):
    import requests

    from lmtailor.serve.app import create_app
    from lmtailor.serve.settings import ServeSettings
    from lmtailor.serve.server import BackgroundServer

    app = create_app(slow_served, ServeSettings(NAME))
    engine = app.state.engine
    body = {"model": NAME, "messages": HELLO, "max_tokens": 400, "temperature": 0}
    with BackgroundServer(app) as server:
        url = server.url + "/v1/chat/completions"
        with requests.post(url, json={**body, "stream": True}, stream=True, timeout=30) as response:
            first = next(line for line in response.iter_lines() if line)
            assert first.startswith(b"data: ")
        # the stream's generator is cancelled with the connection, and the row with it
        assert wait_for(lambda: engine.cancelled == 1), engine.stats()
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.post(url, json=body, timeout=0.5)  # non-streaming: noticed by polling for the disconnect
        assert wait_for(lambda: engine.cancelled == 2), engine.stats()
        assert requests.get(server.url + "/health", timeout=5).json()["cancelled"] == 2
        short = requests.post(url, json={**body, "max_tokens": 2}, timeout=30)
        assert short.status_code == 200 and short.json()["usage"]["completion_tokens"] == 2


# --- rows: what is held back while streaming ----------------------------------------------------------------------

class _ByteTokenizer:
    """Token id = one byte; decoding replaces incomplete UTF-8 characters with U+FFFD, as byte-level BPE does."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def _row(stop_strings=(), max_tokens=50):
    from lmtailor.serve.rows import RowState

    events = []
    return RowState(_ByteTokenizer(), max_tokens, (0,), stop_strings, events.append, lambda: False), events


def test_incomplete_utf8_character_is_held_back():
    row, events = _row()
    for byte in "aé".encode():
        row.accept(byte)
        row.flush()
    assert events == [("delta", "a"), ("delta", "é")]  # never "\ufffd"
    row.accept(0)
    row.flush()
    assert events[-1] == ("done", "stop", 4)


def test_stop_string_prefix_is_held_back_and_cut():
    row, events = _row(stop_strings=("END",))
    for ch in "xEN":
        row.accept(ord(ch))
        row.flush()
    assert events == [("delta", "x")]  # "EN" may start "END"
    row.accept(ord("x"))
    row.flush()
    assert events[-1] == ("delta", "ENx")
    for ch in "yEND":
        row.accept(ord(ch))
        row.flush()
    assert events[-2:] == [("delta", "y"), ("done", "stop", 8)]
    assert row.text == "xENxy"


def test_stop_string_after_an_incomplete_character():
    row, events = _row(stop_strings=("Eé",))
    for byte in b"xE\xc3":
        row.accept(byte)
        row.flush()
    assert events == [("delta", "x")]  # "E" may begin the stop string, the half character may finish it
    row.accept(0xA9)
    row.flush()
    assert events[-2:] == [("delta", "x"), ("done", "stop", 4)] and row.text == "x"


# --- what can be served -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_dir(noisy_llama_dir, tmp_path_factory) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(noisy_llama_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, config)
    out = tmp_path_factory.mktemp("lora")
    model.save_pretrained(out)
    return out


def _served_text(served, messages, max_tokens: int = 20) -> str:
    from fastapi.testclient import TestClient

    from lmtailor.serve.app import create_app
    from lmtailor.serve.settings import ServeSettings

    with TestClient(create_app(served, ServeSettings(served.name)), base_url=LOCAL) as c:
        body = {"model": served.name, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
        reply = c.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        streamed = _streamed_text(_stream(c, "/v1/chat/completions", body), chat=True)
    assert streamed == reply.json()["choices"][0]["message"]["content"]
    return streamed


def test_lora_adapter_dir_is_served_merged(lora_dir, noisy_llama_dir, served):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lmtailor.serve.target import load_target

    adapter = load_target(str(lora_dir), FP32)
    assert adapter.name == lora_dir.name and "merged" in adapter.description
    assert not isinstance(adapter.model, PeftModel)
    base = AutoModelForCausalLM.from_pretrained(noisy_llama_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(lora_dir)).merge_and_unload().eval()
    reference = _reference(type(served)(merged, served.tokenizer, "decoder-only", "m", "", 512),
                           _chat_prompt(served, HELLO), 20)[1]
    text = _served_text(adapter, HELLO)
    assert text == reference
    assert text != _reference(served, _chat_prompt(served, HELLO), 20)[1]  # the adapter changed the answer


def test_prefix_tuning_adapter_is_served_with_virtual_tokens(noisy_llama_dir, tmp_path, served):
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lmtailor.inference.generation import generate_ids
    from lmtailor.serve.prompting import stop_ids
    from lmtailor.serve.target import load_target

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(noisy_llama_dir, dtype=torch.float32)
    model = get_peft_model(base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    with torch.no_grad():
        for p in model.prompt_encoder.parameters():
            p.normal_(0, 1.0)
    model.save_pretrained(tmp_path / "prefix")
    adapter = load_target(str(tmp_path / "prefix"), FP32)
    assert adapter.virtual_tokens == 4 and "PeftModel" in adapter.description
    prompt = _chat_prompt(served, HELLO)
    stops = stop_ids(served, chat=True)
    ids = generate_ids(model.eval(), [prompt], 20, stops, served.tokenizer.pad_token_id).ids[0]
    reference = served.tokenizer.decode([t for t in ids if t not in stops], skip_special_tokens=True)
    assert _served_text(adapter, HELLO) == reference


def test_run_directory_row_is_served(lora_dir, tmp_path):
    import shutil

    from lmtailor.serve.target import load_target

    run = tmp_path / "run"
    shutil.copytree(lora_dir, run / "artifacts" / "r1" / "adapter")
    (run / "results").mkdir()
    for row_id, status in (("r0-prompt", "ok"), ("r1", "ok")):
        record = {"row_id": row_id, "status": status, "model": str(json.loads(
            (lora_dir / "adapter_config.json").read_text())["base_model_name_or_path"]), "label": row_id}
        if row_id == "r1":
            record["artifacts"] = {"adapter": "artifacts/r1/adapter"}
        (run / "results" / f"{row_id}.json").write_text(json.dumps(record))
    adapter = load_target(str(run), FP32)  # the only trained row
    assert adapter.name == "r1" and "row r1" in adapter.description
    with pytest.raises(UserError, match="no row 'r2'"):
        load_target(str(run), FP32, row="r2")
    with pytest.raises(UserError, match="saved no adapter"):
        load_target(str(run), FP32, row="r0-prompt")
    with pytest.raises(UserError, match="--row picks a row of a run directory"):
        load_target(str(lora_dir), FP32, row="r1")


def test_encoder_models_are_refused(tiny_bert_dir):
    from lmtailor.serve.target import load_target

    with pytest.raises(UserError, match="encoder-only"):
        load_target(str(tiny_bert_dir), FP32)


def test_encoder_decoder_model(tiny_t5_dir):
    from fastapi.testclient import TestClient

    from lmtailor.prompting.seq2seq_format import encode_source
    from lmtailor.serve.app import create_app
    from lmtailor.serve.settings import ServeSettings
    from lmtailor.serve.target import load_target

    t5 = load_target(str(tiny_t5_dir), FP32, name="t5")
    assert t5.seq2seq
    with TestClient(create_app(t5, ServeSettings("t5")), base_url=LOCAL) as c:
        body = {"model": "t5", "prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0}
        reply = c.post("/v1/completions", json=body).json()
        assert reply["usage"]["prompt_tokens"] == len(encode_source(t5.tokenizer, body["prompt"]))
        assert _streamed_text(_stream(c, "/v1/completions", body), chat=False) == reply["choices"][0]["text"]
        chat = {"model": "t5", "messages": [{"role": "system", "content": "Be brief."}, *HELLO], "max_tokens": 8,
                "temperature": 0}
        assert c.post("/v1/chat/completions", json=chat).status_code == 200
        _error(c.post("/v1/chat/completions", json={**chat, "messages": [{"role": "assistant", "content": "x"}]}),
               400, "invalid_value", "messages")
        fmt = {"type": "json_schema", "json_schema": {"name": "yn", "schema": {
            "type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
            "required": ["answer"]}}}
        constrained = c.post("/v1/chat/completions", json={**chat, "max_tokens": None, "response_format": fmt})
        assert json.loads(constrained.json()["choices"][0]["message"]["content"])["answer"] in ("yes", "no")


def test_serve_help_lists_options():
    import argparse

    from lmtailor.serve.cli import add_serve_parser

    parser = argparse.ArgumentParser(prog="lmtailor")
    add_serve_parser(parser.add_subparsers())
    text = parser._subparsers._group_actions[0].choices["serve"].format_help()
    for option in ("--row", "--host", "--port", "--api-key", "--model-name", "--max-batch", "--max-tokens-limit",
                   "--max-body-bytes", "--read-timeout", "--allowed-hosts", "--trust-remote-code", "--batching"):
        assert option in text
    args = parser.parse_args(["serve", "tiny-llama"])
    assert (args.host, args.port, args.max_batch, args.max_tokens_limit, args.max_body_bytes, args.read_timeout,
            args.allowed_hosts, args.batching) == ("127.0.0.1", 8000, 8, 512, 1_000_000, 30.0, (), "continuous")
    args = parser.parse_args(["serve", "tiny-llama", "--allowed-hosts", "box.lan, proxy.example", "--read-timeout",
                              "2.5"])
    assert (args.allowed_hosts, args.read_timeout) == (("box.lan", "proxy.example"), 2.5)
