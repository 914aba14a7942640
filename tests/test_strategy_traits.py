"""Strategies declare what they are (strategies/traits.py); the runner records it and the report reads it from the
record (report/traits.py): a newly registered strategy gets its table row and its chart lines with no report edit,
and a record written before traits existed reads as it did."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field

from lmtailor.config import validate_experiment
from lmtailor.core.context import RunContext
from lmtailor.core.strategy_output import StrategyOutput
from lmtailor.errors import UserError
from lmtailor.report.traits import rungs_in_order, traits_of
from lmtailor.strategies import STRATEGIES
from lmtailor.strategies.base import Strategy, StrategyConfig
from lmtailor.strategies.baseline import majority_label
from lmtailor.strategies.traits import StrategyTraits


# --- what the built-in strategies declare ----------------------------------------------------------------------

@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_registered_strategy_declares_its_traits(name):
    declared = STRATEGIES.get(name).TRAITS
    assert isinstance(declared, StrategyTraits), f"{name} declares no TRAITS"


def test_a_strategy_that_declares_nothing_is_named_when_its_row_is_recorded():
    class Silent(Strategy):
        def run(self, ctx):
            raise AssertionError("never run")

    with pytest.raises(TypeError, match="strategy Silent declares no TRAITS"):
        Silent(StrategyConfig(name="silent")).traits()


def test_a_registered_strategy_without_traits_is_refused_when_the_rows_are_planned(tmp_path):
    """Before any row trains: the runner plans the rows (and `validate` plans them too)."""
    from lmtailor.runner import plan_rows

    class Silent(Strategy):
        def uses_model(self) -> bool:
            return False

        def run(self, ctx):
            raise AssertionError("never run")

    exp = {"name": "silent", "models": ["unused"], "forgetting": False, "data": {"source": str(tmp_path / "d.jsonl")},
           "task": {"type": "classification", "labels": ["red", "green"]}, "strategies": [{"name": "silent"}]}
    STRATEGIES.register("silent", Silent)
    try:
        with pytest.raises(TypeError, match="strategy Silent declares no TRAITS"):
            plan_rows(validate_experiment(exp))
    finally:
        STRATEGIES.unregister("silent")


def _traits(name: str, **config) -> StrategyTraits:
    cls = STRATEGIES.get(name)
    return cls(cls.Config.model_validate({"name": name, **config})).traits()


def test_traits_follow_the_knobs_that_change_what_a_row_is():
    assert _traits("prompt").zero_shot and _traits("prompt").data == ()
    four = _traits("prompt", shots=4)
    assert (four.data, four.exemplars, four.zero_shot) == (("exemplars",), 4, False)
    assert _traits("rag").data == ("corpus",) and not _traits("rag").zero_shot  # shown passages: not zero-shot
    plain = _traits("finetune", method="lora")
    assert (plain.use, plain.place, plain.data) == ("trained", "fine-tuning", ("training rows",))
    eda = _traits("finetune", method="lora", augment={"method": "eda", "factor": 2})
    assert eda.data == ("training rows", "augmented rows")
    cpt = _traits("continued-pretraining", method="full",
                  finetune={"method": "lora", "synthetic": {"rows": 4, "teacher": "t"}})
    assert cpt.data == ("corpus", "training rows", "synthetic rows")
    assert _traits("baseline").fixed_rule and not _traits("nearest").fixed_rule


def test_the_table_orders_rungs_along_the_spectrum_whatever_the_plan_order():
    # the plan puts the trivial baseline last; the table still starts with it (a floor using no data), then the
    # nearest-neighbour floor, then prompting, retrieval and the trained rungs
    names = ["scratch", "finetune", "rag", "prompt", "nearest", "baseline", "continued-pretraining"]
    configs = {"finetune": {"method": "lora"}, "scratch": {"finetune": {"method": "lora"}},
               "continued-pretraining": {"method": "full", "finetune": {"method": "lora"}}}
    order = rungs_in_order([_traits(n, **configs.get(n, {})) for n in names])
    assert order == ["baseline", "nearest", "prompt", "rag", "finetune", "continued-pretraining", "scratch"]


def test_an_old_record_without_traits_gets_its_strategys_for_its_config():
    # a record's config is dumped with every field at its default, which FinetuneConfig would refuse if validated
    # again (num_virtual_tokens on a LoRA row): the derivation reads it as stored
    cfg = STRATEGIES.get("finetune").Config.model_validate({"name": "finetune", "method": "lora",
                                                            "augment": {"method": "eda", "factor": 2}})
    record = {"row_id": "r", "strategy": "finetune", "config": cfg.model_dump(mode="json")}
    assert traits_of(record).data == ("training rows", "augmented rows")
    assert traits_of({"row_id": "p", "strategy": "prompt", "config": {"name": "prompt", "shots": 3}}).exemplars == 3
    assert traits_of({"row_id": "x", "strategy": "gone-plugin", "config": {}}) is None  # no rung of its own


def test_stored_traits_win_and_a_broken_one_is_refused_naming_the_row():
    stored = StrategyTraits(place="retrieval", use="prompted", rung="my-rag", data=("corpus",))
    record = {"row_id": "r1", "strategy": "prompt", "config": {}, "traits": stored.to_record()}
    assert traits_of(record) == stored
    with pytest.raises(UserError, match="row 'r1'.*place 'moon' is not on the spectrum"):
        traits_of({**record, "traits": {**stored.to_record(), "place": "moon"}})
    with pytest.raises(ValueError, match="data \\['gold'\\]"):
        StrategyTraits(place="floor", use="floor", rung="x", data=("gold",))
    # a key a newer lmtailor added is left aside, not a reason to refuse the report (RunRecord keeps unknown keys)
    assert traits_of({**record, "traits": {**stored.to_record(), "modality": "text"}}) == stored


# --- a strategy registered at test time reaches the report ----------------------------------------------------------

class DummyConfig(StrategyConfig):
    """Knobs of the test's dummy."""

    name: Literal["dummy"] = Field(description="registered strategy name")
    kind: Literal["prompted", "trained"] = Field(description="what the dummy says it is")
    train_sizes: list[int] | None = Field(None, description="learning-curve sizes (trained kind)")


