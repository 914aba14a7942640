"""The prefix-cache self-check of label scoring is held against an fp32, cache-free reference, with the tolerance of
the run's precision, and says in the record which check ran and what it measured (inference/label_scoring.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from lmtailor.inference import label_reference, label_scoring
from lmtailor.inference.label_reference import BF16_CHECK_TOLERANCE, FP32_CHECK_TOLERANCE
from lmtailor.inference.label_scoring import score_labels
from lmtailor.models import load_model
from lmtailor.runtime import Runtime

from test_inference_speedups import LABELS, PAD, SHARED, SUFFIXES

PROMPTS = [SHARED + s for s in SUFFIXES]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return load_model(str(tiny_llama_dir), Runtime("cpu", "fp32", "test"))


def test_fp32_check_is_recorded_and_passes(tiny, one_torch_thread):
    result = score_labels(tiny.model, PROMPTS, LABELS, PAD)
    check = result.check
    assert (check["reference"], check["tolerance"], check["passed"], check["labels_checked"]) == \
        ("fp32, no cache", FP32_CHECK_TOLERANCE, True, 2)
    assert check["relative_difference"] < 1e-5  # fp32: the cache changes only the order of float additions


def test_bf16_is_checked_against_fp32_and_its_weights_are_left_exactly_as_they_were(tiny, one_torch_thread):
    model = copy.deepcopy(tiny.model).to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = score_labels(model, PROMPTS, LABELS, PAD)
    assert result.check["reference"] == "fp32, no cache" and result.check["tolerance"] == BF16_CHECK_TOLERANCE
    assert result.check["passed"] and result.path == "prefix-cache"
    assert result.check["relative_difference"] > 0  # bf16 against fp32: rounding shows
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


def test_a_cache_that_moves_scores_beyond_the_tolerance_falls_back(tiny, one_torch_thread, monkeypatch):
    real = label_scoring._score_batch_cached

    def off_by_a_fifth(*args, **kwargs):  # a cache bug that shifts every cached log-prob by 20%
        logps, n = real(*args, **kwargs)
        return [[[x * 1.2 for x in lab] for lab in row] for row in logps], n

    monkeypatch.setattr(label_scoring, "_score_batch_cached", off_by_a_fifth)
    model = copy.deepcopy(tiny.model).to(torch.bfloat16)
    result = score_labels(model, PROMPTS, LABELS, PAD)
    # a 20% shift (less bf16 rounding) passed the old 25% bf16 tolerance; it is outside BF16_CHECK_TOLERANCE (0.15)
    assert BF16_CHECK_TOLERANCE < result.check["relative_difference"] < 0.25 and not result.check["passed"]
    assert result.path == "no-cache" and "relative difference" in result.notes[0]


def test_weights_that_cannot_be_cast_are_checked_in_their_own_dtype(tiny, one_torch_thread, monkeypatch):
    def refuse(model):
        raise label_reference.CannotCastToFp32("quantized weights")

    monkeypatch.setattr(label_reference, "fp32_weights", refuse)
    model = copy.deepcopy(tiny.model).to(torch.bfloat16)
    check = score_labels(model, PROMPTS, LABELS, PAD).check
    assert check["reference"] == "bfloat16, no cache (quantized weights)"
    assert check["tolerance"] == 2 * BF16_CHECK_TOLERANCE and check["passed"]
