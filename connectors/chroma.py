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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from embedrail.connectors._filters import Cond, parse_filter
from embedrail.connectors._records import (
    META_KEYS,
    OWNER_KEY,
    SEARCH_KEY,
    batched,
    check_spec,
    decode_scalar_metadata,
    encode_scalar_metadata,
    owner_from,
    search_from,
    spec_from_dict,
    spec_to_dict,
)
from embedrail.connectors._retry import BASE_ERRORS
from embedrail.connectors._store import BaseStore, Batch, ReadTarget
from embedrail.connectors._urls import StoreURL
from embedrail.connectors.base import NOT_STORED, Hit, IndexInfo, IndexSpec, Record, UpsertResult
from embedrail.errors import ConfigError, IndexMismatchError, StoreUnavailableError

__all__ = ["ChromaStore", "close_client"]

SPEC_META_KEY = "embedrail:spec"
REGISTRY = "embedrail_aliases"
_SPACES = {"cosine": "cosine", "dot": "ip", "l2": "l2"}
_METRIC_OF_SPACE = {v: k for k, v in _SPACES.items()}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]$")
_CLIENT_LOCK = threading.Lock()
DEFAULT_HNSW = {"ef_construction": 100, "ef_search": 100, "max_neighbors": 16}


def close_client(client: Any) -> None:
    """Close a chromadb client: ``client.close()`` releases chromadb's shared systems (refcounted per path /
    server, one for the client and one for its internal admin client); the HTTP session of a system that
    stopped is closed too (chromadb leaves it open). For a client of your own, when you are done with it."""
    parts = [c for c in (client, getattr(client, "_admin_client", None)) if c is not None]
    sessions = [(c, getattr(getattr(c, "_server", None), "_session", None)) for c in parts]
    client.close()
    try:
        from chromadb.api.shared_system_client import SharedSystemClient

        for c, session in sessions:
            if session is not None and c._identifier not in SharedSystemClient._identifier_to_system:  # noqa: SLF001
                session.close()
    except Exception:  # noqa: BLE001 - another chromadb layout: leave the sessions to the GC
        pass


