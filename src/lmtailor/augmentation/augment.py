"""Data augmentation: new training rows made from training rows, seeded, label-preserving and marked as such.

Methods are entries of ``AUGMENT_METHODS``: rule-based EDA (``eda.py``: synonym replacement, random
insertion, swap and deletion, Wei & Zou 2019) and model-based paraphrase or back-translation through any generation
model lmtailor can load (``paraphrase.py``). A method turns each source row into ``factor`` candidate inputs;
this module gives them ids and provenance and drops the ones that add nothing:

- the target is the source row's, always: augmentation rewrites inputs only, so labels are preserved;
- a candidate that is empty, equal to its source, or equal to any training input or earlier candidate is dropped
  and counted;
- with the run's splits given, rows of the validation or test split are refused before anything is made
  (``check_train_only``), and a candidate that equals a validation or test input is dropped: augmentation must never
  carry an evaluation row into training;
- every new row has the id ``{source id}~{method}{k}`` (k: its place among the source's candidates, so ids stay
  the same when a neighbour is dropped) and ``meta`` saying ``origin: augmented``, the method, the source id and
  the operations applied.

Randomness comes from ``random.Random`` seeded per row with a sha256 of (seed, row id, k), never from the global
RNG or Python's salted ``hash``: the same seed and rows give the same new rows in any process, and the first k
candidates of a row do not change when ``factor`` grows. Time and teacher tokens go into the meter's "data" phase.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lmtailor.core.example import DatasetSplits, Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.errors import UserError
from lmtailor.registry import Registry

#: name -> ``fn(rows, cfg, ctx) -> list[Candidate]``; adding a method is a module plus one line here.
AUGMENT_METHODS: Registry[Callable[..., list["Candidate"]]] = Registry("augmentation method")
AUGMENT_METHODS.register("eda", "lmtailor.augmentation.eda:eda_candidates")
AUGMENT_METHODS.register("paraphrase", "lmtailor.augmentation.paraphrase:paraphrase_candidates")
AUGMENT_METHODS.register("back-translation", "lmtailor.augmentation.paraphrase:back_translation_candidates")

ORIGIN = "augmented"


class AugmentConfig(BaseModel):
    """How to make extra training rows; ``factor: 4`` with ``method: eda`` is "4x EDA"."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field("eda", description="registered augmentation method: eda, paraphrase or back-translation")
    factor: int = Field(4, ge=1, le=64, description="augmented rows made per training row (before duplicates are "
                                                   "dropped); EDA's paper uses 16 for small sets, 4 for large")
    alpha_sr: float = Field(0.1, ge=0, le=1, description="EDA synonym replacement: share of words replaced "
                                                         "(at least one); 0 turns the operation off")
    alpha_ri: float = Field(0.1, ge=0, le=1, description="EDA random insertion: synonyms inserted, as a share of "
                                                         "the words (at least one); 0 turns it off")
    alpha_rs: float = Field(0.1, ge=0, le=1, description="EDA random swap: word pairs swapped, as a share of the "
                                                         "words (at least one); 0 turns it off")
    alpha_rd: float = Field(0.1, ge=0, le=1, description="EDA random deletion: probability that each word is "
                                                         "deleted (one word always stays); 0 turns it off")
    model: str | None = Field(None, description="generation model for paraphrase and back-translation (alias, "
                                                "local directory or hub id); unset: the caller passes one")
    pivot_language: str = Field("French", description="back-translation: the language inputs go through")
    source_language: str = Field("English", description="back-translation: the language of the inputs")
    temperature: float = Field(0.8, ge=0, description="paraphrase/back-translation sampling temperature; 0 is "
                                                      "greedy decoding (then factor must be 1)")
    top_p: float = Field(0.95, gt=0, le=1, description="paraphrase/back-translation nucleus sampling mass")
    max_input_tokens: int = Field(256, ge=1, description="paraphrase/back-translation: inputs are cut to this many "
                                                         "tokens of the generation model")
    max_new_tokens: int = Field(128, ge=1, description="paraphrase/back-translation: longest generated text")
    batch_size: int = Field(8, ge=1, description="paraphrase/back-translation: prompts per generation batch")
    seed: int | None = Field(None, description="seed of the augmentation; unset: the run's seed")
    control: bool = Field(True, description="also run the equal-steps control: the same row trained on the "
                                            "original rows only for as many optimizer steps (strategies/controls.py), "
                                            "so the gain of the extra rows is told from that of training longer; "
                                            "false: the report names the step ratio beside the gain instead")

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in AUGMENT_METHODS:
            raise ValueError(AUGMENT_METHODS.unknown_message(value))
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "AugmentConfig":
        if self.method == "eda" and not any((self.alpha_sr, self.alpha_ri, self.alpha_rs, self.alpha_rd)):
            raise ValueError("every EDA operation is off (alpha_sr, alpha_ri, alpha_rs and alpha_rd are all 0); "
                             "set at least one above 0")
        if self.method != "eda" and self.temperature == 0 and self.factor > 1:
            raise ValueError(f"temperature 0 (greedy decoding) writes the same text every time, so factor "
                             f"{self.factor} would make duplicates; set temperature above 0 or factor: 1")
        return self


@dataclass
class Candidate:
    """One candidate input made from ``source``; ``index`` is its place among the source's candidates."""

    source: Example
    index: int
    text: str
    ops: list[str]
    meta: dict[str, Any] = field(default_factory=dict)  # method-specific provenance (model, pivot text)


