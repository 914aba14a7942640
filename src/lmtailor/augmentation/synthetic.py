"""Synthetic training rows written by a teacher model from a few real ones, self-instruct style, then filtered.

Each attempt shows the teacher ``seeds_per_prompt`` training rows sampled by the seed (for classification, also
the label the new row must have, taken round-robin over the labels that still need rows) and asks for one new
row in the same ``Input:`` / ``Output:`` layout. Every reply is parsed and filtered (``synthetic_filters``):
unparseable, label not in the set, too short or too long, an exact or near duplicate of a real row (train,
validation or test) or of an accepted synthetic row, too close to the seeds it was shown, or beyond its label's
share. Dropped replies go to a rejection log with the reason. Kept rows carry their provenance in ``meta``.

The teacher's tokens, time and FLOPs are counted in the meter's ``data`` phase, a set-up cost. Results are cached
under ``cache_dir()/synthetic/<key>/``, keyed by everything that decides them (teacher weights and template, the
config, the task, the real rows, the seed): a rerun loads the rows and the log and generates nothing, and is
charged the teacher's cost stored with them (``measure/setup_cost.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from lmtailor.augmentation import synthetic_filters as sf
from lmtailor.augmentation.synthetic_teacher import Completion, Sampling, Teacher
from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.errors import UserError
from lmtailor.io import write_json_atomic, write_jsonl_atomic
from lmtailor.measure.meter import Meter, estimate_flops
from lmtailor.measure.setup_cost import SetupCost
from lmtailor.paths import cache_dir
from lmtailor.rundir import RunDir

CACHE_FORMAT = "synthetic-v2"  # bump when prompts, parsing or filters change, so old caches are not reused
log = logging.getLogger("lmtailor")
REPLY_START = "Input:"  # every reply starts the requested layout (see Sampling.reply_start)


class SyntheticConfig(BaseModel):
    """How many synthetic rows to make, how the teacher samples them, and how strictly they are filtered."""

    model_config = ConfigDict(extra="forbid")

    teacher: str | None = Field(None, description="model that writes the rows: alias, local directory, hub id "
                                "or openai:MODEL@BASE_URL "
                                "(default: the model being trained)")
    rows: int = Field(256, gt=0, description="synthetic rows to keep")
    seeds_per_prompt: int = Field(3, gt=0, description="real training rows shown to the teacher per prompt")
    max_attempts: int | None = Field(None, gt=0, description="stop after this many generations even if short of "
                                     "`rows` (default: 4 x rows)")
    batch_size: int = Field(8, gt=0, description="prompts generated together")
    temperature: float = Field(0.7, ge=0, description="sampling temperature (0: greedy); 0.7 as in self-instruct")
    top_p: float = Field(0.5, gt=0, le=1, description="nucleus sampling mass; 0.5 as in self-instruct")
    max_new_tokens: int = Field(256, gt=0, description="longest reply the teacher may write")
    novelty_rouge_l: float = Field(0.7, gt=0, le=1, description="drop a row whose input has ROUGE-L F1 >= this "
                                   "to a seed row its prompt showed (self-instruct: 0.7)")
    near_duplicate_rouge_l: float = Field(0.7, gt=0, le=1, description="drop a row whose input has ROUGE-L F1 >= "
                                          "this to any real row (train, validation, test) or kept synthetic row")
    min_input_chars: int = Field(10, ge=1, description="drop inputs shorter than this many characters")
    max_input_tokens: int = Field(256, gt=0, description="drop inputs longer than this many teacher tokens; seed "
                                  "inputs shown in prompts are cut to it")
    balance_labels: bool = Field(True, description="classification: give each label an equal share of the rows")
    seed: int | None = Field(None, description="sampling seed (default: the run's seed)")
    control: bool = Field(True, description="also run the equal-steps control: the same row trained on the "
                                            "original rows only for as many optimizer steps (strategies/controls.py); "
                                            "false: the report names the step ratio beside the gain instead")

    def attempt_limit(self) -> int:
        """Generations allowed: ``max_attempts``, else four per wanted row."""
        return self.max_attempts if self.max_attempts is not None else 4 * self.rows


@dataclass
class SyntheticResult:
    """Kept rows (with provenance in ``meta``), one log entry per dropped reply, and counts."""

    rows: list[Example]
    rejections: list[dict]
    stats: dict = field(default_factory=dict)


def build_prompt(task: TaskSpec, seeds: Sequence[Example], label: str | None) -> str:
    """The teacher's request: the task, the seed rows as ``Input:``/``Output:`` blocks, and what to write."""
    head = task.instruction.strip() or "A text task, shown by examples."
    if task.type == "classification" and task.labels:
        head += "\nEach output is exactly one of these labels: " + ", ".join(task.labels) + "."
    blocks = [f"Example {i}\nInput: {ex.input}\nOutput: {ex.target}" for i, ex in enumerate(seeds, 1)]
    ask = "Write one new example of this task, different from the examples above"
    ask += f", whose output is {label}." if label is not None else "."
    ask += " Reply in exactly this layout and nothing else:\nInput: <the new input>\nOutput: <its output>"
    return "\n\n".join([f"Task: {head}", "Examples:", *blocks, ask])


