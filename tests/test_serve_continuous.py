"""Continuous batching in lmtailor serve (issue 19): requests join a running batch at the next step and leave it when
done, and every row decodes as it would alone. Tiny random fp32 models from configs: a Llama, and a Gemma 3 whose
sliding window (8 tokens) is shorter than every prompt, so each row's window is crossed by the batch's padding."""

from __future__ import annotations

import asyncio
import random

import pytest
import torch

from lmtailor.inference.generation import generate_ids
from lmtailor.serve.continuous import ContinuousEngine, live_row
from lmtailor.serve.decode_batch import DecodeBatch
from lmtailor.serve.engine import Job, _deliver

STOP = 63  # the stop token of every row here
WINDOW = 8


class _Chars:
    """Token id t decodes to chr(48 + t): one character per token, so texts are easy to compare."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(48 + int(t)) for t in ids)


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, initializer_range=0.3,
                         max_position_embeddings=128, pad_token_id=0)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def _gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=WINDOW,
                              layer_types=["sliding_attention"] * 3 + ["full_attention"], initializer_range=0.3,
                              max_position_embeddings=128, pad_token_id=0, attn_implementation="sdpa",
                              tie_word_embeddings=False)
    torch.manual_seed(0)
    return Gemma3ForCausalLM(config).eval()


MODELS = {"llama": _llama, "gemma3": _gemma3}


def _job(prompt, max_tokens, **kw) -> Job:
    return Job(prompt, max_tokens, (STOP,), **kw)


def _alone(model, prompt, max_tokens) -> list[int]:
    """Greedy ids of one prompt decoded alone by transformers' generate, stop token removed."""
    ids = generate_ids(model, [prompt], max_tokens, [STOP], pad_id=0, batch_size=1).ids[0]
    return [t for t in ids if t != STOP]


def _prompts(n: int) -> list[list[int]]:
    rng = random.Random(7)
    return [[rng.randrange(1, STOP) for _ in range(rng.randrange(WINDOW + 3, 4 * WINDOW))] for _ in range(n)]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_requests_joining_mid_decode_decode_as_alone(name, one_torch_thread):
    """Seven greedy requests of 11-31 tokens arrive at steps 0, 0, 3, 5, 5, 9 and 14 of a running batch, with
    max_tokens 6..18; each row's tokens equal generate's for its prompt alone (fp32), and the batch held rows of
    different ages at once (the 3rd joined while the 1st decoded)."""
    model = MODELS[name]()
    prompts, limits = _prompts(7), [18, 12, 15, 6, 17, 10, 9]
    arrivals = {0: [0, 1], 3: [2], 5: [3, 4], 9: [5], 14: [6]}
    batch, rows, sizes = DecodeBatch(model, pad_id=0), {}, []
    for step in range(60):
        joining = {i: live_row(_job(prompts[i], limits[i]), _Chars()) for i in arrivals.get(step, [])}
        for row in joining.values():
            row.state.emit = lambda event: None  # no event loop here: the rows' states are read directly
        rows.update(joining)
        batch.admit(list(joining.values()))
        sizes.append(len(batch))
        batch.step()
    assert len(batch) == 0 and all(row.state.finished for row in rows.values())
    assert max(sizes) >= 4  # rows admitted at steps 0, 3 and 5 decoded side by side
    for i, row in sorted(rows.items()):
        assert row.state.ids == _alone(model, prompts[i], limits[i]), f"row {i}"


async def _run(engine: ContinuousEngine, jobs: list[Job], pause_after: int = 0) -> list[tuple[str, str, int]]:
    """Submit ``jobs`` (the ones after ``pause_after`` once the first has streamed a delta); their texts and ends."""
    for job in jobs:
        job.bind()
    engine.start()
    for job in jobs[: pause_after or len(jobs)]:
        engine.submit(job)
    first = ""
    if pause_after:
        kind, first = await jobs[0].events.get()
        assert kind == "delta"  # the first request is decoding: the others join it
        for job in jobs[pause_after:]:
            engine.submit(job)
    results = []
    for k, job in enumerate(jobs):
        text = first if k == 0 else ""
        while (event := await job.events.get())[0] == "delta":
            text += event[1]
        results.append((text, *event[1:]))
    await asyncio.to_thread(engine.close)
    return results


def test_each_request_keeps_its_sampling_seed_stop_and_limit(one_torch_thread):
    """A sampled request (seed 5, temperature 0.8, top_p 0.9) gives the same text alone and among greedy requests
    with other limits and stop strings that join while it decodes; each greedy one ends on its own max_tokens or
    stop string."""
    model = _llama()
    prompt, others = _prompts(1)[0], _prompts(4)[1:]
    sampled = dict(temperature=0.8, top_p=0.9, seed=5)

    def sampled_job() -> Job:  # no stop token: it runs to its limit, so the others join while it decodes
        return Job(prompt, 20, (), **sampled)

    alone = asyncio.run(_run(ContinuousEngine(model, _Chars(), 0), [sampled_job()]))
    engine = ContinuousEngine(model, _Chars(), 0, max_batch=8)
    greedy = _alone(model, others[0], 20)
    stop_string = _Chars().decode(greedy[4:6])  # the 5th and 6th tokens of its greedy answer
    jobs = [sampled_job(), _job(others[0], 20, stop_strings=(stop_string,)),
            _job(others[1], 3), _job(others[2], 7, **{**sampled, "seed": 6})]
    together = asyncio.run(_run(engine, jobs, pause_after=1))
    assert together[0] == alone[0] and together[0][1:] == ("length", 20)
    text = _Chars().decode(greedy)
    cut = text.find(stop_string)  # 4 unless the pair occurs earlier; one character per token
    assert together[1] == (text[:cut], "stop", cut + 2)
    assert together[2][1:] == ("length", 3) and together[3][1:] == ("length", 7)
    assert engine.stats()["requests"] == 4 and engine.max_batch_seen >= 2


