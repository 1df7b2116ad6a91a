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
- Writes go through ``insert_many`` (gRPC batch) in fixed-size chunks; every per-object error is
  reported by id, never dropped; a whole-batch failure is bisected.
- Names are normalised to Weaviate's rules (``[A-Z][A-Za-z0-9_]*``): "docs" -> "Docs".
- Rebuilds: from the first ``ensure_index`` the name is an alias (Weaviate >= 1.32) of a versioned
  collection ``<Name>__v<timestamp>``; ``commit_rebuild`` updates the alias atomically and deletes the
  old collection. On older servers the collection is created under the name itself (no rebuilds).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from connectors._common import (
    Cond,
    RebuildMixin,
    RetryPolicy,
    check_record,
    check_spec,
    chunks,
    log,
    parse_filter,
    parse_url,
    parse_version,
    retry_call,
    short_error,
    spec_from_dict,
    spec_to_dict,
)
from connectors.base import (
    ConfigError,
    DeleteResult,
    Hit,
    IndexInfo,
    IndexMismatchError,
    IndexSpec,
    Record,
    StoreError,
    StoreUnavailableError,
    UpsertResult,
)

_PROP_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,200}$")
META_PREFIX = "m_"
DEFAULT_HNSW = {"ef_construction": 128, "max_connections": 32, "ef": -1, "dynamic_ef_min": 100, "dynamic_ef_max": 500}


def normalize_name(name: str) -> str:
    """Map any index name to a valid Weaviate collection name: ``[A-Z][A-Za-z0-9_]*``."""
    n = re.sub(r"[^A-Za-z0-9_]", "_", name.strip())
    if not n:
        raise ConfigError("empty Weaviate collection name")
    if not n[0].isalpha():
        n = "C" + n
    return n[0].upper() + n[1:]


def _wv() -> Any:
    try:
        import weaviate
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise ConfigError("the Weaviate connector needs weaviate-client: pip install 'embedrail[weaviate]'") from e
    return weaviate


def _is_transient(e: BaseException) -> bool:
    try:
        import weaviate.exceptions as we

        if isinstance(
            e,
            we.WeaviateConnectionError
            | we.WeaviateGRPCUnavailableError
            | we.WeaviateTimeoutError
            | we.WeaviateRetryError
            | we.WeaviateStartUpError
            | we.WeaviateClosedClientError,
        ):
            return True
        if isinstance(e, we.UnexpectedStatusCodeError) and e.status_code in (429, 500, 502, 503, 504):
            return True
    except ImportError:  # pragma: no cover
        pass
    try:
        import httpx

        if isinstance(e, httpx.TransportError):
            return True
    except ImportError:  # pragma: no cover
        pass
    if isinstance(e, ConnectionError | TimeoutError):
        return True
    msg = str(e)
    return any(s in msg for s in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "Connection refused", "connection refused"))


def _uuid(doc_id: str) -> str:
    # same as weaviate.util.generate_uuid5(doc_id): uuid5 of the id in the DNS namespace
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, doc_id))


