"""The openai:MODEL@URL client against an independent OpenAI-compatible server: llama.cpp's, through
``llama-cpp-python[server]``, serving the embedded SmolLM2-135M GGUF on a loopback port.

Needs the ``llamacpp`` extra (it compiles llama.cpp, ~6 minutes on 2 cores; ``make test`` installs it). Without
it the tests are skipped, except under CI=true, where that is a failure. llama-cpp-python's server does not take
OpenAI's ``json_schema`` response format (it answers 500), so classification goes through ``scoring: generate``
and the parser here, with its count of unparseable answers.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import time

import pytest

from lmtailor.augmentation.remote_teacher import RemoteTeacher
from lmtailor.augmentation.synthetic_teacher import Sampling
from lmtailor.core.api_settings import ApiSettings
from lmtailor.core.budget import Budget
from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.inference.answer import answer
from lmtailor.inference.backends.base import PredictRequest
from lmtailor.inference.backends.openai_api import OpenAIPredictor
from lmtailor.measure.meter import Meter
from lmtailor.measure.pricing import ApiPrice, Pricing
from lmtailor.remote.client import OpenAIEndpoint
from lmtailor.remote.reference import parse_endpoint
from lmtailor.serve.process import LOOPBACK, free_port


def predict_remote(endpoint, task, rows, exemplars, budget, meter, mode=None):
    """The API backend answering ``rows`` through the one mode dispatch (inference/answer.py)."""
    return answer(OpenAIPredictor(endpoint), PredictRequest(task, rows, budget, exemplars, mode), meter)


pytestmark = [pytest.mark.integration, pytest.mark.llamacpp]

TASK = TaskSpec("colours", "classification", "Which colour does the text name? Answer with the colour only.",
                labels=("red", "green", "blue"))
ROWS = [Example(f"r{i}", f"The {colour} {thing} is on the table.", colour)
        for i, (colour, thing) in enumerate([("red", "apple"), ("green", "leaf"), ("blue", "cup"), ("red", "car")])]
PRICING = Pricing(api_models={"smollm2": ApiPrice(input_usd_per_1m=0.15, output_usd_per_1m=0.60)})


@pytest.fixture(scope="module")
def llama_server(llama_cpp, tmp_path_factory):
    from lmtailor.models.embedded import embedded_model

    entry = embedded_model("smollm2-135m-instruct")
    gguf = entry.require_installed() / entry.gguf.file_name
    port = free_port()
    log = tmp_path_factory.mktemp("llamacpp") / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", LOOPBACK,
                                 "--port", str(port), "--model_alias", "smollm2", "--n_ctx", "2048",
                                 "--n_threads", "2"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"llama.cpp's server exited: {log.read_text()[-2000:]}"
            try:
                conn = http.client.HTTPConnection(LOOPBACK, port, timeout=2)
                conn.request("GET", "/v1/models")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"llama.cpp's server did not start: {log.read_text()[-2000:]}"
            time.sleep(0.5)
        yield f"openai:smollm2@http://{LOOPBACK}:{port}/v1", proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_classification_through_llama_cpp_is_parsed_counted_billed_and_cached(llama_server, tmp_path):
    ref, proc = llama_server
    settings = ApiSettings(max_retries=1, timeout_s=60)
    endpoint = OpenAIEndpoint(parse_endpoint(ref), settings, cache_root=tmp_path / "cache")
    assert endpoint.list_models() == ["smollm2"]
    meter = Meter(pricing=PRICING)
    with meter:
        predictions, details = predict_remote(endpoint, TASK, ROWS, [], Budget(max_new_tokens=8), meter,
                                              mode="generate")
    assert len(predictions) == len(ROWS)
    assert all(p in TASK.labels or p == "" for p in predictions)
    assert details["unparseable"] == predictions.count("")  # scored wrong, counted, not dropped
    api = meter.record()["api"]["inference"]
    assert api["sent"] == len(ROWS) and api["input_tokens"] > 20 * len(ROWS) and api["output_tokens"] > 0
    expected = (api["input_tokens"] * 0.15 + api["output_tokens"] * 0.60) / 1e6  # usage × the pricing table
    assert api["usd"] == pytest.approx(expected)

    again = Meter(pricing=PRICING)
    with again:
        repeated, _ = predict_remote(endpoint, TASK, ROWS, [], Budget(max_new_tokens=8), again, mode="generate")
    assert repeated == predictions
    cached = again.record()["api"]["inference"]
    assert cached["sent"] == 0 and cached["cache_hits"] == len(ROWS) and cached["usd_spent_this_run"] == 0
    assert cached["usd"] == pytest.approx(api["usd"])


def test_llama_cpp_as_a_synthetic_data_teacher_samples_with_seeds(llama_server, tmp_path):
    ref, _ = llama_server
    endpoint = OpenAIEndpoint(parse_endpoint(ref), ApiSettings(max_retries=1), cache_root=tmp_path / "cache")
    meter = Meter(pricing=PRICING)
    teacher = RemoteTeacher(endpoint, meter=meter)
    prompts = [[{"role": "user", "content": "Write one short sentence that names a colour."}]] * 2
    with meter:
        first = teacher.complete(prompts, Sampling(temperature=0.8, top_p=0.95, max_new_tokens=24, seed=3))
    assert len(first) == 2 and all(c.text.strip() and c.completion_tokens > 0 for c in first)
    assert meter.record()["api"]["data"]["requests"] == 2
    second = teacher.complete(prompts, Sampling(temperature=0.8, top_p=0.95, max_new_tokens=24, seed=3))
    assert [c.text for c in second] == [c.text for c in first]  # same seeds: answered from the cache
