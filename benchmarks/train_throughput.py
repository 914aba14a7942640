"""Training throughput: a plain Hugging Face ``Trainer`` + PEFT LoRA script against lmtailor's engine.

Both train the same model on the same tokenized rows (the packaged demo's pydoc-module rows: docstring -> module,
variable length, loss on the answer tokens only) with the same hyper-parameters, dtype and number of steps:

  plain     what a user writes from the PEFT docs: ``get_peft_model(model, LoraConfig(...))``, a ``Trainer`` with
            ``TrainingArguments``, each batch padded to its longest row (``DataCollatorForSeq2Seq``, labels -100 on
            the prompt and the padding);
  lmtailor  the code path ``lmtailor run`` takes for a ``finetune`` row: ``build_sft_rows`` -> ``sft.build_trainer``
            (TRL's SFTTrainer in lmtailor's engine) -> ``train_and_save``, with FinetuneConfig's defaults (for a
            decoder-only model with batches of several rows: padding-free, each batch flattened into one row);
  lmtailor-padded  the same with ``padding_free: false`` (each batch padded to its longest row), to show what the
            padding-free default gives on its own;
  lmtailor-fp32-casts  (``--engines``, not run by default) lmtailor with PEFT's fp32 cast of every adapter input
            put back (``training/adapter_casts.py`` undone), to measure that change side by side in bf16.

Each training runs in its own subprocess (so one run's allocations do not inflate the other's peak RSS), in the
order plain, lmtailor, lmtailor-padded, plain, ... Every number is measured around the training loop only
(callback at train begin/end), not model loading or saving:

  tokens/s     real tokens trained on (the rows' token counts, no padding) / training-loop seconds
  s/step       training-loop seconds / optimizer steps
  peak RSS     the subprocess's largest resident set (sampled every 50 ms while it trains; also ru_maxrss)
  final loss   mean answer-token cross-entropy of the trained model on the validation rows, computed by the same
               function for both (and the last logged training loss, for reference)
  MFU          FLOPs per trained token x tokens/s / peak FLOP/s. LoRA: 4N + 2T per token (forward 2N, backward
               activation gradients through every weight 2N, weight gradients only for the T trainable weights), as
               ``lmtailor.measure.meter.estimate_flops(kind="peft")`` counts; the peak is a large square matmul in the
               same dtype, measured in this run.

    .venv/bin/python benchmarks/train_throughput.py                         # smollm2-135m-instruct, 2 repetitions
    .venv/bin/python benchmarks/train_throughput.py --model tiny-llama      # a quick check of the script
    .venv/bin/python benchmarks/train_throughput.py --precision fp32        # the AVX2 path, on any CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "src" / "lmtailor" / "examples" / "demo.yaml"
# lmtailor-padded: lmtailor with the finetune option padding_free: false (padding-free is its default);
# lmtailor-fp32-casts: lmtailor with PEFT's fp32 cast of every adapter input back on (training/adapter_casts.py off),
# to measure that change side by side (only differs from lmtailor in bf16)
ENGINES = ("plain", "lmtailor", "lmtailor-padded", "lmtailor-fp32-casts")
DEFAULT_ENGINES = ("plain", "lmtailor", "lmtailor-padded")
MAX_REPEATS, MAX_STEPS = 5, 200  # bounded: the whole script is meant to finish within 10 minutes on 2 cores


# ---------------------------------------------------------------------------------------------------------------
# The shared setup: rows, hyper-parameters, runtime
# ---------------------------------------------------------------------------------------------------------------

def demo_finetune_config(steps: int | None):
    """The demo's LoRA row (src/lmtailor/examples/demo.yaml) as a FinetuneConfig; no validation during training."""
    from lmtailor.config import load_experiment
    from lmtailor.strategies.finetune import FinetuneConfig

    exp = load_experiment(DEMO)
    raw = next(s for s in exp.strategy_configs() if s.name == "finetune" and s.method.name == "lora")
    return FinetuneConfig(**{**raw.model_dump(exclude_unset=True), "eval_strategy": "no", "max_steps": steps,
                             "checkpoint_steps": 10_000}), exp