class WeaviateStore(RebuildMixin):
    """A Weaviate collection (behind an alias) implementing the ``VectorStore`` protocol.

    ``WeaviateStore(weaviate_client, collection="Docs")`` or
    ``WeaviateStore("weaviate://host:8080/Docs?grpc_port=50051")``.
    """

    def __init__(
        self,
        client_or_url: Any,
        collection: str | None = None,
        *,
        hnsw: Mapping[str, Any] | None = None,
        batch_size: int = 1000,
        concurrency: int = 2,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        read_cache_ttl: float = 2.0,
        _physical: str | None = None,
    ) -> None:
        self._secrets: list[str | None] = []
        if isinstance(client_or_url, str):
            u = parse_url(client_or_url)
            if u.store != "weaviate":
                raise ConfigError(f"WeaviateStore needs a weaviate:// URL, got {u.safe}")
            collection = collection or u.name or u.param("collection")
            self.url = u.safe
            self._secrets += [u.param("api_key"), u.password]
            self._u: Any = u
            self._client = None
        else:
            self._u = None
            self._client = client_or_url
            self.url = _describe_client(client_or_url, collection)
        if not collection:
            raise ConfigError(f"{self.url}: no collection name; use weaviate://host:8080/NAME or collection=...")
        self.name = normalize_name(collection)
        self.hnsw = {**DEFAULT_HNSW, **dict(hnsw or {})}
        self.batch_size = max(1, batch_size)
        self.concurrency = max(1, concurrency)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.read_cache_ttl = read_cache_ttl
        self._read_cache: tuple[float, tuple[str, IndexSpec | None]] | None = None
        self._physical_fixed = _physical
        self._specs: dict[str, IndexSpec | None] = {}
        self._props: dict[str, dict[str, str]] = {}  # physical -> property name -> data type
        self._version: str | None = None

    # ------------------------------------------------------------------------------ plumbing
    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._call(self._make_client, "connect")
        return self._client

    def _make_client(self) -> Any:
        weaviate = _wv()
        from weaviate.classes.init import AdditionalConfig, Auth, Timeout

        u = self._u
        secure = u.transport == "https"
        host = u.host or "localhost"
        port = u.port or (443 if secure else 8080)
        grpc_port = int(u.param("grpc_port") or 50051)
        grpc_host = u.param("grpc_host") or host
        key = u.param("api_key")
        auth = Auth.api_key(key) if key else None
        try:
            return weaviate.connect_to_custom(
                http_host=host,
                http_port=port,
                http_secure=secure,
                grpc_host=grpc_host,
                grpc_port=grpc_port,
                grpc_secure=secure,
                auth_credentials=auth,
                additional_config=AdditionalConfig(timeout=Timeout(init=5, query=self.timeout, insert=self.timeout * 2)),
            )
        except Exception as e:  # noqa: BLE001
            if _is_transient(e) or "connect" in str(e).lower():
                raise ConnectionError(short_error(e, *self._secrets)) from None
            raise

    def _call(self, fn: Any, what: str) -> Any:
        return retry_call(
            fn, is_transient=_is_transient, policy=self.retry, what=what, url=self.url, secrets=self._secrets
        )

    def _err(self, e: BaseException, what: str) -> StoreError:
        return StoreError(f"{self.url}: {what} failed: {short_error(e, *self._secrets)}")

    def server_version(self) -> str:
        if self._version is None:
            meta = self._call(lambda: self.client.get_meta(), "read server version")
            self._version = str(meta.get("version", "0"))
        return self._version

    def supports_aliases(self) -> bool:
        return parse_version(self.server_version()) >= (1, 32)

    def max_dims(self) -> int | None:
        return None  # Weaviate has no fixed vector dimension limit

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

    def _config(self, physical: str) -> Any:
        return self._call(lambda: self._col(physical).config.get(), "read collection config")

    def _spec_of(self, physical: str) -> IndexSpec | None:
        if physical not in self._specs:
            cfg = self._config(physical)
            spec = None
            try:
                spec = spec_from_dict(json.loads(cfg.description or "{}").get("embedrail"))
            except (ValueError, AttributeError):
                spec = None
            self._specs[physical] = spec
            self._props[physical] = {p.name: str(p.data_type.value) for p in cfg.properties}
        return self._specs[physical]

    # ------------------------------------------------------------------------------ creation
    def _create_physical(self, physical: str, spec: IndexSpec) -> None:
        from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances

        dist = {"cosine": VectorDistances.COSINE, "dot": VectorDistances.DOT, "l2": VectorDistances.L2_SQUARED}[spec.metric]
        desc = json.dumps({"embedrail": spec_to_dict(spec), "logical_name": self.name}, sort_keys=True)
        props = [
            Property(name="doc_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD, index_searchable=False),
            Property(name="text", data_type=DataType.TEXT, tokenization=Tokenization.WORD),
            Property(name="meta_json", data_type=DataType.TEXT, index_filterable=False, index_searchable=False),
        ]
        hnsw = Configure.VectorIndex.hnsw(distance_metric=dist, **self.hnsw)
        kw: dict[str, Any] = {"description": desc, "properties": props}
        if hasattr(Configure, "Vectors"):  # weaviate-client >= 4.16
            kw["vector_config"] = Configure.Vectors.self_provided(vector_index_config=hnsw)
        else:  # pragma: no cover - older clients
            kw["vectorizer_config"] = Configure.Vectorizer.none()
            kw["vector_index_config"] = hnsw
        try:
            self._call(lambda: self.client.collections.create(physical, **kw), "create collection")
        except StoreUnavailableError:
            raise
        except Exception as e:  # noqa: BLE001
            raise self._err(e, f"create collection {physical}") from None
        self._specs[physical] = spec
        self._props[physical] = {"doc_id": "text", "text": "text", "meta_json": "text"}
        log.info("%s: created collection %s (dims=%d, %s)", self.url, physical, spec.dims, spec.metric)

    def ensure_index(self, spec: IndexSpec) -> IndexInfo:
        self._read_cache = None
        physical = self.resolve()
        if physical is None:
            if self._physical_fixed:
                self._create_physical(self._physical_fixed, spec)
                return self.describe()
            if self.supports_aliases():
                physical = self._new_physical_name()
                self._create_physical(physical, spec)
                try:
                    self._call(
                        lambda: self.client.alias.create(alias_name=self.name, target_collection=physical), "create alias"
                    )
                except StoreUnavailableError:
                    raise
                except Exception as e:  # noqa: BLE001 - most likely created concurrently: use theirs
                    winner = self.resolve()
                    if winner is None or winner == physical:
                        raise self._err(e, "create alias") from None
                    self._delete_collection(physical)
                    physical = winner
            else:
                physical = self.name
                self._create_physical(physical, spec)
        recorded = self._spec_of(physical)
        if recorded is None:
            raise IndexMismatchError(
                f"{self.url}: collection {physical!r} was not created by embedrail (no spec in its "
                "description); nothing was written. Use another name or rebuild into a new collection."
            )
        check_spec(physical, recorded, spec, self.url)
        return self.describe()

    def describe(self) -> IndexInfo:
        physical = self.resolve()
        if physical is None:
            return IndexInfo(name=self.name, exists=False, extra={"store": "weaviate", "server_version": self.server_version()})
        spec = self._spec_of(physical)
        cfg = self._config(physical)
        vic = getattr(cfg, "vector_index_config", None)
        if vic is None and getattr(cfg, "vector_config", None):
            vic = next(iter(cfg.vector_config.values())).vector_index_config
        return IndexInfo(
            name=self.name,
            exists=True,
            physical_name=physical,
            spec=spec,
            count=self._count(physical),
            extra={
                "store": "weaviate",
                "server_version": self.server_version(),
                "distance": str(getattr(getattr(vic, "distance_metric", None), "value", "")),
                "url": self.url,
            },
        )

    def _read_target(self) -> tuple[str, IndexSpec | None]:
        """(physical collection, spec) for searches, cached for ``read_cache_ttl`` s. Searches go through
        the alias (resolved by the server); the cache serves the dims check, filters and scoring."""
        now = time.monotonic()
        if self._read_cache is not None and now < self._read_cache[0]:
            return self._read_cache[1]
        t = self._require("search")
        if self.read_cache_ttl > 0:
            self._read_cache = (now + self.read_cache_ttl, t)
        return t

    def _require(self, what: str) -> tuple[str, IndexSpec | None]:
        physical = self.resolve()
        if physical is None:
            raise StoreError(f"{self.url}: collection {self.name!r} does not exist; call ensure_index(spec) first ({what})")
        return physical, self._spec_of(physical)

    # ------------------------------------------------------------------------------ writing
    def _ensure_props(self, physical: str, needed: Mapping[str, str]) -> None:
        from weaviate.classes.config import DataType, Property, Tokenization

        known = self._props.setdefault(physical, {})
        missing = {k: v for k, v in needed.items() if k not in known}
        if not missing:
            return
        self._spec_of(physical)  # refresh the property cache
        self._specs.pop(physical, None)
        self._spec_of(physical)
        known = self._props[physical]
        for name, typ in missing.items():
            if name in known:
                continue
            dt = DataType(typ)
            tok = Tokenization.FIELD if typ in ("text", "text[]") else None
            try:
                self._call(
                    lambda n=name, d=dt, t=tok: self._col(physical).config.add_property(
                        Property(name=n, data_type=d, tokenization=t, index_searchable=False)
                    ),
                    "add property",
                )
            except StoreUnavailableError:
                raise
            except Exception as e:  # noqa: BLE001 - created concurrently?
                self._specs.pop(physical, None)
                self._spec_of(physical)
                if name not in self._props[physical]:
                    raise self._err(e, f"add property {name}") from None
            known[name] = typ

    def upsert(self, records: Iterable[Record]) -> UpsertResult:
        from weaviate.classes.data import DataObject

        physical, spec = self._require("upsert")
        dims = spec.dims if spec else None
        known = self._props.setdefault(physical, {})
        result = UpsertResult()
        by_id: dict[str, Record] = {}
        for r in records:  # the last record per id wins
            by_id.pop(r.id, None)
            by_id[r.id] = r
        objs: list[tuple[str, Any]] = []
        new_props: dict[str, str] = {}
        for r in by_id.values():
            vec, err = check_record(r, dims)
            if err:
                result.failed[str(r.id)] = err
                continue
            assert vec is not None
            try:
                props, types = _properties(r)
            except (TypeError, ValueError) as e:
                result.failed[r.id] = f"metadata is not JSON-serialisable: {e}"
                continue
            clash = [
                f"metadata {k[len(META_PREFIX):]!r} is {t} but the collection stores {known.get(k) or new_props.get(k)}"
                for k, t in types.items()
                if (known.get(k) or new_props.get(k) or t) != t
            ]
            if clash:
                result.failed[r.id] = "; ".join(clash)
                continue
            for k, t in types.items():
                new_props.setdefault(k, t)
            objs.append((r.id, DataObject(properties=props, uuid=_uuid(r.id), vector=vec.tolist())))
        if new_props:
            self._ensure_props(physical, new_props)
        col = self._col(physical)
        batches = [list(b) for b in chunks(objs, self.batch_size)]
        if self.concurrency > 1 and len(batches) > 1:
            with ThreadPoolExecutor(self.concurrency) as pool:
                for part in pool.map(lambda b: self._insert(col, b), batches):
                    result.merge(part)
        else:
            for b in batches:
                result.merge(self._insert(col, b))
        return result

    def _insert(self, col: Any, batch: list[tuple[str, Any]]) -> UpsertResult:
        res = UpsertResult()
        try:
            ret = self._call(lambda: col.data.insert_many([o for _, o in batch]), "upsert")
        except StoreUnavailableError:
            raise
        except Exception as e:  # noqa: BLE001 - whole batch rejected: bisect for the bad items
            if len(batch) == 1:
                res.failed[batch[0][0]] = short_error(e, *self._secrets)
                return res
            mid = len(batch) // 2
            return self._insert(col, batch[:mid]).merge(self._insert(col, batch[mid:]))
        errors = ret.errors or {}
        for idx, err in errors.items():
            res.failed[batch[idx][0]] = str(getattr(err, "message", err))[:500]
        res.written += len(batch) - len(errors)
        return res

    def delete(self, ids: Iterable[str]) -> DeleteResult:
        from weaviate.classes.query import Filter

        res = DeleteResult()
        ids = list(dict.fromkeys(str(i) for i in ids))
        if not ids:
            return res
        physical = self.resolve()
        if physical is None:
            res.deleted = len(ids)
            return res
        col = self._col(physical)
        for batch in chunks(ids, 1000):
            uuids = [_uuid(i) for i in batch]
            try:
                out = self._call(lambda u=uuids: col.data.delete_many(where=Filter.by_id().contains_any(u)), "delete")
                if getattr(out, "failed", 0):
                    # which ones failed is not reported per object; re-check existence
                    still = self.get(list(batch), _physical=physical)
                    for i in still:
                        res.failed[i] = "delete failed"
                    res.deleted += len(batch) - len(still)
                else:
                    res.deleted += len(batch)
            except StoreUnavailableError:
                raise
            except Exception as e:  # noqa: BLE001
                for i in batch:
                    res.failed[i] = short_error(e, *self._secrets)
        return res

    def flush(self) -> None:
        """Weaviate objects are searchable once the batch is acknowledged; nothing to do."""

    # ------------------------------------------------------------------------------ reading
    def search(
        self, vector: np.ndarray | Sequence[float], k: int = 10, filter: Mapping[str, Any] | None = None, _again: bool = True
    ) -> list[Hit]:
        from weaviate.classes.query import MetadataQuery

        conds = parse_filter(filter)
        physical, spec = self._read_target()
        vec = np.asarray(vector, dtype=np.float32).reshape(-1)
        if spec is not None and vec.shape[0] != spec.dims:
            raise IndexMismatchError(
                f"{self.url}: query vector has {vec.shape[0]} dims but the index holds {spec.dims}-d vectors; "
                "embed the query with the model the index was built with (see describe())"
            )
        flt, empty = self._filter(physical, conds)
        if empty:
            return []
        # query through the alias (resolved server-side, atomically) unless we write a rebuild
        target = self._physical_fixed or (self.name if physical != self.name and self.supports_aliases() else physical)
        try:
            res = self._call(
                lambda: self._col(target).query.near_vector(
                    near_vector=vec.tolist(),
                    limit=max(1, int(k)),
                    filters=flt,
                    return_metadata=MetadataQuery(distance=True),
                    return_properties=["doc_id", "text", "meta_json"],
                ),
                "search",
            )
        except StoreUnavailableError:
            raise
        except Exception as e:  # noqa: BLE001
            if _again and self._read_cache is not None:  # maybe stale after a rebuild: re-resolve once
                self._read_cache = None
                return self.search(vector, k, filter, _again=False)
            raise self._err(e, "search") from None
        metric = spec.metric if spec else "cosine"
        return [_hit(o, _score(metric, float(o.metadata.distance))) for o in res.objects]

    def _filter(self, physical: str, conds: list[Cond]) -> tuple[Any, bool]:
        """(weaviate filter or None, True if no object can match)."""
        from weaviate.classes.query import Filter

        if not conds:
            return None, False
        props = self._props.get(physical) or {}
        parts = []
        for c in conds:
            name = META_PREFIX + c.field
            if not _PROP_RE.match(c.field) or name not in props:
                if name not in props:
                    self._specs.pop(physical, None)
                    self._spec_of(physical)
                    props = self._props.get(physical) or {}
                if name not in props:  # no object has this field: only negations can match
                    if c.op in ("$ne", "$nin"):
                        continue
                    return None, True
            typ = props[name]
            val = c.value
            if typ.startswith("number"):
                val = [float(v) for v in val] if isinstance(val, list) else float(val)
            p = Filter.by_property(name)
            if c.op == "$eq":
                parts.append(p.contains_any([val]) if typ.endswith("[]") else p.equal(val))
            elif c.op == "$ne":
                parts.append(p.contains_none([val]) if typ.endswith("[]") else p.not_equal(val))
            elif c.op == "$in":
                parts.append(p.contains_any(val))
            elif c.op == "$nin":
                parts.append(p.contains_none(val))
            elif c.op == "$gt":
                parts.append(p.greater_than(val))
            elif c.op == "$gte":
                parts.append(p.greater_or_equal(val))
            elif c.op == "$lt":
                parts.append(p.less_than(val))
            elif c.op == "$lte":
                parts.append(p.less_or_equal(val))
        if not parts:
            return None, False
        return (parts[0] if len(parts) == 1 else Filter.all_of(parts)), False

    def _count(self, physical: str) -> int:
        res = self._call(lambda: self._col(physical).aggregate.over_all(total_count=True), "count")
        return int(res.total_count or 0)

    def count(self) -> int:
        physical = self.resolve()
        return 0 if physical is None else self._count(physical)

    def iter_ids(self) -> Iterator[str]:
        physical = self.resolve()
        if physical is None:
            return
        for o in self._col(physical).iterator(return_properties=["doc_id"]):
            yield str(o.properties["doc_id"])

    def get(self, ids: Sequence[str], _physical: str | None = None) -> dict[str, Hit]:
        from weaviate.classes.query import Filter

        out: dict[str, Hit] = {}
        ids = list(dict.fromkeys(ids))
        physical = _physical or self.resolve()
        if not ids or physical is None:
            return out
        col = self._col(physical)
        for batch in chunks(ids, 1000):
            uuids = [_uuid(i) for i in batch]
            res = self._call(
                lambda u=uuids: col.query.fetch_objects(
                    filters=Filter.by_id().contains_any(u), limit=len(u), return_properties=["doc_id", "text", "meta_json"]
                ),
                "get",
            )
            for o in res.objects:
                h = _hit(o, 1.0)
                out[h.id] = h
        return out

    # ------------------------------------------------------------------------------ lifecycle
    def _delete_collection(self, name: str) -> None:
        self._call(lambda: self.client.collections.delete(name), "delete collection")
        self._specs.pop(name, None)
        self._props.pop(name, None)

    def drop(self) -> None:
        self._read_cache = None
        if self._physical_fixed:
            self._delete_collection(self._physical_fixed)
            return
        physical = self.resolve()
        if physical and physical != self.name:
            self._call(lambda: self.client.alias.delete(alias_name=self.name), "delete alias")
        if physical:
            self._delete_collection(physical)

    def begin_rebuild(self, spec: IndexSpec) -> WeaviateStore:
        """Create a new versioned collection (the alias is unchanged) and return a store writing to it."""
        if not self.supports_aliases():
            raise StoreError(
                f"{self.url}: rebuilds need collection aliases (Weaviate >= 1.32), the server is {self.server_version()}"
            )
        physical = self._new_physical_name()
        new = self._sibling(physical)
        new._create_physical(physical, spec)
        return new

    def _sibling(self, physical: str) -> WeaviateStore:
        new = WeaviateStore(
            self.client,
            self.name,
            hnsw=self.hnsw,
            batch_size=self.batch_size,
            concurrency=self.concurrency,
            timeout=self.timeout,
            retry=self.retry,
            read_cache_ttl=self.read_cache_ttl,
            _physical=physical,
        )
        new.url, new._secrets, new._version = self.url, self._secrets, self._version
        return new

    def commit_rebuild(self, new: Any) -> None:
        target = self._rebuild_target(new)
        old = self.resolve()
        if old == self.name:
            # a plain collection holds the name: it must go before the alias can take the name
            raise StoreError(
                f"{self.url}: {self.name!r} is a plain collection, not an alias; an atomic swap is impossible. "
                "Delete it and create the alias by hand, or use a new name."
            )
        if old is None:
            self._call(lambda: self.client.alias.create(alias_name=self.name, target_collection=target), "create alias")
        else:
            self._call(
                lambda: self.client.alias.update(alias_name=self.name, new_target_collection=target), "switch alias"
            )
        log.info("%s: alias %s -> %s", self.url, self.name, target)
        if old and old != target:
            time.sleep(0.2)  # in-flight queries resolved the alias already; let them finish
            self._delete_collection(old)

    def abort_rebuild(self, new: Any) -> None:
        target = getattr(new, "_physical_fixed", None)
        if target and target != self.resolve() and self._collection_exists(target):
            self._delete_collection(target)

    def close(self) -> None:
        if self._u is not None and self._client is not None:
            self._client.close()
            self._client = None


def _properties(r: Record) -> tuple[dict[str, Any], dict[str, str]]:
    md = dict(r.metadata or {})
    props: dict[str, Any] = {
        "doc_id": r.id,
        "text": r.text or "",
        "meta_json": json.dumps(md, ensure_ascii=False, separators=(",", ":"), allow_nan=False),
    }
    types: dict[str, str] = {}
    for k, v in md.items():
        if not isinstance(k, str) or not _PROP_RE.match(k):
            continue
        t = _type_of(v)
        if t is None:
            continue
        name = META_PREFIX + k
        props[name] = [float(x) for x in v] if t == "number[]" else float(v) if t == "number" else v
        types[name] = t
    return props, types


def _type_of(v: Any) -> str | None:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "text"
    if isinstance(v, list) and v:
        if all(isinstance(x, bool) for x in v):
            return "boolean[]"
        if all(isinstance(x, int | float) and not isinstance(x, bool) for x in v):
            return "number[]"
        if all(isinstance(x, str) for x in v):
            return "text[]"
    return None


def _hit(o: Any, score: float) -> Hit:
    p = o.properties or {}
    try:
        md = json.loads(p.get("meta_json") or "{}")
    except ValueError:
        md = {}
    return Hit(id=str(p.get("doc_id") or o.uuid), score=score, text=str(p.get("text") or ""), metadata=md)


def _score(metric: str, d: float) -> float:
    if metric == "cosine":
        return 1.0 - d  # Weaviate cosine distance = 1 - cos
    if metric == "dot":
        return -d  # Weaviate dot distance = -dot
    return -float(np.sqrt(max(d, 0.0)))  # l2-squared -> minus the euclidean distance


def _describe_client(client: Any, collection: str | None) -> str:
    try:
        params = client._connection._connection_params  # noqa: SLF001 - best effort, for messages only
        http = params.http
        scheme = "weaviate+https" if http.secure else "weaviate"
        return f"{scheme}://{http.host}:{http.port}/{collection or ''}?grpc_port={params.grpc.port}"
    except Exception:  # noqa: BLE001
        return f"weaviate+client://{collection or ''}"


__all__ = ["WeaviateStore", "normalize_name"]
