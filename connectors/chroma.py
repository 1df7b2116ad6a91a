"""Chroma connector (embedded ``PersistentClient`` and ``HttpClient``).

- Embeddings are always passed explicitly and collections are opened with ``embedding_function=None``,
  so Chroma's default embedding function (which downloads a model) is never constructed or called.
- Writes are batched at ``client.get_max_batch_size()``; a rejected batch is bisected so the good
  items are written and the bad ones reported by id.
- The distance space is fixed at creation (``configuration={"hnsw": {"space": ...}}``): cosine, ip
  (metric "dot") or l2; the IndexSpec is stored as JSON in the collection metadata.
- Chroma metadata holds scalars only: lists, dicts and None are stored as JSON strings under a
  ``"__json__"``-prefixed key and decoded on read (exact round trip; only scalars are filterable).
- Chroma fixes a collection's dimensionality with the first insert; the connector checks every vector
  against the recorded dims before writing, and ``ensure_index`` on a foreign collection infers the
  dims from a stored record.

Rebuilds (Chroma has no aliases): the user-facing name is a *pointer* kept in a small registry
collection (``embedrail_aliases``; one record per logical name whose metadata names the physical
collection ``<name>__v<timestamp>``). Every operation of this connector resolves the pointer first
(one cheap ``get`` by id), so switching it is a single-record upsert — atomic in Chroma. Guarantees:
a reader through this connector sees either the complete old or the complete new collection, never a
half-built one; a query that races with the drop of the old collection is retried on the new target.
Readers that open the physical collection directly (other tools) are not covered. When no pointer
exists but a collection with the logical name does, it is used as is (an existing plain collection).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from connectors._common import (
    Cond,
    RebuildMixin,
    RetryPolicy,
    StoreURL,
    check_record,
    check_spec,
    chunks,
    decode_scalar_metadata,
    dedupe_last,
    encode_scalar_metadata,
    log,
    parse_filter,
    parse_url,
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

SPEC_META_KEY = "embedrail:spec"
REGISTRY = "embedrail_aliases"
_SPACES = {"cosine": "cosine", "dot": "ip", "l2": "l2"}
_METRIC_OF_SPACE = {v: k for k, v in _SPACES.items()}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]$")
_CLIENT_LOCK = threading.Lock()
DEFAULT_HNSW = {"ef_construction": 100, "ef_search": 100, "max_neighbors": 16}


def _chroma() -> Any:
    try:
        import chromadb
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise ConfigError("the Chroma connector needs chromadb: pip install 'embedrail[chroma]'") from e
    return chromadb


def _is_transient(e: BaseException) -> bool:
    """Connection problems, timeouts and rate limiting: worth retrying with backoff."""
    try:
        import httpx

        if isinstance(e, httpx.TransportError):
            return True
    except ImportError:  # pragma: no cover
        pass
    if isinstance(e, ConnectionError | TimeoutError):
        return True
    try:
        from chromadb.errors import RateLimitError

        if isinstance(e, RateLimitError):
            return True
    except ImportError:  # pragma: no cover
        pass
    msg = str(e)
    return "Could not connect" in msg or "Connection refused" in msg or "timed out" in msg.lower()


def _is_not_found(e: BaseException) -> bool:
    try:
        from chromadb.errors import NotFoundError

        if isinstance(e, NotFoundError):
            return True
    except ImportError:  # pragma: no cover
        pass
    s = str(e)
    return "does not exist" in s or "not found" in s.lower()


class ChromaStore(RebuildMixin):
    """A Chroma collection behind the ``VectorStore`` protocol.

    ``ChromaStore(client, collection="docs")`` with an existing ``chromadb`` client, or
    ``ChromaStore("chroma:///abs/path?collection=docs")`` / ``ChromaStore("chroma+http://host:8000/docs")``.
    """

    def __init__(
        self,
        client_or_url: Any,
        collection: str | None = None,
        *,
        hnsw: Mapping[str, Any] | None = None,
        batch_size: int | None = None,
        retry: RetryPolicy | None = None,
        registry: str = REGISTRY,
        drop_grace: float = 0.5,
        read_cache_ttl: float = 2.0,
        _physical: str | None = None,
    ) -> None:
        self._secrets: list[str | None] = []
        if isinstance(client_or_url, str):
            u = parse_url(client_or_url)
            if u.store != "chroma":
                raise ConfigError(f"ChromaStore needs a chroma:// URL, got {u.safe}")
            self._client = None
            self._u: StoreURL | None = u
            collection = collection or u.param("collection") or (u.name if u.transport != "file" else None)
            self.url = u.safe
            if u.password:
                self._secrets.append(u.password)
            if u.param("token"):
                self._secrets.append(u.param("token"))
        else:
            self._client = client_or_url
            self._u = None
            self.url = _describe_client(client_or_url, collection)
        if not collection:
            raise ConfigError(
                f"{self.url}: no collection name; use chroma:///abs/path?collection=NAME, "
                "chroma+http://host:8000/NAME or collection=..."
            )
        if not _NAME_RE.match(collection) or ".." in collection:
            raise ConfigError(
                f"invalid Chroma collection name {collection!r}: 3-512 characters [A-Za-z0-9._-], "
                "starting and ending with a letter or digit"
            )
        self.name = collection
        if self._u is not None and not self.url.rstrip("/").endswith(collection) and "collection=" not in self.url:
            self.url = self.url.rstrip("/") + "/" + collection
        self.hnsw = {**DEFAULT_HNSW, **dict(hnsw or {})}
        self.batch_size = batch_size
        self.retry = retry or RetryPolicy()
        self.registry = registry
        self.drop_grace = drop_grace
        self.read_cache_ttl = read_cache_ttl
        self._read_cache: tuple[float, tuple[str, Any, IndexSpec | None]] | None = None
        self._physical_fixed = _physical  # set for the write side of a rebuild
        self._cols: dict[str, Any] = {}
        self._specs: dict[str, IndexSpec | None] = {}
        self._max_batch: int | None = None

    # ------------------------------------------------------------------------------ plumbing
    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._call(self._make_client, "connect")
        return self._client

    def _make_client(self) -> Any:
        chromadb = _chroma()
        from chromadb.config import Settings

        u = self._u
        assert u is not None
        settings = Settings(anonymized_telemetry=False)
        tenant = u.param("tenant") or "default_tenant"
        database = u.param("database") or "default_database"
        if u.transport == "file":
            if not u.path.startswith("/"):
                raise ConfigError(f"{u.safe}: embedded Chroma needs an absolute path: chroma:///abs/path?collection=NAME")
            with _CLIENT_LOCK:  # chromadb's per-path shared-system cache is not thread-safe on creation
                return chromadb.PersistentClient(path=u.path, settings=settings, tenant=tenant, database=database)
        headers: dict[str, str] = {}
        token = u.param("token") or u.password
        if token:
            header = u.param("token_header") or "Authorization"  # or X-Chroma-Token, per server config
            headers[header] = f"Bearer {token}" if header.lower() == "authorization" else token
        return chromadb.HttpClient(
            host=u.host or "localhost",
            port=u.port or (443 if u.transport == "https" else 8000),
            ssl=u.transport == "https",
            headers=headers or None,
            settings=settings,
            tenant=tenant,
            database=database,
        )

    def _call(self, fn: Any, what: str) -> Any:
        return retry_call(
            fn,
            is_transient=_is_transient,
            policy=self.retry,
            what=what,
            url=self.url,
            secrets=self._secrets,
            passthrough=_is_not_found,
        )

    def _wrap(self, e: BaseException, what: str) -> StoreError:
        if _is_transient(e):
            return StoreUnavailableError(f"{self.url}: {what} failed: {short_error(e, *self._secrets)}")
        return StoreError(f"{self.url}: {what} failed: {short_error(e, *self._secrets)}")

    def max_batch(self) -> int:
        if self._max_batch is None:
            mb = int(self._call(lambda: self.client.get_max_batch_size(), "get_max_batch_size"))
            self._max_batch = max(1, min(mb, self.batch_size or mb))
        return self._max_batch

    def _get_col(self, physical: str) -> Any:
        col = self._cols.get(physical)
        if col is None:
            col = self._call(lambda: self.client.get_collection(physical, embedding_function=None), "get_collection")
            self._cols[physical] = col
        return col

    def _exists(self, physical: str) -> bool:
        try:
            self._get_col(physical)
            return True
        except StoreUnavailableError:
            raise
        except Exception as e:
            if _is_not_found(e):
                return False
            raise self._wrap(e, "get_collection") from None

    def _registry(self, create: bool = False) -> Any | None:
        if create:
            col = self._call(
                lambda: self.client.get_or_create_collection(
                    self.registry,
                    configuration={"hnsw": {"space": "l2"}},
                    metadata={"embedrail:registry": 1},
                    embedding_function=None,
                ),
                "create alias registry",
            )
            self._cols[self.registry] = col
            return col
        return self._get_col(self.registry) if self._exists(self.registry) else None

    def _pointer(self) -> str | None:
        reg = self._registry()
        if reg is None:
            return None
        try:
            got = self._call(lambda: reg.get(ids=[self.name], include=["metadatas"]), "resolve alias")
        except Exception as e:
            if _is_not_found(e):
                self._cols.pop(self.registry, None)
                return None
            raise
        if got["ids"]:
            md = (got.get("metadatas") or [None])[0] or {}
            target = md.get("target")
            return str(target) if target else None
        return None

    def resolve(self) -> str | None:
        """The physical collection the logical name points at now (None: no such index)."""
        if self._physical_fixed:
            return self._physical_fixed
        target = self._pointer()
        if target:
            return target
        return self.name if self._exists(self.name) else None

    def _set_pointer(self, target: str, *, only_if_absent: bool = False) -> str:
        reg = self._registry(create=True)
        rec: dict[str, Any] = {
            "ids": [self.name],
            "embeddings": np.ones((1, 1), dtype=np.float32),
            "documents": [target],
            "metadatas": [{"target": target, "updated": datetime.now(UTC).isoformat()}],
        }
        if only_if_absent:
            self._call(lambda: reg.add(**rec), "write alias")  # add ignores an existing id: first wins
            return self._pointer() or target
        self._call(lambda: reg.upsert(**rec), "switch alias")
        return target

    def _spec_of(self, physical: str) -> IndexSpec | None:
        if physical not in self._specs:
            col = self._get_col(physical)
            md = col.metadata or {}
            raw = md.get(SPEC_META_KEY)
            spec = None
            if raw:
                try:
                    spec = spec_from_dict(json.loads(raw))
                except ValueError:
                    spec = None
            if spec is None:
                return None  # foreign collection: not cached, may be adopted later
            self._specs[physical] = spec
        return self._specs[physical]

    def _space_of(self, col: Any) -> str | None:
        try:
            conf = col.configuration_json if hasattr(col, "configuration_json") else col.configuration
            sp = ((conf or {}).get("hnsw") or {}).get("space")
            if sp:
                return str(sp)
        except Exception:  # noqa: BLE001 - older clients
            pass
        return (col.metadata or {}).get("hnsw:space") or "l2"

    def _infer_spec(self, physical: str) -> IndexSpec | None:
        """For a collection not created by us: dims from a stored record, metric from its space."""
        col = self._get_col(physical)
        got = self._call(lambda: col.get(limit=1, include=["embeddings"]), "peek")
        emb = got.get("embeddings")
        if emb is None or len(emb) == 0:
            return None
        metric = _METRIC_OF_SPACE.get(self._space_of(col) or "l2", "l2")
        return IndexSpec(dims=len(emb[0]), metric=metric, fingerprint="")

    # ------------------------------------------------------------------------------ protocol
    def max_dims(self) -> int | None:
        return None

    def _create_physical(self, physical: str, spec: IndexSpec) -> Any:
        metadata = {
            SPEC_META_KEY: json.dumps(spec_to_dict(spec), sort_keys=True),
            "embedrail:logical": self.name,
            "embedrail:created": datetime.now(UTC).isoformat(),
        }
        conf = {"hnsw": {"space": _SPACES[spec.metric], **self.hnsw}}
        col = self._call(
            lambda: self.client.create_collection(
                physical, configuration=conf, metadata=metadata, embedding_function=None
            ),
            "create collection",
        )
        self._cols[physical] = col
        self._specs[physical] = spec
        return col

    def ensure_index(self, spec: IndexSpec) -> IndexInfo:
        self._read_cache = None
        physical = self.resolve()
        if physical is not None and self._exists(physical):
            recorded = self._spec_of(physical)
            if recorded is None:
                col = self._get_col(physical)
                space = self._space_of(col)
                if space and space != _SPACES[spec.metric]:
                    raise IndexMismatchError(
                        f"{self.url}: collection {physical!r} uses distance space {space!r}, "
                        f"requested metric {spec.metric!r} needs {_SPACES[spec.metric]!r}. Nothing was written."
                    )
                inferred = self._infer_spec(physical)
                if inferred is not None and inferred.dims != spec.dims:
                    check_spec(physical, inferred, spec, self.url)
                # adopt the foreign collection: record our spec in its metadata
                md = {k: v for k, v in (col.metadata or {}).items() if not str(k).startswith("hnsw:")}
                md[SPEC_META_KEY] = json.dumps(spec_to_dict(spec), sort_keys=True)
                self._call(lambda: col.modify(metadata=md), "record spec")
                self._specs[physical] = spec
            else:
                check_spec(physical, recorded, spec, self.url)
                # Chroma fixes dimensionality with the first insert: make sure what is stored agrees
                stored = self._infer_spec(physical)
                if stored is not None and stored.dims != recorded.dims:
                    raise IndexMismatchError(
                        f"{self.url}: collection {physical!r} records {recorded.dims} dims but holds "
                        f"{stored.dims}-d vectors (written by another tool?). Nothing was written; rebuild it."
                    )
            return self.describe()
        if self._physical_fixed:
            self._create_physical(self._physical_fixed, spec)
            return self.describe()
        physical = self._new_physical_name()
        self._create_physical(physical, spec)
        winner = self._set_pointer(physical, only_if_absent=True)
        if winner != physical:  # another process created the index concurrently: use theirs
            self._drop_physical(physical)
            check_spec(winner, self._spec_of(winner), spec, self.url)
        return self.describe()

    def describe(self) -> IndexInfo:
        physical = self.resolve()
        if physical is None or not self._exists(physical):
            return IndexInfo(name=self.name, exists=False, extra={"store": "chroma"})
        col = self._get_col(physical)
        spec = self._spec_of(physical) or self._infer_spec(physical)
        return IndexInfo(
            name=self.name,
            exists=True,
            physical_name=physical,
            spec=spec,
            count=int(self._call(col.count, "count")),
            extra={"store": "chroma", "space": self._space_of(col), "url": self.url},
        )

    def _read_target(self) -> tuple[str, Any, IndexSpec | None]:
        """The search target, cached for ``read_cache_ttl`` seconds (saves the pointer lookup per query).

        Safe across a rebuild: the old collection stays complete until it is dropped, and a query that
        hits a dropped collection re-resolves the pointer and runs again.
        """
        now = time.monotonic()
        if self._read_cache is not None and now < self._read_cache[0]:
            return self._read_cache[1]
        t = self._target("search")
        if self.read_cache_ttl > 0:
            self._read_cache = (now + self.read_cache_ttl, t)
        return t

    def _target(self, what: str) -> tuple[str, Any, IndexSpec | None]:
        physical = self.resolve()
        if physical is None or not self._exists(physical):
            raise StoreError(f"{self.url}: collection {self.name!r} does not exist; call ensure_index(spec) first ({what})")
        return physical, self._get_col(physical), self._spec_of(physical)

    def upsert(self, records: Iterable[Record]) -> UpsertResult:
        recs = dedupe_last(records)
        result = UpsertResult()
        if not recs:
            return result
        physical, col, spec = self._target("upsert")
        dims = spec.dims if spec else None
        good: list[tuple[Record, np.ndarray]] = []
        for r in recs:
            vec, err = check_record(r, dims)
            if err:
                result.failed[str(r.id)] = err
            else:
                assert vec is not None
                good.append((r, vec))
        for batch in chunks(good, self.max_batch()):
            self._write(col, list(batch), result)
        return result

    def _write(self, col: Any, batch: list[tuple[Record, np.ndarray]], result: UpsertResult) -> None:
        ids = [r.id for r, _ in batch]
        try:
            metadatas = []
            for r, _ in batch:
                md = encode_scalar_metadata(r.metadata)
                metadatas.append(md or None)
        except (TypeError, ValueError) as e:
            if len(batch) == 1:
                result.failed[ids[0]] = f"metadata is not JSON-serialisable: {e}"
                return
            metadatas = None
        try:
            if metadatas is None:
                raise ValueError("metadata encoding failed")
            self._clear_stale_keys(col, ids, metadatas)
            emb = np.stack([v for _, v in batch])
            docs = [r.text or "" for r, _ in batch]
            self._call(
                lambda: col.upsert(ids=ids, embeddings=emb, documents=docs, metadatas=metadatas), "upsert"
            )
            result.written += len(batch)
        except StoreUnavailableError:
            raise
        except Exception as e:  # noqa: BLE001 - a rejected batch: bisect to find the bad items
            if len(batch) == 1:
                result.failed[ids[0]] = short_error(e, *self._secrets)
                return
            mid = len(batch) // 2
            self._write(col, batch[:mid], result)
            self._write(col, batch[mid:], result)

    def _clear_stale_keys(self, col: Any, ids: list[str], metadatas: list[dict[str, Any] | None]) -> None:
        """Chroma's upsert merges metadata into an existing record; we want replacement.

        Keys the stored record has but the new metadata lacks are set to None, which deletes them.
        """
        got = self._call(lambda: col.get(ids=ids, include=["metadatas"]), "read existing metadata")
        old = {i: md for i, md in zip(got["ids"], got.get("metadatas") or [], strict=False) if md}
        if not old:
            return
        for pos, i in enumerate(ids):
            prev = old.get(i)
            if not prev:
                continue
            new = metadatas[pos] or {}
            stale = {k: None for k in prev if k not in new}
            if stale:
                metadatas[pos] = {**new, **stale}

    def delete(self, ids: Iterable[str]) -> DeleteResult:
        ids = list(dict.fromkeys(str(i) for i in ids))
        res = DeleteResult()
        if not ids:
            return res
        physical = self.resolve()
        if physical is None or not self._exists(physical):
            res.deleted = len(ids)  # nothing to delete in a missing index
            return res
        col = self._get_col(physical)
        for batch in chunks(ids, self.max_batch()):
            try:
                self._call(lambda b=batch: col.delete(ids=list(b)), "delete")
                res.deleted += len(batch)
            except StoreUnavailableError:
                raise
            except Exception as e:  # noqa: BLE001
                for i in batch:
                    res.failed[i] = short_error(e, *self._secrets)
        return res

    def search(
        self, vector: np.ndarray | Sequence[float], k: int = 10, filter: Mapping[str, Any] | None = None
    ) -> list[Hit]:
        conds = parse_filter(filter)
        where = _where(conds)
        vec = np.asarray(vector, dtype=np.float32).reshape(-1)
        last: BaseException | None = None
        for attempt in range(3):
            physical, col, spec = self._read_target() if attempt == 0 else self._target("search")
            if spec is not None and vec.shape[0] != spec.dims:
                raise IndexMismatchError(
                    f"{self.url}: query vector has {vec.shape[0]} dims but the index holds {spec.dims}-d vectors; "
                    "embed the query with the model the index was built with (see describe())"
                )
            try:
                res = self._call(
                    lambda c=col: c.query(
                        query_embeddings=vec.reshape(1, -1),
                        n_results=max(1, int(k)),
                        where=where,
                        include=["documents", "metadatas", "distances"],
                    ),
                    "search",
                )
            except StoreUnavailableError:
                raise
            except Exception as e:  # noqa: BLE001 - maybe the collection was swapped away under us
                last = e
                self._read_cache = None
                self._cols.pop(physical, None)
                if self._physical_fixed or self.resolve() == physical and self._exists(physical):
                    raise self._wrap(e, "search") from None
                continue
            space = self._space_of(col)
            hits = []
            for i, d, doc, md in zip(
                res["ids"][0], res["distances"][0], res["documents"][0], res["metadatas"][0], strict=False
            ):
                hits.append(Hit(id=i, score=_score(space, float(d)), text=doc or "", metadata=decode_scalar_metadata(md)))
            return hits
        raise self._wrap(last or RuntimeError("collection kept changing"), "search")

    def count(self) -> int:
        physical = self.resolve()
        if physical is None or not self._exists(physical):
            return 0
        col = self._get_col(physical)
        return int(self._call(col.count, "count"))

    def iter_ids(self) -> Iterator[str]:
        physical = self.resolve()
        if physical is None or not self._exists(physical):
            return
        col = self._get_col(physical)
        page = max(1, min(self.max_batch(), 5000))
        offset = 0
        while True:
            got = self._call(lambda o=offset: col.get(include=[], limit=page, offset=o), "list ids")
            ids = got["ids"]
            yield from ids
            if len(ids) < page:
                return
            offset += page

    def get(self, ids: Sequence[str]) -> dict[str, Hit]:
        out: dict[str, Hit] = {}
        ids = list(dict.fromkeys(ids))
        physical = self.resolve()
        if not ids or physical is None or not self._exists(physical):
            return out
        col = self._get_col(physical)
        for batch in chunks(ids, self.max_batch()):
            got = self._call(lambda b=batch: col.get(ids=list(b), include=["documents", "metadatas"]), "get")
            for i, doc, md in zip(got["ids"], got["documents"], got["metadatas"], strict=False):
                out[i] = Hit(id=i, score=1.0, text=doc or "", metadata=decode_scalar_metadata(md))
        return out

    def flush(self) -> None:
        """Chroma writes are visible once acknowledged; nothing to do."""

    def _drop_physical(self, physical: str) -> None:
        try:
            self._call(lambda: self.client.delete_collection(physical), "delete collection")
        except StoreUnavailableError:
            raise
        except Exception as e:  # noqa: BLE001
            if not _is_not_found(e):
                raise self._wrap(e, "delete collection") from None
        self._cols.pop(physical, None)
        self._specs.pop(physical, None)

    def drop(self) -> None:
        """Delete the collection behind the name and the name's pointer (no error if absent)."""
        self._read_cache = None
        if self._physical_fixed:
            self._drop_physical(self._physical_fixed)
            return
        target = self._pointer()
        reg = self._registry()
        if reg is not None and target:
            self._call(lambda: reg.delete(ids=[self.name]), "delete alias")
        if target:
            self._drop_physical(target)
        if self._exists(self.name):
            self._drop_physical(self.name)

    # ------------------------------------------------------------------------------ rebuilds
    def begin_rebuild(self, spec: IndexSpec) -> ChromaStore:
        """Create a new versioned collection (the pointer is unchanged) and return a store writing to it."""
        physical = self._new_physical_name()
        new = self._sibling(physical)
        new._create_physical(physical, spec)
        log.info("%s: rebuilding into %s", self.url, physical)
        return new

    def _sibling(self, physical: str) -> ChromaStore:
        new = ChromaStore(
            self.client,
            self.name,
            hnsw=self.hnsw,
            batch_size=self.batch_size,
            retry=self.retry,
            registry=self.registry,
            drop_grace=self.drop_grace,
            read_cache_ttl=self.read_cache_ttl,
            _physical=physical,
        )
        new.url = self.url
        new._secrets = self._secrets
        return new

    def commit_rebuild(self, new: Any) -> None:
        target = self._rebuild_target(new)
        old = None if self._physical_fixed else self.resolve()
        self._set_pointer(target)
        log.info("%s: %s now points at %s", self.url, self.name, target)
        if old and old != target:
            if self.drop_grace > 0:
                time.sleep(self.drop_grace)  # let in-flight queries on the old collection finish
            self._drop_physical(old)

    def abort_rebuild(self, new: Any) -> None:
        target = getattr(new, "_physical_fixed", None)
        if target and target != self.resolve():
            self._drop_physical(target)
        if isinstance(new, ChromaStore):
            new._cols.clear()
            new._specs.clear()

    def close(self) -> None:
        self._cols.clear()


def _score(space: str | None, d: float) -> float:
    if space in ("cosine", "ip"):
        return 1.0 - d  # cosine similarity / inner product
    return -float(np.sqrt(max(d, 0.0)))  # l2: Chroma reports squared distance; higher is better


def _where(conds: list[Cond]) -> dict[str, Any] | None:
    if not conds:
        return None
    parts = [{c.field: {c.op: c.value}} for c in conds]
    return parts[0] if len(parts) == 1 else {"$and": parts}


def _describe_client(client: Any, collection: str | None) -> str:
    """A credential-free description of an existing client object, for messages."""
    name = collection or ""
    try:
        s = client.get_settings()
        if getattr(s, "is_persistent", False) and getattr(s, "persist_directory", None):
            return f"chroma://{s.persist_directory}?collection={name}"
        host = getattr(s, "chroma_server_host", None)
        if host:
            port = getattr(s, "chroma_server_http_port", None)
            scheme = "chroma+https" if getattr(s, "chroma_server_ssl_enabled", False) else "chroma+http"
            return f"{scheme}://{host}{':' + str(port) if port else ''}/{name}"
    except Exception:  # noqa: BLE001
        pass
    return f"chroma+client://{name}"

