"""Deterministic train / validation / test splits, caps and nested learning-curve subsets.

Every choice is made by sorting rows on ``sha256(seed, input, target)``: the same seed and rows give the same
split on every machine, whatever order the rows were in. Classification splits are stratified by label, so each
class appears in each split where its count allows.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from typing import Sequence

from lmtailor.core.example import Example
from lmtailor.data.validate import DataError


def row_key(seed: int, row: Example) -> str:
    """The row's place in the seed's order: a hash of its content, not of its position in the file."""
    return hashlib.sha256(f"{seed}\x1f{row.input}\x1f{row.target}".encode()).hexdigest()


def hashed_order(rows: Sequence[Example], seed: int) -> list[Example]:
    """``rows`` in the seed's order (ids break ties between identical rows)."""
    return sorted(rows, key=lambda e: (row_key(seed, e), e.id))


def _groups(rows: Sequence[Example], seed: int, stratify: bool) -> list[list[Example]]:
    """Rows grouped by label (one group when not stratified), each group in the seed's order."""
    if not stratify:
        return [hashed_order(rows, seed)]
    by_label: dict[str, list[Example]] = defaultdict(list)
    for e in rows:
        by_label[e.target].append(e)
    return [hashed_order(by_label[label], seed) for label in sorted(by_label)]


def _allocate(n: int, test_fraction: float, validation_fraction: float) -> tuple[int, int]:
    """(test, validation) counts for a group of ``n``: rounded shares, at least one each where ``n`` allows,
    always leaving one row for training."""
    n_test = math.floor(n * test_fraction + 0.5)
    n_val = math.floor(n * validation_fraction + 0.5)
    if test_fraction > 0 and n >= 2:
        n_test = max(n_test, 1)
    if validation_fraction > 0 and n >= 3:
        n_val = max(n_val, 1)
    while n_test + n_val > max(n - 1, 0):
        if n_val >= n_test and n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    return n_test, n_val


def split_rows(rows: Sequence[Example], test_fraction: float, validation_fraction: float, seed: int,
               stratify: bool) -> tuple[list[Example], list[Example], list[Example]]:
    """Split ``rows`` into disjoint (train, validation, test), each in the seed's order."""
    train: list[Example] = []
    validation: list[Example] = []
    test: list[Example] = []
    for group in _groups(rows, seed, stratify):
        n_test, n_val = _allocate(len(group), test_fraction, validation_fraction)
        test += group[:n_test]
        validation += group[n_test:n_test + n_val]
        train += group[n_test + n_val:]
    return hashed_order(train, seed), hashed_order(validation, seed), hashed_order(test, seed)


def stratification_note(rows: Sequence[Example], test_fraction: float, validation_fraction: float) -> str | None:
    """What a stratified split did with labels too small for their share of each split (None: every label has a row
    in each split it is asked for). ``split_rows`` keeps such a label's rows in training first, then test: a label
    with 2 rows puts 1 in test and 1 in training, one with 1 row keeps it in training, and none goes to validation;
    with many small labels test gets far more than its share and validation may be empty, which users must be told."""
    counts: dict[str, int] = defaultdict(int)
    for e in rows:
        counts[e.target] += 1
    shares = {label: _allocate(n, test_fraction, validation_fraction) for label, n in counts.items()}
    no_test = sorted(label for label, (t, _) in shares.items() if test_fraction > 0 and t == 0)
    no_val = sorted(label for label, (_, v) in shares.items() if validation_fraction > 0 and v == 0)
    if not no_test and not no_val:
        return None
    n = len(rows)
    n_test, n_val = (sum(x[i] for x in shares.values()) for i in (0, 1))
    small = sorted(set(no_test) | set(no_val))
    listed = ", ".join(f"{label!r} ({counts[label]})" for label in small[:5])
    listed += f" and {len(small) - 5} more" if len(small) > 5 else ""
    note = (f"{len(small)} of {len(counts)} labels have too few rows to stratify into train / validation / test "
            f"(3 needed for one row in each): {listed}. Their rows went to training first, then test (a label with 2 "
            f"rows: 1 each), none to validation; {len(no_val)} label(s) have no validation row and {len(no_test)} "
            f"no test row. Test holds {n_test} of {n} rows ({n_test / n:.0%}, asked {test_fraction:.0%}), validation "
            f"{n_val} ({n_val / n:.0%}, asked {validation_fraction:.0%})")
    if validation_fraction > 0 and n_val == 0:
        note += ("; validation is EMPTY, so nothing is chosen on validation rows (the report chooses on the test "
                 "rows and says so)")
    return note + ". Add rows for the small labels, merge or drop them, or use task.type: generation"


def _proportional(sizes: list[int], n: int) -> list[int]:
    """Share ``n`` among groups in proportion to their sizes (largest remainder), at least one each if ``n`` allows."""
    total = sum(sizes)
    exact = [s * n / total for s in sizes]
    quotas = [min(s, math.floor(x)) for s, x in zip(sizes, exact)]
    if n >= len(sizes):
        quotas = [max(q, 1) for q in quotas]
    while sum(quotas) > n:
        quotas[quotas.index(max(quotas))] -= 1
    order = sorted(range(len(sizes)), key=lambda i: (quotas[i] - exact[i], i))
    while sum(quotas) < n:
        for i in order:
            if quotas[i] < sizes[i] and sum(quotas) < n:
                quotas[i] += 1
    return quotas


def cap_rows(rows: Sequence[Example], n: int | None, seed: int, stratify: bool) -> list[Example]:
    """At most ``n`` rows chosen by the seed, in their given order; stratified caps keep each label's share (and
    every label, if ``n`` allows)."""
    if n is None or len(rows) <= n:
        return list(rows)
    groups = _groups(rows, seed, stratify)
    quotas = _proportional([len(g) for g in groups], n)
    chosen = {id(e) for g, q in zip(groups, quotas) for e in g[:q]}
    return [e for e in rows if id(e) in chosen]


def balanced_order(rows: Sequence[Example], seed: int) -> list[Example]:
    """Round-robin over labels (labels in the seed's hashed order, rows within a label in the seed's order).

    Any prefix is as balanced as the labels' counts allow; with all-distinct targets (generation) this is simply a
    seeded shuffle.
    """
    by_label: dict[str, list[Example]] = defaultdict(list)
    for e in hashed_order(rows, seed):
        by_label[e.target].append(e)
    labels = sorted(by_label, key=lambda t: hashlib.sha256(f"{seed}\x1f{t}".encode()).hexdigest())
    order: list[Example] = []
    for depth in range(max((len(v) for v in by_label.values()), default=0)):
        order += [by_label[t][depth] for t in labels if depth < len(by_label[t])]
    return order


def nested_subsets(rows: Sequence[Example], sizes: Sequence[int], seed: int,
                   balanced: bool = True) -> list[list[Example]]:
    """Training subsets of the given sizes for a learning curve; each contains every smaller one.

    Subsets are prefixes of one order: by default :func:`balanced_order` (we chose balance over the training set's
    label shares, so that small subsets still show every class), else the seed's plain order.
    """
    bad = [s for s in sizes if not isinstance(s, int) or s < 1]
    if bad:
        raise DataError(f"learning-curve sizes must be positive whole numbers; got {bad}")
    too_big = [s for s in sizes if s > len(rows)]
    if too_big:
        raise DataError(f"learning-curve size(s) {too_big} exceed the {len(rows)} training rows available: "
                        "lower train_sizes, or raise data.max_train / add training data")
    order = balanced_order(rows, seed) if balanced else hashed_order(rows, seed)
    return [order[:s] for s in sizes]
