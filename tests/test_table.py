from lmtailor.report.table import results_markdown
from lmtailor.report.table_rows import build_rows


def _record(label, model, score, strategy="prompt", shots=0, status="ok", seed=0, train_s=0.0):
    return {
        "row_id": f"{label}-{model}-{seed}", "label": label, "model": model, "strategy": strategy, "seed": seed,
        "config": {"name": strategy, "shots": shots}, "status": status, "primary_metric": "accuracy",
        "metrics": [{"name": "accuracy", "value": score, "higher_is_better": True}] if status == "ok" else [],
        "error": None if status == "ok" else {"type": "RuntimeError", "message": "boom"},
        "test_rows": 10, "test_ids_sha256": "abc", "environment": {"device": "cpu", "precision": "fp32"},
        "meter": {"phases": {"train": {"wall_s": train_s}}, "inference_latency_s_per_example": 0.5,
                  "peak_rss_bytes": 2**30, "trainable_params": 0 if strategy == "prompt" else 100,
                  "total_params": 1000, "usd": {"train": 0.01, "inference_per_1k": 0.02, "rate_per_hour": 0.1}},
    }


def test_rows_compare_with_same_model_zero_shot_and_average_seeds():
    records = [
        _record("zero-shot", "m1", 0.2), _record("zero-shot", "m2", 0.5),
        _record("LoRA", "m1", 0.6, "finetune", seed=0, train_s=10), _record("LoRA", "m1", 0.8, "finetune", seed=1, train_s=10),
    ]
    rows = {(r.label, r.model): r for r in build_rows(records)}
    lora = rows[("LoRA", "m1")]
    assert abs(lora.score - 0.7) < 1e-9 and lora.seeds == 2 and lora.score_std is not None
    assert abs(lora.delta - 0.5) < 1e-9  # vs m1's zero-shot, not m2's
    assert rows[("zero-shot", "m1")].delta is None


def test_failed_row_is_shown_not_dropped():
    records = [_record("zero-shot", "m1", 0.2), _record("LoRA", "m1", 0.0, "finetune", status="failed")]
    md = results_markdown(records, "t")
    assert "failed 1/1: RuntimeError" in md
    assert "LoRA" in md and "boom" in md


def test_a_model_without_zero_shot_is_compared_with_the_named_first_model():
    records = [_record("zero-shot", "m1", 0.2), _record("full FT", "enc", 0.7, "finetune", train_s=5)]
    rows = {(r.label, r.model): r for r in build_rows(records)}
    enc = rows[("full FT", "enc")]
    assert abs(enc.delta - 0.5) < 1e-9 and enc.baseline_model == "m1"
    assert rows[("zero-shot", "m1")].baseline_model is None
    assert "+50.0 pts (vs m1)" in results_markdown(records, "t")


def _probed(record, ppl_pct=None, acc_pts=None, **extra):
    base = {"passages": 41, "items": 40, "text_set": {"sources": ["python-license", "zen-of-python"]}}
    record["forgetting"] = {"base": base, "tuned": {}, "delta_perplexity_pct": ppl_pct,
                            "delta_accuracy_pts": acc_pts, **extra}
    return record


def _line(md: str, label: str) -> list[str]:
    return [c.strip() for c in next(ln for ln in md.splitlines() if ln.startswith(f"| {label} |")).split("|")[1:-1]]


def test_forgetting_column_shows_the_change_from_the_base_model_averaged_over_seeds():
    records = [_record("zero-shot", "m1", 0.2),
               _probed(_record("LoRA", "m1", 0.6, "finetune", seed=0, train_s=10), 2.0, -5.0),
               _probed(_record("LoRA", "m1", 0.8, "finetune", seed=1, train_s=10), 4.1, -2.5)]
    md = results_markdown(records, "t")
    header = _line(md, "approach")
    assert header[3:5] == ["Δ vs zero-shot", "forgetting"]
    lora = dict(zip(header, _line(md, "LoRA")))
    assert lora["forgetting"] == "ppl +3.0% · acc -3.8 pts" and lora["Δ vs zero-shot"] == "+50.0 pts"
    assert dict(zip(header, _line(md, "zero-shot")))["forgetting"] == "-"  # nothing trained, nothing probed
    assert "Forgetting: the trained model against its base model" in md
    assert "41 passages from python-license, zen-of-python; 40 questions, one question = 2.5 pts" in md


def test_forgetting_column_says_why_a_row_has_no_numbers_and_is_absent_without_probes():
    records = [_record("zero-shot", "m1", 0.2),
               _probed(_record("full FT", "enc", 0.7, "finetune", train_s=5),
                       tuned={"perplexity": None, "perplexity_note": "encoder classifier: ..."}),
               _probed(_record("LoRA", "m1", 0.6, "finetune", train_s=5),
                       error={"type": "RuntimeError", "message": "boom", "probe": "tuned"})]
    rows = {r.label: r for r in build_rows(records)}
    md = results_markdown(records, "t")
    header = _line(md, "approach")
    assert dict(zip(header, _line(md, "full FT")))["forgetting"] == "n/a (no LM head)"
    assert dict(zip(header, _line(md, "LoRA")))["forgetting"] == "probe failed: RuntimeError"
    assert rows["zero-shot"].forgetting is None
    assert "forgetting" not in _line(results_markdown(records[:1], "t"), "approach")


