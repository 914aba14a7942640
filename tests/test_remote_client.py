"""The openai:MODEL@URL client against a scripted OpenAI-compatible server on 127.0.0.1 (no model, no network).

The fake server answers chat completions with a reply the test chooses per request, records every request (body,
headers) and the most requests it had in flight at once; ``retry-after-ms: 10`` keeps retries fast.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import pytest

from lmtailor.augmentation.remote_teacher import RemoteTeacher, prompt_seed
from lmtailor.augmentation.synthetic_teacher import Sampling
from lmtailor.core.api_settings import ApiSettings
from lmtailor.core.budget import Budget
from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.errors import UserError
from lmtailor.inference.answer import answer
from lmtailor.inference.backends.base import PredictRequest
from lmtailor.inference.backends.openai_api import OpenAIPredictor
from lmtailor.measure.meter import Meter
from lmtailor.measure.pricing import ApiPrice, Pricing
from lmtailor.remote.cache import ResponseCache, request_key
from lmtailor.remote.client import EndpointError, OpenAIEndpoint
from lmtailor.remote.predict import parse_label
from lmtailor.remote.reference import is_loopback, is_remote, parse_endpoint
from lmtailor.tasks.classification import Classification


def predict_remote(endpoint, task, rows, exemplars, budget, meter, mode=None):
    """The API backend answering ``rows`` through the one mode dispatch (inference/answer.py)."""
    return answer(OpenAIPredictor(endpoint), PredictRequest(task, rows, budget, exemplars, mode), meter)


KEY_ENV = "LMTAILOR_TEST_API_KEY"
TASK = TaskSpec("sentiment", "classification", "Classify the sentiment.", labels=("pos", "neg"))
BUDGET = Budget(max_input_tokens=64, max_new_tokens=8)
# $1 per 1M input tokens, $2 per 1M output tokens for model "m"
PRICING = Pricing(api_models={"m": ApiPrice(input_usd_per_1m=1.0, output_usd_per_1m=2.0)})

Reply = tuple[int, dict, object]  # status, extra headers, JSON payload (or raw text)


def _completion(content: str, body: dict, finish: str = "stop", usage: bool = True) -> dict:
    out = {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
           "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}]}
    if usage:  # hand-computable: one token per 4 characters of prompt / answer, plus one
        prompt = sum(len(m["content"]) for m in body["messages"])
        out["usage"] = {"prompt_tokens": prompt // 4 + 1, "completion_tokens": len(content) // 4 + 1,
                        "total_tokens": prompt // 4 + len(content) // 4 + 2}
    return out


class FakeServer:
    """A scripted OpenAI-compatible server; ``respond(body, n)`` gives the reply to the n-th request (0-based)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []  # {"body", "headers"} of each chat-completion request, in arrival order
        self.respond: Callable[[dict, int], Reply] = lambda body, n: (200, {}, _completion("ok", body))
        self.delay_s = 0.0
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _reply(self, status: int, headers: dict, payload: object) -> None:
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._reply(200, {}, {"object": "list", "data": [
                    {"id": name, "object": "model", "created": 0, "owned_by": "test"} for name in ("m", "other")]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with server.lock:
                    n = len(server.requests)
                    server.requests.append({"body": body, "headers": {k.lower(): v for k, v in self.headers.items()}})
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay_s)
                    self._reply(*server.respond(body, n))
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()

    def bodies(self) -> list[dict]:
        return [r["body"] for r in self.requests]


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture(autouse=True)
def _no_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)


def endpoint(server: FakeServer, tmp_path, **settings) -> OpenAIEndpoint:
    ref = parse_endpoint(f"openai:m@{server.base_url}")
    return OpenAIEndpoint(ref, ApiSettings(key_env=KEY_ENV, **{"max_retries": 2, **settings}),
                          cache_root=tmp_path / "api")


def rows(*inputs: str) -> list[Example]:
    return [Example(f"r{i}", text, "pos") for i, text in enumerate(inputs)]


def body(text: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 4, "temperature": 0, **extra}


