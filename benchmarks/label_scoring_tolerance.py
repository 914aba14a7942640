"""How far label scores move with the prefix cache and with bf16: the measurement behind the tolerance of the
shared-prefix check in ``inference/label_scoring.py`` (``BF16_CHECK_TOLERANCE``).

On the demo's task and its 4-shot prompt (exemplars drawn as the prompt strategy draws them, seed 0), for each
model it scores the first ``--rows`` test rows' labels four ways and prints the largest relative difference of a
summed label log-prob, |s - ref| / max(1, |ref|) (the check's measure), over every (row, label):

  (a) fp32 with the prefix cache   vs fp32 without it        (the cache itself; exact up to fp32 reordering)
  (b) bf16 without the cache       vs fp32 without it        (bf16 rounding alone)
  (c) bf16 with the prefix cache   vs fp32 without it        (what the check compares in a bf16 run)

    PYTHONPATH=src python benchmarks/label_scoring_tolerance.py [--models smollm2-135m-instruct gemma3-270m] [--rows 16]
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch

from lmtailor.config import load_experiment
from lmtailor.data.prepare import prepare_data
from lmtailor.inference.hf_rows import pad_token_id, prepare_inputs
from lmtailor.inference.label_scoring import common_prefix_len, score_labels
from lmtailor.models import load_model
from lmtailor.prompting.formats import build_messages, encode_prompt, encode_prompt_completion
from lmtailor.runner import resolve_task
from lmtailor.runtime import Runtime
from lmtailor.strategies.prompt import draw_exemplars

DEMO = Path(__file__).resolve().parents[1] / "src" / "lmtailor" / "examples" / "demo.yaml"


def _relative(scores: list[list[float]], reference: list[list[float]]) -> list[float]:
    return [abs(s - r) / max(1.0, abs(r)) for row, ref in zip(scores, reference) for s, r in zip(row, ref)]


def _summary(diffs: list[float]) -> str:
    q = statistics.quantiles(diffs, n=100, method="inclusive")[98] if len(diffs) > 1 else diffs[0]
    return f"max {max(diffs):.2e}, p99 {q:.2e}, median {statistics.median(diffs):.2e} over {len(diffs)} scores"


def measure(model_ref: str, rows: int) -> None:
    exp = load_experiment(DEMO)
    prepared = prepare_data(exp.data, exp.task.type or "", DEMO.parent)
    splits = prepared.splits
    task = resolve_task(exp, prepared.task_defaults, splits)
    fp32 = load_model(model_ref, Runtime("cpu", "fp32", "measurement"))
    tok = fp32.tokenizer
    test = splits.test[:rows]
    shots = draw_exemplars(splits.train, 4, 0, True, frozenset(e.input for e in splits.test))
    texts, shots, _, _ = prepare_inputs(tok, task, test, shots, exp.budget.max_input_tokens)
    prompts = [encode_prompt(tok, build_messages(task, t, s)) for t, s in zip(texts, shots)]
    first = build_messages(task, texts[0], shots[0])
    labels = [encode_prompt_completion(tok, first, label)[1] for label in task.labels]
    pad = pad_token_id(tok)
    ref = score_labels(fp32.model, prompts, labels, pad, prefix_cache=False).scores
    cached32 = score_labels(fp32.model, prompts, labels, pad, prefix_cache=True)
    bf16 = copy.deepcopy(fp32.model).to(torch.bfloat16)
    plain16 = score_labels(bf16, prompts, labels, pad, prefix_cache=False).scores
    cached16 = score_labels(bf16, prompts, labels, pad, prefix_cache=True)
    print(f"{model_ref}: {len(prompts)} rows x {len(labels)} labels, prompts {min(map(len, prompts))}-"
          f"{max(map(len, prompts))} tokens, shared prefix {common_prefix_len(prompts)}")
    # a cache the self-check refuses falls back to the cache-free path: then its measured difference is the check's
    print(f"  (a) fp32 cached vs fp32 uncached: {_summary(_relative(cached32.scores, ref))} "
          f"(path {cached32.path}; check {cached32.check})")
    print(f"  (b) bf16 uncached vs fp32 uncached: {_summary(_relative(plain16, ref))}")
    print(f"  (c) bf16 cached vs fp32 uncached: {_summary(_relative(cached16.scores, ref))} (path {cached16.path})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    parser.add_argument("--rows", type=int, default=16)
    args = parser.parse_args()
    for ref in args.models:
        measure(ref, args.rows)


if __name__ == "__main__":
    main()
