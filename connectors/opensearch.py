"""OpenSearch k-NN connector (``opensearch-py``: ``pip install 'embedrail[opensearch]'``).

``opensearch://host:9200/index``, ``opensearch+https://user:pass@host:9200/index?ca_certs=/ca.pem``
(``verify_certs=false``), or ``OpenSearchStore(opensearch_client, index="docs")``.

OpenSearch speaks Elasticsearch 7's REST dialect for everything but vectors, so this store is the
Elasticsearch one (aliases and their atomic swap for rebuilds, ``_bulk`` with per-item failures and
429/5xx re-sends, the filterable metadata copies, BM25 on ``text``, the spec in the mapping's
``_meta``) with the OpenSearch-native parts here:

- the vector field is a ``knn_vector`` with an explicit ``method``: HNSW on the **Lucene** engine
  (``m=16``, ``ef_construction=100``; ``space_type`` cosinesimil / innerproduct / l2 from the metric),
  and the index has ``index.knn: true``. The faiss and nmslib engines need native libraries that the
  plugin's Maven artefact does not ship; Lucene is pure Java and supports filtered search;
- search is a ``knn`` query (its ``filter`` runs inside the HNSW search, Lucene's efficient
  filtering) that asks each segment for ``max(100, 10·k)`` candidates, as the ES store's
  ``num_candidates``;
- vectors stay in ``_source`` (``knn_vector`` values cannot be read back as doc values); searches
  return only id, text and metadata;
- dims: at most 16,000 (the Lucene engine's limit on OpenSearch 2.x, stated by ``max_dims()`` and
  checked before anything is created);
- scores are OpenSearch's turned back into similarities (cosine: ``(1 + cos) / 2``, inner product:
  ``1 + ip`` or ``1 / (1 - ip)``, l2: ``1 / (1 + d²)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from embedrail.connectors._es_schema import index_mapping, text_analysis
from embedrail.connectors._retry import BASE_ERRORS
from embedrail.connectors._store import ReadTarget
from embedrail.connectors._urls import StoreURL, flag
from embedrail.connectors.base import IndexSpec
from embedrail.connectors.elasticsearch import ElasticsearchStore
from embedrail.errors import ConfigError, DimensionLimitError
from embedrail.secrets import short_error

__all__ = ["OpenSearchStore"]

LUCENE_MAX_DIMS = 16000
_SPACES = {"cosine": "cosinesimil", "dot": "innerproduct", "l2": "l2"}
_SIM_OF_SPACE = {"cosinesimil": "cosine", "innerproduct": "max_inner_product", "l2": "l2_norm"}


class _Namespace:
    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def __getattr__(self, name: str) -> Any:
        return self._fn(name)


class _Client:
    """An ``opensearchpy.OpenSearch`` behind the keyword API of elasticsearch-py 8 that the Elasticsearch
    store calls (``search(knn=..., query=...)``, ``bulk(operations=...)``, ``indices.create(mappings=...)``):
    each call becomes the request body OpenSearch expects."""

    def __init__(self, client: Any, owns: bool) -> None:
        self.raw, self.owns = client, owns
        self.indices = _Namespace(self._indices)
        self.nodes = _Namespace(lambda name: getattr(client.nodes, name))
        self.transport = client.transport

    def close(self) -> None:
        if self.owns:
            self.raw.close()

    def info(self) -> Any:
        return self.raw.info()

    def _indices(self, name: str) -> Any:
        ind = self.raw.indices
        if name == "create":
            def create(index: str, mappings: Any = None, settings: Any = None, aliases: Any = None) -> Any:
                body = {k: v for k, v in (("mappings", mappings), ("settings", settings), ("aliases", aliases)) if v}
                return ind.create(index=index, body=body)

            return create
        if name == "analyze":
            return lambda **body: ind.analyze(body=body)
        if name == "update_aliases":
            return lambda actions: ind.update_aliases(body={"actions": actions})
        if name == "put_mapping":
            return lambda index, meta: ind.put_mapping(index=index, body={"_meta": meta})
        return getattr(ind, name)

    def bulk(self, operations: bytes, refresh: bool = False) -> Any:
        return self.raw.bulk(body=operations, refresh=str(refresh).lower())

    def count(self, index: str) -> Any:
        return self.raw.count(index=index)

    def mget(self, index: str, ids: list[str], source: Any = None) -> Any:
        if source:
            return self.raw.mget(index=index, body={"ids": ids}, _source_includes=",".join(source))
        return self.raw.mget(index=index, body={"ids": ids})

    def search(self, index: str, knn: Mapping[str, Any] | None = None, query: Any = None, size: int = 10, source: Any = None,
               docvalue_fields: Any = None, sort: Any = None, search_after: Any = None,
               track_total_hits: Any = None) -> Any:  # fmt: skip
        body: dict[str, Any] = {"size": size}
        if knn is not None:  # ES's top-level kNN section -> OpenSearch's knn query
            clause: dict[str, Any] = {"vector": knn["query_vector"], "k": int(knn["num_candidates"])}
            if knn.get("filter"):
                clause["filter"] = knn["filter"]
            body["query"] = {"knn": {knn["field"]: clause}}
        elif query is not None:
            body["query"] = query
        if source is not None:
            body["_source"] = source
        if docvalue_fields:
            body["docvalue_fields"] = docvalue_fields
        if sort is not None:
            body["sort"] = sort
        if search_after is not None:
            body["search_after"] = search_after
        if track_total_hits is not None:
            body["track_total_hits"] = track_total_hits
        return self.raw.search(index=index, body=body)


class OpenSearchStore(ElasticsearchStore):
    """An OpenSearch k-NN index (behind an alias) implementing the ``VectorStore`` protocol."""

    STORE = "opensearch"
    NAME_HINT = "opensearch://host:9200/INDEX or index=..."
    ERRORS = BASE_ERRORS.extend(
        never=("opensearchpy.SSLError",),
        transient=("opensearchpy.ConnectionError", "opensearchpy.ConnectionTimeout"),
        status=("opensearchpy.TransportError",),  # status_code: 429/502/503/504 transient, 4xx rejected, 5xx failed
    )

    def __init__(self, client_or_url: Any, index: str | None = None, *, m: int = 16, ef_construction: int = 100, **kw: Any) -> None:
        if not isinstance(client_or_url, str) and not isinstance(client_or_url, _Client):
            client_or_url = _Client(client_or_url, owns=False)
        super().__init__(client_or_url, index, **kw)
        self.m, self.ef_construction = int(m), int(ef_construction)

    # ------------------------------------------------------------------------------ client
    def _make_client(self) -> Any:
        try:
            import opensearchpy
        except ImportError as e:  # pragma: no cover - depends on the installed extras
            raise ConfigError("the OpenSearch connector needs its client: pip install 'embedrail[opensearch]'") from e
        u: StoreURL = self._u  # type: ignore[assignment]
        kw: dict[str, Any] = {"timeout": self.timeout, "max_retries": 0, "retry_on_timeout": False,
                              "use_ssl": u.transport == "https"}  # fmt: skip
        if u.username:
            kw["http_auth"] = (u.username, u.password or "")
        if u.param("ca_certs"):
            kw["ca_certs"] = u.param("ca_certs")
        if u.param("verify_certs") is not None:
            kw["verify_certs"] = flag(u.param("verify_certs"), True)
        try:
            raw = opensearchpy.OpenSearch(hosts=[{"host": u.host or "localhost", "port": u.port or 9200}], **kw)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"{self.url}: cannot create the OpenSearch client: {short_error(e, *self._secrets)}") from None
        return _Client(raw, owns=True)

    def _close_client(self, client: Any) -> None:
        client.close()

    @staticmethod
    def _describe_client(client: Any, name: str | None) -> str:
        try:
            conn = client.transport.get_connection()
            scheme = "opensearch+https" if conn.use_ssl else "opensearch"
            return f"{scheme}://{conn.host.split('://', 1)[-1]}/{name or ''}"
        except Exception:  # noqa: BLE001 - for messages only
            return f"opensearch+client://{name or ''}"

    def max_dims(self) -> int | None:
        return LUCENE_MAX_DIMS

    # ------------------------------------------------------------------------------ mapping
    def _spec_of(self, physical: str) -> IndexSpec | None:
        spec = super()._spec_of(physical)
        vec = ((self._mapping(physical).get("properties") or {}).get("vector") or {})
        space = ((vec.get("method") or {}).get("space_type")) or "cosinesimil"
        self._sims[physical] = _SIM_OF_SPACE.get(space, "cosine")
        return spec

    def _index_body(self, spec: IndexSpec) -> tuple[dict[str, Any], dict[str, Any], str]:
        if spec.dims > LUCENE_MAX_DIMS:
            raise DimensionLimitError(f"{self.url}: OpenSearch's Lucene k-NN engine indexes at most {LUCENE_MAX_DIMS} dims, "
                                      f"{spec.dims} were requested; nothing was written. Use a smaller dimension (MRL truncation).")  # fmt: skip
        space = _SPACES[spec.metric]
        full = self._full_analysis()
        mappings = index_mapping(self.name, spec, "cosine", {}, full_analysis=full)
        mappings["_source"] = {"excludes": ["m"]}  # vectors stay in _source: the only place to read them back
        mappings["properties"]["vector"] = {
            "type": "knn_vector", "dimension": spec.dims,
            "method": {"name": "hnsw", "engine": "lucene", "space_type": space,
                       "parameters": {"m": self.m, "ef_construction": self.ef_construction}},
        }  # fmt: skip
        return mappings, {"number_of_shards": 1, "index.knn": True, **text_analysis(self.settings, full=full)}, _SIM_OF_SPACE[space]

    def describe(self) -> Any:
        info = super().describe()
        info.extra["store"] = "opensearch"
        if info.exists and info.physical_name:
            vec = (self._mapping(info.physical_name).get("properties") or {}).get("vector") or {}
            info.extra.update(method=vec.get("method"), similarity=None, index_options=None)
        return info

    # ------------------------------------------------------------------------------ reading
    def _vectors_as_written(self, target: ReadTarget, ids: list[str]) -> dict[str, tuple[np.ndarray, str, dict[str, Any]]]:
        """Vectors, texts and metadata by id, from ``_source`` (``mget``: real time, every acknowledged write)."""
        out: dict[str, tuple[np.ndarray, str, dict[str, Any]]] = {}
        resp = self._call(lambda: self.client.mget(index=self._address, ids=ids, source=["text", "vector", "metadata"]), "read vectors")
        for d in resp["docs"]:
            src = d.get("_source") or {}
            if d.get("found") and src.get("vector") is not None:
                out[str(d["_id"])] = (np.asarray(src["vector"], dtype=np.float32), str(src.get("text") or ""),
                                      dict(src.get("metadata") or {}))  # fmt: skip
        return out

    # a real-time get sees every acknowledged write and no deleted record: no refresh first (Elasticsearch's
    # vectors are read by a search, which needs one)
    _stored = _vectors_as_written
