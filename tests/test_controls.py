"""Equal-steps controls: a row trained on extra data gets a control on the original rows only, trained for exactly
the optimizer steps the data row took (strategies/controls.py), so the report can tell the data's gain from the
longer training's."""

from __future__ import annotations

import json
import math
import textwrap

import pytest

from lmtailor.config import load_experiment
from lmtailor.errors import UserError
from lmtailor.runner import plan_rows
from lmtailor.strategies.controls import EqualStepsControl, control_config, wants_control
from lmtailor.strategies.finetune import FinetuneStrategy

from test_extra_data import SPLITS, _config, _ctx

EXPERIMENT = """
name: t
data:
  source: rows.jsonl
models: [tiny-llama]
seeds: [0, 1]
strategies:
  - {name: prompt, shots: 0}
  - {name: finetune, method: lora}
  - {name: finetune, method: lora, augment: {factor: 4}}
  - {name: finetune, method: lora, augment: {factor: 2, control: false}}
  - name: continued-pretraining
    method: lora
    corpus: corpus.jsonl
    finetune: {method: lora, synthetic: {rows: 8}}
"""


def test_a_control_is_planned_right_after_each_extra_data_row(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(EXPERIMENT))
    rows = plan_rows(load_experiment(path))
    labels = [(r.label, r.seed) for r in rows]
    # zero-shot once; LoRA, 4x EDA (+ control), 2x EDA (control off), continued PT + synthetic (+ control): 2 seeds
    assert labels == [("zero-shot", 0),
                      ("LoRA", 0), ("LoRA", 1),
                      ("LoRA + 4× EDA", 0), ("LoRA, control for + 4× EDA", 0),
                      ("LoRA + 4× EDA", 1), ("LoRA, control for + 4× EDA", 1),
                      ("LoRA + 2× EDA", 0), ("LoRA + 2× EDA", 1),
                      ("continued PT (LoRA) + LoRA + 8 synthetic", 0),
                      ("continued PT (LoRA) + LoRA, control for + 8 synthetic", 0),
                      ("continued PT (LoRA) + LoRA + 8 synthetic", 1),
                      ("continued PT (LoRA) + LoRA, control for + 8 synthetic", 1),
                      ("baseline", 0)]  # the trivial baseline (strategies/baseline.py), planned once
    assert [r.index for r in rows] == list(range(len(rows))) and len({r.row_id for r in rows}) == len(rows)
    control = rows[4].strategy
    assert isinstance(control, EqualStepsControl) and control.data_row_id == rows[3].row_id
    assert control.config.augment is None and control.config.max_steps is None  # steps are read when it runs
    nested = rows[10].strategy
    assert nested.data_row_id == rows[9].row_id and nested.config.finetune.synthetic is None
    assert nested.config.corpus == "corpus.jsonl"  # the pre-training phase is the data row's


def test_control_off_and_a_user_label():
    assert not wants_control(_config(augment={"factor": 2, "control": False}).model_copy())
    assert not wants_control(_config())
    both = _config(augment={"factor": 2, "control": False}, synthetic={"rows": 4})
    assert wants_control(both)  # one block still asks for it
    assert control_config(_config(label="mine", augment={"factor": 2}), "mine").label == "mine (control)"


@pytest.mark.parametrize("batch_size, accumulation", [(4, 1), (2, 2)])
def test_the_control_trains_the_data_rows_steps_on_the_original_rows(tiny_llama_dir, tmp_path, batch_size,
                                                                     accumulation):
    cfg = _config(augment={"factor": 2}, batch_size=batch_size, gradient_accumulation_steps=accumulation)
    data_ctx = _ctx(tmp_path)
    with data_ctx.meter:
        data = FinetuneStrategy(cfg).run(data_ctx)
    rows = data.details["train_rows_total"]
    assert rows > len(SPLITS.train)
    # one epoch of (9 + made) rows in batches of batch_size, an optimizer step every `accumulation` batches
    assert data.details["steps"] == math.ceil(math.ceil(rows / batch_size) / accumulation)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "row1.json").write_text(json.dumps({"row_id": "row1", "label": "LoRA + 2× EDA",
                                                                "model": "tiny-llama", "status": "ok",
                                                                "details": data.details}))
    control = EqualStepsControl(control_config(cfg, "LoRA + 2× EDA"), FinetuneStrategy, "row1", "LoRA + 2× EDA")
    ctx = _ctx(tmp_path)
    ctx.row_id, ctx.out_dir = "row2", tmp_path / "artifacts" / "row2"
    with ctx.meter:
        out = control.run(ctx)
    assert out.details["steps"] == data.details["steps"]  # the same optimizer steps...
    assert out.details["train_rows"] == len(SPLITS.train) and "augmented" not in out.details  # ...on the real rows
    assert out.details["epochs"] > 1  # which takes more than one pass over them
    assert out.details["control"] == {"of_row": "row1", "of_label": "LoRA + 2× EDA",
                                      "max_steps": data.details["steps"]}


