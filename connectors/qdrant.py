"""Qdrant connector (the official ``qdrant-client``: ``pip install 'embedrail[qdrant]'``).

``qdrant://host:6333/collection?grpc_port=6334&prefer_grpc=true``, ``qdrant+https://host:6333/collection?api_key=KEY``,
``qdrant:///abs/path?collection=name`` (qdrant-client's embedded local mode), or
``QdrantStore(qdrant_client, collection="docs")`` with a client you already have.

- Point ids are UUIDv5 of our id (Qdrant ids must be integers or UUIDs); our id is the payload's ``_id``,
  the text ``text``, the metadata ``metadata`` (any JSON; filters address ``metadata.<key>``).
- The ``IndexSpec`` is the collection's ``metadata`` (Qdrant >= 1.16 / qdrant-client >= 1.16).
- Distance from the metric (cosine / dot / euclid; euclid scores come back as minus the distance), HNSW
  explicit (``m=16``, ``ef_construct=100``); quantisation off unless asked (``quantization="int8"`` /
  ``?quantization=int8``, or ``binary``; searches then re-rank ``rescore`` × k candidates by the original
  vectors, Qdrant's ``rescore`` with ``oversampling``, default 2:
  scalar int8, always_ram) — local mode searches exactly, so no recall could be measured here to justify a default.
- Hybrid search: a collection keeps, beside the dense vector, a sparse vector ``bm25`` per record (BM25 term
  weights of its text, ``connectors._sparse``; the server applies the IDF, ``Modifier.IDF``); ``hybrid_search``
  fuses kNN with it: ``fusion="rrf"`` in one call through Qdrant's query API (weighted RRF of two prefetches,
  Qdrant's formula), ``fusion="relative"`` client-side like the other stores. ``sparse=None``
  (``?sparse=none``) creates collections without it; a collection created before it has none (hybrid search
  says so: rebuild it). ``sparse_encoder=`` (an object with ``identity``, ``documents(texts)`` and
  ``query(text)``, e.g. ``embed_core.sparse.SparseEncoder``, a SPLADE model) keeps learned sparse vectors
  ``splade`` instead (no IDF: the model's weights are the term weights); the collection records the
  encoder's identity, and a store opened on it without that encoder refuses to write or search its
  sparse side (``Searcher`` opens the recorded model itself).
- Rebuilds: the name is a collection **alias**; the switch is one ``update_collection_aliases`` call
  (delete + create, atomic on the server).
- No dimension limit beyond the server's (65,536).
- Local mode (``qdrant:///path``) allows one client per directory per process: stores opened on the same
  directory share one client (reference-counted); another *process* must not open it at the same time.
  It searches by brute force (exact), ignores HNSW/quantisation settings and payload indexes.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from embedrail.connectors._filters import Cond, parse_filter
from embedrail.connectors._records import (
    META_KEYS,
    OWNER_KEY,
    SEARCH_KEY,
    batched,
    owner_from,
    search_from,
    spec_from_dict,
    spec_to_dict,
)
from embedrail.connectors._retry import BASE_ERRORS
from embedrail.connectors._sparse import (
    BM25_IDENTITY,
    LEARNED,
    check_learned,
    learned_encoder,
    sparse_encoder,
)
from embedrail.connectors._store import BaseStore, Batch, ReadTarget, _Unencodable
from embedrail.connectors._urls import StoreURL, flag
from embedrail.connectors.base import (
    DEFAULT_ALPHA,
    DEFAULT_FUSION,
    NOT_STORED,
    Hit,
    IndexInfo,
    IndexSpec,
    Record,
    UpsertResult,
)
from embedrail.errors import ConfigError, StoreUnavailableError, UnsupportedError

__all__ = ["QdrantStore"]

_NS = uuid.UUID("6f1c2b0e-6f5e-4d7a-9f3e-8a2c1d4b5e60")
_DISTANCES = {"cosine": "Cosine", "dot": "Dot", "l2": "Euclid"}
_LOCAL: dict[str, list[Any]] = {}  # abs path -> [client, refcount]
_LOCAL_LOCK = threading.Lock()
_CREATE_LOCK = threading.Lock()  # one ensure_index at a time per process (alias creation is check-then-act)
# qdrant-client's local mode is plain Python over dicts and arrays with no lock of its own: the calls of a
# process into it take turns (a run's writer thread upserts while the planning thread reads vectors back)
_LOCAL_CALLS = threading.RLock()
SPARSE = "bm25"  # the sparse vector's name in a collection (BM25 term weights)


def point_id(doc_id: str) -> str:
    return str(uuid.uuid5(_NS, doc_id))


class QdrantStore(BaseStore):
    """A Qdrant collection (behind an alias) implementing the ``VectorStore`` protocol."""

    STORE = "qdrant"
    NAME_HINT = "qdrant://host:6333/NAME or qdrant:///abs/path?collection=NAME"
    ERRORS = BASE_ERRORS.extend(
        # REST status or gRPC code: 429/502/503/504, UNAVAILABLE, DEADLINE_EXCEEDED transient; 4xx rejected
        status=("qdrant_client.http.exceptions.UnexpectedResponse", "grpc.RpcError"),
        # wraps the transport's error (looked at first: a dropped connection is transient) or an answer it
        # could not read
        failed=("qdrant_client.http.exceptions.ResponseHandlingException",),
        # local mode validates requests (unknown collection, vector size) with ValueError
        rejected=("builtins.ValueError",),
    )

    def __init__(self, client_or_url: Any, collection: str | None = None, *, m: int = 16, ef_construct: int = 100,
                 quantization: str | None = None, rescore: float = 2.0, batch_size: int = 256, timeout: float = 30.0,
                 sparse: str | None = "bm25",
                 sparse_encoder: Any = None, **base: Any) -> None:  # fmt: skip
        super().__init__(client_or_url, collection, **base)
        if isinstance(self._u, StoreURL) and self._u.param("sparse"):
            sparse = self._u.param("sparse")
        if sparse in ("none", "off", "", None):
            sparse = None
        if sparse not in (None, "bm25"):
            raise ConfigError(f"unknown sparse {sparse!r}; use 'bm25' (keyword vectors for hybrid search) or None")
        if sparse_encoder is not None:
            sparse_encoder, sparse = learned_encoder(sparse_encoder), LEARNED
        self.sparse, self.sparse_encoder = sparse, sparse_encoder
        # per collection: (its encoder, its sparse vector's name); None: it keeps no sparse vectors
        self._sparse_by_physical: dict[str, tuple[Any, str] | None] = {}
        if isinstance(self._u, StoreURL):
            quantization = self._u.param("quantization") or quantization
            rescore = float(self._u.param("rescore") or rescore)
        quantization = None if quantization in ("", "none", "float") else quantization
        if quantization not in (None, "int8", "binary"):
            raise ConfigError(f"unknown quantization {quantization!r}; use None, 'int8' (scalar) or 'binary'")
        if not 1.0 <= float(rescore) <= 16.0:
            raise ConfigError(f"rescore must be from 1 to 16 (the oversampling of a quantised search), got {rescore!r}")
        self.rescore = float(rescore)
        self._quant_by_physical: dict[str, str | None] = {}
        self.m, self.ef_construct, self.quantization = int(m), int(ef_construct), quantization
        self.batch_size, self.timeout = max(1, int(batch_size)), timeout
        self._local_path: str | None = None

    # ------------------------------------------------------------------------------ names, client
    def _name_from_url(self, u: StoreURL) -> str | None:
        return u.param("collection") or (u.name if u.host else None)

    def _url_with_name(self, u: StoreURL, name: str) -> str:
        if not u.host:
            return replace(u, params={**u.params, "collection": name}).safe
        return super()._url_with_name(u, name)

    def _check_name(self, name: str) -> str:
        if not name or len(name) > 200 or not all(c.isalnum() or c in "_-" for c in name):
            raise ConfigError(f"invalid Qdrant collection name {name!r}: 1-200 characters [A-Za-z0-9_-]")
        return name

    @staticmethod
    def _describe_client(client: Any, name: str | None) -> str:
        try:
            inner = client._client  # noqa: SLF001
            location = getattr(inner, "location", None) or getattr(inner, "_location", None)
            if location:
                return f"qdrant://{location}?collection={name or ''}"
            rest = getattr(inner, "rest_uri", None)
            if rest:
                return f"qdrant://{rest.split('://', 1)[-1].rstrip('/')}/{name or ''}"
        except Exception:  # noqa: BLE001 - for messages only
            pass
        return f"qdrant+client://{name or ''}"

    @staticmethod
    def _embedded_client(client: Any) -> bool:
        return type(getattr(client, "_client", None)).__name__ == "QdrantLocal"

    def _make_client(self) -> Any:
        try:
            from qdrant_client import QdrantClient
        except ImportError as e:  # pragma: no cover - depends on the installed extras
            raise ConfigError("the Qdrant connector needs qdrant-client: pip install 'embedrail[qdrant]'") from e
        u: StoreURL = self._u  # type: ignore[assignment]
        if not u.host:
            if not u.path.startswith("/"):
                raise ConfigError(f"{u.safe}: embedded Qdrant needs an absolute path: qdrant:///abs/path?collection=NAME")
            with _LOCAL_LOCK:
                entry = _LOCAL.get(u.path)
                if entry is None:
                    entry = _LOCAL[u.path] = [QdrantClient(path=u.path), 0]
                entry[1] += 1
            self._local_path = u.path
            return entry[0]
        return QdrantClient(host=u.host, port=u.port or 6333, grpc_port=int(u.param("grpc_port") or 6334),
                            prefer_grpc=flag(u.param("prefer_grpc"), False), https=u.transport == "https",
                            api_key=u.param("api_key") or u.password or None, timeout=int(self.timeout))  # fmt: skip

    def _close_client(self, client: Any) -> None:
        if self._local_path is None:
            client.close()
            return
        with _LOCAL_LOCK:
            entry = _LOCAL.get(self._local_path)
            if entry is not None:
                entry[1] -= 1
                if entry[1] <= 0:
                    del _LOCAL[self._local_path]
                    entry[0].close()

    @staticmethod
    def _is_not_found(e: BaseException) -> bool:
        s = str(e)
        return "Not found" in s or "not found" in s or "doesn't exist" in s or "does not exist" in s

    # ------------------------------------------------------------------------------ names -> collections
    def _aliases(self) -> dict[str, str]:
        res = self._call(lambda: self.client.get_aliases(), "list aliases")
        return {a.alias_name: a.collection_name for a in res.aliases}

    def _exists(self, physical: str) -> bool:
        return bool(self._call(lambda: self.client.collection_exists(physical), "check collection"))

    def _pointer(self) -> str | None:
        return self._aliases().get(self.name)

    def _info(self, physical: str) -> Any:
        return self._call(lambda: self.client.get_collection(physical), "read collection")

    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        if not self._is_local:
            return super()._call(fn, what)

        def turn() -> Any:
            with _LOCAL_CALLS:
                return fn()

        return super()._call(turn, what)

    @property
    def _is_local(self) -> bool:
        """Local (embedded) mode: exact search, where search parameters have no effect."""
        return bool(self._local_path or (self._u and not self._u.host))

    def _quantized(self, physical: str) -> str | None:
        """The collection's quantisation (read once per collection: it cannot change)."""
        if physical not in self._quant_by_physical:
            self._quant_by_physical[physical] = _quantization_of(self._info(physical))
        return self._quant_by_physical[physical]

    def _spec_of(self, physical: str) -> IndexSpec | None:
        md = getattr(self._info(physical).config, "metadata", None) or {}
        try:
            return spec_from_dict(md.get("embedrail")) if md else None
        except (ValueError, AttributeError):
            return None

    def max_dims(self) -> int | None:
        return 65536

    def _sparse_of(self, physical: str) -> tuple[Any, str] | None:
        """(the sparse encoder, the sparse vector's name) the collection records (None: it keeps no sparse
        vectors). Learned vectors need this store's ``sparse_encoder`` to be the recorded one."""
        if physical not in self._sparse_by_physical:
            md = getattr(self._info(physical).config, "metadata", None) or {}
            ident = md.get("sparse")
            if not ident:
                self._sparse_by_physical[physical] = None
            elif isinstance(ident, dict) and ident.get("name") == LEARNED:
                self._sparse_by_physical[physical] = (check_learned(self.url, self.sparse_encoder, ident), LEARNED)
            else:
                self._sparse_by_physical[physical] = (sparse_encoder(ident), SPARSE)
        return self._sparse_by_physical[physical]

    def sparse_identity(self) -> dict[str, Any] | None:
        """The sparse encoder the current collection records (None: no collection, or no sparse vectors)."""
        physical = self._current_physical()
        if physical is None:
            return None
        ident = (getattr(self._info(physical).config, "metadata", None) or {}).get("sparse")
        return dict(ident) if isinstance(ident, dict) else None

    def use_sparse_encoder(self, encoder: Any) -> None:
        """Use this learned sparse encoder from now on (what ``Searcher`` does with the recorded model)."""
        self.sparse_encoder, self.sparse = encoder, LEARNED
        self._sparse_by_physical.clear()

    # ------------------------------------------------------------------------------ creation
    def _create_physical(self, physical: str, spec: IndexSpec) -> None:
        from qdrant_client import models

        quant = None
        if self.quantization == "int8":
            quant = models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, always_ram=True))
        elif self.quantization == "binary":
            quant = models.BinaryQuantization(binary=models.BinaryQuantizationConfig(always_ram=True))
        md: dict[str, Any] = {"embedrail": spec_to_dict(spec), "logical": self.name}
        if self.quantization:  # also in the metadata: local mode does not report a collection's quantization_config
            md["quantization"] = self.quantization
        sparse = None
        if self.sparse == LEARNED:
            sparse, md["sparse"] = {LEARNED: models.SparseVectorParams()}, dict(self.sparse_encoder.identity)
        elif self.sparse:
            sparse, md["sparse"] = {SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)}, BM25_IDENTITY
        self._call(lambda: self.client.create_collection(
            physical, vectors_config=models.VectorParams(size=int(spec.dims), distance=models.Distance(_DISTANCES[spec.metric])),
            sparse_vectors_config=sparse, hnsw_config=models.HnswConfigDiff(m=self.m, ef_construct=self.ef_construct),
            quantization_config=quant, metadata=md), "create collection")  # fmt: skip
        self._sparse_by_physical.pop(physical, None)

    def _create_named(self, spec: IndexSpec) -> str:
        from qdrant_client import models

        with _CREATE_LOCK:
            existing = self._aliases().get(self.name)
            if existing and self._exists(existing):  # another store of this process won the race
                return existing
            physical = self._new_physical_name()
            self._create_physical(physical, spec)
            self._call(lambda: self.client.update_collection_aliases(change_aliases_operations=[
                models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=physical, alias_name=self.name))]),
                "create alias")  # fmt: skip
            return physical

    def describe(self) -> IndexInfo:
        extra: dict[str, Any] = {"store": "qdrant", "mode": "local" if self._is_local else "server"}
        physical = self._current_physical()
        if physical is None:
            return IndexInfo(name=self.name, exists=False, extra=extra)
        info = self._info(physical)
        params = info.config.params.vectors
        extra.update(distance=str(getattr(params, "distance", "")), hnsw={"m": info.config.hnsw_config.m,
                     "ef_construct": info.config.hnsw_config.ef_construct}, url=self.url)  # fmt: skip
        quant, dims = _quantization_of(info), int(getattr(params, "size", 0) or 0)
        extra["quantization"] = quant
        if dims:  # what the HNSW graph searches per vector (the originals are kept for rescoring)
            extra["bytes_per_vector"] = dims if quant == "int8" else -(-dims // 8) if quant == "binary" else dims * 4
        md = getattr(info.config, "metadata", None) or {}
        return IndexInfo(name=self.name, exists=True, physical_name=physical, spec=self._spec_of(physical),
                         count=self._count(physical), extra=extra, owner=owner_from(md.get(OWNER_KEY)),
                         search=search_from(md.get(SEARCH_KEY)))  # fmt: skip

    def _set_meta(self, physical: str, key: str, value: Any) -> None:
        # the server (and local mode) merge the given keys into the collection's metadata (None: a null entry)
        self._call(lambda: self.client.update_collection(physical, metadata={META_KEYS[key]: value}), f"record {key}")

    # ------------------------------------------------------------------------------ writing
    def _batch_size(self) -> int:
        return self.batch_size

    def _encode_all(self, target: ReadTarget, items: list[tuple[Record, np.ndarray]]) -> list[Any]:
        sparse = self._sparse_of(target.physical)
        if sparse is None:
            vecs: list[Any] = [None] * len(items)
        elif sparse[1] == LEARNED:  # a model: one batched call
            vecs = list(sparse[0].documents([r.text or "" for r, _ in items]))
        else:
            vecs = [sparse[0].document(r.text or "") for r, _ in items]
        out: list[Any] = []
        for (r, vec), sv in zip(items, vecs, strict=True):
            try:
                out.append(self._point(r, vec, sparse and (sparse[1], sv)))
            except (TypeError, ValueError) as e:
                out.append(_Unencodable(e))
        return out

    def _point(self, record: Record, vector: np.ndarray, sparse: tuple[str, tuple[list[int], list[float]]] | None) -> Any:
        """The point of a record; ``sparse``: (the sparse vector's name, its (indices, values)), None in a
        collection without sparse vectors (where the vector is the dense one alone, unnamed)."""
        from qdrant_client import models

        md = json.loads(json.dumps(record.metadata or {}, allow_nan=False))  # JSON only (raises for NaN / objects)
        dense = vector.astype(np.float32).tolist()
        vec: Any = dense
        if sparse is not None:
            name, (idx, vals) = sparse
            vec = {"": dense, name: models.SparseVector(indices=list(idx), values=list(vals))} if len(idx) else {"": dense}
        return models.PointStruct(id=point_id(record.id), vector=vec, payload={"_id": record.id, "text": record.text or "",
                                                                              "metadata": md})  # fmt: skip

    def _write_batch(self, target: ReadTarget, batch: Batch) -> dict[str, str]:
        points = [p for _, p in batch]
        self._call(lambda: self.client.upsert(target.physical, points=points, wait=True), "upsert")
        return {}

    def _update_batch(self, target: ReadTarget, part: list[tuple[str, dict[str, Any]]], result: UpsertResult) -> None:
        """Native: ``set_payload`` of the ``metadata`` key alone (vector and text untouched)."""
        held = {str((p.payload or {}).get("_id")) for p in self._retrieve(target.physical, [i for i, _ in part], vectors=False)}
        for i, md in part:
            if i not in held:
                result.failed[i] = NOT_STORED
                continue
            try:
                clean = json.loads(json.dumps(md, allow_nan=False))
            except (TypeError, ValueError) as e:
                result.failed[i] = f"metadata is not JSON-serialisable: {e}"
                continue
            # set_payload merges top-level keys: the whole "metadata" value is replaced
            self._call(lambda i=i, clean=clean: self.client.set_payload(target.physical, payload={"metadata": clean},
                                                                        points=[point_id(i)], wait=True), "update metadata")  # fmt: skip
            result.written += 1

    def _retrieve(self, physical: str, ids: Sequence[str], vectors: bool) -> list[Any]:
        out: list[Any] = []
        for part in batched(list(ids), 1000):
            out += self._call(lambda p=part: self.client.retrieve(physical, ids=[point_id(i) for i in p], with_payload=True,
                                                                  with_vectors=vectors), "retrieve")  # fmt: skip
        return out

    def _stored(self, target: ReadTarget, ids: list[str]) -> dict[str, tuple[np.ndarray, str, dict[str, Any]]]:
        return {str(p.payload["_id"]): (np.asarray(p.vector[""] if isinstance(p.vector, dict) else p.vector, dtype=np.float32),
                                        str(p.payload.get("text") or ""), dict(p.payload.get("metadata") or {}))
                for p in self._retrieve(target.physical, ids, vectors=True)}  # fmt: skip

    def _delete_batch(self, physical: str, ids: list[str]) -> dict[str, str]:
        from qdrant_client import models

        self._call(lambda: self.client.delete(physical, points_selector=models.PointIdsList(points=[point_id(i) for i in ids]),
                                              wait=True), "delete")  # fmt: skip
        return {}

    # ------------------------------------------------------------------------------ reading
    def search(self, vector: np.ndarray | Sequence[float], k: int = 10, filter: Mapping[str, Any] | None = None) -> list[Hit]:
        from qdrant_client import models

        flt = _filter(parse_filter(filter))
        k = max(1, int(k))

        def run(target: ReadTarget) -> list[Hit]:
            vec = self._query_vector(vector, target.spec).astype(np.float32).tolist()
            params = None
            if self._quantized(target.physical) and not self._is_local:  # re-rank oversampled candidates by the originals
                params = models.SearchParams(quantization=models.QuantizationSearchParams(rescore=True, oversampling=self.rescore))
            res = self._call(lambda: self.client.query_points(target.physical, query=vec, limit=k, query_filter=flt,
                                                              with_payload=True, search_params=params), "search")  # fmt: skip
            metric = target.spec.metric if target.spec else "cosine"
            return [self._hit(p, metric) for p in res.points]

        return self._on_read_target("search", run)

    @property
    def supports_hybrid(self) -> bool:  # type: ignore[override]
        """Whether collections this store creates keep sparse vectors (an existing one may not: see hybrid_search)."""
        return self.sparse is not None

    def _hit(self, p: Any, metric: str = "cosine") -> Hit:
        return Hit(id=str(p.payload["_id"]), score=-float(p.score) if metric == "l2" else float(p.score),
                   text=str(p.payload.get("text") or ""), metadata=dict(p.payload.get("metadata") or {}))  # fmt: skip

    def _sparse_target(self, target: ReadTarget) -> tuple[Any, str]:
        enc = self._sparse_of(target.physical)
        if enc is None:
            raise UnsupportedError(f"{self.url}: this collection was created without sparse vectors, so it has no keyword "
                                   "side for hybrid search; rebuild it (embedrail reindex --mode full) to add them")  # fmt: skip
        return enc

    def sparse_search(self, query: str, k: int = 10, filter: Mapping[str, Any] | None = None) -> list[Hit]:
        """Keyword search through the sparse vectors (score: BM25, the IDF from the collection's statistics)."""
        from qdrant_client import models

        flt = _filter(parse_filter(filter))

        def run(target: ReadTarget) -> list[Hit]:
            enc, name = self._sparse_target(target)
            idx, vals = enc.query(query)
            if not idx:
                return []
            res = self._call(lambda: self.client.query_points(target.physical, query=models.SparseVector(indices=idx, values=vals),
                                                              using=name, limit=max(1, int(k)), query_filter=flt,
                                                              with_payload=True), "keyword search")  # fmt: skip
            return [self._hit(p) for p in res.points]

        return self._on_read_target("keyword search", run)

    def hybrid_search(self, query: str, vector: Any, k: int = 10, filter: Mapping[str, Any] | None = None, *,
                      alpha: float = DEFAULT_ALPHA, candidates: int | None = None, fusion: str = DEFAULT_FUSION) -> list[Hit]:  # fmt: skip
        """kNN fused with keyword search through the sparse vectors: ``rrf`` by the server (one query-API call,
        weighted RRF of the two prefetches), ``relative`` client-side as on the other stores."""
        from qdrant_client import models

        if fusion != "rrf":  # relative and guarded: client-side, like the other stores
            return self._fused(query, vector, k, filter, alpha, candidates, fusion, self.sparse_search)
        k, n = self._hybrid_args(query, alpha, k, candidates, fusion)
        if alpha in (0.0, 1.0):  # one side only (Qdrant would still list the other side's points, at score 0)
            return self.search(vector, k=k, filter=filter) if alpha == 1.0 else self.sparse_search(query, k, filter)
        flt = _filter(parse_filter(filter))

        def run(target: ReadTarget) -> list[Hit]:
            enc, name = self._sparse_target(target)
            idx, vals = enc.query(query)
            dense = self._query_vector(vector, target.spec).astype(np.float32).tolist()
            pre = [models.Prefetch(query=dense, limit=n, filter=flt),
                   models.Prefetch(query=models.SparseVector(indices=idx, values=vals), using=name, limit=n, filter=flt)]  # fmt: skip
            res = self._call(lambda: self.client.query_points(target.physical, prefetch=pre, limit=k, with_payload=True,
                                                              query=models.RrfQuery(rrf=models.Rrf(k=60, weights=[float(alpha), 1.0 - float(alpha)]))),
                             "hybrid search")  # fmt: skip
            return [self._hit(p) for p in res.points]

        return self._on_read_target("hybrid search", run)

    def _count(self, physical: str) -> int:
        return int(self._call(lambda: self.client.count(physical, exact=True), "count").count)

    def count(self) -> int:
        physical = self._current_physical()
        return 0 if physical is None else self._count(physical)

    def iter_ids(self) -> Iterator[str]:
        physical = self._current_physical()
        if physical is None:
            return
        offset = None
        while True:
            points, offset = self._call(lambda o=offset: self.client.scroll(physical, limit=1000, offset=o, with_payload=["_id"],
                                                                            with_vectors=False), "list ids")  # fmt: skip
            yield from (str(p.payload["_id"]) for p in points)
            if offset is None:
                return

    def get(self, ids: Sequence[str]) -> dict[str, Hit]:
        ids = list(dict.fromkeys(ids))
        physical = self._current_physical() if ids else None
        if physical is None:
            return {}
        return {str(p.payload["_id"]): Hit(id=str(p.payload["_id"]), score=1.0, text=str(p.payload.get("text") or ""),
                                           metadata=dict(p.payload.get("metadata") or {}))
                for p in self._retrieve(physical, ids, vectors=False)}  # fmt: skip

    # ------------------------------------------------------------------------------ lifecycle
    def _drop_physical(self, physical: str) -> None:
        try:
            self._call(lambda: self.client.delete_collection(physical), "delete collection")
        except StoreUnavailableError:
            raise
        except Exception as e:
            if not self._store_failure(e):
                raise  # a bug
            if not self._is_not_found(e):
                self._fail(e, "delete collection")

    def _unpoint(self, target: str | None) -> None:
        from qdrant_client import models

        if target:
            self._call(lambda: self.client.update_collection_aliases(change_aliases_operations=[
                models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=self.name))]), "delete alias")  # fmt: skip

    def _switch(self, physical: str) -> list[str]:
        from qdrant_client import models

        old = self._aliases().get(self.name)
        ops: list[Any] = []
        if old:
            ops.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=self.name)))
        ops.append(models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=physical, alias_name=self.name)))
        self._call(lambda: self.client.update_collection_aliases(change_aliases_operations=ops), "switch alias")
        return [old] if old else []