def demo_rows(tokenizer, cfg, exp):
    """(train, validation) pre-tokenized the way ``finetune`` tokenizes them (input_ids + completion_mask)."""
    from lmtailor.data.prepare import prepare_data
    from lmtailor.runner import resolve_task
    from lmtailor.strategies.finetune import FinetuneStrategy
    from lmtailor.training.dataset import build_sft_rows

    prepared = prepare_data(exp.data, exp.task.type or "", DEMO.parent)
    task = FinetuneStrategy(cfg).tuned_task(resolve_task(exp, prepared.task_defaults, prepared.splits))
    budget = exp.budget.to_budget()
    return (build_sft_rows(tokenizer, task, prepared.splits.train, budget),
            build_sft_rows(tokenizer, task, prepared.splits.validation, budget), budget)


class _RssSampler(threading.Thread):
    """The process's resident set size, sampled every 50 ms; ``peak`` is the largest seen."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        import psutil

        self.proc, self.peak, self.stop = psutil.Process(), 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self.stop.wait(0.05)


def _timing_callback(box: dict):
    from transformers import TrainerCallback

    class LoopTimer(TrainerCallback):
        """Wall time of the training loop alone (not loading, not saving), and the RSS during it."""

        def on_train_begin(self, args, state, control, **kwargs):
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            box["sampler"] = _RssSampler()
            box["sampler"].start()
            box["start"] = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()  # the loop's last kernels belong to its time
                box["cuda_train_peak"] = torch.cuda.max_memory_allocated()
            box["seconds"] = time.perf_counter() - box["start"]
            box["sampler"].stop.set()
            box["rss_train_peak"] = box["sampler"].peak

    return LoopTimer()


def answer_loss(model, rows, batch_size: int = 8) -> float:
    """Mean cross-entropy over the answer tokens (completion_mask 1) of ``rows``, one row at a time per batch slot
    (padding on the right, so the answer positions are unaffected)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            width = max(len(r["input_ids"]) for r in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            for i, r in enumerate(chunk):
                n = len(r["input_ids"])
                ids[i, :n] = torch.tensor(r["input_ids"])
                mask[i, :n] = 1
                labels[i, :n] = torch.tensor([t if m else -100 for t, m in zip(r["input_ids"], r["completion_mask"])])
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                                   ignore_index=-100, reduction="sum")
            total += loss.item()
            count += int((labels[:, 1:] != -100).sum())
    return total / count


# ---------------------------------------------------------------------------------------------------------------
# The two engines (each runs in its own subprocess)
# ---------------------------------------------------------------------------------------------------------------

