"""Fusing ranked lists: reciprocal rank fusion, for stores whose server does not fuse keyword and vector
results itself (Elasticsearch without the licensed ``rrf`` retriever, OpenSearch, pgvector)."""

from __future__ import annotations

from collections.abc import Sequence

from embedrail.connectors.base import Hit

__all__ = ["FUSIONS", "GUARD_ALPHA", "GUARD_PEAK", "RRF_K", "fuse", "guarded", "relative_score", "rrf"]

FUSIONS = ("relative", "rrf", "guarded")
GUARD_ALPHA = 0.9  # guarded fusion's weight of the vector side when the keyword side is not trusted
GUARD_PEAK = 3.0  # ... which it is where its best score is this many times its second (a rare word matched)

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


def _doc(h: Hit) -> str:
    return str(h.metadata.get("_doc", h.id)) if h.metadata else h.id


def guarded(lists: Sequence[Sequence[Hit]], weights: Sequence[float], k: int) -> list[Hit]:
    """Relative-score fusion that gives the keyword side its weight only where it can be trusted: both
    sides rank the same document (``_doc``, else the id) first, or the keyword side's best score is at
    least ``GUARD_PEAK`` times its second (a rare word matched one record: an identifier, an error code, a
    name). Otherwise the vector side weighs ``GUARD_ALPHA`` and the keyword side only breaks near-ties.
    ``lists``: (kNN, keywords). On queries in other words than the documents (a paraphrase, a question)
    the keyword side's best is rarely kNN's and its scores are flat, so it cannot pull a weak keyword
    match above kNN's; figures in docs/benchmarks.md."""
    dense, sparse = lists
    agree = bool(dense) and bool(sparse) and _doc(dense[0]) == _doc(sparse[0])
    peaked = bool(sparse) and (len(sparse) == 1 or (sparse[1].score > 0 and sparse[0].score >= GUARD_PEAK * sparse[1].score))
    if not (agree or peaked) and weights[0] > 0:
        a = max(float(weights[0]), GUARD_ALPHA)
        weights = [a, 1.0 - a]
    return relative_score(lists, weights, k)


def fuse(fusion: str, lists: Sequence[Sequence[Hit]], weights: Sequence[float], k: int) -> list[Hit]:
    """The fusion named ``fusion`` (one of ``FUSIONS``) of (kNN, keyword) lists."""
    return {"rrf": rrf, "guarded": guarded}.get(fusion, relative_score)(lists, weights, k)
