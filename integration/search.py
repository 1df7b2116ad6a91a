"""The query side (DESIGN.md, "The query side"): load the embedder an index records, embed the query,
search the store, return hits with what ran and how long each stage took.

The CLI (``embedrail search``), the demo and user code use this module; nothing else re-implements it.
It is where hybrid search and reranking stages plug in.

```python
from integration.search import Searcher
with Searcher("chroma:///data/chroma?collection=docs") as s:
    result = s.search("how do I parse arguments?", k=5, filter={"lang": "en"})
    for hit in result.hits:
        print(hit.score, hit.metadata["_doc"], hit.text[:80])
```
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from connectors.base import Hit, IndexInfo, VectorStore
from embedrail.errors import ConfigError

__all__ = ["SearchResult", "Searcher", "search"]


@dataclass
class SearchResult:
    """Hits (best first) and how they were found."""

    query: str
    hits: list[Hit]
    model: str  # the query embedder's model id
    stages: list[str] = field(default_factory=list)  # e.g. ["embed", "knn"]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "model": self.model,
            "stages": list(self.stages),
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "hits": [{"id": h.id, "score": h.score, "text": h.text, "metadata": h.metadata} for h in self.hits],
        }


class Searcher:
    """Queries one target with the embedding its index was built with.

    ``target``: a store URL or a ``VectorStore`` (the caller closes a store it passes). ``model``/``dims``
    override the recorded embedder (its dims must still match the index); ``embedder``: an already
    loaded embedder, used when its fingerprint is the one the index records. The embedder is loaded on
    the first query.
    """

    def __init__(self, target: str | VectorStore, *, model: str | None = None, dims: int | None = None,
                 device: str = "auto", embedder: Any = None) -> None:  # fmt: skip
        if isinstance(target, str):
            from connectors import connect

            self.store, self._owns_store = connect(target), True
        else:
            self.store, self._owns_store = target, False
        self.model, self.dims, self.device = model, dims, device
        self._embedder, self._owns_embedder = embedder, False
        self._info: IndexInfo | None = None

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
        from embed_core import DEFAULT_MODEL, embedder_from_info, open_embedder

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

    def search(self, query: str, k: int = 10, *, filter: dict[str, Any] | None = None, instruction: str | None = None,
               distinct_docs: bool = False, hybrid: bool = False, alpha: float = 0.5) -> SearchResult:  # fmt: skip
        """The ``k`` best chunks for ``query`` (``distinct_docs``: the best chunk of each of the ``k`` best
        documents). ``filter``: the portable metadata filter; ``instruction``: the query task of an
        instruction-aware model (Qwen3). ``hybrid``: keyword search on the text fused with kNN
        (``store.hybrid_search``; ``alpha`` weighs the vector side), where the store supports it."""
        if not isinstance(query, str) or not query.strip():
            raise ConfigError("the query is empty")
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        emb = self.embedder()
        t1 = time.perf_counter()
        if t1 - t0 > 0.001:
            timings["load"] = t1 - t0
        vec = emb.embed_queries([query], instruction=instruction)[0]
        t2 = time.perf_counter()
        timings["embed"] = t2 - t1
        n = k * 4 if distinct_docs else k
        stage = "hybrid" if hybrid else "knn"
        if hybrid:
            hits = self.store.hybrid_search(query, vec, k=n, filter=filter, alpha=alpha)
        else:
            hits = self.store.search(vec, k=n, filter=filter)
        timings[stage] = time.perf_counter() - t2
        if distinct_docs:
            hits = _best_per_document(hits)[:k]
        return SearchResult(query, hits, str(getattr(emb, "model_id", "")), ["embed", stage], timings)

    def close(self) -> None:
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
    ``Searcher`` (model, dims, device, embedder) or to ``search`` (filter, instruction, distinct_docs)."""
    own = {k_: kwargs.pop(k_) for k_ in ("model", "dims", "device", "embedder") if k_ in kwargs}
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