def train_plain(model_path: str, cfg, train_rows, runtime, seed: int, out: Path, box: dict):
    """The baseline as the PEFT docs write it: LoraConfig + get_peft_model + Trainer, pad to the longest in batch."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainingArguments)

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=runtime.dtype)
    m = cfg.method
    lora = LoraConfig(task_type="CAUSAL_LM", r=m.r, lora_alpha=m.alpha, lora_dropout=m.dropout,
                      target_modules=m.target_modules, bias="none")
    model = get_peft_model(model, lora)

    def to_features(row):  # loss on the answer only, as lmtailor's completion_only_loss
        return {"input_ids": row["input_ids"], "attention_mask": [1] * len(row["input_ids"]),
                "labels": [t if m else -100 for t, m in zip(row["input_ids"], row["completion_mask"])]}

    dataset = train_rows.map(to_features, remove_columns=["completion_mask"])
    args = TrainingArguments(
        output_dir=str(out), seed=seed, max_steps=cfg.max_steps, learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size, warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, bf16=runtime.precision == "bf16", fp16=runtime.precision == "fp16",
        use_cpu=runtime.device == "cpu", logging_steps=cfg.logging_steps, save_strategy="no", report_to=[],
        include_num_input_tokens_seen="non_padding", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100),
                      callbacks=[_timing_callback(box)])
    _count_tokens(trainer, box)
    trainer.train()
    return trainer.model, trainer.state


def train_lmtailor(model_ref: str, cfg, train_rows, runtime, seed: int, out: Path, box: dict, max_seq_len: int):
    """lmtailor's finetune path: load_model -> sft.build_trainer -> train_and_save (FinetuneStrategy._train)."""
    from lmtailor.models import load_model
    from lmtailor.training.common import train_and_save
    from lmtailor.training.sft import build_trainer

    loaded = load_model(model_ref, runtime)
    trainer = build_trainer(loaded.model, loaded.tokenizer, cfg, cfg.method, train_rows, None, runtime, seed,
                            out / "checkpoints", max_seq_len)
    if box.get("fp32_casts"):  # PEFT's own behaviour: cast every adapter input to fp32 (and back)
        for module in trainer.model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = True
    trainer.add_callback(_timing_callback(box))
    _count_tokens(trainer, box)
    box["padding_free"] = bool(trainer.args.padding_free)
    state, _, _ = train_and_save(trainer, cfg, loaded.tokenizer, out, "adapter")
    return trainer.model, state


def _count_tokens(trainer, box: dict) -> None:
    """Count the real tokens of every row the trainer batches (before any padding or flattening): the same
    definition for both engines, independent of pad ids and of how a batch is laid out."""
    collate = trainer.data_collator
    box["tokens"] = 0

    def counting(features):
        box["tokens"] += sum(len(f["input_ids"]) for f in features)
        return collate(features)

    trainer.data_collator = counting


def worker(args) -> dict:
    """One training in this process; returns the measurements."""
    import torch

    from lmtailor.measure.meter import estimate_flops
    from lmtailor.models.loading import load_tokenizer
    from lmtailor.models.sources import resolve_model
    from lmtailor.runtime import detect_runtime
    from lmtailor.training.common import count_params

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    runtime = detect_runtime(args.precision)
    cfg, exp = demo_finetune_config(args.steps)
    model_path = str(resolve_model(args.model).path)
    tokenizer = load_tokenizer(model_path)
    train, validation, budget = demo_rows(tokenizer, cfg, exp)
    steps = args.steps or -(-train.rows // cfg.batch_size)  # default: one epoch, as the demo trains
    cfg = cfg.model_copy(update={"max_steps": steps})
    if args.worker == "lmtailor-padded":
        cfg = cfg.model_copy(update={"padding_free": False})
    box: dict = {"fp32_casts": args.worker == "lmtailor-fp32-casts"}
    with tempfile.TemporaryDirectory(prefix=f"tt-{args.worker}-") as tmp:
        if args.worker == "plain":
            model, state = train_plain(model_path, cfg, train.dataset, runtime, args.seed, Path(tmp), box)
        else:
            model, state = train_lmtailor(args.model, cfg, train.dataset, runtime, args.seed, Path(tmp), box,
                                          budget.max_seq_len)
            print(f"{args.worker}: {'padding-free' if box['padding_free'] else 'padded'} batches", file=sys.stderr)
    trainable, total = count_params(model)
    losses = [e["loss"] for e in state.log_history if "loss" in e]
    return {
        "engine": args.worker, "padding_free": box.get("padding_free", False), "steps": state.global_step, "tokens": box["tokens"], "seconds": box["seconds"],
        "tokens_per_s": box["tokens"] / box["seconds"], "s_per_step": box["seconds"] / max(1, state.global_step),
        "rss_train_peak": box["rss_train_peak"], "cuda_train_peak": box.get("cuda_train_peak"),
        "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "last_train_loss": losses[-1] if losses else None,
        "val_answer_loss": answer_loss(model, validation.dataset.to_list()),
        "trainable": trainable, "total": total, "flops_per_token": estimate_flops(total, 1, "peft", trainable),
        "precision": runtime.precision, "torch_threads": torch.get_num_threads(),
        "train_rows": train.rows, "lr": cfg.learning_rate, "batch_size": cfg.batch_size,
    }


# ---------------------------------------------------------------------------------------------------------------
# The driver: peak FLOP/s, alternating subprocesses, the table
# ---------------------------------------------------------------------------------------------------------------

def peak_flops(precision: str, device: str = "cpu", size: int = 2048, seconds: float = 3.0) -> float:
    """FLOP/s of a large square matmul in the runtime's dtype on its device: the best of repeated timings."""
    import torch

    from lmtailor.runtime import _DTYPES

    dtype = _DTYPES[precision]
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(2):
        a @ b  # warm-up (oneDNN / cuBLAS pick their kernel on the first call)
    sync()
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * size ** 3 / best


def machine() -> dict:
    """Date, CPU, cores, relevant flags, versions, git commit."""
    import peft
    import torch
    import transformers
    import trl

    info = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "trl": trl.__version__, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    from bench_env import commit, cpu

    info["cpu"], info["flags"] = cpu()
    info["commit"] = commit(REPO)
    return info


def run_one(engine: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", engine, "--model", args.model, "--seed", str(args.seed),
           "--threads", str(args.threads or 0), "--precision", args.precision]
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"the {engine} run failed (exit {proc.returncode}); its stderr is above")
    return json.loads(lines[-1][len("RESULT "):])


