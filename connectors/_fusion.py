"""Fusing ranked lists: reciprocal rank fusion, for stores whose server does not fuse keyword and vector
results itself (Elasticsearch without the licensed ``rrf`` retriever, OpenSearch, pgvector)."""

from __future__ import annotations

from collections.abc import Sequence

from connectors.base import Hit

__all__ = ["RRF_K", "rrf"]

RRF_K = 60  # the constant of Cormack et al. (2009), also the default of Elasticsearch's and Weaviate's RRF


def rrf(lists: Sequence[Sequence[Hit]], weights: Sequence[float], k: int, rank_constant: int = RRF_K) -> list[Hit]:
    """Weighted reciprocal rank fusion: ``score(d) = sum_i w_i / (rank_constant + rank_i(d))`` (rank from 1;
    a list that misses ``d`` adds nothing). Returns the ``k`` best, each hit carrying its fused score."""
    scores: dict[str, float] = {}
    first: dict[str, Hit] = {}
    for hits, w in zip(lists, weights, strict=True):
        for rank, h in enumerate(hits, start=1):
            scores[h.id] = scores.get(h.id, 0.0) + w / (rank_constant + rank)
            first.setdefault(h.id, h)
    best = sorted(scores, key=lambda i: -scores[i])[:k]
    return [Hit(id=i, score=scores[i], text=first[i].text, metadata=first[i].metadata) for i in best]
