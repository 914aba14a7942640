"""Hyperparameter search on a fine-tuning row (training/search.py): trials on the training rows scored on the
validation rows, recorded; the best trial's settings train the final model; pruning; metered as set-up."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from lmtailor.core.budget import Budget
from lmtailor.core.context import RunContext
from lmtailor.measure.meter import SETUP_PHASES, Meter
from lmtailor.strategies.finetune import FinetuneConfig, FinetuneStrategy
from lmtailor.training import search as search_module
from lmtailor.training.search_space import DEFAULT_SPACES, default_space, resolve_space

from colours import CPU, TASK, colour_splits

BUDGET = Budget(max_input_tokens=32, max_new_tokens=8, max_seq_len=128, eval_batch_size=8)
SPLITS = colour_splits(16, 4, 4)  # batch 4: 4 optimizer steps an epoch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(**kw) -> FinetuneConfig:
    return FinetuneConfig.model_validate({"name": "finetune", "method": "lora", "batch_size": 4,
                                          "logging_steps": 1, **kw})


def _ctx(out_dir: Path, meter: Meter, splits=SPLITS) -> RunContext:
    return RunContext(task=TASK, data=splits, model_ref="tiny-llama", budget=BUDGET, seed=0, meter=meter,
                      out_dir=out_dir, runtime=CPU)


class _Spy:
    """Every row list a trial trained or was scored on, seen at ``FinetuneStrategy.train_once``."""

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        self.seen: list[set[str]] = []
        original = FinetuneStrategy.train_once

        def spy(strategy, ctx, *args, **kwargs):
            self.seen.append({e.id for e in ctx.data.train + ctx.data.validation + ctx.data.test})
            return original(strategy, ctx, *args, **kwargs)

        mp.setattr(FinetuneStrategy, "train_once", spy)


@pytest.fixture(scope="module")
def searched(tiny_llama_dir, tmp_path_factory):
    """A 3-trial search over the learning rate and the LoRA rank (1 epoch each), without pruning."""
    cfg = _config(search={"trials": 3, "pruning": False,
                          "space": {"learning_rate": {"low": 1e-4, "high": 3e-2, "log": True},
                                    "method.r": [2, 4], "epochs": [1]}})
    meter = Meter()
    with pytest.MonkeyPatch.context() as mp:
        spy = _Spy(mp)
        with meter:
            output = FinetuneStrategy(cfg).run(_ctx(tmp_path_factory.mktemp("search"), meter))
    return output, meter, spy


def test_three_trials_are_recorded_and_the_best_is_chosen(searched):
    output, _, _ = searched
    s = output.details["search"]
    assert [t["number"] for t in s["trials"]] == [0, 1, 2]
    assert all(t["state"] == "complete" and t["value"] is not None and t["seconds"] > 0 for t in s["trials"])
    best = min(s["trials"], key=lambda t: t["value"])  # validation loss: lower is better
    assert s["best_trial"] == best["number"] and s["chosen"] == best["params"]
    assert set(s["chosen"]) == {"learning_rate", "method.r", "epochs"}
    # the final model trained with the chosen values (alpha follows the searched rank: 2 r)
    assert output.details["learning_rate"] == pytest.approx(s["chosen"]["learning_rate"])
    assert output.details["lora"]["r"] == s["chosen"]["method.r"]
    assert output.details["lora"]["alpha"] == 2 * s["chosen"]["method.r"]
    assert output.details["learning_rate_source"] == "hyperparameter search"


def test_the_final_training_repeats_the_best_trial(searched):
    """Same seed, same settings, same rows: the final validation loss is the best trial's."""
    output, _, _ = searched
    s = output.details["search"]
    best = s["trials"][s["best_trial"]]
    assert output.details["val_loss"] == pytest.approx(best["validation_loss"], rel=1e-4)


def test_test_rows_never_reach_a_trial(searched):
    _, _, spy = searched
    test_ids = {e.id for e in SPLITS.test}
    trial_rows, final_rows = spy.seen[:-1], spy.seen[-1]
    assert len(trial_rows) == 3
    assert all(not (rows & test_ids) for rows in trial_rows)
    assert all(rows == {e.id for e in SPLITS.train + SPLITS.validation} for rows in trial_rows)
    assert test_ids <= final_rows  # the final model answers the test rows, as any row does


