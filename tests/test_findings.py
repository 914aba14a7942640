"""Recommendations by architecture, on hand-made records whose answer is known."""

from lmtailor.report.findings import RULES_OF_THUMB, architecture_findings
from lmtailor.tasks import TASK_TYPES

METRIC = {"qa": "f1", "classification": "accuracy", "generation": "rougeL"}


def _rec(label, model, family, score, task_type="qa", status="ok", seed=0, n=100, usd_train=0.01, usd_1k=0.02,
         higher_is_better=True):
    metric = METRIC[task_type]
    return {
        "row_id": f"{label}-{model}-{seed}", "label": label, "model": model, "family": family, "seed": seed,
        "strategy": "finetune", "config": {"name": "finetune"}, "status": status,
        "task": {"name": f"demo-{task_type}", "type": task_type}, "test_rows": n, "test_ids_sha256": "abc",
        "primary_metric": metric,
        "metrics": [{"name": metric, "value": score, "higher_is_better": higher_is_better}] if status == "ok" else [],
        "error": None if status == "ok" else {"type": "RuntimeError", "message": "boom"},
        "meter": {"phases": {"train": {"wall_s": 10.0}}, "inference_latency_s_per_example": 0.5,
                  "peak_rss_bytes": 2**30, "trainable_params": 100, "total_params": 1000,
                  "usd": {"train": usd_train, "inference_per_1k": usd_1k, "rate_per_hour": 0.1}},
    }


def _text(records) -> str:
    return "\n".join(architecture_findings(records))


def _verdict(records) -> str:
    return next(line for line in architecture_findings(records) if line.startswith("- **Rule of thumb**"))


def test_encoder_decoder_winning_qa_cheaper_agrees_with_the_rule():
    text = _text([_rec("LoRA", "t5", "encoder-decoder", 0.60, usd_1k=0.01),
                  _rec("LoRA", "llama", "decoder-only", 0.50, usd_1k=0.04)])
    assert "**encoder-decoder did best**: LoRA on t5 beat decoder-only's best (LoRA on llama) by 10.0 pts" in text
    assert "per 1k inferences $0.0100 vs $0.0400 (0.25×)" in text
    assert "This run **agrees**" in _verdict([_rec("LoRA", "t5", "encoder-decoder", 0.60, usd_1k=0.01),
                                               _rec("LoRA", "llama", "decoder-only", 0.50, usd_1k=0.04)])
    assert "| encoder-decoder | LoRA on t5 | 0.600 | $0.0100 | $0.0100 |" in text


def test_decoder_only_winning_qa_disagrees():
    verdict = _verdict([_rec("LoRA", "t5", "encoder-decoder", 0.50), _rec("LoRA", "llama", "decoder-only", 0.60)])
    assert "**disagrees**: decoder-only beat encoder-decoder by 10.0 pts" in verdict


def test_one_family_gives_no_finding_and_says_what_ran():
    text = _text([_rec("zero-shot", "llama", "decoder-only", 0.3), _rec("LoRA", "llama", "decoder-only", 0.6)])
    assert "Families with a scored row: decoder-only" in text and "needs rows from at least two families" in text
    assert "Rule of thumb" not in text and "did best**" not in text


def test_failed_rows_are_ignored_and_named():
    records = [_rec("full FT", "t5", "encoder-decoder", 0.0, status="failed"),
               _rec("LoRA", "t5", "encoder-decoder", 0.40), _rec("LoRA", "llama", "decoder-only", 0.55)]
    text = _text(records)
    assert "| encoder-decoder | LoRA on t5 | 0.400 |" in text
    assert "**decoder-only did best**" in text
    assert "full FT on t5 is not compared: no seed finished (failed 1/1: RuntimeError)" in text
    # a family whose only row failed does not count as run
    text = _text([records[0], records[2]])
    assert "Families with a scored row: decoder-only." in text


