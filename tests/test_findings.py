"""Recommendations by architecture, on hand-made records whose answer is known."""

from lmtailor.report.findings import RULES_OF_THUMB, architecture_findings
from lmtailor.tasks import TASK_TYPES

METRIC = {"qa": "f1", "classification": "accuracy", "generation": "rougeL"}


def _rec(label, model, family, score, task_type="qa", status="ok", seed=0, n=100, usd_train=0.01, usd_1k=0.02,
         higher_is_better=True, right=None, strategy="finetune"):
    """A record scored 1 on the test rows in ``right`` (default: the first score × n rows) and 0 on the others."""
    metric = METRIC[task_type]
    right = set(range(round(score * n)) if right is None else right)
    assert status != "ok" or abs(len(right) / n - score) < 1e-9, "per-row scores must average to the score"
    return {
        "row_id": f"{label}-{model}-{seed}", "label": label, "model": model, "family": family, "seed": seed,
        "strategy": strategy, "config": {"name": strategy}, "status": status,
        "score_details": {"per_row": [1.0 if i in right else 0.0 for i in range(n)]},
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


def test_a_gap_of_two_rows_in_twenty_is_within_the_noise():
    # t5 right on rows 0-11, llama on 0-9: per-row differences two 1s and eighteen 0s. A resample draws neither
    # of the two rows with probability 0.9^20 = 12 % > 2.5 %, so the interval's lower end is 0: no call
    records = [_rec("LoRA", "t5", "encoder-decoder", 0.60, n=20), _rec("LoRA", "llama", "decoder-only", 0.50, n=20)]
    text = _text(records)
    assert "**No clear winner**" in text and "paired 95% CI +0.0 to" in text
    assert "This run **cannot tell**" in _verdict(records)
    # the same 10-pt gap on 1000 rows (100 rows, all one way) is called
    records = [_rec("LoRA", "t5", "encoder-decoder", 0.60, n=1000), _rec("LoRA", "llama", "decoder-only", 0.50, n=1000)]
    assert "**agrees**" in _verdict(records)


def test_the_same_means_differ_or_not_by_how_the_rows_pair():
    # 0.60 vs 0.50 on 100 rows. Nested (llama's right rows are among t5's): ten +1s, the rest 0: se 0.03, called.
    nested = [_rec("LoRA", "t5", "encoder-decoder", 0.60), _rec("LoRA", "llama", "decoder-only", 0.50)]
    assert "**encoder-decoder did best**" in _text(nested)
    # Crossed: t5 right on rows 0-59, llama on 30-79: thirty +1s and twenty -1s, mean 0.1, sd about 0.7, se 0.07:
    # an interval of about 0.1 ± 0.14 holds 0
    crossed = [_rec("LoRA", "t5", "encoder-decoder", 0.60),
               _rec("LoRA", "llama", "decoder-only", 0.50, right=range(30, 80))]
    assert "**No clear winner**" in _text(crossed) and "**cannot tell**" in _verdict(crossed)


def test_seeds_are_resampled_so_their_spread_is_part_of_the_noise():
    # t5's seeds score 0.55 and 0.75 (seed 0 right on the same 550 rows as llama): a draw of seed 0 twice has no
    # difference at all, which happens in a quarter of the resamples, so the interval starts at 0
    records = [_rec("LoRA", "t5", "encoder-decoder", 0.55, seed=0, n=1000),
               _rec("LoRA", "t5", "encoder-decoder", 0.75, seed=1, n=1000),
               _rec("LoRA", "llama", "decoder-only", 0.55, n=1000)]
    text = _text(records)
    assert "| encoder-decoder | LoRA on t5 | 0.650 ± 0.141 (2 seeds) |" in text
    assert "paired 95% CI +0.0 to" in text and "within the noise" in text and "**No clear winner**" in text
    assert "**cannot tell**" in _verdict(records)


def test_records_without_per_row_scores_cannot_be_told():
    records = [_rec("LoRA", "t5", "encoder-decoder", 0.60), _rec("LoRA", "llama", "decoder-only", 0.50)]
    del records[1]["score_details"]
    assert "the noise cannot be told: LoRA on llama has no per-row test scores" in _text(records)
    assert "**cannot tell**: the two rows cannot be compared row by row" in _verdict(records)


def test_the_trivial_baseline_is_no_family():
    records = [_rec("LoRA", "t5", "encoder-decoder", 0.60), _rec("LoRA", "llama", "decoder-only", 0.50),
               {**_rec("baseline", "none", None, 0.30, strategy="baseline")}]
    text = _text(records)
    assert "baseline on none" not in text and "do not say the model's family" not in text


def test_cheapest_row_within_noise_of_the_best_is_named():
    # full FT right on rows 0-699; LoRA on llama on 0-689 and 700-704 (0.695): ten +1s and five -1s, mean 0.005,
    # se sqrt(15/1000)/sqrt(1000) = 0.004: within the noise. LoRA on t5 (0.600) is 100 rows below: not.
    records = [_rec("full FT", "llama", "decoder-only", 0.700, usd_train=1.0, usd_1k=0.05, n=1000),
               _rec("LoRA", "llama", "decoder-only", 0.695, usd_train=0.2, usd_1k=0.05, n=1000,
                    right=list(range(690)) + list(range(700, 705))),
               _rec("LoRA", "t5", "encoder-decoder", 0.600, usd_1k=0.01, n=1000)]
    text = _text(records)
    assert "**Cheapest within the noise of the best**: LoRA on llama (decoder-only), f1 0.695" in text
    assert "set-up $0.2000 vs $1.00 (0.2×)" in text
    assert "set-up $1.00 vs $0.0100 (100×)" in text  # the winner against the other family's best


def test_classification_tie_won_on_price_agrees_but_a_dearer_tie_cannot_tell():
    # 0.80 vs 0.805 on 1000 rows, crossed (five rows each way and ten more for llama): within the noise
    llama = dict(n=1000, right=list(range(795)) + list(range(800, 810)))
    cheap_encoder = [_rec("classifier", "minilm", "encoder", 0.80, "classification", usd_1k=0.001, n=1000),
                     _rec("LoRA", "llama", "decoder-only", 0.805, "classification", usd_1k=0.05, **llama)]
    assert "**agrees**" in _verdict(cheap_encoder) and "encoder is cheaper" in _verdict(cheap_encoder)
    dear_encoder = [_rec("classifier", "minilm", "encoder", 0.80, "classification", usd_1k=0.09, n=1000),
                    _rec("LoRA", "llama", "decoder-only", 0.805, "classification", usd_1k=0.05, **llama)]
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


def _with_validation(record, right, n=50):
    """``record`` scored 1 on the validation rows in ``right`` (of ``n``) and 0 on the others."""
    metric = record["primary_metric"]
    value = len(right) / n
    record["validation"] = {"rows": n, "ids_sha256": "val", "primary_metric": metric,
                            "metrics": [{"name": metric, "value": value, "higher_is_better": True}],
                            "score_details": {"per_row": [1.0 if i in right else 0.0 for i in range(n)]}}
    return record


def test_each_familys_best_row_is_chosen_on_validation_and_reported_on_test():
    # Two decoder rows: "lucky" scores 0.62 on test but 0.40 on validation; "steady" 0.58 on test, 0.56 on
    # validation. Chosen on test, the decoder's best would be "lucky" (the maximum of noisy test scores); chosen on
    # validation it is "steady", whose test score (0.58) is what the section reports against the encoder's 0.50.
    records = [_with_validation(_rec("lucky", "llama", "decoder-only", 0.62, task_type="classification"),
                                range(20)),
               _with_validation(_rec("steady", "llama", "decoder-only", 0.58, task_type="classification"),
                                range(28)),
               _with_validation(_rec("full FT", "bert", "encoder", 0.50, task_type="classification"), range(25))]
    text = _text(records)
    assert "| decoder-only | steady on llama | 0.580 |" in text and "lucky on llama" not in text.split("\n- ")[0]
    # the right rows are nested (0..57 against 0..49): eight more, never one fewer, a difference beyond the noise
    assert "steady on llama beat encoder's best (full FT on bert) by 8.0 pts" in text
    assert "chosen on the validation rows; the scores are on the test rows" in text
    # the same records without validation scores: chosen on test, and said to be optimistic
    for r in records:
        del r["validation"]
    text = _text(records)
    assert "| decoder-only | lucky on llama | 0.620 |" in text and "so the best scores are optimistic" in text


def test_a_family_chosen_on_validation_but_beaten_on_test_is_said_so():
    # decoder best on validation (0.60 vs 0.50) but the encoder is right on 30 more test rows of 100 (0.70 vs 0.40,
    # the decoder's right rows a subset of the encoder's: a paired difference beyond the noise)
    records = [_with_validation(_rec("LoRA", "llama", "decoder-only", 0.40, task_type="classification"), range(30)),
               _with_validation(_rec("full FT", "bert", "encoder", 0.70, task_type="classification"), range(25))]
    text = _text(records)
    assert ("**The validation and test rows disagree**: decoder-only's best on the validation rows (LoRA on llama) "
            "is beaten on the test rows by encoder's (full FT on bert) by 30.0 pts of accuracy") in text
    assert "did best**" not in text