def cache_key(task: TaskSpec, train_rows: Sequence[Example], forbidden_rows: Sequence[Example],
              cfg: SyntheticConfig, teacher: Teacher, seed: int) -> str:
    """Digest of everything the result depends on: teacher, config, task, real rows and seed."""
    what = {"format": CACHE_FORMAT, "teacher": teacher.ref, "teacher_identity": teacher.identity(),
            "config": cfg.model_dump(exclude={"control"}), "seed": seed,  # the control changes no row
            "task": [task.name, task.type, task.instruction, list(task.labels or ())],
            "train": [[e.id, e.input, e.target] for e in train_rows],
            "forbidden": [[e.id, e.input] for e in forbidden_rows]}
    return hashlib.sha256(json.dumps(what, ensure_ascii=False).encode()).hexdigest()[:32]


def default_cache_root() -> Path:
    """Where synthetic results are cached: ``cache_dir()/synthetic``."""
    return cache_dir() / "synthetic"


def generate_synthetic(task: TaskSpec, train_rows: Sequence[Example], forbidden_rows: Sequence[Example],
                       cfg: SyntheticConfig, teacher: Teacher, meter: Meter, cache_dir: Path | None = None,
                       seed: int = 0) -> SyntheticResult:
    """Make up to ``cfg.rows`` filtered synthetic rows from ``train_rows`` (or load them from the cache).

    ``forbidden_rows`` are the other real rows (validation and test): no synthetic input may copy or nearly copy
    them, nor a training row. The teacher's cost goes into ``meter``'s ``data`` phase and is stored with the cache
    entry; a cache hit charges that stored cost again (``Meter.charge_cached``), so a rerun costs what the first
    run did: a deployment pays for its teacher once, whatever this machine had cached.
    """
    _check(task, train_rows)
    seed = cfg.seed if cfg.seed is not None else seed
    where = (cache_dir or default_cache_root()) / cache_key(task, train_rows, forbidden_rows, cfg, teacher, seed)
    cached = load_cached(where)
    if cached is not None:
        log.info("synthetic data: %d rows and %d rejections loaded from %s; the teacher generated nothing now, and "
                 "its stored cost is charged to this row", len(cached.rows), len(cached.rejections), where)
        meter.charge_cached(load_cached_cost(where), source=f"synthetic rows {where.name}")
        return cached
    mark = meter.mark("data")
    with meter.phase("data"):
        result = _Generation(task, train_rows, forbidden_rows, cfg, teacher, seed).run()
    tokens = result.stats["prompt_tokens"] + result.stats["completion_tokens"]
    meter.add_tokens("data", tokens)
    meter.add_examples("data", result.stats["attempts"])
    params = teacher.parameter_count()
    if params:
        meter.add_flops("data", estimate_flops(params, tokens, "inference"))
    result.stats["cache_key"] = where.name
    save_cached(where, result, meter.cost_since(mark))
    if result.stats["short_by"]:
        log.warning("synthetic data: kept %d of %d rows after %d attempts (rejections: %s)", len(result.rows),
                    cfg.rows, result.stats["attempts"], result.stats["rejected_by_reason"])
    return result


def _check(task: TaskSpec, train_rows: Sequence[Example]) -> None:
    if not train_rows:
        raise UserError("synthetic data needs at least one training row to show the teacher; the training split is "
                        "empty")
    if task.type == "classification" and not task.labels:
        raise UserError(f"task {task.name!r} is a classification task without labels, so synthetic rows cannot be "
                        "checked against the label set; set task.labels")
    own = next((r for r in train_rows if "instruction" in r.meta or r.meta.get("history")), None)
    if own is not None:
        # The teacher is asked for Input/Output pairs under the task's instruction; rows that carry their own
        # instruction or conversation (data.format: alpaca / messages) would come back without one.
        raise UserError(f"training row {own.id!r} carries its own instruction or conversation (data.format: alpaca "
                        "or messages); synthetic rows are made for tasks with one task.instruction only. Remove the "
                        "synthetic: block, or use data.format: fields with a task.instruction")


