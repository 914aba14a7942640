"""Inference throughput: lmtailor's batched label scoring and generation against the naive per-example loop.

    .venv/bin/python benchmarks/inference_throughput.py                      # smollm2-135m-instruct, 48 rows
    .venv/bin/python benchmarks/inference_throughput.py --model tiny-llama   # a quick check of the script

One run, the same zero-shot prompts for every engine: the pydoc-module test rows built like the demo
(src/lmtailor/examples/demo.yaml: 8 modules, 40-60 rows each, inputs cut to 96 tokens). It measures

- classification: ``predict(mode="likelihood")`` (batched label scoring after the shared prompt prefix) against what
  a user would write: ``model.generate`` per row, the answer parsed to a label. Examples/s and accuracy of both.
- generation: ``generate_ids`` (padded batches, KV cache) against ``model.generate`` per row, both greedy and run
  to exactly ``--max-new-tokens`` (no stop token), so both do the same work. Generated tokens/s (wall time
  including the prompt's prefill).
- llama.cpp: the same prompts and token count through ``llama_cpp.Llama`` directly, and through lmtailor's
  llama.cpp backend when ``lmtailor.inference.llamacpp`` is installed.

The first rows of each measurement are run once before the clock starts (warm-up). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "src" / "lmtailor" / "examples" / "demo.yaml"


def machine() -> str:
    from bench_env import cpu

    name, flags = cpu()
    return f"{name}, {os.cpu_count()} cores, flags: {flags}"


def build_rows(n_rows: int, max_input_tokens: int):
    """(task, test rows) of the demo's pydoc-module data, with at least ``n_rows`` test rows."""
    from lmtailor.config import load_experiment
    from lmtailor.data.prepare import prepare_data
    from lmtailor.runner import resolve_task

    exp = load_experiment(DEMO, [f"data.max_test={n_rows}"])
    prepared = prepare_data(exp.data, exp.task.type or "", DEMO.parent)
    task = resolve_task(exp, prepared.task_defaults, prepared.splits)
    rows = prepared.splits.test[:n_rows]
    if len(rows) < n_rows:
        print(f"note: the data has {len(rows)} test rows; measuring those", file=sys.stderr)
    return task, rows


