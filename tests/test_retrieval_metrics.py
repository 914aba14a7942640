"""Retrieval metrics and reciprocal rank fusion on cases small enough to check by hand."""

from __future__ import annotations

import pytest

from lmtailor.errors import UserError
from lmtailor.retrieval import Chunk, Hit, retrieval_metrics
from lmtailor.retrieval.hybrid import rrf_fuse


def test_metrics_by_hand():
    retrieved = [
        ["a", "a", "b", "c"],  # gold b: "a" counts once, so b is document 2 -> rr 1/2
        ["x", "y", "z", "g"],  # gold g: document 4, outside k=3 -> missed
        ["g1", "n", "g2"],     # gold {g1, g2, g3}: 2 of 3 within k, first at rank 1
    ]
    gold = ["b", {"g"}, {"g1", "g2", "g3"}]
    m = retrieval_metrics(retrieved, gold, k=3)
    assert m["recall@3"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert m["hit@3"] == pytest.approx(2 / 3)
    assert m["mrr"] == pytest.approx((1 / 2 + 0 + 1) / 3)
    assert (m["k"], m["queries"]) == (3, 3)
    assert retrieval_metrics(retrieved, gold, k=4)["mrr"] == pytest.approx((1 / 2 + 1 / 4 + 1) / 3)


def test_metrics_refuse_mismatched_or_empty_gold():
    with pytest.raises(ValueError, match="2 retrieved lists but 1 gold"):
        retrieval_metrics([["a"], ["b"]], ["a"], k=1)
    with pytest.raises(UserError, match="query 1 has no gold"):
        retrieval_metrics([["a"], ["b"]], ["a", set()], k=1)
    with pytest.raises(UserError, match="k >= 1"):
        retrieval_metrics([["a"]], ["a"], k=0)


def _hits(ids: list[str]) -> list[Hit]:
    return [Hit(Chunk(i, i.split("#")[0], 0, i, 0, len(i)), 1.0, r) for r, i in enumerate(ids, start=1)]


def test_rrf_by_hand():
    dense, lexical = _hits(["a#0", "b#0", "c#0"]), _hits(["c#0", "a#0", "d#0"])
    fused = rrf_fuse([dense, lexical], k=3, rrf_k=60)
    # a: 1/61 + 1/62; c: 1/63 + 1/61; b: 1/62; d: 1/63
    assert [h.chunk.id for h in fused] == ["a#0", "c#0", "b#0"]
    assert fused[0].score == pytest.approx(1 / 61 + 1 / 62)
    assert [h.rank for h in fused] == [1, 2, 3]
    tie = rrf_fuse([_hits(["x#0", "y#0"]), _hits(["y#0", "x#0"])], k=2)
    assert [h.chunk.id for h in tie] == ["x#0", "y#0"]  # equal scores keep the first ranking's order