class ChromaStore(BaseStore):
    """A Chroma collection behind the ``VectorStore`` protocol.

    ``ChromaStore(client, collection="docs")`` with an existing ``chromadb`` client, or
    ``ChromaStore("chroma:///abs/path?collection=docs")`` / ``ChromaStore("chroma+http://host:8000/docs")``.
    """

    STORE = "chroma"
    NAME_HINT = "chroma:///abs/path?collection=NAME, chroma+http://host:8000/NAME or collection=..."
    ERRORS = BASE_ERRORS.extend(
        # chromadb's errors carry an HTTP status (code()): RateLimitError 429 is transient, 4xx rejected, 500 failed;
        # the HTTP client's "Could not connect" ValueError wraps httpx's ConnectError, which is transient
        status=("chromadb.errors.ChromaError",),
        # chromadb validates arguments (ids, embeddings, metadata values) with ValueError
        rejected=("builtins.ValueError",),
    )

    def __init__(
        self,
        client_or_url: Any,
        collection: str | None = None,
        *,
        hnsw: Mapping[str, Any] | None = None,
        batch_size: int | None = None,
        registry: str = REGISTRY,
        **base: Any,
    ) -> None:
        super().__init__(client_or_url, collection, **base)
        self.hnsw = {**DEFAULT_HNSW, **dict(hnsw or {})}
        self.batch_size = batch_size
        self.registry = registry

    # ------------------------------------------------------------------------------ names, client
    def _name_from_url(self, u: StoreURL) -> str | None:
        return u.param("collection") or (u.name if u.transport != "file" else None)

    def _url_with_name(self, u: StoreURL, name: str) -> str:
        if u.transport == "file":
            return replace(u, params={**u.params, "collection": name}).safe
        return super()._url_with_name(u, name)

    def _check_name(self, name: str) -> str:
        if not _NAME_RE.match(name) or ".." in name:
            raise ConfigError(f"invalid Chroma collection name {name!r}: 3-512 characters [A-Za-z0-9._-], "
                              "starting and ending with a letter or digit")  # fmt: skip
        return name

    @staticmethod
    def _describe_client(client: Any, name: str | None) -> str:
        name = name or ""
        try:
            s = client.get_settings()
            if getattr(s, "is_persistent", False) and getattr(s, "persist_directory", None):
                return f"chroma://{s.persist_directory}?collection={name}"
            host = getattr(s, "chroma_server_host", None)
            if host:
                port = getattr(s, "chroma_server_http_port", None)
                scheme = "chroma+https" if getattr(s, "chroma_server_ssl_enabled", False) else "chroma+http"
                return f"{scheme}://{host}{':' + str(port) if port else ''}/{name}"
        except Exception:  # noqa: BLE001 - best effort, for messages only
            pass
        return f"chroma+client://{name}"

    @staticmethod
    def _embedded_client(client: Any) -> bool:
        try:
            s = client.get_settings()
        except Exception:  # noqa: BLE001 - not a chromadb client we know: assume a server
            return False
        return bool(getattr(s, "is_persistent", False)) and not getattr(s, "chroma_server_host", None)

    def _reset_caches(self) -> None:
        super()._reset_caches()
        self._cols: dict[str, Any] = {}
        self._specs: dict[str, IndexSpec] = {}
        self._max_batch: int | None = None

    def _make_client(self) -> Any:
        try:
            import chromadb
            from chromadb.config import Settings
        except ImportError as e:  # pragma: no cover - depends on the installed extras
            raise ConfigError("the Chroma connector needs chromadb: pip install 'embedrail[chroma]'") from e
        u: StoreURL = self._u  # type: ignore[assignment]
        settings = Settings(anonymized_telemetry=False)
        tenant, database = u.param("tenant") or "default_tenant", u.param("database") or "default_database"
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
        return chromadb.HttpClient(host=u.host or "localhost", port=u.port or (443 if u.transport == "https" else 8000),
                                   ssl=u.transport == "https", headers=headers or None, settings=settings,
                                   tenant=tenant, database=database)  # fmt: skip

    def _close_client(self, client: Any) -> None:
        close_client(client)

    @staticmethod
    def _is_not_found(e: BaseException) -> bool:
        try:
            from chromadb.errors import NotFoundError

            if isinstance(e, NotFoundError):
                return True
        except ImportError:  # pragma: no cover
            pass
        s = str(e)
        return "does not exist" in s or "not found" in s.lower()

    def max_batch(self) -> int:
        if self._max_batch is None:
            mb = int(self._call(lambda: self.client.get_max_batch_size(), "get_max_batch_size"))
            self._max_batch = max(1, min(mb, self.batch_size or mb))
        return self._max_batch

    _batch_size = max_batch

    # ------------------------------------------------------------------------------ collections and the pointer
    def _get_col(self, physical: str) -> Any:
        col = self._cols.get(physical)
        if col is None:
            col = self._call(lambda: self.client.get_collection(physical, embedding_function=None), "get_collection")
            self._cols[physical] = col
        return col

    _handle = _get_col

    def _exists(self, physical: str) -> bool:
        try:
            self._get_col(physical)
            return True
        except StoreUnavailableError:
            raise
        except Exception as e:
            if not self._store_failure(e):
                raise  # a bug
            if self._is_not_found(e):
                return False
            self._fail(e, "get_collection")

    def _registry(self, create: bool = False) -> Any | None:
        if create:
            col = self._call(lambda: self.client.get_or_create_collection(
                self.registry, configuration={"hnsw": {"space": "l2"}}, metadata={"embedrail:registry": 1},
                embedding_function=None), "create alias registry")  # fmt: skip
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
            if self._is_not_found(e):
                self._cols.pop(self.registry, None)
                return None
            raise
        if got["ids"]:
            target = ((got.get("metadatas") or [None])[0] or {}).get("target")
            return str(target) if target else None
        return None

    def _set_pointer(self, target: str, *, only_if_absent: bool = False) -> str:
        reg = self._registry(create=True)
        rec: dict[str, Any] = {"ids": [self.name], "embeddings": np.ones((1, 1), dtype=np.float32), "documents": [target],
                               "metadatas": [{"target": target, "updated": datetime.now(UTC).isoformat()}]}  # fmt: skip
        if only_if_absent:
            self._call(lambda: reg.add(**rec), "write alias")  # add ignores an existing id: first wins
            return self._pointer() or target
        self._call(lambda: reg.upsert(**rec), "switch alias")
        return target

    def _spec_of(self, physical: str) -> IndexSpec | None:
        if physical not in self._specs:
            raw = (self._get_col(physical).metadata or {}).get(SPEC_META_KEY)
            try:
                spec = spec_from_dict(json.loads(raw)) if raw else None
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
        emb = self._call(lambda: col.get(limit=1, include=["embeddings"]), "peek").get("embeddings")
        if emb is None or len(emb) == 0:
            return None
        return IndexSpec(dims=len(emb[0]), metric=_METRIC_OF_SPACE.get(self._space_of(col) or "l2", "l2"), fingerprint="")

    # ------------------------------------------------------------------------------ creation
    def _create_physical(self, physical: str, spec: IndexSpec) -> None:
        metadata = {SPEC_META_KEY: json.dumps(spec_to_dict(spec), sort_keys=True), "embedrail:logical": self.name,
                    "embedrail:created": datetime.now(UTC).isoformat()}  # fmt: skip
        conf = {"hnsw": {"space": _SPACES[spec.metric], **self.hnsw}}
        self._cols[physical] = self._call(lambda: self.client.create_collection(
            physical, configuration=conf, metadata=metadata, embedding_function=None), "create collection")  # fmt: skip
        self._specs[physical] = spec

    def _create_named(self, spec: IndexSpec) -> str:
        physical = self._new_physical_name()
        self._create_physical(physical, spec)
        winner = self._set_pointer(physical, only_if_absent=True)
        if winner != physical:  # another process created the index concurrently: use theirs
            self._drop_physical(physical)
        return winner

    def _adopt(self, physical: str, spec: IndexSpec) -> None:
        """A collection made by another tool: adopt it if its space and stored vectors fit the spec."""
        col = self._get_col(physical)
        space = self._space_of(col)
        if space and space != _SPACES[spec.metric]:
            raise IndexMismatchError(f"{self.url}: collection {physical!r} uses distance space {space!r}, requested "
                                     f"metric {spec.metric!r} needs {_SPACES[spec.metric]!r}. Nothing was written.")  # fmt: skip
        inferred = self._infer_spec(physical)
        if inferred is not None and inferred.dims != spec.dims:
            check_spec(physical, inferred, spec, self.url)
        md = {k: v for k, v in (col.metadata or {}).items() if not str(k).startswith("hnsw:")}
        md[SPEC_META_KEY] = json.dumps(spec_to_dict(spec), sort_keys=True)
        self._call(lambda: col.modify(metadata=md), "record spec")
        self._specs[physical] = spec

    def _verify(self, physical: str, recorded: IndexSpec) -> None:
        # Chroma fixes dimensionality with the first insert: make sure what is stored agrees
        stored = self._infer_spec(physical)
        if stored is not None and stored.dims != recorded.dims:
            raise IndexMismatchError(f"{self.url}: collection {physical!r} records {recorded.dims} dims but holds "
                                     f"{stored.dims}-d vectors (written by another tool?). Nothing was written; rebuild it.")  # fmt: skip

    def describe(self) -> IndexInfo:
        physical = self._current_physical()
        if physical is None:
            return IndexInfo(name=self.name, exists=False, extra={"store": "chroma"})
        col = self._get_col(physical)
        return IndexInfo(name=self.name, exists=True, physical_name=physical,
                         spec=self._spec_of(physical) or self._infer_spec(physical), count=int(self._call(col.count, "count")),
                         extra={"store": "chroma", "space": self._space_of(col), "url": self.url},
                         owner=owner_from((col.metadata or {}).get(OWNER_KEY)),
                         search=search_from((col.metadata or {}).get(SEARCH_KEY)))  # fmt: skip

    def _set_meta(self, physical: str, key: str, value: Any) -> None:
        col = self._get_col(physical)
        md = {k: v for k, v in (col.metadata or {}).items() if not str(k).startswith("hnsw:")}  # modify replaces the metadata
        if value is None:
            md.pop(META_KEYS[key], None)
        else:
            md[META_KEYS[key]] = json.dumps(value, sort_keys=True)
        self._call(lambda: col.modify(metadata=md), f"record {key}")

    # ------------------------------------------------------------------------------ writing
    def _encode(self, target: ReadTarget, record: Record, vector: np.ndarray) -> Any:
        return vector, record.text or "", encode_scalar_metadata(record.metadata) or None

    def _write_batch(self, target: ReadTarget, batch: Batch) -> dict[str, str]:
        col, ids = target.handle, [i for i, _ in batch]
        metadatas = [md for _, (_, _, md) in batch]
        self._clear_stale_keys(col, ids, metadatas)
        vecs = [v for _, (v, _, _) in batch]
        # one array when the rows agree (the normal case); else the list, for Chroma to refuse the odd one
        emb = np.stack(vecs) if len({v.shape for v in vecs}) == 1 else vecs
        docs = [t for _, (_, t, _) in batch]
        self._call(lambda: col.upsert(ids=ids, embeddings=emb, documents=docs, metadatas=metadatas), "upsert")
        return {}

    def _clear_stale_keys(self, col: Any, ids: list[str], metadatas: list[dict[str, Any] | None]) -> set[str]:
        """Chroma's upsert and update merge metadata into an existing record; we want replacement: keys the
        stored record has but the new metadata lacks are set to None, which deletes them. Returns the ids
        the collection holds."""
        got = self._call(lambda: col.get(ids=ids, include=["metadatas"]), "read existing metadata")
        old = dict(zip(got["ids"], got.get("metadatas") or [None] * len(got["ids"]), strict=False))
        for pos, i in enumerate(ids):
            prev = old.get(i)
            if prev:
                new = metadatas[pos] or {}
                stale = {k: None for k in prev if k not in new}
                if stale:
                    metadatas[pos] = {**new, **stale}
        return set(old)

    def _update_batch(self, target: ReadTarget, part: list[tuple[str, dict[str, Any]]], result: UpsertResult) -> None:
        """Native: ``collection.update`` with metadata only (the vector and the HNSW graph are untouched)."""
        ids, metadatas = [], []
        for i, md in part:
            try:
                metadatas.append(encode_scalar_metadata(md) or {})
                ids.append(i)
            except (TypeError, ValueError) as e:
                result.failed[i] = f"metadata is not JSON-serialisable: {e}"
        held = self._clear_stale_keys(target.handle, ids, metadatas) if ids else set()
        for i in ids:
            if i not in held:
                result.failed[i] = NOT_STORED
        pairs = [(i, md) for i, md in zip(ids, metadatas, strict=True) if i in held]
        if pairs:
            self._call(lambda: target.handle.update(ids=[i for i, _ in pairs], metadatas=[m for _, m in pairs]),
                       "update metadata")  # fmt: skip
            result.written += len(pairs)

    def _stored(self, target: ReadTarget, ids: list[str]) -> dict[str, tuple[np.ndarray, str, dict[str, Any]]]:
        got = self._call(lambda: target.handle.get(ids=ids, include=["embeddings", "documents", "metadatas"]), "read vectors")
        rows = zip(got["ids"], got["embeddings"], got["documents"], got["metadatas"], strict=False)
        return {i: (np.asarray(v, dtype=np.float32), doc or "", decode_scalar_metadata(md)) for i, v, doc, md in rows if v is not None}

    def _delete_batch(self, physical: str, ids: list[str]) -> dict[str, str]:
        col = self._get_col(physical)
        self._call(lambda: col.delete(ids=ids), "delete")
        return {}

    # ------------------------------------------------------------------------------ reading
    def search(self, vector: np.ndarray | Sequence[float], k: int = 10, filter: Mapping[str, Any] | None = None) -> list[Hit]:
        where = _where(parse_filter(filter))

        def run(target: ReadTarget) -> list[Hit]:
            vec = self._query_vector(vector, target.spec)
            res = self._call(lambda: target.handle.query(query_embeddings=vec.reshape(1, -1), n_results=max(1, int(k)), where=where,
                                                         include=["documents", "metadatas", "distances"]), "search")  # fmt: skip
            space = self._space_of(target.handle)
            rows = zip(res["ids"][0], res["distances"][0], res["documents"][0], res["metadatas"][0], strict=False)
            return [Hit(id=i, score=_score(space, float(d)), text=doc or "", metadata=decode_scalar_metadata(md))
                    for i, d, doc, md in rows]  # fmt: skip

        return self._on_read_target("search", run)

    def _forget(self, physical: str) -> None:
        self._cols.pop(physical, None)

    def count(self) -> int:
        physical = self._current_physical()
        return 0 if physical is None else int(self._call(self._get_col(physical).count, "count"))

    def iter_ids(self) -> Iterator[str]:
        physical = self._current_physical()
        if physical is None:
            return
        col, page, offset = self._get_col(physical), max(1, min(self.max_batch(), 5000)), 0
        while True:
            ids = self._call(lambda o=offset: col.get(include=[], limit=page, offset=o), "list ids")["ids"]
            yield from ids
            if len(ids) < page:
                return
            offset += page

    def get(self, ids: Sequence[str]) -> dict[str, Hit]:
        out: dict[str, Hit] = {}
        ids = list(dict.fromkeys(ids))
        physical = self._current_physical() if ids else None
        if physical is None:
            return out
        col = self._get_col(physical)
        for batch in batched(ids, self.max_batch()):
            got = self._call(lambda b=batch: col.get(ids=list(b), include=["documents", "metadatas"]), "get")
            for i, doc, md in zip(got["ids"], got["documents"], got["metadatas"], strict=False):
                out[i] = Hit(id=i, score=1.0, text=doc or "", metadata=decode_scalar_metadata(md))
        return out

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
        self._cols.pop(physical, None)
        self._specs.pop(physical, None)

    def _unpoint(self, target: str | None) -> None:
        reg = self._registry()
        if reg is not None and target:
            self._call(lambda: reg.delete(ids=[self.name]), "delete alias")

    def _switch(self, physical: str) -> list[str]:
        old = None if self._physical_fixed else self.resolve()
        self._set_pointer(physical)
        return [old] if old else []


def _score(space: str | None, d: float) -> float:
    if space in ("cosine", "ip"):
        return 1.0 - d  # cosine similarity / inner product
    return -float(np.sqrt(max(d, 0.0)))  # l2: Chroma reports squared distance; higher is better


def _where(conds: list[Cond]) -> dict[str, Any] | None:
    if not conds:
        return None
    parts = [{c.field: {c.op: c.value}} for c in conds]
    return parts[0] if len(parts) == 1 else {"$and": parts}
