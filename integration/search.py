"""The query side (DESIGN.md, "The query side"): load the embedder an index records, embed the query,
retrieve candidates from the store (kNN, or hybrid keyword + kNN), optionally rerank them with a
cross-encoder or Qwen3-Reranker, and return hits with what ran and how long each stage took.

The CLI (``embedrail search``), the demo and user code use this module; nothing else re-implements it.

```python
from embedrail.integration.search import Searcher
with Searcher("chroma:///data/chroma?collection=docs", reranker="/models/Qwen3-Reranker-0.6B") as s:
    result = s.search("how do I parse arguments?", k=10, candidates=100, filter={"lang": "en"})
    print(result.stages, result.timings)          # ['embed', 'knn', 'rerank'] and seconds per stage
    for hit in result.hits:                       # score: the reranker's; first_stage: the kNN order
        print(hit.score, hit.metadata["_doc"], hit.text[:80])
```

Two-stage search: the first stage fetches ``candidates`` hits (default ``max(DEFAULT_CANDIDATES, k)`` when
a reranker is set), the reranker scores each (query, hit text) pair and the ``k`` best are returned,
their ``score`` replaced by the reranker's. ``result.first_stage`` keeps the first stage's hits in their
own order and scores.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from embedrail.connectors.base import DEFAULT_ALPHA, DEFAULT_FUSION, Hit, IndexInfo, VectorStore
from embedrail.errors import ConfigError

__all__ = ["DEFAULT_CANDIDATES", "SearchResult", "Searcher", "search"]

#: first-stage hits a reranker rescores unless ``candidates`` says otherwise
DEFAULT_CANDIDATES = 100


@dataclass
class SearchResult:
    """Hits (best first) and how they were found."""

    query: str
    hits: list[Hit]
    model: str  # the query embedder's model id
    stages: list[str] = field(default_factory=list)  # e.g. ["embed", "knn"] or ["embed", "hybrid", "rerank"]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    reranker: str | None = None  # the reranker's model id when one ran
    first_stage: list[Hit] | None = None  # the candidates before reranking, in the first stage's order

    def to_dict(self) -> dict[str, Any]:
        out = {
            "query": self.query,
            "model": self.model,
            "stages": list(self.stages),
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "hits": [{"id": h.id, "score": h.score, "text": h.text, "metadata": h.metadata} for h in self.hits],
        }
        if self.reranker is not None:
            out["reranker"] = self.reranker
            out["candidates"] = len(self.first_stage or [])
        return out


class Searcher:
    """Queries one target with the embedding its index was built with.

    ``target``: a store URL or a ``VectorStore`` (the caller closes a store it passes). ``model``/``dims``
    override the recorded embedder (its dims must still match the index); ``embedder``: an already
    loaded embedder, used when its fingerprint is the one the index records. ``reranker``: a model for
    :func:`embed_core.open_reranker` (a Qwen3-Reranker or cross-encoder directory, a hub id, a remote
    URL) or a loaded reranker (the caller closes one it passes); every search then reranks its
    candidates. Models are loaded on the first query.
    """

    def __init__(self, target: str | VectorStore, *, model: str | None = None, dims: int | None = None,
                 device: str = "auto", embedder: Any = None, reranker: Any = None) -> None:  # fmt: skip
        if isinstance(target, str):
            from embedrail.integration.targets import connect_target

            self.store, self._owns_store = connect_target(target, device=device), True
        else:
            self.store, self._owns_store = target, False
        self.model, self.dims, self.device = model, dims, device
        self._embedder, self._owns_embedder = embedder, False
        self._reranker_spec, self._reranker, self._owns_reranker = reranker, None, False
        if reranker is not None and not isinstance(reranker, str):
            self._reranker = reranker
        self._info: IndexInfo | None = None
        self._sparse_checked = False

    def index(self) -> IndexInfo:
        if self._info is None:
            info = self.store.describe()
            if not info.exists:
                raise ConfigError(f"{self.store.url}: no such index; create it with `embedrail reindex --target {self.store.url} ...`")
            self._info = info
        return self._info

    def embedder(self) -> Any:
        """The query embedder: the given one if it matches the index, else the model the index records."""
        info = self.index()
        spec = info.spec
        emb = self._embedder
        if emb is not None and self.model is None and (spec is None or emb.fingerprint == spec.fingerprint):
            return emb
        from embedrail.embed_core import DEFAULT_MODEL, embedder_from_info, open_embedder

        recorded = dict(spec.embedding) if spec is not None else {}
        if self.model is None and recorded.get("model"):
            emb = embedder_from_info(recorded, device=self.device)
        else:
            emb = open_embedder(self.model or DEFAULT_MODEL, dims=self.dims or (spec.dims if spec else None), device=self.device)
        if spec is not None and emb.dims != spec.dims:
            emb.close()
            raise ConfigError(f"the model gives {emb.dims} dims but {self.store.url} holds {spec.dims}; pass --dims {spec.dims}")
        self._embedder, self._owns_embedder = emb, True
        return emb

    def settings(self, hybrid: bool | None = None, alpha: float | None = None, fusion: str | None = None) -> tuple[bool, float, str]:
        """(hybrid, alpha, fusion) of a query: what it gives, else the index's recorded search defaults, else
        kNN (hybrid: ``DEFAULT_ALPHA``, ``DEFAULT_FUSION``). Giving ``alpha`` or ``fusion`` implies hybrid."""
        rec = self.index().search or {}
        if hybrid is None:
            hybrid = True if (alpha is not None or fusion is not None) else bool(rec.get("hybrid", False))
        if not hybrid:
            return False, 1.0, DEFAULT_FUSION
        use_rec = bool(rec.get("hybrid"))
        a = alpha if alpha is not None else float(rec["alpha"]) if use_rec and "alpha" in rec else DEFAULT_ALPHA
        f = fusion if fusion is not None else str(rec["fusion"]) if use_rec and "fusion" in rec else DEFAULT_FUSION
        return True, a, f

    def _sparse_model(self) -> None:
        """Give the store the SPLADE model its collection's sparse vectors come from (what the index
        records), the first time a hybrid search needs it."""
        if self._sparse_checked:
            return
        self._sparse_checked = True  # one look per searcher (a metadata read), not one per query
        recorded = getattr(self.store, "sparse_identity", lambda: None)()
        if not recorded or recorded.get("name") != "splade" or getattr(self.store, "sparse_encoder", None) is not None:
            return
        from embedrail.embed_core.sparse import open_sparse_encoder

        enc = open_sparse_encoder(str(recorded["model"]), device=self.device, max_tokens=recorded.get("max_tokens"),
                                  top_k=recorded.get("top_k"))  # fmt: skip
        self.store.use_sparse_encoder(enc)  # type: ignore[attr-defined]

    def reranker(self) -> Any:
        """The reranker (loaded on first use), or None when this searcher has none."""
        if self._reranker is None and isinstance(self._reranker_spec, str):
            from embedrail.embed_core import open_reranker

            self._reranker, self._owns_reranker = open_reranker(self._reranker_spec, device=self.device), True
        return self._reranker

    def search(self, query: str, k: int = 10, *, filter: dict[str, Any] | None = None, instruction: str | None = None,
               distinct_docs: bool = False, hybrid: bool | None = None, alpha: float | None = None,
               fusion: str | None = None, candidates: int | None = None, rerank: bool | None = None,
               rerank_instruction: str | None = None) -> SearchResult:  # fmt: skip
        """The ``k`` best chunks for ``query`` (``distinct_docs``: the best chunk of each of the ``k`` best
        documents). ``filter``: the portable metadata filter; ``instruction``: the query task of an
        instruction-aware model (Qwen3). ``hybrid``: keyword search on the text fused with kNN
        (``store.hybrid_search``; ``alpha`` weighs the vector side, ``fusion`` is ``guarded``, ``relative`` or
        ``rrf``), where the store supports it. What a query leaves out (None) comes from the search defaults the index records
        (``embedrail eval --tune --save``), else kNN, and for hybrid ``DEFAULT_ALPHA`` / ``DEFAULT_FUSION``.

        With a reranker (``rerank`` defaults to True when the searcher has one; False skips it for this
        query) the first stage fetches ``candidates`` hits (default ``max(100, k)``), the reranker
        rescores them (``rerank_instruction``: a Qwen3-Reranker task) and the ``k`` best are kept.
        Without one, ``candidates`` is an error: it would change nothing."""
        if not isinstance(query, str) or not query.strip():
            raise ConfigError("the query is empty")
        hybrid, alpha, fusion = self.settings(hybrid, alpha, fusion)
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        use_rerank = (self._reranker is not None or self._reranker_spec is not None) if rerank is None else rerank
        if use_rerank and self._reranker is None and self._reranker_spec is None:
            raise ConfigError("rerank=True needs a reranker: Searcher(target, reranker=MODEL) or --rerank MODEL")
        if candidates is not None:
            if not use_rerank:
                raise ConfigError("candidates applies to two-stage search only: give a reranker (--rerank MODEL)")
            if not isinstance(candidates, int) or candidates < 1:
                raise ConfigError(f"candidates must be a positive integer, got {candidates!r}")
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        emb = self.embedder()
        t1 = time.perf_counter()
        if t1 - t0 > 0.001:
            timings["load"] = t1 - t0
        vec = emb.embed_queries([query], instruction=instruction)[0]
        t2 = time.perf_counter()
        timings["embed"] = t2 - t1
        want = max(candidates or DEFAULT_CANDIDATES, k) if use_rerank else k
        n = want * 4 if distinct_docs and not use_rerank else want
        stage = "hybrid" if hybrid else "knn"
        if hybrid:
            self._sparse_model()
            hits = self.store.hybrid_search(query, vec, k=n, filter=filter, alpha=alpha, fusion=fusion)
        else:
            hits = self.store.search(vec, k=n, filter=filter)
        t3 = time.perf_counter()
        timings[stage] = t3 - t2
        stages = ["embed", stage]
        first_stage, reranker_id = None, None
        if use_rerank:
            rr = self.reranker()
            t4 = time.perf_counter()
            if t4 - t3 > 0.001:
                timings["load_reranker"] = t4 - t3
            first_stage, reranker_id = list(hits), str(rr.model_id)
            ranked = rr.rank(query, [h.text or "" for h in hits], instruction=rerank_instruction)  # ties: first-stage order
            hits = [dataclasses.replace(hits[i], score=score) for i, score in ranked]
            timings["rerank"] = time.perf_counter() - t4
            stages.append("rerank")
        if distinct_docs:
            hits = _best_per_document(hits)
        hits = hits[:k]
        return SearchResult(query, hits, str(getattr(emb, "model_id", "")), stages, timings, reranker_id, first_stage)

    def close(self) -> None:
        if self._owns_reranker and self._reranker is not None:
            self._reranker.close()
            self._reranker, self._owns_reranker = None, False
        if self._owns_embedder and self._embedder is not None:
            self._embedder.close()
            self._embedder, self._owns_embedder = None, False
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def search(target: str | VectorStore, query: str, k: int = 10, **kwargs: Any) -> SearchResult:
    """One query: ``Searcher(target).search(query, k, ...)``, closed afterwards. Keywords go to the
    ``Searcher`` (model, dims, device, embedder, reranker) or to ``search`` (filter, instruction,
    distinct_docs, hybrid, alpha, fusion, candidates, rerank_instruction)."""
    own = {k_: kwargs.pop(k_) for k_ in ("model", "dims", "device", "embedder", "reranker") if k_ in kwargs}
    with Searcher(target, **own) as s:
        return s.search(query, k, **kwargs)


def _best_per_document(hits: list[Hit]) -> list[Hit]:
    seen: set[str] = set()
    out = []
    for h in hits:
        doc = str(h.metadata.get("_doc", h.id))
        if doc not in seen:
            seen.add(doc)
            out.append(h)
    return out
