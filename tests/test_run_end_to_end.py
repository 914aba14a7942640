"""`lmtailor run` on a tiny model: every row scored on the same test rows, the run directory complete."""

import json
import random
import textwrap

import pytest

from lmtailor.cli import main
from lmtailor.runtime import detect_runtime

LABELS = ["red", "green", "blue"]


@pytest.fixture()
def experiment(tmp_path):
    rng = random.Random(0)
    words = "the a of one two river stone cloud quiet bright small old".split()
    with (tmp_path / "rows.jsonl").open("w") as f:
        for i in range(90):
            label = LABELS[i % 3]
            text = " ".join(rng.choices(words, k=6)) + f" {label} " + " ".join(rng.choices(words, k=3))
            f.write(json.dumps({"text": text, "colour": label}) + "\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text(textwrap.dedent("""
        name: tiny colours
        task:
          type: classification
          instruction: Which colour word does the text contain?
        data:
          source: rows.jsonl
          input_field: text
          target_field: colour
          max_test: 12
        models: [tiny-llama]
        strategies:
          - {name: prompt, shots: 0}
          - {name: prompt, shots: 2}
          - {name: finetune, method: lora, max_steps: 4, batch_size: 4}
          - {name: finetune, method: full, max_steps: 3, batch_size: 4, train_sizes: [12, 24]}
        budget: {max_input_tokens: 48, max_seq_len: 96}
    """))
    return exp


@pytest.fixture()
def two_threads_then_restored():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_run_writes_a_complete_run_directory(experiment, tmp_path, capsys, two_threads_then_restored):
    import torch

    assert main(["run", str(experiment), "--out", str(tmp_path / "runs"), "--set", "runtime.threads=1"]) == 0
    assert torch.get_num_threads() == 1  # runtime.threads applied (the fixture had set 2)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert "threads=1 dtype=" in (run_dir / "run.log").read_text()  # the run output says how many threads
    for name in ("config.yaml", "splits.json", "task.json", "run.log", "results.md"):
        assert (run_dir / name).is_file(), name
    records = [json.loads(p.read_text()) for p in sorted((run_dir / "results").glob("*.json"))]
    assert len(records) == 6  # zero-shot, 2-shot, LoRA, full n=12, full n=24, and the trivial baseline added last
    failed = [(r["row_id"], r["error"]) for r in records if r["status"] != "ok"]
    assert not failed
    splits = json.loads((run_dir / "splits.json").read_text())
    assert len(splits["test"]) == 12
    assert len({r["test_ids_sha256"] for r in records}) == 1  # every row scored on the same test rows
    assert len(splits["validation"]) > 0  # validation_fraction 0.1 of the training rows
    for r in records:
        preds = [json.loads(line) for line in (run_dir / "predictions" / f"{r['row_id']}.jsonl").open()]
        assert [p["id"] for p in preds] == splits["test"]
        assert all(p["prediction"] in LABELS for p in preds)
        # every row answered the validation rows too, scored by the same scorer, in one inference pass
        val = [json.loads(line) for line in (run_dir / "predictions" / "validation" / f"{r['row_id']}.jsonl").open()]
        assert [p["id"] for p in val] == splits["validation"]
        assert r["validation"]["rows"] == len(splits["validation"]) and r["validation"]["primary_metric"] == "accuracy"
        assert len(r["validation"]["score_details"]["per_row"]) == len(splits["validation"])
        assert r["meter"]["phases"]["inference"]["examples"] == len(splits["test"]) + len(splits["validation"])
        assert r["meter"]["inference_latency_s_per_example"] > 0
        assert r["schema_version"] == 2
        # The dtype the hardware supports (fp32 on CPUs that only emulate bf16), never a library default.
        assert r["environment"]["precision"] == detect_runtime().precision
        assert r["environment"]["torch_threads"] == 1  # runtime.threads, set below
    (baseline,) = [r for r in records if r["strategy"] == "baseline"]
    assert baseline["model"] == "none" and baseline["row_index"] == 5 and baseline["family"] is None
    assert baseline["details"]["kind"] == "majority-class" and baseline["meter"]["total_params"] == 0
    sizes = sorted(r["train_size"] for r in records if r["label"].startswith("full"))
    assert sizes == [12, 24]
    assert set(splits["learning_curve_subsets"]["12"]) <= set(splits["learning_curve_subsets"]["24"])
    assert not set(splits["test"]) & set(splits["train"])
    table = capsys.readouterr().out
    assert "zero-shot" in table and "2-shot" in table
    # results.json: every row, the learning curve of the full rows; `lmtailor report` rebuilds it byte for byte
    written = (run_dir / "results.json").read_bytes()
    summary = json.loads(written)
    assert [r["row_id"] for r in summary["rows"]] == [r["row_id"] for r in sorted(records, key=lambda r: r["row_index"])]
    (curve,) = [c for c in summary["learning_curves"] if c["label"].startswith("full")]
    assert [p["train_size"] for p in curve["points"]] == [12, 24]
    (run_dir / "results.json").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "results.json").read_bytes() == written


def test_validate_command_lists_rows_without_loading_models(experiment, capsys):
    assert main(["validate", str(experiment)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and out.count("row ") == 6  # the five listed and the trivial baseline


def test_resume_keeps_finished_rows_and_reruns_the_rest(experiment, tmp_path):
    assert main(["run", str(experiment), "--out", str(tmp_path / "runs"), "--set", "forgetting=false"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    results = run_dir / "results"
    before = {p.stem: json.loads(p.read_text()) for p in results.glob("*.json")}
    lora_id = next(k for k, r in before.items() if r["label"] == "LoRA")
    full_id = next(k for k, r in before.items() if r["label"] == "full FT n=12")
    (results / f"{lora_id}.json").unlink()  # as if the run was killed during this row
    failed = dict(before[full_id], status="failed")
    (results / f"{full_id}.json").write_text(json.dumps(failed))

    assert main(["run", "--resume", str(run_dir)]) == 0
    after = {p.stem: json.loads(p.read_text()) for p in results.glob("*.json")}
    assert after.keys() == before.keys()
    for row_id, record in after.items():
        rerun = row_id in (lora_id, full_id)
        assert (record["started_at"] != before[row_id]["started_at"]
                or record["finished_at"] != before[row_id]["finished_at"]) if rerun else record == before[row_id]
        assert record["status"] == "ok"
    # same seed, same data, same code: the rerun rows score what they scored the first time
    assert after[lora_id]["metrics"] == before[lora_id]["metrics"]
    assert len(list((tmp_path / "runs").iterdir())) == 1  # continued in place, no new run directory


def test_resume_refuses_an_experiment_file_or_a_directory_that_is_not_a_run(experiment, tmp_path, capsys):
    assert main(["run", str(experiment), "--resume", str(tmp_path)]) == 2
    assert "do not pass an experiment file" in " ".join(capsys.readouterr().out.split())
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "not a resumable run directory" in " ".join(capsys.readouterr().out.split())
