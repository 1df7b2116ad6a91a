"""Vector-store connectors behind one protocol (see ``connectors.base``).

```python
from connectors import connect, Record, IndexSpec
store = connect("es://127.0.0.1:9200/docs")      # or ElasticsearchStore(existing_client, index="docs")
store.ensure_index(IndexSpec(dims=384, metric="cosine", fingerprint="..."))
store.upsert([Record(id="a#0", vector=v, text="...", metadata={"lang": "en"})]); store.flush()
hits = store.search(v, k=10, filter={"lang": "en"})
```

Each store's client library is imported only when that store is used, so ``import connectors`` works
with just one of the extras (``embedrail[elasticsearch]``, ``[chroma]``, ``[weaviate]``) installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from connectors._common import RetryPolicy, parse_filter, parse_url, redact_url
from connectors.base import (
    ConfigError,
    DeleteResult,
    DimensionLimitError,
    EmbedrailError,
    Hit,
    IndexInfo,
    IndexMismatchError,
    IndexSpec,
    Metric,
    Record,
    StoreError,
    StoreUnavailableError,
    UpsertResult,
    VectorStore,
    WriteError,
)

if TYPE_CHECKING:
    from connectors.chroma import ChromaStore
    from connectors.elasticsearch import ElasticsearchStore
    from connectors.weaviate import WeaviateStore

__all__ = [
    "ChromaStore",
    "ConfigError",
    "DeleteResult",
    "DimensionLimitError",
    "ElasticsearchStore",
    "EmbedrailError",
    "Hit",
    "IndexInfo",
    "IndexMismatchError",
    "IndexSpec",
    "Metric",
    "Record",
    "RetryPolicy",
    "StoreError",
    "StoreUnavailableError",
    "UpsertResult",
    "VectorStore",
    "WeaviateStore",
    "WriteError",
    "connect",
    "parse_filter",
    "safe_url",
]

_LAZY = {
    "ChromaStore": "connectors.chroma",
    "ElasticsearchStore": "connectors.elasticsearch",
    "WeaviateStore": "connectors.weaviate",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'connectors' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(mod), name)


def safe_url(url: str) -> str:
    """The URL with credentials (user:pass@, api_key=..., token=...) removed — safe to log."""
    return redact_url(parse_url(url))


def connect(url: str, **opts: Any) -> VectorStore:
    """Open a store from a URL. Nothing is created until ``ensure_index``.

    - ``es://host:9200/index``, ``es+https://user:pass@host:9200/index?ca_certs=/path/ca.pem``,
      ``es+https://host:9200/index?api_key=KEY`` (also ``verify_certs=false``)
    - ``chroma:///abs/path?collection=name`` (embedded PersistentClient),
      ``chroma+http://host:8000/name`` / ``chroma+https://...`` (``?token=``, ``tenant=``, ``database=``)
    - ``weaviate://host:8080/Name?grpc_port=50051`` / ``weaviate+https://...`` (``?api_key=``)

    Extra keyword options go to the store class (e.g. ``index_options="hnsw"`` for Elasticsearch).
    """
    u = parse_url(url)
    if u.store == "es":
        from connectors.elasticsearch import ElasticsearchStore

        return ElasticsearchStore(url, **opts)
    if u.store == "chroma":
        from connectors.chroma import ChromaStore

        return ChromaStore(url, **opts)
    if u.store == "weaviate":
        from connectors.weaviate import WeaviateStore

        return WeaviateStore(url, **opts)
    raise ConfigError(f"unsupported store URL {u.safe}")  # pragma: no cover - parse_url checks
