"""Retrieval quality on documents: recall@k, hit rate@k and MRR@k, where the gold documents are known.

Scored on documents, not chunks: several retrieved chunks of one document count once, at the rank of the first.
"""

from __future__ import annotations

from typing import Sequence

from lmtailor.errors import UserError


def unique_in_order(ids: Sequence[str]) -> list[str]:
    """``ids`` without repeats, each at its first position."""
    return list(dict.fromkeys(ids))


def retrieval_metrics(retrieved_doc_ids: list[list[str]], gold_doc_ids: list[set[str] | str], k: int) -> dict:
    """Mean recall@k, hit@k and MRR@k over queries, on the first ``k`` distinct documents retrieved per query.

    recall@k: share of a query's gold documents among them; hit@k: 1 if any is; mrr: 1 / rank of the first
    gold document among them (0 if none).
    """
    if len(retrieved_doc_ids) != len(gold_doc_ids):
        raise ValueError(f"{len(retrieved_doc_ids)} retrieved lists but {len(gold_doc_ids)} gold sets")
    if k < 1:
        raise UserError(f"retrieval metrics need k >= 1, got {k}")
    if not gold_doc_ids:
        raise UserError("retrieval metrics need at least one query with gold documents")
    recall = hit = rr = 0.0
    for i, (retrieved, gold) in enumerate(zip(retrieved_doc_ids, gold_doc_ids)):
        gold_set = {gold} if isinstance(gold, str) else set(gold)
        if not gold_set:
            raise UserError(f"query {i} has no gold document: leave queries without gold documents out of "
                            "retrieval scoring")
        top = unique_in_order(retrieved)[:k]
        found = [rank for rank, doc in enumerate(top, start=1) if doc in gold_set]
        recall += len(found) / len(gold_set)
        hit += 1.0 if found else 0.0
        rr += 1.0 / found[0] if found else 0.0
    n = len(gold_doc_ids)
    return {f"recall@{k}": recall / n, f"hit@{k}": hit / n, "mrr": rr / n, "k": k, "queries": n}