@pytest.mark.parametrize("backend, seq2seq, virtual, batching, expected", [
    ("transformers", False, 0, "continuous", "ContinuousEngine"),
    ("transformers", False, 0, "static", "Engine"),
    ("transformers", True, 0, "continuous", "Engine"),  # encoder-decoder: generate's static batches
    ("transformers", False, 20, "continuous", "Engine"),  # prefix tuning: its virtual tokens' cache
    ("llamacpp", False, 0, "continuous", "LlamaCppEngine"),
])
def test_engine_choice(backend, seq2seq, virtual, batching, expected):
    from types import SimpleNamespace

    from lmtailor.serve.engines import engine_class

    served = SimpleNamespace(backend=backend, seq2seq=seq2seq, virtual_tokens=virtual)
    assert engine_class(served, batching).__name__ == expected
    with pytest.raises(ValueError, match="batching must be one of"):
        engine_class(served, "dynamic")


def test_a_step_wakes_the_event_loop_once_and_whole_answers_send_only_their_end(one_torch_thread):
    """Four streamed and two whole (non-streamed) requests decode together: the event loop is woken once per
    admission or step, not once per event, each streamed request still gets its deltas in order, and a whole request
    gets only its end, with the same text (in ``job.parts``) as the streamed request with its prompt."""
    model, prompts = _llama(), _prompts(4)
    streamed = [_job(p, 12) for p in prompts]
    whole = [_job(p, 12, whole=True) for p in prompts[:2]]
    engine = ContinuousEngine(model, _Chars(), 0, max_batch=8)
    calls = []

    async def run() -> list:
        loop = asyncio.get_running_loop()
        original = loop.call_soon_threadsafe

        def counting(callback, *args, **kw):
            if callback is _deliver or isinstance(getattr(callback, "__self__", None), asyncio.Queue):  # a job's
                calls.append(callback)
            return original(callback, *args, **kw)

        loop.call_soon_threadsafe = counting
        for job in whole:
            job.bind()
        engine.start()
        for job in whole:
            engine.submit(job)
        results = await _run(engine, streamed)
        return results + [await job.events.get() for job in whole]

    results = asyncio.run(run())
    texts, ends = [r[0] for r in results[:4]], results[4:]
    for k, job in enumerate(whole):
        assert ends[k][0] == "done" and job.events.empty()
        assert "".join(job.parts) == texts[k] and ends[k][2] == len(texts[k])
    stats = engine.stats()
    events = sum(len(t) for t in texts) + 6  # at most one delta per token, and one end per request
    assert all(call is _deliver for call in calls)
    assert len(calls) <= stats["batches"] < events


def test_a_shared_prompt_prefix_is_computed_once_and_rows_decode_as_alone(one_torch_thread):
    """Prompts that begin with the same 14 tokens (a chat template's system turn) and end in 3-20 others, joining
    a running batch at steps 0, 0, 0, 4, 4 and 9: the prefix's keys and values are computed once and reused by
    every admission, and each row's greedy tokens equal generate's for its whole prompt alone (fp32). A Gemma 3
    (sliding-window layers) does not reuse prefixes."""
    model, rng = _llama(), random.Random(3)
    system = [rng.randrange(1, STOP) for _ in range(14)]
    prompts = [system + [rng.randrange(1, STOP) for _ in range(rng.randrange(3, 21))] for _ in range(6)]
    prompts[5][10] = system[10] % (STOP - 1) + 1  # shares only 10 tokens: a shorter cut of the stored prefix
    arrivals, batch, rows = {0: [0, 1, 2], 4: [3, 4], 9: [5]}, DecodeBatch(model, pad_id=0), {}
    for step in range(40):
        joining = {i: live_row(_job(prompts[i], 12), _Chars()) for i in arrivals.get(step, [])}
        for row in joining.values():
            row.state.emit = lambda event: None
        rows.update(joining)
        batch.admit(list(joining.values()))
        batch.step()
    assert batch.prefix.ids == system and batch.prefix.reused_tokens == 14 * 2 + 14 * 2 + 10
    for i, row in sorted(rows.items()):
        assert row.state.ids == _alone(model, prompts[i], 12), f"row {i}"
    assert DecodeBatch(_gemma3(), pad_id=0).prefix is None


def test_a_cache_that_is_not_plain_keys_and_values_turns_the_prefix_cache_off():
    """A model whose cache does not hold one key and value per prompt slot (a state-space or compressed layer: here
    a fake forward storing 2 slots for 9 tokens) prefills every prompt whole, from then on."""
    from lmtailor.serve.prefix_cache import PrefixCache

    def forward(ids, mask, positions, cache):
        cache.update(torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4), 0)
        return torch.zeros(1, 8)

    prefix = PrefixCache(forward, "cpu")
    prompts = [list(range(1, 10)) + [20], list(range(1, 10)) + [30]]
    assert prefix.length_for(prompts) == 0 and not prefix.usable and prefix.ids == []
    assert prefix.length_for(prompts) == 0 and prefix.reused_tokens == 0