def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


def _memory(r: dict) -> str:
    """Peak RSS of the training loop, and the CUDA allocator's peak where a GPU trained."""
    cuda = r.get("cuda_train_peak")
    return _mb(r["rss_train_peak"]) + (f"; CUDA {_mb(cuda)}" if cuda is not None else "")


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"  # no training loss is logged in runs shorter than a log step


def _median(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def report(results: list[dict], peak: float, info: dict, args) -> str:
    """The markdown table: every run, then the medians per engine and each one's ratio to plain."""
    first = results[0]
    lines = [f"date {info['date']}; commit {info['commit']}; {info['cpu']}, {info['cores']} cores "
             f"({info['flags']}); torch {info['torch']} (threads: {first['torch_threads']}), transformers "
             f"{info['transformers']}, peft {info['peft']}, trl {info['trl']}, Python {info['python']}",
             f"model {args.model}, dtype {first['precision']} (lmtailor's detect_runtime, both engines); LoRA "
             f"r={args.cfg.method.r} alpha={args.cfg.method.alpha} on {args.cfg.method.target_modules}; lr {first['lr']:g}, "
             f"batch {first['batch_size']}, {first['steps']} steps over {first['train_rows']} rows; loss on answer "
             "tokens only (both)",
             f"peak: {peak / 1e9:,.0f} GFLOP/s ({first['precision']} {args.peak_size}x{args.peak_size} matmul); "
             "FLOPs per token 4N+2T = "
             f"{first['flops_per_token'] / 1e6:,.0f} M (N={first['total']:,}, T={first['trainable']:,})", "",
             "| run | engine | steps | real tokens | tokens/s | s/step | peak RSS (training; CUDA) | final train loss "
             "| val answer loss | MFU |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for i, r in enumerate(results, 1):
        mfu = r["flops_per_token"] * r["tokens_per_s"] / peak
        engine = r["engine"] + (" (padding-free)" if r["padding_free"] else "")
        lines.append(f"| {i} | {engine} | {r['steps']} | {r['tokens']:,} | {r['tokens_per_s']:,.0f} | "
                     f"{r['s_per_step']:.2f} | {_memory(r)} | {_loss(r['last_train_loss'])} | "
                     f"{r['val_answer_loss']:.4f} | {100 * mfu:.2f}% |")
    med = {e: {k: _median([r[k] for r in results if r["engine"] == e])
               for k in ("tokens_per_s", "s_per_step", "rss_train_peak", "val_answer_loss", "last_train_loss")}
           for e in args.engines}
    lines += ["", "| median | tokens/s | s/step | peak RSS | val answer loss | MFU |",
              "| --- | --- | --- | --- | --- | --- |"]
    for e in args.engines:
        m = med[e]
        lines.append(f"| {e} | {m['tokens_per_s']:,.0f} | {m['s_per_step']:.2f} | {_mb(m['rss_train_peak'])} | "
                     f"{m['val_answer_loss']:.4f} | {100 * first['flops_per_token'] * m['tokens_per_s'] / peak:.2f}% |")
    a = med["plain"]
    for e in args.engines[1:]:
        b = med[e]
        lines.append(f"| {e} / plain | {b['tokens_per_s'] / a['tokens_per_s']:.2f}x | "
                     f"{b['s_per_step'] / a['s_per_step']:.2f}x | {b['rss_train_peak'] / a['rss_train_peak']:.2f}x | "
                     f"{b['val_answer_loss'] - a['val_answer_loss']:+.4f} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model alias or path (decoder-only)")
    parser.add_argument("--repeats", type=int, default=2,
                        help=f"runs per engine, alternating (at most {MAX_REPEATS}; fewer if --deadline comes first)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"optimizer steps per run (default: one epoch of the demo's rows; at most {MAX_STEPS})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in every run (default: torch's own choice, one per core)")
    parser.add_argument("--timeout", type=float, default=400, help="seconds one run may take")
    parser.add_argument("--deadline", type=float, default=540,
                        help="no repetition is started that would end after this many seconds (the script's bound)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="dtype of both engines (auto: lmtailor's detect_runtime; fp32 on an AMX CPU is the proxy "
                             "for an AVX2 CPU)")
    parser.add_argument("--engines", default=",".join(DEFAULT_ENGINES),
                        help=f"comma-separated, plain first (of {', '.join(ENGINES)})")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.engines = tuple(args.engines.split(","))
    if args.engines[0] != "plain" or not set(args.engines) <= set(ENGINES):
        parser.error(f"--engines: plain first, then any of {', '.join(ENGINES[1:])}")
    if args.worker:
        os.environ.setdefault("TQDM_DISABLE", "1")
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return
    if not 1 <= args.repeats <= MAX_REPEATS or (args.steps is not None and not 1 <= args.steps <= MAX_STEPS):
        parser.error(f"--repeats must be 1..{MAX_REPEATS} and --steps 1..{MAX_STEPS}")
    from lmtailor.runtime import detect_runtime

    args.cfg, _ = demo_finetune_config(args.steps)
    info = machine()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    runtime = detect_runtime(args.precision)
    args.peak_size = 8192 if runtime.device.startswith("cuda") else 2048  # 2048 cubed is too little for a GPU
    peak = peak_flops(runtime.precision, runtime.device, args.peak_size)
    print(f"peak matmul: {peak / 1e9:,.0f} GFLOP/s", flush=True)
    results, started = [], time.perf_counter()
    for rep in range(args.repeats):
        elapsed = time.perf_counter() - started
        if rep and elapsed / rep * (rep + 1) > args.deadline:  # another pair would end past the deadline
            print(f"stopping after {rep} repetitions: another would end past --deadline {args.deadline:.0f} s")
            break
        for engine in args.engines:
            r = run_one(engine, args)
            print(f"[{rep + 1}/{args.repeats}] {engine}: {r['tokens_per_s']:,.0f} tokens/s, {r['s_per_step']:.2f} "
                  f"s/step, val answer loss {r['val_answer_loss']:.4f}", flush=True)
            results.append(r)
    print()
    print(report(results, peak, info, args))


if __name__ == "__main__":
    main()