def test_forgetting_and_retrieval_columns_line_up():
    rag = _record("RAG", "m1", 0.5, "rag")
    rag["metrics"].append({"name": "recall@3", "value": 0.75, "higher_is_better": True})
    lora = _probed(_record("LoRA", "m1", 0.6, "finetune", train_s=5), 1.0, 2.5)
    records = [_record("zero-shot", "m1", 0.2), rag, lora]
    md = results_markdown(records, "t")
    header = _line(md, "approach")
    assert header[2:6] == ["metric", "retrieval", "Δ vs zero-shot", "forgetting"]
    assert dict(zip(header, _line(md, "RAG")))["retrieval"] == "recall@3 0.750"
    lora = dict(zip(header, _line(md, "LoRA")))
    assert lora["forgetting"] == "ppl +1.0% · acc +2.5 pts" and lora["retrieval"] == "-"
    assert len(header) == len(_line(md, "LoRA")) == len(_line(md, "RAG"))


def test_status_says_how_much_extra_data_a_row_really_got():
    syn = _record("LoRA + 48 synthetic", "m", 0.5, strategy="finetune")
    syn["details"] = {"synthetic": {"kept": 3, "requested_rows": 48}}
    eda = _record("continued PT (LoRA) + LoRA + 4× EDA", "m", 0.6, strategy="continued-pretraining")
    eda["details"] = {"finetune": {"augmented": {"made": 354}}}
    rows = {r.label: r for r in build_rows([_record("zero-shot", "m", 0.1), syn, eda])}
    assert rows["LoRA + 48 synthetic"].status == "ok (3/48 synthetic rows kept)"
    assert rows["continued PT (LoRA) + LoRA + 4× EDA"].status == "ok (+354 augmented rows)"
    assert rows["zero-shot"].status == "ok"


def test_training_footprint_column_lines_up_with_the_trained_rows_only():
    lora = _probed(_record("LoRA", "m1", 0.6, "finetune", train_s=5), 1.0, 2.5)
    lora["details"] = {"seconds_per_step": 0.25, "optimizer_state_bytes": 3 * 2**20}
    lora["meter"]["artifact_bytes"] = {"adapter": 1536 * 2**10}
    lora["meter"]["peak_rss_bytes_by_phase"] = {"train": 3 * 2**30, "inference": 4 * 2**30}
    full = _record("full FT", "m1", 0.7, "finetune", train_s=9)
    full["details"] = {"finetune": {"seconds_per_step": 1.5, "optimizer_state_bytes": 2 * 2**30}}
    full["meter"]["artifact_bytes"] = {"model": 2**30, "index": 5}  # an index is not the trained artifact
    full["meter"]["peak_rss_bytes_by_phase"] = {"train": 5 * 2**30}
    full["meter"]["cuda_peak_bytes_by_phase"] = {"train": 2 * 2**30, "pretrain": 3 * 2**30}  # GPU memory wins
    md = results_markdown([_record("zero-shot", "m1", 0.2), lora, full], "t")
    header = _line(md, "approach")
    assert header[header.index("trainable params") + 1] == "step · optimizer · train peak · saved"
    cells = {label: dict(zip(header, _line(md, label))) for label in ("LoRA", "full FT", "zero-shot")}
    column = "step · optimizer · train peak · saved"
    assert cells["LoRA"][column] == "0.25 s/step · 3 MB · 3 GB · 1.5 MB"  # the training phase's peak, not inference's
    assert cells["full FT"][column] == "1.5 s/step · 2 GB · 3 GB · 1 GB"
    assert cells["zero-shot"][column] == "-"
    assert cells["LoRA"]["forgetting"] == "ppl +1.0% · acc +2.5 pts"
    assert len({len(_line(md, label)) for label in ("LoRA", "full FT", "zero-shot", "approach")}) == 1


def test_status_counts_answers_cut_at_max_new_tokens_over_seeds():
    from lmtailor.report.table_rows import build_rows

    a, b = _record("gen", "m", 0.3, seed=0), _record("gen", "m", 0.4, seed=1)
    a["details"] = {"inference": {"truncated_generations": 3}}
    b["details"] = {"finetune": {"inference": {"truncated_generations": 1}}}  # a pre-training strategy's answers
    clean = _record("other", "m", 0.5)
    clean["details"] = {"inference": {"truncated_generations": 0}}
    rows = {r.label: r for r in build_rows([a, b, clean])}
    assert rows["gen"].status == "ok (4/20 answers cut at max_new_tokens)"  # 3 + 1 of 10 + 10 test rows
    assert rows["other"].status == "ok"
    # a row answers its validation rows in the same pass, and the count covers them: 3 + 1 of (10 + 6) x 2 answers
    a["validation"] = b["validation"] = {"rows": 6}
    assert {r.label: r for r in build_rows([a, b])}["gen"].status == "ok (4/32 answers cut at max_new_tokens)"
