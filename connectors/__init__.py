"""Vector-store connectors behind one protocol (see ``connectors.base``).

```python
from embedrail.connectors import connect, Record, IndexSpec
with connect("es://127.0.0.1:9200/docs") as store:   # or ElasticsearchStore(existing_client, index="docs")
    store.ensure_index(IndexSpec(dims=384, metric="cosine", fingerprint="..."))
    store.upsert([Record(id="a#0", vector=v, text="...", metadata={"lang": "en"})]).raise_on_failure()
    store.flush()
    hits = store.search(v, k=10, filter={"lang": "en"})
```

Each store's client library is imported only when that store is used, so ``import connectors`` works
with just one of the extras (``embedrail[elasticsearch]``, ``[opensearch]``, ``[chroma]``, ``[weaviate]``, ``[pgvector]``, ``[qdrant]``) installed.
A new store is one module (a ``BaseStore`` subclass) and one ``register_store`` line below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from embedrail.connectors._filters import parse_filter
from embedrail.connectors._retry import RetryPolicy
from embedrail.connectors._urls import (
    StoreKind,
    is_embedded,
    parse_url,
    register_store,
    registered_stores,
    store_class,
)
from embedrail.connectors.base import (
    NOT_STORED,
    DeleteResult,
    Hit,
    IndexInfo,
    IndexSpec,
    Metric,
    Record,
    UpsertResult,
    VectorStore,
)
from embedrail.errors import (
    ConfigError,
    DimensionLimitError,
    EmbedrailError,
    IndexMismatchError,
    StoreError,
    StoreUnavailableError,
    UnsupportedError,
    WriteError,
)

if TYPE_CHECKING:
    from embedrail.connectors.chroma import ChromaStore
    from embedrail.connectors.elasticsearch import ElasticsearchStore
    from embedrail.connectors.memory import MemoryStore
    from embedrail.connectors.opensearch import OpenSearchStore
    from embedrail.connectors.pgvector import PgvectorStore
    from embedrail.connectors.qdrant import QdrantStore
    from embedrail.connectors.weaviate import WeaviateStore

__all__ = [
    "NOT_STORED",
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
    "MemoryStore",
    "Metric",
    "OpenSearchStore",
    "PgvectorStore",
    "QdrantStore",
    "Record",
    "RetryPolicy",
    "StoreError",
    "StoreKind",
    "StoreUnavailableError",
    "UnsupportedError",
    "UpsertResult",
    "VectorStore",
    "WeaviateStore",
    "WriteError",
    "connect",
    "is_embedded_url",
    "parse_filter",
    "register_store",
    "registered_stores",
    "safe_url",
]

# The store registry: scheme -> class. One line per store.
register_store(StoreKind("es", "embedrail.connectors.elasticsearch:ElasticsearchStore", aliases=("elasticsearch",),
                         examples=("es://host:9200/index", "es+https://user:pass@host:9200/index")))  # fmt: skip
register_store(StoreKind("chroma", "embedrail.connectors.chroma:ChromaStore", transports=("file", "http", "https"),
                         default_transport="file", embedded_without_host=True,
                         examples=("chroma:///abs/path?collection=name", "chroma+http://host:8000/name")))  # fmt: skip
register_store(StoreKind("weaviate", "embedrail.connectors.weaviate:WeaviateStore", examples=("weaviate://host:8080/Name?grpc_port=50051",)))
register_store(StoreKind("opensearch", "embedrail.connectors.opensearch:OpenSearchStore",
                         examples=("opensearch://host:9200/index", "opensearch+https://user:pass@host:9200/index")))  # fmt: skip
register_store(StoreKind("qdrant", "embedrail.connectors.qdrant:QdrantStore", embedded_without_host=True,
                         examples=("qdrant://host:6333/name?grpc_port=6334", "qdrant:///abs/path?collection=name")))  # fmt: skip
register_store(StoreKind("pgvector", "embedrail.connectors.pgvector:PgvectorStore", aliases=("postgresql", "postgres"),
                         transports=("tcp", "psycopg"), default_transport="tcp",
                         examples=("pgvector://user:pass@host:5432/db?table=name",)))  # fmt: skip

register_store(StoreKind("memory", "embedrail.connectors.memory:MemoryStore", transports=("mem",), default_transport="mem",
                         examples=("memory://SPACE/name", "memory:///name")))  # fmt: skip

_LAZY = {"MemoryStore": "memory", "ChromaStore": "chroma", "ElasticsearchStore": "es", "WeaviateStore": "weaviate", "PgvectorStore": "pgvector", "OpenSearchStore": "opensearch", "QdrantStore": "qdrant"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return store_class(_LAZY[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_embedded_url(url: str) -> bool:
    """Whether ``url`` opens a store inside the process on local files (``chroma:///path``, ``qdrant:///path``):
    such a store takes one writing process at a time."""
    return is_embedded(parse_url(url))


def safe_url(url: str) -> str:
    """The URL with credentials (user:pass@, api_key=..., token=...) removed — safe to log."""
    return parse_url(url).safe


def connect(url: str, **opts: Any) -> VectorStore:
    """Open a store from a URL. Nothing is created until ``ensure_index``; no network until first use.

    - ``es://host:9200/index``, ``es+https://user:pass@host:9200/index?ca_certs=/path/ca.pem``,
      ``es+https://host:9200/index?api_key=KEY`` (also ``verify_certs=false``)
    - ``chroma:///abs/path?collection=name`` (embedded PersistentClient),
      ``chroma+http://host:8000/name`` / ``chroma+https://...`` (``?token=``, ``tenant=``, ``database=``)
    - ``weaviate://host:8080/Name?grpc_port=50051`` / ``weaviate+https://...`` (``?api_key=``)
    - ``opensearch://host:9200/index`` / ``opensearch+https://user:pass@host:9200/index`` (k-NN plugin, Lucene engine)
    - ``qdrant://host:6333/name?grpc_port=6334&prefer_grpc=true`` / ``qdrant+https://...?api_key=``,
      ``qdrant:///abs/path?collection=name`` (embedded local mode)
    - ``pgvector://user:pass@host:5432/db?table=name`` (also ``postgresql://``; ``?sslmode=``, ``schema=``)

    Extra keyword options go to the store class (e.g. ``index_options="hnsw"`` for Elasticsearch).
    """
    return store_class(parse_url(url).store)(url, **opts)
