"""Weaviate connector (v4 client, gRPC for data, REST for schema).

- Collections are created with no vectorizer (self-provided vectors) and an explicit HNSW config
  and distance (cosine, dot, l2-squared); the IndexSpec is stored as JSON in the collection
  description.
- Objects get deterministic UUIDs (``weaviate.util.generate_uuid5(id)``) and keep our id in the
  ``doc_id`` property, so re-upserting an id replaces the object.
- Metadata: the full dict is stored as JSON in ``meta_json`` (exact round trip, any nesting); top-level
  scalar / scalar-list values whose keys are valid GraphQL names are also stored in typed, filterable
  ``m_<key>`` properties, which the connector adds to the schema explicitly (field tokenization, so
  equality is exact) instead of relying on auto-schema. A value whose type conflicts with the
  existing property fails that item, reported by id.
- Writes go through ``insert_many`` (gRPC batch) in fixed-size chunks, ``concurrency`` at a time; every
  per-object error is reported by id, never dropped; a whole-batch failure is bisected.
- Names are normalised to Weaviate's rules (``[A-Z][A-Za-z0-9_]*``): "docs" -> "Docs".
- Rebuilds: from the first ``ensure_index`` the name is an alias (Weaviate >= 1.32) of a versioned
  collection ``<Name>__v<timestamp>``; ``commit_rebuild`` updates the alias atomically and deletes the
  old collection. On older servers the collection is created under the name itself (no rebuilds).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from embedrail.connectors._filters import Cond, parse_filter
from embedrail.connectors._records import (
    batched,
    owner_from,
    parse_version,
    search_from,
    spec_from_dict,
    spec_to_dict,
)
from embedrail.connectors._retry import BASE_ERRORS, log
from embedrail.connectors._store import BaseStore, Batch, ReadTarget
from embedrail.connectors._urls import StoreURL
from embedrail.connectors._weaviate_schema import (
    HEADING_BOOST,
    HEADINGS,
    META_PREFIX,
    PROP_RE,
    RETURN_PROPS,
    condition,
    normalize_name,
    object_properties,
    object_uuid,
    to_hit,
    to_score,
)
from embedrail.connectors.base import (
    DEFAULT_ALPHA,
    DEFAULT_FUSION,
    Hit,
    IndexInfo,
    IndexSpec,
    Record,
    UpsertResult,
)
from embedrail.errors import ConfigError, StoreRejectedError, StoreUnavailableError

__all__ = ["WeaviateStore", "normalize_name"]

_WE = "weaviate.exceptions."
DEFAULT_HNSW = {"ef_construction": 128, "max_connections": 32, "ef": -1, "dynamic_ef_min": 100, "dynamic_ef_max": 500}


class WeaviateStore(BaseStore):
    """A Weaviate collection (behind an alias) implementing the ``VectorStore`` protocol.

    ``WeaviateStore(weaviate_client, collection="Docs")`` or
    ``WeaviateStore("weaviate://host:8080/Docs?grpc_port=50051")``.
    """

    STORE = "weaviate"
    NAME_HINT = "weaviate://host:8080/NAME or collection=..."
    ERRORS = BASE_ERRORS.extend(
        transient=tuple(_WE + n for n in ("WeaviateConnectionError", "WeaviateGRPCUnavailableError", "WeaviateTimeoutError",
                                          "WeaviateRetryError", "WeaviateStartUpError")),  # fmt: skip
        # HTTP status (REST) or gRPC code: 429/502/503/504, UNAVAILABLE, DEADLINE_EXCEEDED transient; 4xx rejected
        status=(_WE + "UnexpectedStatusCodeError", "grpc.RpcError"),
        # the server answered, refusing the request (the gRPC error they wrap, if any, was looked at first)
        rejected=tuple(_WE + n for n in ("WeaviateInvalidInputError", "WeaviateInsertInvalidPropertyError",
                                         "WeaviateAddInvalidPropertyError", "ObjectAlreadyExistsError", "AuthenticationFailedError",
                                         "WeaviateUnsupportedFeatureError", "SchemaValidationError", "WeaviateQueryError",
                                         "WeaviateInsertManyAllFailedError")),  # fmt: skip
    )

    def __init__(
        self,
        client_or_url: Any,
        collection: str | None = None,
        *,
        hnsw: Mapping[str, Any] | None = None,
        batch_size: int = 1000,
        concurrency: int = 2,
        timeout: float = 60.0,
        **base: Any,
    ) -> None:
        super().__init__(client_or_url, collection, **base)
        self.hnsw = {**DEFAULT_HNSW, **dict(hnsw or {})}
        self.batch_size, self.concurrency, self.timeout = max(1, batch_size), max(1, concurrency), timeout
        self._version: str | None = None

    # ------------------------------------------------------------------------------ names, client
    def _name_from_url(self, u: StoreURL) -> str | None:
        return u.name or u.param("collection")

    def _check_name(self, name: str) -> str:
        return normalize_name(name)

    @staticmethod
    def _describe_client(client: Any, name: str | None) -> str:
        try:
            params = client._connection._connection_params  # noqa: SLF001 - best effort, for messages only
            scheme = "weaviate+https" if params.http.secure else "weaviate"
            return f"{scheme}://{params.http.host}:{params.http.port}/{name or ''}?grpc_port={params.grpc.port}"
        except Exception:  # noqa: BLE001
            return f"weaviate+client://{name or ''}"

    def _reset_caches(self) -> None:
        super()._reset_caches()
        self._specs: dict[str, IndexSpec | None] = {}
        self._props: dict[str, dict[str, str]] = {}  # physical -> property name -> data type

    def _make_client(self) -> Any:
        try:
            import weaviate
            from weaviate.classes.init import AdditionalConfig, Auth, Timeout
        except ImportError as e:  # pragma: no cover - depends on the installed extras
            raise ConfigError("the Weaviate connector needs weaviate-client: pip install 'embedrail[weaviate]'") from e
        u: StoreURL = self._u  # type: ignore[assignment]
        secure = u.transport == "https"
        host = u.host or "localhost"
        key = u.param("api_key")
        return weaviate.connect_to_custom(
            http_host=host, http_port=u.port or (443 if secure else 8080), http_secure=secure,
                grpc_host=u.param("grpc_host") or host, grpc_port=int(u.param("grpc_port") or 50051), grpc_secure=secure,
                auth_credentials=Auth.api_key(key) if key else None,
            additional_config=AdditionalConfig(timeout=Timeout(init=5, query=self.timeout, insert=self.timeout * 2)),
        )  # fmt: skip

    def server_version(self) -> str:
        if self._version is None:
            self._version = str(self._call(lambda: self.client.get_meta(), "read server version").get("version", "0"))
        return self._version

    def supports_aliases(self) -> bool:
        return parse_version(self.server_version()) >= (1, 32)

    # ------------------------------------------------------------------------------ names and specs
    def _col(self, name: str) -> Any:
        return self.client.collections.get(name)

    def _collection_exists(self, name: str) -> bool:
        return bool(self._call(lambda: self.client.collections.exists(name), "check collection"))

    def resolve(self) -> str | None:
        """The physical collection behind the name (None: no index)."""
        if self._physical_fixed:
            return self._physical_fixed if self._collection_exists(self._physical_fixed) else None
        if self.supports_aliases():
            a = self._call(lambda: self.client.alias.get(alias_name=self.name), "resolve alias")
            if a is not None:
                return str(a.collection)
        return self.name if self._collection_exists(self.name) else None

    _current_physical = resolve

    def _config(self, physical: str) -> Any:
        return self._call(lambda: self._col(physical).config.get(), "read collection config")

    def _spec_of(self, physical: str) -> IndexSpec | None:
        if physical not in self._specs:
            cfg = self._config(physical)
            spec = spec_from_dict(_description(cfg).get("embedrail"))
            self._specs[physical] = spec
            self._props[physical] = {p.name: str(p.data_type.value) for p in cfg.properties}
        return self._specs[physical]

    # ------------------------------------------------------------------------------ creation
    def _create_physical(self, physical: str, spec: IndexSpec) -> None:
        from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances

        dist = {"cosine": VectorDistances.COSINE, "dot": VectorDistances.DOT, "l2": VectorDistances.L2_SQUARED}[spec.metric]
        props = [
            Property(name="doc_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD, index_searchable=False),
            Property(name="text", data_type=DataType.TEXT, tokenization=Tokenization.WORD),
            # the title and headings of the chunk (metadata title, heading_path): keyword search boosts them
            Property(name=HEADINGS, data_type=DataType.TEXT, tokenization=Tokenization.WORD, index_filterable=False),
            Property(name="meta_json", data_type=DataType.TEXT, index_filterable=False, index_searchable=False),
        ]
        hnsw = Configure.VectorIndex.hnsw(distance_metric=dist, **self.hnsw)
        kw: dict[str, Any] = {"description": json.dumps({"embedrail": spec_to_dict(spec), "logical_name": self.name},
                                                         sort_keys=True), "properties": props}  # fmt: skip
        if hasattr(Configure, "Vectors"):  # weaviate-client >= 4.16
            kw["vector_config"] = Configure.Vectors.self_provided(vector_index_config=hnsw)
        else:  # pragma: no cover - older clients
            kw["vectorizer_config"], kw["vector_index_config"] = Configure.Vectorizer.none(), hnsw
        try:
            self._call(lambda: self.client.collections.create(physical, **kw), "create collection")
        except StoreUnavailableError:
            raise
        except Exception as e:
            if not self._store_failure(e):
                raise  # a bug
            self._fail(e, f"create collection {physical}")
        self._specs[physical] = spec
        self._props[physical] = {"doc_id": "text", "text": "text", HEADINGS: "text", "meta_json": "text"}
        log.info("%s: created collection %s (dims=%d, %s)", self.url, physical, spec.dims, spec.metric)

    def _create_named(self, spec: IndexSpec) -> str:
        if not self.supports_aliases():
            self._create_physical(self.name, spec)
            return self.name
        physical = self._new_physical_name()
        self._create_physical(physical, spec)
        try:
            self._call(lambda: self.client.alias.create(alias_name=self.name, target_collection=physical), "create alias")
        except StoreUnavailableError:
            raise
        except Exception as e:  # most likely created concurrently: use theirs
            if not self._store_failure(e):
                raise  # a bug
            winner = self.resolve()
            if winner is None or winner == physical:
                self._fail(e, "create alias")
            self._drop_physical(physical)
            return winner
        return physical

    def describe(self) -> IndexInfo:
        extra: dict[str, Any] = {"store": "weaviate", "server_version": self.server_version()}
        physical = self.resolve()
        if physical is None:
            return IndexInfo(name=self.name, exists=False, extra=extra)
        spec = self._spec_of(physical)
        cfg = self._config(physical)
        vic = getattr(cfg, "vector_index_config", None)
        if vic is None and getattr(cfg, "vector_config", None):
            vic = next(iter(cfg.vector_config.values())).vector_index_config
        extra.update(distance=str(getattr(getattr(vic, "distance_metric", None), "value", "")), url=self.url)
        return IndexInfo(name=self.name, exists=True, physical_name=physical, spec=spec, count=self._count(physical), extra=extra,
                         owner=owner_from(_description(cfg).get("owner")), search=search_from(_description(cfg).get("search")))  # fmt: skip

    def _set_meta(self, physical: str, key: str, value: Any) -> None:
        desc = {**_description(self._config(physical)), key: value}
        if value is None:
            desc.pop(key)
        self._call(lambda: self._col(physical).config.update(description=json.dumps(desc, sort_keys=True)), f"record {key}")

    # ------------------------------------------------------------------------------ writing
    def _ensure_props(self, physical: str, needed: Mapping[str, str]) -> None:
        from weaviate.classes.config import DataType, Property, Tokenization

        if all(k in self._props.setdefault(physical, {}) for k in needed):
            return
        self._specs.pop(physical, None)  # refresh the property cache: another writer may have added them
        self._spec_of(physical)
        known = self._props[physical]
        for name, typ in needed.items():
            if name in known:
                continue
            tok = Tokenization.FIELD if typ in ("text", "text[]") else None
            prop = Property(name=name, data_type=DataType(typ), tokenization=tok, index_searchable=False)
            try:
                self._call(lambda p=prop: self._col(physical).config.add_property(p), "add property")
            except StoreUnavailableError:
                raise
            except Exception as e:  # created concurrently?
                if not self._store_failure(e):
                    raise  # a bug
                self._specs.pop(physical, None)
                self._spec_of(physical)
                if name not in self._props[physical]:
                    self._fail(e, f"add property {name}")
            known[name] = typ

    def _write(self, target: ReadTarget, items: list[tuple[Record, np.ndarray]], result: UpsertResult) -> None:
        from weaviate.classes.data import DataObject

        known = self._props.setdefault(target.physical, {})
        objs: Batch = []
        new_props: dict[str, str] = {}
        for r, vec in items:
            try:
                props, types = object_properties(r, headings=HEADINGS in known)
            except (TypeError, ValueError) as e:
                result.failed[r.id] = f"metadata is not JSON-serialisable: {e}"
                continue
            clash = [f"metadata {k[len(META_PREFIX):]!r} is {t} but the collection stores {known.get(k) or new_props.get(k)}"
                     for k, t in types.items() if (known.get(k) or new_props.get(k) or t) != t]  # fmt: skip
            if clash:
                result.failed[r.id] = "; ".join(clash)
                continue
            for k, t in types.items():
                new_props.setdefault(k, t)
            objs.append((r.id, DataObject(properties=props, uuid=object_uuid(r.id), vector=vec.tolist())))
        if new_props:
            self._ensure_props(target.physical, new_props)
        col = self._col(target.physical)

        def send(batch: Batch) -> UpsertResult:  # one result per batch: batches run in threads
            res = UpsertResult()
            self._send(batch, lambda b: self._insert(col, b), res)
            return res

        batches = [list(b) for b in batched(objs, self.batch_size)]
        if self.concurrency > 1 and len(batches) > 1:
            with ThreadPoolExecutor(self.concurrency) as pool:
                parts = list(pool.map(send, batches))
        else:
            parts = [send(b) for b in batches]
        for part in parts:
            result.merge(part)

    def _insert(self, col: Any, batch: Batch) -> dict[str, str]:
        ret = self._call(lambda: col.data.insert_many([o for _, o in batch]), "upsert")
        return {batch[idx][0]: str(getattr(err, "message", err))[:500] for idx, err in (ret.errors or {}).items()}

    def _stored(self, target: ReadTarget, ids: list[str]) -> dict[str, tuple[np.ndarray, str, dict[str, Any]]]:
        from weaviate.classes.query import Filter

        out: dict[str, tuple[np.ndarray, str, dict[str, Any]]] = {}
        col = self._col(target.physical)
        for batch in batched(ids, 1000):
            uuids = [object_uuid(i) for i in batch]
            res = self._call(lambda u=uuids: col.query.fetch_objects(filters=Filter.by_id().contains_any(u), limit=len(u),
                                                                     return_properties=RETURN_PROPS, include_vector=True),
                             "read vectors")  # fmt: skip
            for o in res.objects:
                vec = o.vector.get("default") if isinstance(o.vector, dict) else o.vector
                if vec is not None:
                    h = to_hit(o, 1.0)
                    out[h.id] = (np.asarray(vec, dtype=np.float32), h.text, h.metadata)
        return out

    def _delete_batch(self, physical: str, ids: list[str]) -> dict[str, str]:
        from weaviate.classes.query import Filter

        uuids = [object_uuid(i) for i in ids]
        out = self._call(lambda: self._col(physical).data.delete_many(where=Filter.by_id().contains_any(uuids)), "delete")
        if not getattr(out, "failed", 0):
            return {}
        # which ones failed is not reported per object: re-check which are still there
        return {i: "delete failed" for i in self._fetch(physical, ids)}

    # ------------------------------------------------------------------------------ reading
    def search(self, vector: np.ndarray | Sequence[float], k: int = 10, filter: Mapping[str, Any] | None = None,
               _again: bool = True) -> list[Hit]:  # fmt: skip
        from weaviate.classes.query import MetadataQuery

        conds = parse_filter(filter)
        target = self._read_target()
        vec = self._query_vector(vector, target.spec)
        flt, empty = self._filter(target.physical, conds)
        if empty:
            return []
        # query through the alias (resolved server-side, atomically) unless we write a rebuild
        name = self._physical_fixed or (self.name if target.physical != self.name and self.supports_aliases() else target.physical)
        try:
            res = self._call(lambda: self._col(name).query.near_vector(
                near_vector=vec.tolist(), limit=max(1, int(k)), filters=flt, return_metadata=MetadataQuery(distance=True),
                return_properties=RETURN_PROPS), "search")  # fmt: skip
        except StoreUnavailableError:
            raise
        except Exception as e:
            if not self._store_failure(e):
                raise  # a bug
            if _again and self._read_cache is not None:  # maybe stale after a rebuild: re-resolve once
                self._invalidate()
                return self.search(vector, k, filter, _again=False)
            self._fail(e, "search")
        metric = target.spec.metric if target.spec else "cosine"
        return [to_hit(o, to_score(metric, float(o.metadata.distance))) for o in res.objects]

    supports_hybrid = True

    def hybrid_search(self, query: str, vector: Any, k: int = 10, filter: Mapping[str, Any] | None = None, *,
                      alpha: float = DEFAULT_ALPHA, candidates: int | None = None, fusion: str = DEFAULT_FUSION, _again: bool = True) -> list[Hit]:  # fmt: skip
        """Weaviate's native ``hybrid`` query: BM25 on ``text`` (and the headings) and the vector, fused
        server-side (``fusion``: relative score or ranked, ``alpha`` as given; ``candidates`` is Weaviate's own
        choice there); ``guarded`` runs BM25 and kNN apart and fuses client-side, like the other stores."""
        from weaviate.classes.query import HybridFusion, MetadataQuery

        if fusion == "guarded":
            return self._fused(query, vector, k, filter, alpha, candidates, fusion, self.text_search)
        k, _ = self._hybrid_args(query, alpha, k, candidates, fusion)
        target = self._read_target()
        vec = self._query_vector(vector, target.spec)
        flt, empty = self._filter(target.physical, parse_filter(filter))
        if empty:
            return []
        name = self._physical_fixed or (self.name if target.physical != self.name and self.supports_aliases() else target.physical)
        try:
            res = self._call(lambda: self._col(name).query.hybrid(
                query=query, vector=vec.tolist(), alpha=float(alpha), limit=k, filters=flt, query_properties=self._keyword_props(target.physical),
                fusion_type=HybridFusion.RANKED if fusion == "rrf" else HybridFusion.RELATIVE_SCORE, return_metadata=MetadataQuery(score=True),
                return_properties=RETURN_PROPS), "hybrid search")  # fmt: skip
        except StoreUnavailableError:
            raise
        except Exception as e:
            if not self._store_failure(e):
                raise  # a bug
            if _again and self._read_cache is not None:
                self._invalidate()
                return self.hybrid_search(query, vector, k, filter, alpha=alpha, candidates=candidates, fusion=fusion, _again=False)
            self._fail(e, "hybrid search")
        return [to_hit(o, float(o.metadata.score or 0.0)) for o in res.objects]

    def text_search(self, query: str, k: int = 10, filter: Mapping[str, Any] | None = None) -> list[Hit]:
        """BM25 over the text and, boosted, the headings (Weaviate's ``bm25`` query; score: its BM25)."""
        from weaviate.classes.query import MetadataQuery

        def run(target: ReadTarget) -> list[Hit]:
            flt, empty = self._filter(target.physical, parse_filter(filter))
            if empty:
                return []
            name = self._physical_fixed or (self.name if target.physical != self.name and self.supports_aliases() else target.physical)
            res = self._call(lambda: self._col(name).query.bm25(
                query=query, query_properties=self._keyword_props(target.physical), limit=max(1, int(k)), filters=flt,
                return_metadata=MetadataQuery(score=True), return_properties=RETURN_PROPS), "keyword search")  # fmt: skip
            return [to_hit(o, float(o.metadata.score or 0.0)) for o in res.objects]

        return self._on_read_target("keyword search", run)

    def _keyword_props(self, physical: str) -> list[str]:
        """What BM25 searches: the text and, boosted, the headings (a collection created before that
        property has only the text)."""
        self._spec_of(physical)
        return ["text", f"{HEADINGS}^{HEADING_BOOST}"] if HEADINGS in self._props.get(physical, {}) else ["text"]

    def _filter(self, physical: str, conds: list[Cond]) -> tuple[Any, bool]:
        """(weaviate filter or None, True if no object can match)."""
        from weaviate.classes.query import Filter

        if not conds:
            return None, False
        props = self._props.get(physical) or {}
        parts = []
        for c in conds:
            name = META_PREFIX + c.field
            if not PROP_RE.match(c.field) or name not in props:
                if name not in props:  # maybe added by another writer: re-read the schema once
                    self._specs.pop(physical, None)
                    self._spec_of(physical)
                    props = self._props.get(physical) or {}
                if name not in props:  # no object has this field: only negations can match
                    if c.op in ("$ne", "$nin"):
                        continue
                    return None, True
            typ, val = props[name], c.value
            if typ.startswith("number"):
                val = [float(v) for v in val] if isinstance(val, list) else float(val)
            parts.append(condition(Filter.by_property(name), c.op, val, many=typ.endswith("[]")))
        if not parts:
            return None, False
        return (parts[0] if len(parts) == 1 else Filter.all_of(parts)), False

    def _count(self, physical: str) -> int:
        return int(self._call(lambda: self._col(physical).aggregate.over_all(total_count=True), "count").total_count or 0)

    def count(self) -> int:
        physical = self.resolve()
        return 0 if physical is None else self._count(physical)

    def iter_ids(self) -> Iterator[str]:
        physical = self.resolve()
        if physical is not None:
            for o in self._col(physical).iterator(return_properties=["doc_id"]):
                yield str(o.properties["doc_id"])

    def get(self, ids: Sequence[str]) -> dict[str, Hit]:
        ids = list(dict.fromkeys(ids))
        physical = self.resolve() if ids else None
        return {} if physical is None else self._fetch(physical, ids)

    def _fetch(self, physical: str, ids: list[str]) -> dict[str, Hit]:
        from weaviate.classes.query import Filter

        out: dict[str, Hit] = {}
        col = self._col(physical)
        for batch in batched(ids, 1000):
            uuids = [object_uuid(i) for i in batch]
            res = self._call(lambda u=uuids: col.query.fetch_objects(filters=Filter.by_id().contains_any(u), limit=len(u),
                                                                     return_properties=RETURN_PROPS), "get")  # fmt: skip
            out.update((h.id, h) for h in (to_hit(o, 1.0) for o in res.objects))
        return out

    # ------------------------------------------------------------------------------ lifecycle
    def _drop_physical(self, physical: str) -> None:
        if self._collection_exists(physical):
            self._call(lambda: self.client.collections.delete(physical), "delete collection")
        self._specs.pop(physical, None)
        self._props.pop(physical, None)

    def drop(self) -> None:
        self._invalidate()
        physical = self.resolve()
        if physical and not self._physical_fixed and physical != self.name:
            self._call(lambda: self.client.alias.delete(alias_name=self.name), "delete alias")
        if physical:
            self._drop_physical(physical)

    def _check_rebuilds(self) -> None:
        if not self.supports_aliases():
            raise StoreRejectedError(f"{self.url}: rebuilds need collection aliases (Weaviate >= 1.32), the server is "
                             f"{self.server_version()}")  # fmt: skip

    def _switch(self, physical: str) -> list[str]:
        old = self.resolve()
        if old == self.name:  # a plain collection holds the name: it must go before the alias can take it
            raise StoreRejectedError(f"{self.url}: {self.name!r} is a plain collection, not an alias; an atomic swap is "
                             "impossible. Delete it and create the alias by hand, or use a new name.")  # fmt: skip
        if old is None:
            self._call(lambda: self.client.alias.create(alias_name=self.name, target_collection=physical), "create alias")
        else:
            self._call(lambda: self.client.alias.update(alias_name=self.name, new_target_collection=physical), "switch alias")
        return [old] if old else []


def _description(cfg: Any) -> dict[str, Any]:
    """The JSON a collection's description holds (embedrail's spec, logical name and owner); {} if none."""
    try:
        d = json.loads(cfg.description or "{}")
    except (ValueError, TypeError):
        return {}
    return d if isinstance(d, dict) else {}