@dataclass
class AugmentContext:
    """What a method may use besides the rows and the config."""

    task: TaskSpec
    seed: int
    meter: Any = None  # lmtailor.measure.meter.Meter
    generator: Any = None  # a LoadedModel (or anything with .model and .tokenizer) for model-based methods
    lexicon: Any = None  # lmtailor.augmentation.lexicon.Lexicon for EDA; None: WordNet
    runtime: Any = None  # lmtailor.runtime.Runtime used when the method loads ``cfg.model`` itself


@dataclass
class AugmentResult:
    """The new rows (sources excluded) and the counts of what was made and dropped."""

    rows: list[Example]
    stats: dict[str, Any]


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from ``parts`` that is the same in every process (unlike Python's salted ``hash``)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _norm(text: str) -> str:
    return " ".join(text.split())


def check_train_only(rows: Sequence[Example], splits: DatasetSplits) -> None:
    """Refuse rows that are validation or test rows (by id) or share an input with one: only training rows may be
    augmented, or evaluation rows would leak into training."""
    held_out = {"validation": splits.validation, "test": splits.test}
    for split, held in held_out.items():
        ids = {e.id for e in held}
        inputs = {_norm(e.input): e.id for e in held}
        by_id = [r.id for r in rows if r.id in ids]
        if by_id:
            raise UserError(f"augmentation was given {len(by_id)} row(s) of the {split} split (ids "
                            f"{', '.join(by_id[:3])}{'…' if len(by_id) > 3 else ''}); augment the training split "
                            "only, or evaluation rows leak into training")
        same = [(r.id, inputs[_norm(r.input)]) for r in rows if _norm(r.input) in inputs]
        if same:
            pairs = ", ".join(f"{a} = {b}" for a, b in same[:3])
            raise UserError(f"{len(same)} row(s) given to augmentation have the same input as a {split} row "
                            f"({pairs}); augmenting them would carry that {split} input into training. Remove the "
                            "duplicate inputs from the data file")


def augment(rows: Sequence[Example], cfg: AugmentConfig, seed: int, task: TaskSpec, generator: Any = None,
            meter: Any = None, *, splits: DatasetSplits | None = None, lexicon: Any = None,
            runtime: Any = None) -> AugmentResult:
    """Make up to ``cfg.factor`` new rows per row of ``rows``; return them with counts of what was dropped.

    ``seed`` is the run's seed (``cfg.seed`` overrides it). Pass ``splits`` so that validation and test rows are
    refused and candidates equal to their inputs dropped. ``generator`` is the model for paraphrase and
    back-translation (else ``cfg.model`` is loaded); ``lexicon`` replaces WordNet for EDA.
    """
    if splits is not None:
        check_train_only(rows, splits)
    again = [r.id for r in rows if r.meta.get("origin") == ORIGIN]
    if again:
        raise UserError(f"rows {', '.join(again[:3])} are already augmented rows; augment the original training "
                        "rows only (augmenting augmented rows compounds the noise and blurs provenance)")
    ctx = AugmentContext(task, cfg.seed if cfg.seed is not None else seed, meter, generator, lexicon, runtime)
    method = AUGMENT_METHODS.get(cfg.method)
    if meter is not None:
        with meter.phase("data"):
            candidates = method(list(rows), cfg, ctx)
    else:
        candidates = method(list(rows), cfg, ctx)
    held_out = {_norm(e.input) for e in (splits.validation + splits.test)} if splits is not None else set()
    new_rows, stats = _keep(candidates, rows, cfg.method, held_out)
    stats = {"method": cfg.method, "factor": cfg.factor, "seed": ctx.seed, "source_rows": len(rows), **stats}
    if meter is not None:
        meter.add_examples("data", len(new_rows))
    return AugmentResult(new_rows, stats)


def augment_rows(rows: Sequence[Example], cfg: AugmentConfig, seed: int, task: TaskSpec, generator: Any = None,
                 meter: Any = None, *, splits: DatasetSplits | None = None, lexicon: Any = None,
                 runtime: Any = None) -> list[Example]:
    """The new rows only (see ``augment``, which also returns what was dropped)."""
    return augment(rows, cfg, seed, task, generator, meter, splits=splits, lexicon=lexicon, runtime=runtime).rows


def _keep(candidates: list[Candidate], sources: Sequence[Example], method: str,
          held_out: set[str]) -> tuple[list[Example], dict]:
    """Turn candidates into rows, dropping empty ones, copies of their source, repeats of any training input or
    earlier candidate, and validation/test inputs."""
    dropped = {"empty": 0, "same_as_source": 0, "duplicate": 0, "matches_eval_input": 0}
    by_op: dict[str, int] = {}
    seen = {_norm(r.input) for r in sources}
    rows: list[Example] = []
    for c in candidates:
        text = _norm(c.text)
        reason = ("empty" if not text else "same_as_source" if text == _norm(c.source.input)
                  else "duplicate" if text in seen else "matches_eval_input" if text in held_out else None)
        if reason:
            dropped[reason] += 1
            continue
        seen.add(text)
        for op in c.ops:
            by_op[op] = by_op.get(op, 0) + 1
        meta = {**c.source.meta, **c.meta, "origin": ORIGIN, "method": method, "source_id": c.source.id,
                "ops": list(c.ops)}
        rows.append(Example(f"{c.source.id}~{method}{c.index}", c.text.strip(), c.source.target, meta))
    return rows, {"candidates": len(candidates), "made": len(rows), "dropped": dropped, "by_op": by_op}
