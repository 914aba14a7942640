"""llama.cpp as an inference backend: on the same f32 weights it decodes the same greedy tokens and scores labels the
same as transformers; its KV-cache reuse gives the logits of a fresh computation; the strategies run it and say
which GGUF answered; clear refusals. The embedded SmolLM2 Q4_1 GGUF is checked against transformers (marked
integration: quantization error, so the agreement is measured and reported, with a loose floor).

Needs the ``llamacpp`` extra (``make test`` installs it); without it the tests are skipped, except under CI=true.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from lmtailor.core.budget import Budget
from lmtailor.core.context import RunContext
from lmtailor.core.example import DatasetSplits, Example
from lmtailor.errors import UserError
from lmtailor.inference.answer import answer
from lmtailor.inference.backends.base import PredictRequest
from lmtailor.inference.generation import generate_ids
from lmtailor.inference.label_scoring import score_labels
from lmtailor.inference.predict import predict
from lmtailor.measure.meter import Meter
from lmtailor.prompting.formats import build_messages, encode_prompt, encode_prompt_completion, stop_token_ids

from colours import CPU, TASK, colour_rows


def predict_llamacpp(llm, tokenizer, task, rows, exemplars, budget, meter, mode=None, calibrate=False):
    """The llama.cpp backend answering ``rows`` through the one mode dispatch (inference/answer.py)."""
    from lmtailor.inference.backends.llamacpp import LlamaCppPredictor
    from lmtailor.inference.llamacpp import LoadedLlamaCpp

    predictor = LlamaCppPredictor(LoadedLlamaCpp(llm, tokenizer, "test"))
    return answer(predictor, PredictRequest(task, rows, budget, exemplars, mode, calibrate=calibrate), meter)


pytestmark = [pytest.mark.llamacpp, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def tiny_gguf_dir(llama_cpp, tiny_llama_dir, tmp_path_factory) -> Path:
    """A copy of the tiny Llama directory with its f32 GGUF beside the weights (the HF tokenizer writes prompts)."""
    from lmtailor.export.gguf_export import export_gguf

    out = tmp_path_factory.mktemp("tiny-gguf") / "model"
    shutil.copytree(tiny_llama_dir, out)
    export_gguf(out, out / "tiny.f32.gguf", "f32")
    return out


@pytest.fixture(scope="module")
def engines(tiny_gguf_dir):
    """(llama.cpp model, transformers model, tokenizer) over the same f32 weights."""
    from transformers import AutoModelForCausalLM

    from lmtailor.inference.llamacpp import LlamaCppModel
    from lmtailor.models.loading import load_tokenizer

    llm = LlamaCppModel(tiny_gguf_dir / "tiny.f32.gguf", n_threads=1)
    hf = AutoModelForCausalLM.from_pretrained(tiny_gguf_dir, dtype=torch.float32).eval()
    yield llm, hf, load_tokenizer(str(tiny_gguf_dir))
    llm.close()


def _prompts(tokenizer, rows, shots=(), task=TASK):
    return [encode_prompt(tokenizer, build_messages(task, r.input, list(shots))) for r in rows]


def _label_ids(tokenizer, rows):
    first = build_messages(TASK, rows[0].input, [])
    return [encode_prompt_completion(tokenizer, first, label)[1] for label in TASK.labels]


def test_cached_prefix_reuse_gives_fresh_logits_and_counts_only_new_tokens(engines):
    llm, hf, _ = engines

    def fresh(ids):
        with torch.no_grad():
            return hf(torch.tensor([ids])).logits[0, -1].numpy()

    start = llm.evaluated
    for ids, new in [([5, 17, 30], 3), ([5, 17, 30, 41], 1), ([5, 17, 99], 1), ([5, 17, 30], 1), ([8, 9], 2)]:
        got = llm.logits_after(ids)
        assert abs(got - fresh(ids)).max() < 1e-3, ids
        assert llm.evaluated - start == new, ids  # the shared prefix is not run again
        start = llm.evaluated


def test_greedy_generation_equals_transformers_on_the_same_f32_weights(engines):
    llm, hf, tokenizer = engines
    prompts = _prompts(tokenizer, colour_rows(4, "g", seed=3))
    stops = stop_token_ids(tokenizer)
    ours = [llm.greedy(p, 12, stops) for p in prompts]
    theirs = generate_ids(hf, prompts, 12, stops, tokenizer.pad_token_id, batch_size=1).ids
    assert ours == theirs and all(len(ids) >= 1 for ids in ours)


def test_sampling_follows_temperature_and_top_p_by_hand():
    import numpy as np

    from lmtailor.inference.generation import SamplingParams
    from lmtailor.inference.llamacpp import _sample

    logits = np.log(np.array([1.0, 3.0], dtype=np.float32))  # probabilities 0.25, 0.75

    def share_of_second(temperature, top_p):
        rng = np.random.default_rng(0)
        draws = [_sample(logits, SamplingParams(temperature, top_p, 0), rng) for _ in range(4000)]
        return sum(draws) / len(draws)

    assert share_of_second(1.0, 1.0) == pytest.approx(0.75, abs=0.03)
    assert share_of_second(0.5, 1.0) == pytest.approx(0.9, abs=0.03)  # (1:3) sharpened to (1:9)
    assert share_of_second(1.0, 0.75) == 1.0  # as transformers' top-p: 0.75 alone covers top_p
    assert share_of_second(1.0, 0.8) < 1.0


def test_decode_samples_reproducibly_and_stops_when_the_caller_says(engines):
    from lmtailor.inference.generation import SamplingParams

    llm, _, tokenizer = engines
    prompt = _prompts(tokenizer, colour_rows(1, "d", seed=8))[0]
    hot = SamplingParams(temperature=1.5, top_p=1.0, seed=3)
    first = llm.decode(prompt, 10, [], sampling=hot)
    assert first == llm.decode(prompt, 10, [], sampling=hot) and len(first) == 10
    assert any(llm.decode(prompt, 10, [], sampling=SamplingParams(1.5, 1.0, seed)) != first for seed in range(4, 8))
    assert llm.decode(prompt, 10, [], sampling=SamplingParams(1.0, 1e-9, 0)) == llm.greedy(prompt, 10, [])
    seen = []
    assert llm.decode(prompt, 10, [], on_token=lambda t: seen.append(t) or len(seen) == 3) == seen and len(seen) == 3


def test_likelihood_scores_equal_transformers_score_labels(engines):
    llm, hf, tokenizer = engines

    rows = colour_rows(5, "l", seed=4)
    shots = colour_rows(2, "s", seed=5)
    meter = Meter()
    preds, details = predict_llamacpp(llm, tokenizer, TASK, rows, shots, Budget(), meter, mode="likelihood")
    prompts = _prompts(tokenizer, rows, shots)
    reference = score_labels(hf, prompts, _label_ids(tokenizer, rows), tokenizer.pad_token_id).scores
    for row, ref in zip(rows, reference):
        assert details["label_scores"][row.id] == pytest.approx(ref, abs=1e-3)
    assert preds == [TASK.labels[max(range(3), key=ref.__getitem__)] for ref in reference]
    assert details["backend"] == "llamacpp" and details["gguf"]["type"] == "F32"
    # every row after the first reuses the few-shot prefix: fewer tokens than the prompts hold
    label_steps = sum(len(lab) - 1 for lab in _label_ids(tokenizer, rows))
    assert len(prompts[0]) + label_steps <= details["tokens"] < sum(map(len, prompts))
    assert meter.phases["inference"].tokens == details["tokens"] and meter.phases["inference"].examples == 5
    assert meter.flops["inference"] == 2.0 * llm.n_params * details["tokens"]


def test_constrained_and_generate_modes_match_predict(engines):
    llm, hf, tokenizer = engines

    rows = colour_rows(4, "c", seed=6)
    budget = Budget(max_new_tokens=8)
    for mode in ("constrained", "generate"):
        ours, details = predict_llamacpp(llm, tokenizer, TASK, rows, [], budget, Meter(), mode=mode)
        theirs, _ = predict(hf, tokenizer, TASK, rows, [], budget, Meter(), mode=mode)
        assert ours == theirs, mode
    assert details["mode"] == "generate" and "truncated_generations" in details
    constrained, details = predict_llamacpp(llm, tokenizer, TASK, rows, [], budget, Meter(), mode="constrained")
    assert set(constrained) <= set(TASK.labels) and details["no_label_match"] == 0


def test_prompt_strategy_runs_the_gguf_and_records_it(tiny_gguf_dir, tmp_path):
    from lmtailor.strategies.prompt import PromptConfig, PromptStrategy

    data = DatasetSplits(train=colour_rows(6, "t", 0), validation=[], test=colour_rows(3, "x", 1))
    ctx = RunContext(task=TASK, data=data, model_ref=str(tiny_gguf_dir), budget=Budget(), seed=0, meter=Meter(),
                     out_dir=tmp_path, runtime=CPU)
    with ctx.meter:
        out = PromptStrategy(PromptConfig(name="prompt", shots=2, backend="llamacpp")).run(ctx)
    with ctx.meter:
        reference = PromptStrategy(PromptConfig(name="prompt", shots=2)).run(ctx)
    assert out.predictions == reference.predictions and set(out.predictions) <= set(TASK.labels)
    assert out.details["backend"] == "llamacpp" and reference.details["backend"] == "transformers"
    assert out.details["gguf"]["file"].endswith("tiny.f32.gguf") and out.details["gguf"]["type"] == "F32"
    assert ctx.meter.total_params > 0


def test_rag_strategy_runs_the_gguf_like_transformers(tiny_gguf_dir, tmp_path):
    from lmtailor.strategies.rag import RagConfig, RagStrategy

    data = DatasetSplits(train=colour_rows(6, "t", 0), validation=[], test=colour_rows(3, "x", 1))
    outputs = {}
    for backend in ("llamacpp", "transformers"):
        ctx = RunContext(task=TASK, data=data, model_ref=str(tiny_gguf_dir), budget=Budget(), seed=0,
                         meter=Meter(), out_dir=tmp_path / backend, runtime=CPU)
        cfg = RagConfig(name="rag", corpus="task:train", retriever="bm25", k=1, chunk_tokens=32, chunk_overlap=4,
                        max_context_tokens=64, backend=backend)
        with ctx.meter:
            outputs[backend] = RagStrategy(cfg).run(ctx)
    ours, theirs = outputs["llamacpp"], outputs["transformers"]
    assert ours.predictions == theirs.predictions and ours.retrieved_doc_ids == theirs.retrieved_doc_ids
    theirs_scores = theirs.details["inference"]["label_scores"]
    for row_id, scores in ours.details["inference"]["label_scores"].items():
        assert scores == pytest.approx(theirs_scores[row_id], abs=1e-3)
    assert ours.details["backend"] == "llamacpp" and ours.details["gguf"]["type"] == "F32"
    assert ours.details["context"]["budget_tokens"] == theirs.details["context"]["budget_tokens"] == 64


def test_gguf_for_finds_the_file_or_says_how_to_make_one(tiny_gguf_dir, tiny_llama_dir, tmp_path):
    from lmtailor.inference.llamacpp import gguf_for

    path = tiny_gguf_dir / "tiny.f32.gguf"
    assert gguf_for(str(path)) == path.resolve() and gguf_for(str(tiny_gguf_dir)) == path.resolve()
    with pytest.raises(UserError, match="lmtailor export RUN_DIR --merge --gguf"):
        gguf_for("tiny-llama")
    with pytest.raises(UserError, match="lmtailor export RUN_DIR --merge --gguf"):
        gguf_for(str(tmp_path / "nowhere"))
    (tmp_path / "a.gguf").write_bytes(b""), (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(UserError, match="several GGUF files"):
        gguf_for(str(tmp_path))


def test_refuses_encoder_decoders_endpoints_and_a_missing_llama_cpp(monkeypatch, tiny_t5_dir):
    from lmtailor.inference.llamacpp import check_decoder_only, import_llama_cpp, load_llamacpp

    with pytest.raises(UserError, match="decoder-only models; .* is encoder-decoder"):
        check_decoder_only(str(tiny_t5_dir))
    with pytest.raises(UserError, match="API endpoint"):
        load_llamacpp("openai:m@http://127.0.0.1:1/v1")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # what a machine without the extra sees
    with pytest.raises(UserError, match=r"lmtailor\[llamacpp\].*lmtailor-llamacpp-installed|"
                                        r"lmtailor-llamacpp-installed.*lmtailor\[llamacpp\]"):
        import_llama_cpp()


def test_backend_is_a_validated_knob_of_prompt_and_rag():
    from pydantic import ValidationError

    from lmtailor.strategies.prompt import PromptConfig
    from lmtailor.strategies.rag import RagConfig

    assert PromptConfig(name="prompt").backend is None  # resolved from the model reference (inference/backends)
    assert RagConfig(name="rag", backend="llamacpp").backend == "llamacpp"
    with pytest.raises(ValidationError, match="unknown inference backend 'vllm'.*Known: llamacpp, openai, "
                                              "transformers"):
        PromptConfig(name="prompt", backend="vllm")
    with pytest.raises(ValidationError, match="Did you mean 'llamacpp'"):
        RagConfig(name="rag", backend="llama.cpp")


# --- the embedded SmolLM2 Q4_1 GGUF against transformers fp32 ------------------------------------------------------

SMOL = "smollm2-135m-instruct"
QUESTIONS = ["What is the capital of France?", "Name a primary colour.", "Say hello in Spanish.",
             "What is 2 plus 2?"]


@pytest.fixture(scope="module")
def smol(llama_cpp):
    from lmtailor.inference.llamacpp import load_llamacpp
    from lmtailor.models.embedded import embedded_model

    if embedded_model(SMOL).missing_packages():
        pytest.skip(f"{SMOL} is not installed")
    loaded = load_llamacpp(SMOL)
    yield loaded
    loaded.model.close()


@pytest.mark.integration
def test_smollm2_prompt_ids_equal_llama_cpp_chat_template(smol):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm, tokenizer = smol.model.llm, smol.tokenizer
    formatter = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos_token=tokenizer.eos_token,
                                    bos_token=tokenizer.bos_token or "")
    for question in QUESTIONS:
        messages = build_messages(TASK, question, [])
        theirs = llm.tokenize(formatter(messages=messages).prompt.encode(), add_bos=False, special=True)
        assert encode_prompt(tokenizer, messages) == theirs


@pytest.mark.integration
def test_smollm2_q4_agrees_with_transformers_within_quantization_error(smol, capsys):
    from lmtailor.models import load_model

    hf = load_model(SMOL, CPU)
    gen_task = type(TASK)("chat", "generation", "Answer briefly.")
    rows = [Example(f"q{i}", q, "") for i, q in enumerate(QUESTIONS)]
    budget = Budget(max_new_tokens=8)
    ours, details = predict_llamacpp(smol.model, smol.tokenizer, gen_task, rows, [], budget, Meter())
    prompts = _prompts(smol.tokenizer, rows, task=gen_task)
    stops = stop_token_ids(smol.tokenizer)
    theirs = generate_ids(hf.model, prompts, 8, stops, smol.tokenizer.pad_token_id, batch_size=1).ids
    mine = [smol.model.greedy(p, 8, stops) for p in prompts]
    for prompt, ids in zip(prompts, mine):  # llama.cpp's own greedy completion decodes the same tokens
        smol.model.llm.reset()
        own = smol.model.llm(prompt, max_tokens=8, temperature=0.0, top_k=1, stop=[])["choices"][0]["text"]
        assert own == smol.model.llm.detokenize(ids).decode("utf-8", errors="ignore")
    assert [smol.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in mine] == ours
    leading = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), min(len(x), len(y)))
               for x, y in zip(mine, theirs)]
    colours = colour_rows(12, "k", seed=7)
    labels_ours, _ = predict_llamacpp(smol.model, smol.tokenizer, TASK, colours, [], Budget(), Meter())
    labels_theirs, _ = predict(hf.model, hf.tokenizer, TASK, colours, [], Budget(), Meter())
    agree = sum(a == b for a, b in zip(labels_ours, labels_theirs)) / len(colours)
    with capsys.disabled():
        print(f"\nSmolLM2 Q4_1 (llama.cpp) vs fp32 (transformers): greedy tokens agreeing before the first "
              f"difference {leading} of 8; likelihood label agreement {agree:.0%} on {len(colours)} rows")
    assert all(text for text in ours) and details["gguf"]["type"] == "Q4_1"
    assert leading[0] >= 1 and sum(leading) >= 8  # the first tokens agree; quantization may fork later tokens
    assert agree >= 0.6


def test_serve_with_the_llamacpp_backend_answers_like_transformers_on_the_same_weights(tiny_gguf_dir):
    """`lmtailor serve --backend llamacpp`: the greedy chat answer equals the transformers server's on the same f32
    weights, streamed equals non-streamed, and the enum constraint holds."""
    from fastapi.testclient import TestClient

    from lmtailor.runtime import Runtime
    from lmtailor.serve.app import create_app
    from lmtailor.serve.settings import ServeSettings
    from lmtailor.serve.target import load_target

    runtime = Runtime("cpu", "fp32", "test")
    body = {"model": "m", "temperature": 0, "max_tokens": 8,
            "messages": [{"role": "user", "content": "Which colour is the sky?"}]}
    answers = {}
    for backend in ("transformers", "llamacpp"):
        served = load_target(str(tiny_gguf_dir), runtime, name="m", backend=backend)
        assert served.backend == backend
        with TestClient(create_app(served, ServeSettings("m")), base_url="http://127.0.0.1") as client:
            whole = client.post("/v1/chat/completions", json=body).json()
            answers[backend] = whole["choices"][0]["message"]["content"]
            assert whole["usage"]["completion_tokens"] >= 1
            stream = client.post("/v1/chat/completions", json={**body, "stream": True}).text
            chunks = [json.loads(line[6:]) for line in stream.splitlines()
                      if line.startswith("data: ") and line != "data: [DONE]"]
            streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
            assert streamed == answers[backend]
            schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {
                "type": "object", "properties": {"label": {"type": "string", "enum": ["red", "blue"]}},
                "required": ["label"], "additionalProperties": False}}}
            constrained = client.post("/v1/chat/completions", json={**body, "max_tokens": 16,
                                                                     "response_format": schema}).json()
            assert json.loads(constrained["choices"][0]["message"]["content"])["label"] in {"red", "blue"}
    assert answers["llamacpp"] == answers["transformers"]


def test_a_bare_gguf_file_loads_without_converting_its_weights(tiny_gguf_dir, tmp_path, monkeypatch):
    """A .gguf path: family and tokenizer come from its metadata, and the prompts equal the folder tokenizer's."""
    from lmtailor.inference import llamacpp as backend
    from lmtailor.models import gguf_cache
    from lmtailor.models.loading import load_tokenizer

    alone = tmp_path / "tiny.f32.gguf"
    shutil.copy(tiny_gguf_dir / "tiny.f32.gguf", alone)

    def no_conversion(*args, **kwargs):
        raise AssertionError("the GGUF's weights were converted just to read its tokenizer or family")

    monkeypatch.setattr(gguf_cache, "ensure_converted", no_conversion)
    loaded = backend.load_llamacpp(str(alone))
    try:
        messages = build_messages(TASK, "a red apple", [])
        assert encode_prompt(loaded.tokenizer, messages) == encode_prompt(load_tokenizer(str(tiny_gguf_dir)), messages)
    finally:
        loaded.model.close()


def test_calibration_and_per_row_exemplars_match_the_transformers_path(engines):
    from lmtailor.prompting.exemplars import RowExemplars

    llm, hf, tokenizer = engines
    rows = colour_rows(3, "k", seed=9)
    shots = colour_rows(3, "q", seed=10)
    per_row = RowExemplars([shots[:2], shots[1:], shots[:2]])  # rows 0 and 2 share a prompt's exemplars
    ours, details = predict_llamacpp(llm, tokenizer, TASK, rows, per_row, Budget(), Meter(), calibrate=True)
    theirs, reference = predict(hf, tokenizer, TASK, rows, per_row, Budget(), Meter(), calibrate=True)
    mine, ref = details["calibration"], reference["calibration"]
    assert mine["content_free_prompts"] == ref["content_free_prompts"] == 6
    for row in rows:
        assert mine["p_content_free_by_row"][row.id] == pytest.approx(ref["p_content_free_by_row"][row.id], abs=2e-3)
    assert ours == theirs and mine["tokens"] > 0
