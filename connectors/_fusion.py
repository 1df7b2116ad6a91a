"""Fusing ranked lists: reciprocal rank fusion, for stores whose server does not fuse keyword and vector
results itself (Elasticsearch without the licensed ``rrf`` retriever, OpenSearch, pgvector)."""

from __future__ import annotations

from collections.abc import Sequence

from embedrail.connectors.base import Hit

__all__ = ["RRF_K", "relative_score", "rrf"]

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


def relative_score(lists: Sequence[Sequence[Hit]], weights: Sequence[float], k: int) -> list[Hit]:
    """Relative-score fusion (Weaviate's default): each list's scores min-max normalised to [0, 1] over its
    own candidates, then ``score(d) = sum_i w_i * norm_i(d)`` (a list that misses ``d`` adds 0). Unlike RRF
    it keeps how far apart the scores are, so a weak side's long tail weighs little."""
    scores: dict[str, float] = {}
    first: dict[str, Hit] = {}
    for hits, w in zip(lists, weights, strict=True):
        if not hits:
            continue
        vals = [h.score for h in hits]
        lo, hi = min(vals), max(vals)
        for h in hits:
            norm = (h.score - lo) / (hi - lo) if hi > lo else 1.0
            scores[h.id] = scores.get(h.id, 0.0) + w * norm
            first.setdefault(h.id, h)
    best = sorted(scores, key=lambda i: -scores[i])[:k]
    return [Hit(id=i, score=scores[i], text=first[i].text, metadata=first[i].metadata) for i in best]