def test_gap_under_one_test_row_cannot_tell():
    # 20 test rows: one row is 5 pts, so a 3-pt gap is noise even though it is over 1 pt
    records = [_rec("LoRA", "t5", "encoder-decoder", 0.53, n=20), _rec("LoRA", "llama", "decoder-only", 0.50, n=20)]
    text = _text(records)
    assert "**No clear winner**" in text and "one test row of 20 = 5.0 pts" in text
    assert "This run **cannot tell**" in _verdict(records)
    # the same gap on 1000 rows is called, with no caution
    records = [_rec("LoRA", "t5", "encoder-decoder", 0.53, n=1000), _rec("LoRA", "llama", "decoder-only", 0.50, n=1000)]
    assert "**agrees**" in _verdict(records) and "read it with care" not in _text(records)


def test_gap_between_one_and_two_test_rows_is_called_with_a_caution():
    records = [_rec("LoRA", "t5", "encoder-decoder", 0.57, n=20), _rec("LoRA", "llama", "decoder-only", 0.50, n=20)]
    text = _text(records)
    assert "7.0 pts of f1 ≈ 1.4 test rows' worth — under two test rows' worth" in text


def test_seeds_are_averaged_and_their_spread_is_the_noise():
    # mean 0.65 ± 0.141 vs 0.55: a 10-pt gap, bigger than 1 pt and 1/n, but inside the seed spread
    records = [_rec("LoRA", "t5", "encoder-decoder", 0.55, seed=0, n=1000),
               _rec("LoRA", "t5", "encoder-decoder", 0.75, seed=1, n=1000),
               _rec("LoRA", "llama", "decoder-only", 0.55, n=1000)]
    text = _text(records)
    assert "| encoder-decoder | LoRA on t5 | 0.650 ± 0.141 (2 seeds) |" in text
    assert "seed std 14.1 pts" in text and "**No clear winner**" in text
    assert "**cannot tell**" in _verdict(records)


def test_cheapest_row_within_noise_of_the_best_is_named():
    records = [_rec("full FT", "llama", "decoder-only", 0.700, usd_train=1.0, usd_1k=0.05, n=1000),
               _rec("LoRA", "llama", "decoder-only", 0.695, usd_train=0.2, usd_1k=0.05, n=1000),
               _rec("LoRA", "t5", "encoder-decoder", 0.600, usd_1k=0.01, n=1000)]
    text = _text(records)
    assert "**Cheapest within 1.0 pts of the best**: LoRA on llama (decoder-only), f1 0.695" in text
    assert "set-up $0.2000 vs $1.00 (0.2×)" in text
    assert "set-up $1.00 vs $0.0100 (100×)" in text  # the winner against the other family's best


def test_classification_tie_won_on_price_agrees_but_a_dearer_tie_cannot_tell():
    cheap_encoder = [_rec("classifier", "minilm", "encoder", 0.80, "classification", usd_1k=0.001),
                     _rec("LoRA", "llama", "decoder-only", 0.805, "classification", usd_1k=0.05)]
    assert "**agrees**" in _verdict(cheap_encoder) and "encoder is cheaper" in _verdict(cheap_encoder)
    dear_encoder = [_rec("classifier", "minilm", "encoder", 0.80, "classification", usd_1k=0.09),
                    _rec("LoRA", "llama", "decoder-only", 0.805, "classification", usd_1k=0.05)]
    assert "**cannot tell**" in _verdict(dear_encoder)


def test_rule_family_missing_cannot_tell():
    records = [_rec("classifier", "minilm", "encoder", 0.7), _rec("LoRA", "llama", "decoder-only", 0.5)]
    assert "**cannot tell**: it has no encoder-decoder row" in _verdict(records)


def test_lower_is_better_metric_flips_the_winner():
    records = [_rec("LoRA", "t5", "encoder-decoder", 0.20, higher_is_better=False),
               _rec("LoRA", "llama", "decoder-only", 0.40, higher_is_better=False)]
    assert "**agrees**: encoder-decoder beat decoder-only by 20.0 pts" in _verdict(records)


def test_records_without_a_family_are_set_aside():
    old = _rec("LoRA", "t5", None, 0.9)
    del old["family"]
    text = _text([old, _rec("LoRA", "llama", "decoder-only", 0.5)])
    assert "do not say the model's family" in text and "LoRA on t5" in text
    assert "Families with a scored row: decoder-only." in text


def test_every_registered_task_type_has_a_rule_of_thumb():
    assert set(TASK_TYPES.names()) <= set(RULES_OF_THUMB)