class DummyStrategy(Strategy):
    """Answers every row with the training rows' majority label, and no model; declares itself by its ``kind``."""

    Config = DummyConfig
    config: DummyConfig
    TRAITS = StrategyTraits(place="prompting", use="prompted", rung="dummy-prompted")

    def traits(self) -> StrategyTraits:
        if self.config.kind == "trained":
            return StrategyTraits(place="fine-tuning", use="trained", rung="dummy-trained", data=("training rows",))
        return self.TRAITS

    def default_label(self) -> str:
        return f"dummy {self.config.kind}"

    def uses_model(self) -> bool:
        return False

    def uses_seed(self) -> bool:
        return False

    def uses_training_data(self) -> bool:
        return self.config.kind == "trained"

    def run(self, ctx: RunContext) -> StrategyOutput:
        ctx.meter.set_params(0, 0)
        with ctx.meter.phase("inference"):
            answer = majority_label(ctx.data.train, ctx.task.labels)
            ctx.meter.add_examples("inference", len(ctx.data.test))
        return StrategyOutput(predictions=[answer] * len(ctx.data.test))


@pytest.fixture(scope="module")
def dummy_run(tmp_path_factory) -> Path:
    """One tiny run of the dummy, registered for this module only: a learning curve of the trained kind (4 and 8
    rows), the prompted kind, and the trivial baseline the runner adds."""
    from lmtailor.runner import run_experiment

    tmp_path = tmp_path_factory.mktemp("dummy")
    # 18 red and 6 green rows: the majority label of every training subset is red
    rows = [{"input": f"item {i}", "target": "green" if i % 4 == 0 else "red"} for i in range(24)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    exp = {"name": "dummy", "models": ["unused"], "forgetting": False,
           "data": {"source": str(data), "seed": 0, "validation_fraction": 0.25, "test_fraction": 0.25},
           "task": {"type": "classification", "labels": ["red", "green"], "instruction": "Which colour?"},
           "strategies": [{"name": "dummy", "kind": "trained", "train_sizes": [4, 8]},
                          {"name": "dummy", "kind": "prompted"}]}
    STRATEGIES.register("dummy", DummyStrategy)
    try:
        yield run_experiment(validate_experiment(exp), tmp_path, tmp_path / "runs")
    finally:
        STRATEGIES.unregister("dummy")  # the test's entry must not outlive the module


def test_a_registered_strategy_gets_its_table_row_and_chart_lines_with_no_report_edit(dummy_run):
    from lmtailor.report.charts import break_even_pair, learning_curves_chart
    from lmtailor.report.markdown_report import cost_benefit_rows
    from lmtailor.report.results_json import build_results, load_records

    records = load_records(dummy_run)
    dummies = [r for r in records if r["strategy"] == "dummy"]
    assert [r["traits"]["rung"] for r in dummies] == ["dummy-trained", "dummy-trained", "dummy-prompted"]
    assert all(r["status"] == "ok" for r in records)
    # the cost-benefit table: the floor, then prompting, then fine-tuning, as the traits place them
    summary = build_results(dummy_run)
    rungs = cost_benefit_rows(summary, records)
    assert [(r.rung, r.group_id) for r in rungs] == [("baseline", "baseline | none"),
                                                     ("dummy-prompted", "dummy prompted | none"),
                                                     ("dummy-trained", "dummy trained n=4 | none")]
    report = (dummy_run / "report.md").read_text()
    assert "| dummy-prompted | dummy prompted \\| none |" in report
    assert "| dummy-trained | dummy trained n=4 \\| none |" in report
    # the charts: the prompted dummy is a no-training line of the learning curves and the break-even's baseline,
    # the trained dummy its fine-tuned side
    curves = learning_curves_chart(summary, records)
    # 24 rows, 6 green, split stratified: 7 test rows, 5 of them red; the majority answer (red) scores 5/7 = 0.714
    assert "dummy prompted | none (no training): 0.714" in curves.numbers
    assert any(n.startswith("dummy trained | none: n=4 → 0.714, n=8 → 0.714") for n in curves.numbers)
    base, tuned = break_even_pair(summary, records)
    assert (base["id"], tuned["id"]) == ("dummy prompted | none", "dummy trained n=4 | none")
    assert "### Learning curves" in report and "- dummy prompted | none (no training): 0.714" in report


def test_records_without_traits_give_the_same_report(dummy_run, tmp_path):
    import shutil

    from lmtailor.cli import main

    dummy_run = Path(shutil.copytree(dummy_run, tmp_path / "run"))  # the other test reads the original

    def rebuilt() -> dict[str, bytes]:
        assert main(["report", str(dummy_run)]) == 0
        return {name: (dummy_run / name).read_bytes() for name in ("report.md", "report.html", "results.json")}

    before = rebuilt()
    for path in (dummy_run / "results").glob("*.json"):
        record = json.loads(path.read_text())
        del record["traits"]  # as written before strategies declared traits: derived through the registry
        path.write_text(json.dumps(record))
    assert rebuilt() == before