# -- references ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ref, model, base_url", [
    ("openai:gpt-4o-mini@https://api.openai.com/v1", "gpt-4o-mini", "https://api.openai.com/v1"),
    ("openai:smollm2@http://127.0.0.1:8000/v1/", "smollm2", "http://127.0.0.1:8000/v1"),
    ("openai:meta-llama/Llama-3.1-8B-Instruct@http://host:8000/v1", "meta-llama/Llama-3.1-8B-Instruct",
     "http://host:8000/v1"),
    ("openai:qwen2.5:7b@http://localhost:11434/v1", "qwen2.5:7b", "http://localhost:11434/v1"),
    ("openai:claude-3@20240229@https://host/v1", "claude-3@20240229", "https://host/v1"),  # last '@' before a URL
    ("openai:m@http://[::1]:8000/v1", "m", "http://[::1]:8000/v1"),
])
def test_parse_endpoint_accepts(ref, model, base_url):
    parsed = parse_endpoint(ref)
    assert (parsed.model, parsed.base_url, parsed.ref) == (model, base_url, ref)
    assert is_remote(ref)


@pytest.mark.parametrize("ref, says", [
    ("openai:gpt-4o-mini", "no base URL"),
    ("openai:gpt-4o-mini@localhost:8000/v1", "no base URL"),
    ("openai:@https://api.openai.com/v1", "names no model"),
    ("openai:m@ftp://host/v1", "http:// or https://"),
    ("openai:m@https://", "no host"),
    ("openai:m@http://host:99999/v1", "invalid port"),
    ("openai:m@https://user:secret@host/v1", "api.key_env"),
    ("openai:m@https://host/v1?x=1", "query"),
    ("openai:m @https://host/v1", "whitespace"),
    ("gpt-4o-mini@https://host/v1", "does not start with"),
])
def test_parse_endpoint_rejects(ref, says):
    with pytest.raises(UserError) as err:
        parse_endpoint(ref)
    assert says in str(err.value) and repr(ref) in str(err.value)
    assert "openai:MODEL@BASE_URL" in str(err.value) or says == "api.key_env"


@pytest.mark.parametrize("url, loopback", [
    ("http://127.0.0.1:8000/v1", True), ("http://127.9.0.3/v1", True), ("http://localhost:1/v1", True),
    ("http://[::1]:8000/v1", True), ("http://[::ffff:127.0.0.1]/v1", True), ("https://api.openai.com/v1", False),
    ("http://10.0.0.1/v1", False), ("http://localhost.example.com/v1", False), ("http://0.0.0.0/v1", False),
])
def test_is_loopback(url, loopback):
    assert is_loopback(url) is loopback


# -- keys -----------------------------------------------------------------------------------------------------


def test_missing_key_off_loopback_names_the_variable():
    with pytest.raises(UserError) as err:
        OpenAIEndpoint(parse_endpoint("openai:m@https://api.example.com/v1"), ApiSettings(key_env=KEY_ENV))
    assert KEY_ENV in str(err.value) and "export" in str(err.value)