def test_a_control_without_its_data_rows_steps_fails_clearly(tmp_path):
    control = EqualStepsControl(control_config(_config(augment={"factor": 2}), "d"), FinetuneStrategy, "row1", "d")
    with pytest.raises(UserError, match="record .* is missing"):
        control.run(_ctx(tmp_path))
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "row1.json").write_text(json.dumps({"row_id": "row1", "label": "d", "model": "m",
                                                                "status": "failed", "details": {}}))
    with pytest.raises(UserError, match="that row failed"):
        control.run(_ctx(tmp_path))


# -- the report -----------------------------------------------------------------------------------------------

def _records(with_control: bool = True) -> list[dict]:
    from test_table import _record

    lora = {"name": "finetune", "method": "lora", "epochs": 1.0, "label": None}
    plain = _record("LoRA", "m", 0.458, strategy="finetune")
    plain.update(config=dict(lora), details={"steps": 24, "train_rows": 96})
    data = _record("LoRA + 4× EDA", "m", 0.875, strategy="finetune")
    data.update(config={**lora, "augment": {"method": "eda", "factor": 4, "control": with_control}},
                details={"steps": 120, "train_rows": 480, "real_rows": 96, "train_rows_total": 480,
                         "augmented": {"made": 384}})
    records = [_record("zero-shot", "m", 0.146), plain, data]
    if with_control:
        control = _record("LoRA, control for + 4× EDA", "m", 0.833, strategy="finetune")
        control.update(config={**lora, "label": "LoRA, control for + 4× EDA"},
                       details={"steps": 120, "train_rows": 96,
                                "control": {"of_row": data["row_id"], "of_label": "LoRA + 4× EDA", "max_steps": 120}})
        records.append(control)
    # per-row scores on 48 test rows, nested (a better row is right wherever a worse one is): plain LoRA right on
    # 22 (0.458), the control on 40 (0.833), the EDA row on 42 (0.875), zero-shot on 7 (0.146)
    right = {"zero-shot": 7, "LoRA": 22, "LoRA, control for + 4× EDA": 40, "LoRA + 4× EDA": 42}
    for r in records:
        r.update(test_rows=48, score_details={"per_row": [1.0 if i < right[r["label"]] else 0.0 for i in range(48)]})
    return records


def test_findings_split_the_gain_between_the_extra_rows_and_the_longer_training():
    from lmtailor.report.extra_data import extra_data_findings
    from lmtailor.report.table import results_markdown
    from lmtailor.report.table_rows import build_rows

    lines = extra_data_findings(_records())
    finding = next(line for line in lines if line.startswith("- "))
    # 0.875 - 0.833 = +4.2 pts from the rows; 0.875 - 0.458 = +41.7 over plain LoRA, of which 0.833 - 0.458 = 37.5.
    # The rows' +4.2 pts are 2 of 48 rows: a resample holds neither of them with probability (46/48)^48 = 13%, more
    # than the interval's 2.5% tail, so its lower end is 0: within noise. The 18 rows of training longer differ.
    assert finding.startswith("- **LoRA + 4× EDA** (accuracy 0.875, 120 optimizer steps): +4.2 pts over its "
                              "equal-steps control LoRA, control for + 4× EDA (0.833, the same steps on 96 original "
                              "rows) (within noise: paired 95% CI +0.0 to ")
    assert "pts): the effect of the extra rows themselves; +41.7 pts over LoRA (0.458, 24 steps), of which " \
           "+37.5 pts is training longer (differs: paired 95% CI +" in finding
    status = {r.label: r.status for r in build_rows(_records())}
    assert status["LoRA, control for + 4× EDA"] == "ok (control: 120 optimizer steps, original rows only)"
    assert status["LoRA + 4× EDA"] == "ok (+384 augmented rows)"  # its control sits next to it: no ratio
    assert "## Extra data against equal compute" in results_markdown(_records())


def test_without_a_control_the_step_ratio_stands_beside_the_gain():
    from lmtailor.report.extra_data import extra_data_findings
    from lmtailor.report.table_rows import build_rows

    records = _records(with_control=False)
    finding = next(line for line in extra_data_findings(records) if line.startswith("- "))
    # 120 / 24 = 5.0x the steps; 0.875 - 0.458 = +41.7 pts
    assert finding == ("- **LoRA + 4× EDA** (accuracy 0.875, 120 optimizer steps): +41.7 pts over LoRA with 5.0x its "
                       "optimizer steps (120 vs 24); its equal-steps control is off (control: false), so the gain "
                       "mixes the extra rows and the longer training.")
    status = {r.label: r.status for r in build_rows(records)}
    assert status["LoRA + 4× EDA"] == "ok (+384 augmented rows) (5.0x the optimizer steps of LoRA)"
    assert extra_data_findings(records[:2]) == []  # no extra-data row, no section
    # asked for, but not (yet) run: an interrupted run says so, not "off"
    wanted = _records(with_control=True)[:3]
    assert "its equal-steps control did not run" in "\n".join(extra_data_findings(wanted))