def parse_label(text: str, labels) -> str | None:
    """The label a free answer names: the one it starts with, else the first one it mentions (longest on a tie)."""
    text = text.strip().strip("`'\".").lower()
    found = [(text.find(lab.lower()), -len(lab), lab) for lab in labels if lab.lower() in text]
    starts = [lab for lab in sorted(labels, key=len, reverse=True) if text.startswith(lab.lower())]
    if starts:
        return starts[0]
    return min(found)[2] if found else None


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rows", type=int, default=48, help="test rows measured (default 48, the demo's)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8, help="eval_batch_size of the lmtailor paths")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="auto: what detect_runtime picks for this machine")
    parser.add_argument("--warmup", type=int, default=2, help="rows run before each measurement (not timed)")
    parser.add_argument("--skip-llamacpp", action="store_true")
    args = parser.parse_args(argv)
    if not 1 <= args.rows <= 400 or not 1 <= args.max_new_tokens <= 256:
        parser.error("--rows must be in 1..400 and --max-new-tokens in 1..256")

    import transformers
    from bench_env import commit
    from tqdm.auto import tqdm

    from lmtailor.core.budget import Budget
    from lmtailor.inference.generation import generate_ids
    from lmtailor.inference.hf_rows import pad_token_id, prepare_inputs
    from lmtailor.inference.predict import predict
    from lmtailor.measure.meter import Meter
    from lmtailor.models import load_model
    from lmtailor.prompting.formats import build_messages, encode_prompt, stop_token_ids
    from lmtailor.runtime import detect_runtime

    max_input = 96
    task, rows = build_rows(args.rows, max_input)
    runtime = detect_runtime(args.precision)
    loaded = load_model(args.model, runtime)
    model, tok = loaded.model, loaded.tokenizer
    model.eval()
    texts, _, _, _ = prepare_inputs(tok, task, rows, [], max_input)
    prompts = [encode_prompt(tok, build_messages(task, text, [], row.meta)) for row, text in zip(rows, texts)]
    stops, pad = stop_token_ids(tok), pad_token_id(tok)
    budget = Budget(max_input_tokens=max_input, max_new_tokens=args.max_new_tokens, eval_batch_size=args.batch_size)
    n, new = len(rows), args.max_new_tokens
    warm = rows[: args.warmup]
    truth = [r.target for r in rows]
    results: list[dict] = []

    def accuracy(preds) -> float:
        return sum(p == t for p, t in zip(preds, truth)) / n

    # (a) label likelihood through lmtailor
    predict(model, tok, task, warm, [], budget, Meter(), mode="likelihood")
    (preds, _), seconds = timed(lambda: predict(model, tok, task, rows, [], budget, Meter(), mode="likelihood"))
    results.append({"kind": "classify", "what": f"lmtailor predict(mode=likelihood), batch {args.batch_size}",
                    "seconds": seconds, "rate": n / seconds, "unit": "examples/s", "accuracy": accuracy(preds)})

    # (b) the naive generate-and-parse loop a user would write
    def naive_answer(prompt) -> str:
        ids = torch.tensor([prompt], device=model.device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                             do_sample=False, eos_token_id=stops, pad_token_id=pad)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    with torch.no_grad():
        for p in prompts[: args.warmup]:
            naive_answer(p)
        answers, seconds = timed(lambda: [naive_answer(p) for p in tqdm(prompts, desc="naive classify")])
    parsed = [parse_label(a, task.labels) for a in answers]
    naive_classify = {"kind": "classify", "what": "naive: model.generate per row, answer parsed", "seconds": seconds,
                      "rate": n / seconds, "unit": "examples/s", "accuracy": accuracy(parsed),
                      "note": f"{sum(p is None for p in parsed)} answers name no label"}
    results.insert(0, naive_classify)

    # (c) batched greedy generation through lmtailor, exactly `new` tokens per row
    generate_ids(model, prompts[: args.warmup], new, [], pad, args.batch_size)
    batched, seconds = timed(lambda: generate_ids(model, prompts, new, [], pad, args.batch_size))
    gen_tokens = sum(map(len, batched.ids))
    results.append({"kind": "generate", "what": f"lmtailor generate_ids, batch {args.batch_size}", "seconds": seconds,
                    "rate": gen_tokens / seconds, "unit": "tokens/s"})

    # (d) the naive per-row generate loop, same token count
    def naive_generate(prompt) -> list[int]:
        ids = torch.tensor([prompt], device=model.device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                             do_sample=False, eos_token_id=[], pad_token_id=pad)
        return out[0, ids.shape[1]:].tolist()

    with torch.no_grad():
        for p in prompts[: args.warmup]:
            naive_generate(p)
        single, seconds = timed(lambda: [naive_generate(p) for p in tqdm(prompts, desc="naive generate")])
    agree = sum(a == b for a, b in zip(batched.ids, single))
    naive_gen = {"kind": "generate", "what": "naive: model.generate per row", "seconds": seconds,
                 "rate": sum(map(len, single)) / seconds, "unit": "tokens/s"}
    results.insert(results.index(next(r for r in results if r["kind"] == "generate")), naive_gen)
    results[-1]["note"] = f"same tokens as the naive loop in {agree}/{n} rows"

    # (e) llama.cpp
    if not args.skip_llamacpp:
        results += llamacpp_rows(args.model, prompts, new, task, rows, budget, truth)

    results.sort(key=lambda r: r["kind"] != "classify")  # stable: classification rows first, naive loops on top
    baseline = {"classify": naive_classify["rate"], "generate": naive_gen["rate"]}
    print()
    print(f"## inference_throughput.py: {args.model}, {n} pydoc-module test rows, {new} new tokens\n")
    print(f"- date: {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}; commit {commit(ROOT)}")
    print(f"- machine: {machine()}; Python {platform.python_version()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, {torch.get_num_threads()} torch threads")
    print(f"- transformers dtype: {runtime.precision} ({runtime.reason}); prompt tokens mean "
          f"{sum(map(len, prompts)) / n:.0f}, max {max(map(len, prompts))}; warm-up of {args.warmup} rows excluded\n")
    print("| task | engine | seconds | throughput | vs naive loop | accuracy | note |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        rate = r.get("rate")
        ratio = f"{rate / baseline[r['kind']]:.2f}×" if rate else "–"
        acc = f"{r['accuracy']:.3f}" if "accuracy" in r else "–"
        shown = f"{rate:,.1f} {r['unit']}" if rate else "not available"
        secs = f"{r['seconds']:.1f}" if rate else "–"
        print(f"| {r['kind']} | {r['what']} | {secs} | {shown} | {ratio} | {acc} | {r.get('note', '')} |")
    return 0


def llamacpp_rows(model_ref: str, prompts, new: int, task, rows, budget, truth) -> list[dict]:
    """llama.cpp's own speed (llama_cpp.Llama) and lmtailor's llama.cpp backend on the same prompts."""
    out: list[dict] = []
    n = len(prompts)
    try:
        import llama_cpp  # noqa: F401
        gguf = gguf_path(model_ref)
    except Exception as e:  # noqa: BLE001 - an unavailable engine is a row, not a crash
        reason = f"{type(e).__name__}: {e}"[:160]
        return [{"kind": "generate", "what": "llama.cpp (llama_cpp.Llama)", "note": f"not available: {reason}"},
                {"kind": "generate", "what": "lmtailor llama.cpp backend", "note": "not available"}]
    import llama_cpp

    threads = torch.get_num_threads()
    llm = llama_cpp.Llama(str(gguf), n_ctx=1024, n_batch=512, n_threads=threads, n_threads_batch=threads,
                          verbose=False)

    def greedy(prompt) -> list[int]:
        ids = []
        for token in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            ids.append(int(token))
            if len(ids) == new:
                break
        return ids

    for p in prompts[:2]:
        greedy(p)
    ids, seconds = timed(lambda: [greedy(p) for p in prompts])
    kind = Path(gguf).name
    out.append({"kind": "generate", "what": f"llama.cpp (llama_cpp.Llama), {kind}", "seconds": seconds,
                "rate": sum(map(len, ids)) / seconds, "unit": "tokens/s"})
    llm.close()
    try:
        from lmtailor.inference.llamacpp import load_llamacpp
    except ImportError as e:
        out.append({"kind": "generate", "what": "lmtailor llama.cpp backend", "note": f"not available: {e}"})
        return out
    loaded = load_llamacpp(model_ref)
    engine = loaded.model
    for p in prompts[:2]:
        engine.greedy(p, new, [])
    mine, seconds = timed(lambda: [engine.greedy(p, new, []) for p in prompts])
    agree = sum(a == b for a, b in zip(mine, ids))
    out.append({"kind": "generate", "what": f"lmtailor llama.cpp backend, {Path(engine.path).name}",
                "seconds": seconds, "rate": sum(map(len, mine)) / seconds, "unit": "tokens/s",
                "note": f"same tokens as llama_cpp.Llama in {agree}/{n} rows"})
    try:
        from lmtailor.inference.answer import answer
        from lmtailor.inference.backends.base import PredictRequest
        from lmtailor.inference.backends.llamacpp import LlamaCppPredictor
        from lmtailor.measure.meter import Meter

        predictor = LlamaCppPredictor(loaded)
        answer(predictor, PredictRequest(task, rows[:2], budget, mode="likelihood"), Meter())
        (preds, _), seconds = timed(lambda: answer(predictor, PredictRequest(task, rows, budget, mode="likelihood"),
                                                   Meter()))
        out.insert(0, {"kind": "classify", "what": "lmtailor llama.cpp backend, likelihood", "seconds": seconds,
                       "rate": n / seconds, "unit": "examples/s",
                       "accuracy": sum(p == t for p, t in zip(preds, truth)) / n})
    except ImportError:
        pass
    engine.close()
    return out


def gguf_path(model_ref: str) -> Path:
    """The GGUF llama.cpp runs for ``model_ref``: lmtailor's choice when its backend is installed, else the
    embedded model's packaged GGUF."""
    try:
        from lmtailor.inference.llamacpp import gguf_for
    except ImportError:
        from lmtailor.models.embedded import embedded_model

        entry = embedded_model(model_ref)
        return entry.require_installed() / entry.gguf.file_name
    return gguf_for(model_ref)


if __name__ == "__main__":
    sys.exit(main())