def test_key_goes_in_the_authorization_header_and_nowhere_on_disk(server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-secret-123")
    endpoint(server, tmp_path).chat_completions([body("hello")])
    assert server.requests[0]["headers"]["authorization"] == "Bearer sk-test-secret-123"
    stored = [p.read_text() for p in (tmp_path / "api").rglob("*.json")]
    assert len(stored) == 1 and "sk-test-secret-123" not in stored[0]


def test_loopback_without_a_key_sends_no_authorization(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "must-not-leak")  # only api.key_env is ever read
    endpoint(server, tmp_path).chat_completions([body("hello")])
    assert "authorization" not in server.requests[0]["headers"]


def test_401_says_which_variable(server, tmp_path):
    server.respond = lambda b, n: (401, {}, {"error": {"message": "bad key", "type": "auth", "code": "invalid_key"}})
    with pytest.raises(EndpointError) as err:
        endpoint(server, tmp_path).chat_completions([body("x")])
    assert err.value.status == 401 and len(server.requests) == 1  # a 4xx is not retried
    assert "bad key" in str(err.value) and KEY_ENV in str(err.value)


def test_404_lists_the_served_models(server, tmp_path):
    server.respond = lambda b, n: (404, {}, {"error": {"message": "model 'm' not found", "type": "invalid_request"}})
    with pytest.raises(EndpointError) as err:
        endpoint(server, tmp_path).chat_completions([body("x")])
    assert "model 'm' not found" in str(err.value) and "it serves: m, other" in str(err.value)
    assert endpoint(server, tmp_path).list_models() == ["m", "other"]


# -- retries, concurrency ------------------------------------------------------------------------------------------


def test_429_is_retried_and_then_succeeds(server, tmp_path):
    def respond(b, n):
        if n == 0:
            return 429, {"retry-after-ms": "10"}, {"error": {"message": "slow down", "type": "rate_limit"}}
        return 200, {}, _completion("fine", b)

    server.respond = respond
    [result] = endpoint(server, tmp_path).chat_completions([body("x")])
    assert len(server.requests) == 2 and result.text == "fine" and not result.cached


def test_503_stops_after_max_retries(server, tmp_path):
    server.respond = lambda b, n: (503, {"retry-after-ms": "10"},
                                   {"error": {"message": "overloaded", "type": "server_error", "code": None}})
    with pytest.raises(EndpointError) as err:
        endpoint(server, tmp_path, max_retries=3).chat_completions([body("x")])
    assert len(server.requests) == 4  # the first try and 3 retries
    e = err.value
    assert (e.status, e.retries, e.server_message) == (503, 3, "overloaded (type=server_error)")
    assert "HTTP 503" in str(e) and "after 3 retries" in str(e) and f"{server.base_url}/chat/completions" in str(e)
    assert isinstance(e, UserError)


def test_concurrency_never_exceeds_the_limit_and_order_is_kept(server, tmp_path):
    server.delay_s = 0.05
    server.respond = lambda b, n: (200, {}, _completion(f"echo {b['messages'][0]['content']}", b))
    results = endpoint(server, tmp_path, max_concurrency=3).chat_completions([body(f"q{i}") for i in range(12)])
    assert server.max_in_flight == 3
    assert [r.text for r in results] == [f"echo q{i}" for i in range(12)]


def test_a_body_repeated_in_one_call_is_sent_once(server, tmp_path):
    results = endpoint(server, tmp_path).chat_completions([body("same"), body("other"), body("same")])
    assert len(server.requests) == 2
    assert [r.cached for r in results] == [False, False, True] and results[0].text == results[2].text


# -- cache ----------------------------------------------------------------------------------------------------


def test_second_identical_run_sends_nothing_and_costs_the_same(server, tmp_path):
    server.respond = lambda b, n: (200, {}, _completion('{"label": "neg"}', b))
    test_rows = rows("awful film", "dull plot", "bad acting")

    def run():
        meter = Meter(pricing=PRICING)
        predictions, details = predict_remote(endpoint(server, tmp_path), TASK, test_rows, [], BUDGET, meter)
        return predictions, details, meter.record()["api"]["inference"], meter

    first, details1, api1, meter1 = run()
    sent = len(server.requests)
    second, details2, api2, meter2 = run()
    assert sent == 3 and len(server.requests) == 3  # the rerun sent nothing
    assert first == second == ["neg", "neg", "neg"]
    assert (api1["sent"], api1["cache_hits"], api2["sent"], api2["cache_hits"]) == (3, 0, 0, 3)
    for key in ("requests", "input_tokens", "output_tokens", "usd", "latency_s_p50"):
        assert api1[key] == api2[key], key
    assert api1["usd_spent_this_run"] == api1["usd"] > 0 and api2["usd_spent_this_run"] == 0
    # the price is the usage times the table: 1 $/1M in, 2 $/1M out
    assert api1["usd"] == pytest.approx((api1["input_tokens"] * 1.0 + api1["output_tokens"] * 2.0) / 1e6)
    assert details2["api"]["cache_hits"] == 3 and details2["api"]["usd_spent"] == 0
    assert details1["api"]["price_source"] == "pricing.api_models.m"
    assert meter1.phases["inference"].tokens == meter2.phases["inference"].tokens == api1["input_tokens"] + \
        api1["output_tokens"]
    assert meter2.phases["inference"].examples == 3


def test_a_corrupt_cache_entry_is_ignored_and_overwritten(server, tmp_path):
    ep = endpoint(server, tmp_path)
    path = ResponseCache(tmp_path / "api").path(request_key(ep.base_url, ep.model, body("x")))
    path.parent.mkdir(parents=True)
    path.write_text('{"format": 1, "text": "half a wri')  # a write killed midway (or a damaged file)
    [result] = ep.chat_completions([body("x")])
    assert len(server.requests) == 1 and result.text == "ok" and not result.cached
    assert json.loads(path.read_text())["text"] == "ok"
    [again] = ep.chat_completions([body("x")])
    assert again.cached and len(server.requests) == 1


def test_sampling_without_a_seed_is_not_cached(server, tmp_path):
    ep = endpoint(server, tmp_path)
    ep.chat_completions([body("x", temperature=0.7)])
    ep.chat_completions([body("x", temperature=0.7)])
    ep.chat_completions([body("x", temperature=0.7, seed=1)])
    ep.chat_completions([body("x", temperature=0.7, seed=1)])
    assert len(server.requests) == 3


def test_missing_usage_is_unknown_not_invented(server, tmp_path, caplog):
    server.respond = lambda b, n: (200, {}, _completion('{"label": "pos"}', b, usage=False))
    meter = Meter(pricing=PRICING)
    with caplog.at_level("WARNING", logger="lmtailor"):
        _, details = predict_remote(endpoint(server, tmp_path), TASK, rows("good"), [], BUDGET, meter)
    assert details["api"]["requests_without_usage"] == 1
    assert "reported no token usage" in caplog.text and "understated" in caplog.text
    assert (details["api"]["input_tokens"], details["api"]["output_tokens"], details["api"]["usd"]) == (0, 0, 0)


# -- classification and generation ----------------------------------------------------------------------------


def test_constrained_classification_parses_json_text_and_garbage(server, tmp_path):
    answers = {"great movie": '{"label": "pos"}', "awful movie": "neg", "strange movie": "I cannot tell."}
    server.respond = lambda b, n: (200, {}, _completion(answers[b["messages"][-1]["content"].split("Input:\n")[1]
                                                                .split("\n")[0]], b))
    test_rows = [Example("a", "great movie", "pos"), Example("b", "awful movie", "neg"),
                 Example("c", "strange movie", "pos")]
    shots = [Example("s", "fine movie", "pos")]
    predictions, details = predict_remote(endpoint(server, tmp_path), TASK, test_rows, shots, BUDGET,
                                          Meter(pricing=PRICING))
    assert predictions == ["pos", "neg", ""]
    assert (details["mode"], details["unparseable"], details["unparseable_row_ids"], details["parsed_from_text"]) == \
        ("constrained", 1, ["c"], 1)
    assert details["unparseable_answers"] == {"c": "I cannot tell."}
    assert details["no_label_match"] == 1  # the name every path counts a no-label answer under
    sent = server.requests[0]["body"]
    schema = sent["response_format"]["json_schema"]
    assert sent["response_format"]["type"] == "json_schema" and schema["strict"] is True
    assert schema["schema"]["properties"]["label"]["enum"] == ["pos", "neg"]
    assert sent["temperature"] == 0 and sent["model"] == "m"
    assert '{"label": "..."}' in sent["messages"][-1]["content"] and '"pos", "neg"' in sent["messages"][-1]["content"]
    assert sent["messages"][1] == {"role": "assistant", "content": '{"label": "pos"}'}  # exemplars answer in JSON
    # the unparseable answer is scored wrong, not dropped: 2 of 3 right (row c's gold label is pos)
    scored = Classification().score([r.target for r in test_rows], predictions, TASK.labels)
    assert scored["metrics"][0] == {"name": "accuracy", "value": pytest.approx(2 / 3), "higher_is_better": True}


def test_generate_mode_for_classification_sends_no_schema(server, tmp_path):
    server.respond = lambda b, n: (200, {}, _completion("The answer is neg.", b))
    predictions, details = predict_remote(endpoint(server, tmp_path), TASK, rows("meh"), [], BUDGET,
                                          Meter(pricing=PRICING), mode="generate")
    assert predictions == ["neg"] and details["parsed_from_text"] == 1
    assert "response_format" not in server.requests[0]["body"]


@pytest.mark.parametrize("text, label, how", [
    ('{"label": "neg"}', "neg", "json"),
    ('```json\n{"label": "pos"}\n```', "pos", "json"),
    ('{"label": "Pos."}', "pos", "json"),
    ("neg", "neg", "text"),
    ("  NEG.  ", "neg", "text"),
    ("I think it is pos overall", "pos", "text"),
    ("pos or neg, hard to say", None, None),  # two labels: ambiguous
    ("positive", None, None),  # not a whole word match of "pos"
    ('{"label": "maybe"}', None, None),
    ("", None, None),
])
def test_parse_label(text, label, how):
    assert parse_label(text, ("pos", "neg")) == (label, how)


def test_a_label_inside_a_longer_label_is_the_longer_one():
    assert parse_label("this is not spam", ("spam", "not spam")) == ("not spam", "text")
    assert parse_label("clearly spam", ("spam", "not spam")) == ("spam", "text")


def test_likelihood_and_label_modes_without_labels_are_refused(server, tmp_path):
    ep = endpoint(server, tmp_path)
    with pytest.raises(UserError, match="scoring: constrained"):
        predict_remote(ep, TASK, rows("x"), [], BUDGET, Meter(), mode="likelihood")
    gen = TaskSpec("summ", "generation", "Summarize.")
    with pytest.raises(UserError, match="use scoring: generate"):
        predict_remote(ep, gen, rows("x"), [], BUDGET, Meter(), mode="constrained")
    assert not server.requests


def test_generation_task_truncates_by_characters_and_counts_length_stops(server, tmp_path):
    server.respond = lambda b, n: (200, {}, _completion("a summary", b, finish="length" if n == 0 else "stop"))
    gen = TaskSpec("summ", "generation", "Summarize.")
    long_text = "x" * (BUDGET.max_input_tokens * 4 + 10)  # 4 characters per token: 10 characters over
    predictions, details = predict_remote(endpoint(server, tmp_path, max_concurrency=1), gen,
                                          rows(long_text, "short"), [], BUDGET, Meter())
    assert predictions == ["a summary", "a summary"]
    assert (details["mode"], details["truncated_inputs"], details["truncated_generations"]) == ("generate", 1, 1)
    sent = server.requests[0]["body"]
    assert "x" * (BUDGET.max_input_tokens * 4) + "x" not in sent["messages"][-1]["content"]
    assert "x" * (BUDGET.max_input_tokens * 4) in sent["messages"][-1]["content"]
    assert sent["max_tokens"] == BUDGET.max_new_tokens and "response_format" not in sent


# -- teacher --------------------------------------------------------------------------------------------------


def test_remote_teacher_sends_seeds_caches_and_bills_the_data_phase(server, tmp_path):
    def respond(b, n):  # by prompt, not arrival order (requests run concurrently)
        odd = "write row 1" in b["messages"][-1]["content"]
        return 200, {}, _completion(" a new review\nOutput: pos" if odd else "Input: a review\nOutput: neg", b)

    server.respond = respond
    meter = Meter(pricing=PRICING)
    teacher = RemoteTeacher(endpoint(server, tmp_path), meter=meter)
    prompts = [[{"role": "user", "content": f"write row {i}"}] for i in range(3)]
    sampling = Sampling(temperature=0.7, top_p=0.5, max_new_tokens=40, seed=7, reply_start="Input:")
    replies = teacher.complete(prompts, sampling)
    sent = server.bodies()
    seeds = {b["messages"][-1]["content"].split("\n")[0]: b["seed"] for b in sent}
    assert seeds == {f"write row {i}": prompt_seed(7, i) for i in range(3)} and len(set(seeds.values())) == 3
    assert all((b["temperature"], b["top_p"], b["max_tokens"]) == (0.7, 0.5, 40) for b in sent)
    assert all('Begin your reply with "Input:"' in b["messages"][-1]["content"] for b in sent)
    assert [r.text for r in replies] == ["Input: a review\nOutput: neg", "Input: a new review\nOutput: pos",
                                         "Input: a review\nOutput: neg"]
    assert replies[0].prompt_tokens > 0 and replies[0].completion_tokens > 0
    data = meter.api["data"]
    assert (data.requests, data.sent, "inference" in meter.api) == (3, 3, False)
    assert data.usd == pytest.approx((data.input_tokens * 1.0 + data.output_tokens * 2.0) / 1e6) and data.usd > 0
    again = teacher.complete(prompts, sampling)  # a rerun: the same seeds, answered from the cache
    assert len(server.requests) == 3 and [r.text for r in again] == [r.text for r in replies]
    assert (meter.api["data"].requests, meter.api["data"].sent) == (6, 3)
    assert teacher.parameter_count() is None and teacher.count_tokens("abcdefgh") == 2
    assert teacher.truncate("abcdefghij", 2) == "abcdefgh"
    assert teacher.identity() != RemoteTeacher(OpenAIEndpoint(parse_endpoint("openai:m2@" + server.base_url),
                                                              ApiSettings(key_env=KEY_ENV))).identity()


def test_cache_off_sends_every_time(server, tmp_path):
    ep = endpoint(server, tmp_path, cache=False)
    ep.chat_completions([body("x")])
    [again] = ep.chat_completions([body("x")])
    assert len(server.requests) == 2 and not again.cached and not (tmp_path / "api").exists()
