"""Contextual calibration of label scores (Zhao et al. 2021, "Calibrate Before Use", arXiv:2102.09690).

A small model shown an instruction and a few exemplars carries a prior over the labels that has nothing to do with
the input: a label seen last or most often among the exemplars, or one that is a common word, wins on inputs it does
not fit. The paper measures that prior by asking the same prompt about inputs with no content ("N/A", "",
"[MASK]") and divides it out:

- every label's score (summed or mean token log-prob) is turned into a probability over the label set (a softmax
  over the labels: the paper renormalises over the label set too);
- ``p_cf`` is the mean of those probabilities over the content-free inputs, in the same prompt (instruction, the
  same exemplars, the row's own system text and turns);
- a row's prediction is ``argmax_label p(label | x) / p_cf(label)``: the paper's ``W = diag(p_cf)^-1, b = 0``.

Working in logs, that is ``argmax(score - log p_cf)``, since the softmax's normaliser is the same for every label of
a row. With exemplars shared by every row there is one content-free estimate (three extra prompts); with exemplars
chosen per row each row has its own prompt and so its own estimate (three extra prompts per row). Both are
inference cost: the engines count the content-free prompts' tokens with the rows'.

The empty content-free input renders like a row without an input (the instruction alone, as an Alpaca no-input
row): that is what an empty input is in lmtailor's formats.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

from lmtailor.errors import UserError

CONTENT_FREE_INPUTS: tuple[str, ...] = ("N/A", "", "[MASK]")


def _logsumexp(xs: Sequence[float]) -> float:
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs))


def label_log_probs(scores: Sequence[float]) -> list[float]:
    """Log-probabilities over the label set from one row's label scores (a log-softmax over the labels)."""
    norm = _logsumexp(scores)
    return [s - norm for s in scores]


@dataclass
class ContentFreePrompts:
    """The distinct content-free prompts to score, and which of them belong to each row's prompt."""

    prompts: list  # token ids (or source ids) of each distinct content-free prompt
    of_row: list[list[int]]  # row i -> indices into ``prompts`` (one per content-free input)

    def groups(self) -> list[list[int]]:
        """The prompts as groups that share a prompt's exemplars (a row's content-free prompts), each index once:
        an engine runs each group's common prefix once."""
        seen: set[int] = set()
        out = []
        for mine in self.of_row:
            group = [j for j in dict.fromkeys(mine) if j not in seen]
            seen.update(group)
            if group:
                out.append(group)
        return out

    def score_grouped(self, score: Callable[[list[list]], list[list[float]]]) -> list[list[float]]:
        """Every prompt's label scores, from ``score(groups of prompts) -> scores in the groups' order``."""
        groups = self.groups()
        flat = score([[self.prompts[j] for j in g] for g in groups])
        scores: list = [None] * len(self.prompts)
        for j, row in zip((j for g in groups for j in g), flat):
            scores[j] = row
        return scores


def content_free_prompts(n_rows: int, build: Callable[[int, str], Sequence[int]]) -> ContentFreePrompts:
    """``build(i, text)`` is row i's prompt with ``text`` as its input; equal prompts are scored once."""
    index: dict[Hashable, int] = {}
    prompts, of_row = [], []
    for i in range(n_rows):
        mine = []
        for text in CONTENT_FREE_INPUTS:
            ids = build(i, text)
            key = tuple(ids)
            if key not in index:
                index[key] = len(prompts)
                prompts.append(ids)
            mine.append(index[key])
        of_row.append(mine)
    return ContentFreePrompts(prompts, of_row)


def content_free_log_prior(cf_scores: Sequence[Sequence[float]]) -> list[float]:
    """log p_cf: the log of the mean (over content-free inputs) of each label's probability over the label set."""
    logps = [label_log_probs(s) for s in cf_scores]
    return [_logsumexp(col) - math.log(len(logps)) for col in zip(*logps)]


@dataclass
class Calibrated:
    """Calibrated choices, and what the report needs to see of them."""

    best: list[int]  # index of the chosen label per row
    raw_best: list[int]  # what the uncalibrated scores chose
    log_prior: list[list[float]]  # log p_cf per row (rows sharing a prompt share it)

    def details(self, labels: Sequence[str], row_ids: Sequence[str]) -> dict:
        """The record's ``calibration`` block: the content-free distribution(s) and what calibration changed."""
        priors = {tuple(p) for p in self.log_prior}
        out: dict = {"method": "contextual calibration (Zhao et al. 2021): argmax p(label|x) / p_cf(label)",
                     "content_free_inputs": list(CONTENT_FREE_INPUTS),
                     "changed_predictions": sum(a != b for a, b in zip(self.best, self.raw_best)),
                     "uncalibrated_prediction_counts": dict(Counter(labels[i] for i in self.raw_best).most_common())}
        if len(priors) == 1:
            out["p_content_free"] = _as_probs(labels, self.log_prior[0])
        else:  # exemplars chosen per row: one estimate per row, and their mean for a glance
            out["p_content_free_mean"] = _as_probs(labels, [
                math.log(sum(math.exp(p[j]) for p in self.log_prior) / len(self.log_prior))
                for j in range(len(labels))])
            out["p_content_free_by_row"] = {rid: [round(math.exp(x), 4) for x in p]
                                            for rid, p in zip(row_ids, self.log_prior)}
        return out


def _as_probs(labels: Sequence[str], log_prior: Sequence[float]) -> dict[str, float]:
    return {label: round(math.exp(x), 4) for label, x in zip(labels, log_prior)}


def calibrate(row_scores: Sequence[Sequence[float]], cf: ContentFreePrompts,
              cf_scores: Sequence[Sequence[float]]) -> Calibrated:
    """Each row's label by ``argmax(score - log p_cf)``, p_cf from the content-free prompts of that row's prompt."""
    if len(row_scores) != len(cf.of_row):
        raise ValueError(f"{len(row_scores)} rows of scores for {len(cf.of_row)} rows of content-free prompts")
    by_group: dict[tuple[int, ...], list[float]] = {}
    best, raw, priors = [], [], []
    for scores, mine in zip(row_scores, cf.of_row):
        key = tuple(mine)
        if key not in by_group:
            by_group[key] = content_free_log_prior([cf_scores[j] for j in mine])
        prior = by_group[key]
        adjusted = [s - p for s, p in zip(scores, prior)]
        best.append(max(range(len(adjusted)), key=adjusted.__getitem__))
        raw.append(max(range(len(scores)), key=scores.__getitem__))
        priors.append(prior)
    return Calibrated(best, raw, priors)


def check_calibration(mode: str) -> None:
    """Refuse ``calibrate`` where there are no label scores to calibrate."""
    if mode != "likelihood":
        raise UserError(f"calibrate: true recalibrates the scores of every label, which only scoring: likelihood "
                        f"gives (this row answers by {mode}); remove calibrate, or use scoring: likelihood on a "
                        "classification task")


def choose_labels(labels: Sequence[str], row_ids: Sequence[str], scores: Sequence[Sequence[float]],
                  details: dict, cf: ContentFreePrompts | None = None,
                  cf_scores: Sequence[Sequence[float]] | None = None) -> list[str]:
    """The label of each row: the best score, or with ``cf`` the best calibrated one (its details recorded)."""
    if cf is None:
        return [labels[max(range(len(row)), key=row.__getitem__)] for row in scores]
    result = calibrate(scores, cf, cf_scores or [])
    details["calibration"] = {**result.details(labels, row_ids), "content_free_prompts": len(cf.prompts)}
    return [labels[i] for i in result.best]