def _filter(conds: list[Cond]) -> Any:
    """The portable filter as a Qdrant ``Filter`` on ``metadata.<key>`` (equality on strings, ints and bools
    by match; floats by a closed range)."""
    if not conds:
        return None
    from qdrant_client import models

    must: list[Any] = []
    must_not: list[Any] = []

    def eq(key: str, v: Any) -> Any:
        if isinstance(v, float) and not isinstance(v, bool):
            return models.FieldCondition(key=key, range=models.Range(gte=v, lte=v))
        return models.FieldCondition(key=key, match=models.MatchValue(value=v))

    for c in conds:
        key = f"metadata.{c.field}"
        if c.op == "$eq":
            must.append(eq(key, c.value))
        elif c.op == "$ne":
            must_not.append(eq(key, c.value))
        elif c.op in ("$in", "$nin"):
            alts = models.Filter(should=[eq(key, v) for v in c.value])
            (must if c.op == "$in" else must_not).append(alts)
        else:
            rng = {"$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}[c.op]
            must.append(models.FieldCondition(key=key, range=models.Range(**{rng: float(c.value)})))
    return models.Filter(must=must or None, must_not=must_not or None)


def _quantization_of(info: Any) -> str | None:
    """The quantisation a collection was created with: ``int8``, ``binary`` or None (its config, else what
    its metadata records)."""
    q = getattr(info.config, "quantization_config", None)
    if q is not None:
        return "binary" if getattr(q, "binary", None) is not None else "int8" if getattr(q, "scalar", None) is not None else None
    recorded = (getattr(info.config, "metadata", None) or {}).get("quantization")
    return recorded if recorded in ("int8", "binary") else None
