"""Where a LoRA training step's time goes: forward, forward + backward, and what dropout and PEFT's casts cost.

Builds the trainer ``lmtailor run`` builds for the demo's LoRA row (``train_throughput.py``'s helpers: the same
rows, hyper-parameters and precision), takes its first ``--batches`` batches, and times, in this one process,
each batch through the trainer's own ``compute_loss`` (under the autocast the trainer uses) with and without the
backward, ``--repeats`` times; it prints the median seconds per batch of each variant:

  forward                 no gradient
  forward + backward      what a training step computes before the optimizer
  ... LoRA dropout 0      the same with every dropout module's p set to 0: what dropout costs
  ... PEFT's fp32 casts   the same with PEFT's fp32 round trip of adapter inputs put back (training/adapter_casts.py
                          undone): what that change saves in bf16 (in fp32 there is no autocast, so nothing)

The variants alternate batch by batch, so a slow moment of the machine falls on all of them.

    .venv/bin/python benchmarks/train_step_anatomy.py                      # smollm2-135m-instruct, 6 batches x 2
    .venv/bin/python benchmarks/train_step_anatomy.py --precision fp32     # the AVX2 path
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_throughput as tt  # noqa: E402  (the shared setup of the training benchmarks)

VARIANTS = ("forward", "forward + backward", "forward + backward, LoRA dropout 0",
            "forward + backward, PEFT's fp32 casts")


def build(args):
    """The demo's LoRA trainer on ``args.model`` and its first ``args.batches`` batches."""
    import torch

    from lmtailor.models import load_model
    from lmtailor.models.loading import load_tokenizer
    from lmtailor.models.sources import resolve_model
    from lmtailor.runtime import detect_runtime
    from lmtailor.training.sft import build_trainer

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    runtime = detect_runtime(args.precision)
    cfg, exp = tt.demo_finetune_config(args.batches)
    train, _, budget = tt.demo_rows(load_tokenizer(str(resolve_model(args.model).path)), cfg, exp)
    loaded = load_model(args.model, runtime)
    trainer = build_trainer(loaded.model, loaded.tokenizer, cfg, cfg.method, train.dataset, None, runtime, 0,
                            Path(tempfile.mkdtemp(prefix="anatomy-")), budget.max_seq_len)
    trainer.current_gradient_accumulation_steps = 1
    batches = [b for _, b in zip(range(args.batches), trainer.get_train_dataloader())]
    return trainer, batches, runtime


def _switches(model):
    """Setters for the dropout p and PEFT's cast flag of every adapted layer, and their values as built."""
    import torch

    from lmtailor.training.adapter_casts import skip_redundant_adapter_casts

    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    ps = [m.p for m in dropouts]

    def dropout(on: bool) -> None:
        for m, p in zip(dropouts, ps):
            m.p = p if on else 0.0

    def casts(on: bool) -> None:
        if on:
            for m in model.modules():
                if hasattr(m, "cast_input_dtype_enabled"):
                    m.cast_input_dtype_enabled = True
        else:
            skip_redundant_adapter_casts(model)

    return dropout, casts


def measure(trainer, batches, runtime, repeats: int) -> dict[str, list[float]]:
    """Seconds per batch of every variant, the variants alternating batch by batch."""
    import torch

    model = trainer.model
    model.train()
    dropout, casts = _switches(model)
    bf16 = runtime.precision == "bf16"

    def run(batch, backward: bool) -> float:
        start = time.perf_counter()
        with torch.autocast(runtime.device, dtype=torch.bfloat16, enabled=bf16), \
                torch.set_grad_enabled(backward):
            loss = trainer.compute_loss(model, dict(batch))
        if backward:
            loss.backward()
            model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    run(batches[0], True)  # warm-up: first-call allocations and kernel choices
    for _ in range(repeats):
        for batch in batches:
            times["forward"].append(run(batch, False))
            times["forward + backward"].append(run(batch, True))
            dropout(False)
            times["forward + backward, LoRA dropout 0"].append(run(batch, True))
            dropout(True)
            casts(True)
            times["forward + backward, PEFT's fp32 casts"].append(run(batch, True))
            casts(False)
    return times


def report(times: dict[str, list[float]], tokens: list[int], runtime, args) -> str:
    base = statistics.median(times["forward + backward"])
    lines = [f"model {args.model}, {runtime.precision}, {len(tokens)} batches of {min(tokens)}-{max(tokens)} tokens "
             f"x {args.repeats} repeats; median seconds per batch", "",
             "| variant | s per batch | / forward + backward |", "| --- | --- | --- |"]
    for name in VARIANTS:
        median = statistics.median(times[name])
        lines.append(f"| {name} | {median:.3f} | {median / base:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--batches", type=int, default=6, help="the demo's first N batches (default 6)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    if not 1 <= args.batches <= 24 or not 1 <= args.repeats <= 10:
        parser.error("--batches must be 1..24 and --repeats 1..10")
    trainer, batches, runtime = build(args)
    times = measure(trainer, batches, runtime, args.repeats)
    info = tt.machine()
    print(f"date {info['date']}; commit {info['commit']}; {info['cpu']}, {info['cores']} cores ({info['flags']}); "
          f"torch {info['torch']} (threads: {info['torch_threads']}), transformers {info['transformers']}, "
          f"peft {info['peft']}")
    print(report(times, [b["input_ids"].numel() for b in batches], runtime, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