def test_search_time_is_set_up_cost(searched):
    """The search phase is set-up: the row's $ train is (search + train wall seconds) x the hourly rate."""
    output, meter, _ = searched
    assert "search" in SETUP_PHASES
    search_s, train_s = meter.phases["search"].wall_s, meter.phases["train"].wall_s
    trials_s = sum(t["seconds"] for t in output.details["search"]["trials"])
    assert search_s >= trials_s > 0 and train_s > 0
    record = meter.record()
    rate = record["usd"]["rate_per_hour"]  # $0.10 an hour on a CPU by default
    assert record["usd"]["train"] == pytest.approx((search_s + train_s) * rate / 3600)
    assert record["usd"]["train"] > train_s * rate / 3600  # more than the final training alone


def test_a_diverging_trial_is_pruned(tiny_llama_dir, tmp_path, monkeypatch):
    """Two sane trials (full fine-tuning at 3e-3), then one at a learning rate of 1.0 whose first step blows the
    validation loss up (measured: 4.4..5.6 for the sane ones, ~27 after that step): the median pruner stops it at
    its first evaluation, and the sane setting is chosen."""
    import optuna

    cfg = _config(method="full", warmup_ratio=0.0,
                  search={"trials": 3, "evaluations_per_epoch": 4, "space": {"learning_rate": [3e-3, 1.0],
                                                                             "epochs": [2]}})
    original = optuna.create_study

    def crafted(**kwargs):  # the seeded TPE sampler, with the three trials' settings queued in this order
        study = original(**kwargs)
        for lr in (3e-3, 3e-3, 1.0):
            study.enqueue_trial({"learning_rate": lr, "epochs": 2})
        return study

    monkeypatch.setattr(optuna, "create_study", crafted)
    meter = Meter()
    with meter:
        output = FinetuneStrategy(cfg).run(_ctx(tmp_path, meter))
    trials = output.details["search"]["trials"]
    assert [t["state"] for t in trials] == ["complete", "complete", "pruned"]
    assert trials[2]["steps"] == 1  # 2 epochs of 4 steps, evaluated every step: stopped at the first
    assert trials[2]["value"] > max(t["value"] for t in trials[:2])
    # identical settings and seed train identically: the two sane trials agree to the last digit
    assert trials[0]["value"] == trials[1]["value"]
    assert output.details["search"]["chosen"] == {"learning_rate": 3e-3, "epochs": 2}


# --- the config ----------------------------------------------------------------------------------------------------

def test_default_space_per_method():
    lora = default_space(_config(), "decoder-only")
    assert lora["learning_rate"].low == pytest.approx(2e-5) and lora["learning_rate"].high == pytest.approx(2e-3)
    assert lora["learning_rate"].log and lora["method.r"] == [4, 8, 16, 32]
    prompt = default_space(FinetuneConfig(name="finetune", method="prompt-tuning"), "decoder-only")
    assert "method.num_virtual_tokens" in prompt and "method.r" not in prompt
    assert set(default_space(FinetuneConfig(name="finetune", method="ia3"), "decoder-only")) == {
        "learning_rate", "epochs"}
    assert set(default_space(FinetuneConfig(name="finetune", method="dora"), "decoder-only")) == set(
        DEFAULT_SPACES["lora"])


def test_user_space_overrides_and_null_holds_a_setting():
    cfg = _config(epochs=2, search={"space": {"method.r": [8], "epochs": None}})
    space = resolve_space(cfg, "decoder-only")
    assert space["method.r"] == [8] and "epochs" not in space and "learning_rate" in space


@pytest.mark.parametrize("knobs, message", [
    ({"learning_rate": 1e-3, "search": {}}, "set by hand and also searched"),
    ({"method": "ia3", "search": {"space": {"lora_r": [4, 8]}}}, "do not apply to method: ia3"),
    ({"search": {"space": {"temperature": [1]}}}, "cannot be searched"),
    ({"search": {"space": {"learning_rate": {"low": 1e-2, "high": 1e-3}}}}, "low < high"),
    ({"search": {"trials": 0}}, "greater than or equal to 1"),
    ({"search": {"bogus": 1}}, "Extra inputs"),
    ({"eval_strategy": "no", "search": {}}, "needs eval_strategy"),
    ({"train_sizes": [8, 16], "search": {}}, "train_sizes"),
])
def test_search_config_rejects_contradictions(knobs, message):
    with pytest.raises(ValidationError, match=message):
        _config(**knobs)


def test_searched_row_is_labelled():
    assert FinetuneStrategy(_config(search={})).label() == "LoRA (searched)"
    assert FinetuneStrategy(_config()).label() == "LoRA"