class _Generation:
    """One generation run: the prompt plan, the filter state, and the loop over batches."""

    def __init__(self, task: TaskSpec, train_rows: Sequence[Example], forbidden_rows: Sequence[Example],
                 cfg: SyntheticConfig, teacher: Teacher, seed: int) -> None:
        self.task, self.train, self.cfg, self.teacher, self.seed = task, list(train_rows), cfg, teacher, seed
        self.rng = random.Random(seed)
        self.labels = list(task.labels) if task.type == "classification" else []
        self.quotas = sf.label_quotas(self.labels, cfg.rows) if self.labels and cfg.balance_labels else None
        self.turn = 0
        self.exact, self.near = sf.ExactIndex(), sf.RougeIndex()
        for row in [*self.train, *forbidden_rows]:
            owner = f"real row {row.id!r}"
            self.exact.add(row.input, owner)
            self.near.add(row.input, owner)
        self.rows: list[Example] = []
        self.rejections: list[dict] = []
        self.by_label: Counter = Counter()

    def _plan(self) -> tuple[list[Example], str | None]:
        """Seeds for one prompt, and for classification the label to ask for (round-robin over open labels)."""
        seeds = self.rng.sample(self.train, min(self.cfg.seeds_per_prompt, len(self.train)))
        if not self.labels:
            return seeds, None
        # The loop stops once every quota is full, so some label is open whenever a prompt is planned.
        open_labels = [lb for lb in self.labels if self.quotas is None or self.by_label[lb] < self.quotas[lb]]
        label = open_labels[self.turn % len(open_labels)]
        self.turn += 1
        return seeds, label

    def _messages(self, seeds: list[Example], label: str | None) -> list[dict]:
        shown = [Example(e.id, self.teacher.truncate(e.input, self.cfg.max_input_tokens), e.target) for e in seeds]
        return [{"role": "user", "content": build_prompt(self.task, shown, label)}]

    def _judge(self, text: str, seeds: list[Example]) -> sf.Parsed | sf.Rejected:
        """The reply as a row, or the first filter it fails (cheap checks first)."""
        parsed = sf.parse_example(text)
        if isinstance(parsed, sf.Rejected):
            return parsed
        if self.labels:
            if (bad := sf.check_label(parsed.target, self.labels)) is not None:
                return bad
            parsed = sf.Parsed(parsed.input, sf.canonical_label(parsed.target, self.labels) or parsed.target)
        seed_index = sf.RougeIndex((s.input, f"seed row {s.id!r}") for s in seeds)
        verdict = (sf.check_length(parsed.input, self.teacher.count_tokens, self.cfg.min_input_chars,
                                   self.cfg.max_input_tokens)
                   or sf.check_exact_duplicate(parsed.input, self.exact)
                   or sf.check_novelty(parsed.input, seed_index, self.cfg.novelty_rouge_l)
                   or sf.check_near_duplicate(parsed.input, self.near, self.cfg.near_duplicate_rouge_l)
                   or (sf.check_label_quota(parsed.target, self.by_label, self.quotas) if self.quotas else None))
        return verdict or parsed

    def _take(self, reply: Completion, attempt: int, seeds: list[Example], label: str | None) -> None:
        seed_ids = [s.id for s in seeds]
        verdict = (sf.Rejected(sf.SURPLUS, f"{self.cfg.rows} rows were already kept") if len(self.rows) >= self.cfg.rows
                   else self._judge(reply.text, seeds))
        if isinstance(verdict, sf.Rejected):
            self.rejections.append({"attempt": attempt, "raw_output": reply.text, "reason": verdict.reason,
                                    "detail": verdict.detail, "seed_ids": seed_ids})
            return
        digest = hashlib.sha256(f"{verdict.input}\0{verdict.target}".encode()).hexdigest()[:12]
        meta = {"origin": "synthetic", "teacher": self.teacher.ref, "seed_ids": seed_ids, "attempt": attempt}
        if label is not None:
            meta["requested_label"] = label
        row = Example(f"syn-{digest}", verdict.input, verdict.target, meta)
        self.rows.append(row)
        self.by_label[row.target] += 1
        self.exact.add(row.input, f"synthetic row {row.id!r}")
        self.near.add(row.input, f"synthetic row {row.id!r}")

    def run(self) -> SyntheticResult:
        """Generate batch after batch until ``rows`` are kept or the attempts run out."""
        cfg, limit, attempt, batch_no = self.cfg, self.cfg.attempt_limit(), 0, 0
        prompt_tokens = completion_tokens = 0
        started = time.perf_counter()
        bar = tqdm(total=cfg.rows, desc=f"synthetic rows ({self.teacher.ref})", unit="row")
        try:
            while len(self.rows) < cfg.rows and attempt < limit:
                plans = [self._plan() for _ in range(min(cfg.batch_size, limit - attempt))]
                # One seed per batch, derived from the run seed: a batch samples the same whatever ran before it.
                sampling = Sampling(cfg.temperature, cfg.top_p, cfg.max_new_tokens, self.seed * 1_000_003 + batch_no,
                                    reply_start=REPLY_START)
                replies = self.teacher.complete([self._messages(s, lb) for s, lb in plans], sampling)
                batch_no += 1
                kept_before = len(self.rows)
                for (seeds, label), reply in zip(plans, replies):
                    attempt += 1
                    prompt_tokens += reply.prompt_tokens
                    completion_tokens += reply.completion_tokens
                    self._take(reply, attempt, seeds, label)
                bar.update(len(self.rows) - kept_before)
                bar.set_postfix(attempts=attempt, rejected=len(self.rejections))
        finally:
            bar.close()
        return SyntheticResult(self.rows, self.rejections, self._stats(attempt, limit, prompt_tokens,
                                                                         completion_tokens, started))

    def _stats(self, attempts: int, limit: int, prompt_tokens: int, completion_tokens: int, started: float) -> dict:
        return {"teacher": self.teacher.ref, "requested_rows": self.cfg.rows, "kept": len(self.rows),
                "short_by": self.cfg.rows - len(self.rows), "attempts": attempts, "attempt_limit": limit,
                "rejected": len(self.rejections),
                "rejected_by_reason": dict(Counter(r["reason"] for r in self.rejections)),
                "acceptance_rate": round(len(self.rows) / attempts, 4) if attempts else None,
                "labels": dict(self.by_label) if self.labels else None,
                "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "generation_wall_s": round(time.perf_counter() - started, 3), "cached": False}


def example_record(row: Example) -> dict:
    """A row as one JSONL object (id, input, target, meta)."""
    return {"id": row.id, "input": row.input, "target": row.target, "meta": row.meta}


def save_cached(where: Path, result: SyntheticResult, cost: SetupCost | None = None) -> None:
    """Store a result: rows and rejections first, the manifest (with what making them cost) last, each atomically."""
    write_jsonl_atomic(where / "rows.jsonl", (example_record(r) for r in result.rows))
    write_jsonl_atomic(where / "rejections.jsonl", result.rejections)
    write_json_atomic(where / "manifest.json", {"format": CACHE_FORMAT, "rows": len(result.rows),
                                                "rejections": len(result.rejections), "stats": result.stats,
                                                "setup_cost": cost.as_dict() if cost is not None else None})


def load_cached_cost(where: Path) -> SetupCost | None:
    """What making a cached result cost (the teacher's time, tokens, API bill); None for an entry stored before
    costs were kept."""
    try:
        stored = json.loads((where / "manifest.json").read_text(encoding="utf-8")).get("setup_cost")
    except (OSError, ValueError):
        return None
    return SetupCost.from_dict(stored) if isinstance(stored, dict) else None


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_cached(where: Path) -> SyntheticResult | None:
    """A stored result, or None when there is none or it is incomplete (no manifest, or counts that disagree)."""
    try:
        manifest = json.loads((where / "manifest.json").read_text(encoding="utf-8"))
        rows = [Example(r["id"], r["input"], r["target"], r["meta"]) for r in _read_jsonl(where / "rows.jsonl")]
        rejections = _read_jsonl(where / "rejections.jsonl")
    except (OSError, ValueError, KeyError):
        return None
    if manifest.get("format") != CACHE_FORMAT or (manifest["rows"], manifest["rejections"]) != (len(rows),
                                                                                                 len(rejections)):
        return None
    return SyntheticResult(rows, rejections, {**manifest["stats"], "cached": True})


def write_synthetic(run_dir: Path, row_id: str, result: SyntheticResult) -> dict[str, Path]:
    """Write ``synthetic/<row_id>.jsonl`` (kept rows with provenance) and ``synthetic/<row_id>.rejections.jsonl``."""
    run = RunDir(run_dir)
    paths = {"rows": run.extra_rows_path("synthetic", row_id),
             "rejections": run.extra_rows_path("synthetic", row_id, ".rejections")}
    run.write_jsonl(paths["rows"], (example_record(r) for r in result.rows))
    run.write_jsonl(paths["rejections"], result.rejections)
    return paths
