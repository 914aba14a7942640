"""Inference backends are a registry: adding one is one class and one ``BACKENDS.register`` line.

``ColourReader`` below is a whole backend. Registered for the test only, it claims ``fake:`` model references, a
``prompt`` row of a real ``lmtailor run`` resolves to it without a ``backend:`` setting, and the record holds its
answers scored by the evaluator: the recipe of docs/ARCHITECTURE.md ("How to add an inference backend").
"""

from __future__ import annotations

import json
import textwrap
from typing import ClassVar

import pytest

from lmtailor.cli import main
from lmtailor.core.budget import Budget
from lmtailor.core.context import RunContext
from lmtailor.core.task_spec import TaskSpec
from lmtailor.errors import UserError
from lmtailor.inference.answer import answer
from lmtailor.inference.backends import BACKENDS, resolve_backend
from lmtailor.inference.backends.base import Answers, PredictRequest, Predictor
from lmtailor.measure.meter import Meter

from colours import LABELS, TASK, colour_rows


class ColourReader(Predictor):
    """A backend with no model: it answers the first label written in the input, and counts a token per word."""

    name: ClassVar[str] = "fake"

    @classmethod
    def claims(cls, model_ref: str) -> bool:
        return model_ref.startswith("fake:")

    @classmethod
    def open(cls, model_ref: str, ctx: RunContext) -> "ColourReader":
        return cls()

    def score_labels(self, request: PredictRequest, meter: Meter) -> Answers:
        words = [row.input.split() for row in request.rows]
        predictions = [next((label for label in request.task.labels if label in row), "") for row in words]
        tokens = sum(self.count_tokens(row.input) for row in request.rows)
        meter.add_tokens("inference", tokens)
        meter.add_examples("inference", len(request.rows))
        return predictions, {"mode": request.mode, "rows": len(request.rows), "truncated_inputs": 0, "tokens": tokens}

    def generate(self, request: PredictRequest, meter: Meter) -> Answers:
        return self.score_labels(request, meter)

    def count_tokens(self, text: str) -> int:
        return len(text.split())


@pytest.fixture()
def fake_backend(monkeypatch):
    monkeypatch.setattr(BACKENDS, "_entries", dict(BACKENDS._entries))  # restored after the test
    BACKENDS.register("fake", ColourReader)  # the one registry line a new backend needs
    return ColourReader


def test_a_registered_backend_answers_a_prompt_row_and_is_scored(fake_backend, tmp_path):
    with (tmp_path / "rows.jsonl").open("w") as f:
        for row in colour_rows(30, "c", 0):
            f.write(json.dumps({"text": row.input, "colour": row.target}) + "\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text(textwrap.dedent("""
        name: fake backend
        task: {type: classification, instruction: "Which colour word does the text contain?"}
        data: {source: rows.jsonl, input_field: text, target_field: colour}
        models: ["fake:colour-reader"]
        strategies:
          - {name: prompt, shots: 0}
        forgetting: false
    """))
    assert resolve_backend("fake:colour-reader") == "fake"  # claimed: no backend: setting needed
    assert main(["run", str(exp), "--out", str(tmp_path / "runs")]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    records = [json.loads(p.read_text()) for p in (run_dir / "results").glob("*.json")]
    (record,) = [r for r in records if r["strategy"] == "prompt"]
    assert record["status"] == "ok" and record["model"] == "fake:colour-reader"
    assert record["details"]["backend"] == "fake" and record["details"]["scoring"] == "likelihood"
    rows = [json.loads(line) for line in (run_dir / "predictions" / f"{record['row_id']}.jsonl").open()]
    splits = json.loads((run_dir / "splits.json").read_text())
    assert [r["id"] for r in rows] == splits["test"] and len(rows) == 6  # 30 rows: 6 test, 3 validation, 21 train
    # Every colour row holds its label as a word (colour_rows: 4 filler words, the colour, 2 more), so the reader
    # answers every test row right: accuracy 6/6 = 1.0, scored by the evaluator from the predictions file.
    assert all(r["prediction"] == r["target"] and r["prediction"] in LABELS for r in rows)
    accuracy = next(m for m in record["metrics"] if m["name"] == "accuracy")
    assert accuracy["value"] == 1.0
    # 7 words a row, test and validation rows answered in one pass: the meter holds the backend's own count
    assert record["meter"]["phases"]["inference"]["tokens"] == 7 * (6 + 3)


def test_backend_resolution_and_its_errors(fake_backend):
    assert resolve_backend("tiny-llama") == "transformers"  # claimed by none: the default
    assert resolve_backend("openai:m@http://127.0.0.1:1/v1") == "openai"
    assert resolve_backend("fake:x", "transformers") == "transformers"  # a backend: setting wins
    with pytest.raises(KeyError, match="Did you mean 'fake'"):
        resolve_backend("tiny-llama", "fakes")

    class Greedy(ColourReader):
        name = "greedy"

        @classmethod
        def claims(cls, model_ref: str) -> bool:
            return True

    BACKENDS.register("greedy", Greedy)
    with pytest.raises(UserError, match="claimed by the inference backends fake, greedy"):
        resolve_backend("fake:x")


def test_the_mode_is_chosen_and_checked_once_before_the_backend_answers():
    calls = []

    class Recording(ColourReader):
        def score_labels(self, request: PredictRequest, meter: Meter) -> Answers:
            calls.append(("score_labels", request.mode))
            return [], {}

        def generate(self, request: PredictRequest, meter: Meter) -> Answers:
            calls.append(("generate", request.mode))
            return [], {}

    echo = TaskSpec("echo", "generation", "Repeat the input.")
    predictor, rows = Recording(), colour_rows(2, "r", 0)
    answer(predictor, PredictRequest(TASK, rows, Budget()), Meter())  # classification: likelihood by default
    answer(predictor, PredictRequest(echo, rows, Budget()), Meter())  # generation: generate
    answer(predictor, PredictRequest(TASK, rows, Budget(), mode="constrained"), Meter())
    assert calls == [("score_labels", "likelihood"), ("generate", "generate"), ("score_labels", "constrained")]
    with pytest.raises(UserError, match="unknown scoring mode 'beam'"):
        answer(predictor, PredictRequest(TASK, rows, Budget(), mode="beam"), Meter())
    with pytest.raises(UserError, match="only scoring: likelihood gives"):
        answer(predictor, PredictRequest(TASK, rows, Budget(), mode="constrained", calibrate=True), Meter())
    with pytest.raises(UserError, match="has none; use scoring: generate"):
        answer(predictor, PredictRequest(echo, rows, Budget(), mode="likelihood"), Meter())
    assert len(calls) == 3  # refused before the backend was asked