def test_search_reaches_the_fine_tuning_phase_of_pretraining_rungs():
    from lmtailor.strategies.continued_pretraining import ContinuedPretrainingConfig

    cfg = ContinuedPretrainingConfig.model_validate(
        {"name": "continued-pretraining", "method": "lora", "finetune": {"method": "lora", "search": {"trials": 2}}})
    assert cfg.finetune.search is not None and cfg.finetune.search.trials == 2


def test_trial_config_is_validated_and_without_search():
    cfg = _config(search={"trials": 2})
    trial = search_module.trial_config(cfg, {"learning_rate": 1e-3, "method.r": 8})
    assert trial.search is None and trial.learning_rate == 1e-3 and trial.method.r == 8 and trial.method.alpha == 16
    held = search_module.trial_config(_config(lora_alpha=8, search={"space": {"lora_alpha": None}}),
                                      {"method.r": 4})
    assert held.method.alpha == 8  # a hand-set alpha is kept (written flat, and the old search name: still read)


def test_validation_score_chooses_and_a_resumed_row_searches_again(tiny_llama_dir, tmp_path):
    """metric: validation_score answers the validation rows each trial (accuracy, higher is better). A row that
    stopped mid-search leaves a search directory: the rerun removes it and starts from the first trial."""
    leftover = tmp_path / "search" / "trial-0" / "checkpoints" / "checkpoint-2"
    leftover.mkdir(parents=True)
    (leftover / "junk.bin").write_bytes(b"x")
    cfg = _config(search={"trials": 2, "metric": "validation_score", "pruning": False,
                          "space": {"learning_rate": [1e-4, 1e-2], "lora_r": [4], "epochs": [1]}})
    meter = Meter()
    with meter:
        output = FinetuneStrategy(cfg).run(_ctx(tmp_path, meter))
    s = output.details["search"]
    assert s["metric"] == "validation_score" and s["direction"] == "higher"
    trials = s["trials"]
    assert all(0.0 <= t["validation_score"] <= 1.0 and t["value"] == t["validation_score"] for t in trials)
    assert all(t["steps"] == 4 for t in trials)  # 16 rows / batch 4, one epoch: nothing resumed from the leftover
    best = max(trials, key=lambda t: (t["validation_score"], -t["number"]))  # Optuna keeps the first of equals
    assert s["chosen"] == best["params"]
    assert not (tmp_path / "search").exists()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A JSONL corpus of the tiny models' own training text (as in test_pretrain.py)."""
    import json

    from lmtailor.models.tiny import CORPUS

    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    paragraphs = [p for p in CORPUS.split("\n\n") if p.strip()]
    path.write_text("\n".join(json.dumps({"text": p, "id": f"p{i}"}) for i, p in enumerate(paragraphs)))
    return path


def test_continued_pretraining_searches_its_fine_tuning_phase_on_an_encoder_decoder(tiny_t5_dir, corpus, tmp_path):
    """The pre-training phase stays fixed; the fine-tuning phase (Seq2SeqTrainer here) is searched and metered."""
    from lmtailor.strategies.continued_pretraining import ContinuedPretrainingConfig, ContinuedPretrainingStrategy

    cfg = ContinuedPretrainingConfig.model_validate({
        "name": "continued-pretraining", "corpus": str(corpus), "method": "full", "learning_rate": 3e-3,
        "max_tokens": 1000, "block_size": 32, "batch_size": 4,
        "finetune": {"method": "lora", "batch_size": 4, "target_modules": ["q", "v"],
                     "search": {"trials": 2, "space": {"learning_rate": [1e-3, 1e-2], "lora_r": [4],
                                                       "epochs": [1]}}}})
    meter = Meter()
    ctx = RunContext(task=TASK, data=SPLITS, model_ref="tiny-t5", budget=BUDGET, seed=0, meter=meter,
                     out_dir=tmp_path, runtime=CPU)
    with meter:
        output = ContinuedPretrainingStrategy(cfg).run(ctx)
    d = output.details
    assert [t["state"] for t in d["search"]["trials"]] == ["complete", "complete"]
    assert d["finetune"]["search"] == d["search"]  # also at the top, where the report looks
    assert d["finetune"]["learning_rate"] == d["search"]["chosen"]["learning_rate"]
    assert d["times"]["search_s"] > 0
    assert d["times"]["setup_s"] == pytest.approx(d["times"]["pretrain_s"] + d["times"]["search_s"]
                                                  + d["times"]["finetune_s"], abs=2e-3)
    assert "(searched)" in ContinuedPretrainingStrategy(cfg).label()
