"""Augmented and synthetic rows attached to a training strategy: labelled, made from training rows only, written to
the run directory with their provenance, and paid for in the meter's "data" phase."""

from __future__ import annotations

import json
import random

import pytest

from lmtailor.core.budget import Budget
from lmtailor.core.context import RunContext
from lmtailor.core.example import DatasetSplits, Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.errors import UserError
from lmtailor.measure.meter import Meter
from lmtailor.runtime import Runtime
from lmtailor.strategies.finetune import FinetuneConfig, FinetuneStrategy

LABELS = ("red", "green", "blue")
TASK = TaskSpec("colours", "classification", "Which colour word does the text contain?", LABELS)
BUDGET = Budget(max_input_tokens=32, max_new_tokens=8, max_seq_len=128, eval_batch_size=8)
CPU = Runtime("cpu", "fp32", "tests run in fp32 on the CPU")
WORDS = "the small river runs past an old stone house near a quiet bright field".split()


def _rows(n: int, prefix: str, seed: int) -> list[Example]:
    rng = random.Random(seed)
    return [Example(f"{prefix}{i}", " ".join(rng.sample(WORDS, 6)) + f" {LABELS[i % 3]}", LABELS[i % 3])
            for i in range(n)]


SPLITS = DatasetSplits(train=_rows(9, "train", 0), validation=_rows(3, "val", 1), test=_rows(3, "test", 2))
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(**kw) -> FinetuneConfig:
    return FinetuneConfig.model_validate({"name": "finetune", "method": "lora", "epochs": 1, "batch_size": 4, **kw})


def _ctx(tmp_path, model_ref: str = "tiny-llama") -> RunContext:
    return RunContext(task=TASK, data=SPLITS, model_ref=model_ref, budget=BUDGET, seed=0, meter=Meter(),
                      out_dir=tmp_path / "artifacts" / "row1", runtime=CPU, row_id="row1", run_dir=tmp_path)


def _read(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_labels_name_the_extra_data():
    assert FinetuneStrategy(_config(augment={"factor": 4})).label() == "LoRA + 4× EDA"
    assert FinetuneStrategy(_config(synthetic={"rows": 64})).label() == "LoRA + 64 synthetic"
    both = _config(method="full", augment={"method": "paraphrase", "factor": 2}, synthetic={"rows": 8})
    assert FinetuneStrategy(both).label() == "full FT + 2× paraphrase + 8 synthetic"
    assert FinetuneStrategy(_config()).label() == "LoRA"


def test_eda_rows_are_added_to_training_and_written_with_provenance(tiny_llama_dir, tmp_path):
    ctx = _ctx(tmp_path)
    with ctx.meter:
        out = FinetuneStrategy(_config(augment={"factor": 2})).run(ctx)
    made = out.details["augmented"]["made"]
    assert made > 0 and out.details["real_rows"] == 9 and out.details["train_rows_total"] == 9 + made
    assert out.details["train_data"]["rows"] == 9 + made  # the trainer saw the real and the augmented rows
    rows = _read(tmp_path / "augmented" / "row1.jsonl")
    assert len(rows) == made
    real = {e.id: e for e in SPLITS.train}
    for r in rows:
        assert r["meta"]["origin"] == "augmented" and r["meta"]["source_id"] in real
        assert r["target"] == real[r["meta"]["source_id"]].target  # label-preserving
    held_out = {e.input for e in SPLITS.validation + SPLITS.test}
    assert not {r["input"] for r in rows} & held_out
    assert ctx.meter.phases["data"].wall_s > 0 and ctx.meter.phases["data"].examples == made


def test_synthetic_rows_and_rejection_log_land_in_the_run_directory(tiny_llama_dir, tmp_path):
    ctx = _ctx(tmp_path)
    cfg = _config(synthetic={"teacher": "tiny-llama", "rows": 3, "max_attempts": 6, "max_new_tokens": 24,
                             "batch_size": 6})
    with ctx.meter:
        out = FinetuneStrategy(cfg).run(ctx)
    syn = out.details["synthetic"]
    kept, rejected = _read(tmp_path / "synthetic" / "row1.jsonl"), _read(tmp_path / "synthetic" /
                                                                         "row1.rejections.jsonl")
    assert len(kept) + len(rejected) == syn["attempts"] == 6
    assert all(r["reason"] for r in rejected)  # a random tiny teacher mostly writes unparseable text
    assert all(r["meta"]["origin"] == "synthetic" and r["meta"]["teacher"] == "tiny-llama" for r in kept)
    assert out.details["train_rows_total"] == 9 + len(kept)
    assert ctx.meter.phases["data"].tokens > 0 and ctx.meter.record()["usd"]["train"] >= 0


def test_a_classifier_cannot_write_its_own_paraphrases(tiny_bert_dir, tmp_path):
    ctx = _ctx(tmp_path, "tiny-bert")
    with pytest.raises(UserError, match="set augment.model"):
        with ctx.meter:
            FinetuneStrategy(_config(augment={"method": "paraphrase", "factor": 1, "temperature": 0})).run(ctx)
