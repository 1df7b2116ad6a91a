"""``BaseStore``: what every store connector shares, so each store module holds only store-native code.

A store module subclasses ``BaseStore`` and implements the hooks marked *native* below: building its
client from a URL, resolving the user-facing name to the physical index behind it, reading the
``IndexSpec`` an index records, creating an index, sending one batch of writes or deletes, the atomic
name switch of a rebuild, and search. ``BaseStore`` owns the rest:

- the URL (parsed, credentials kept out of ``url`` and out of every message) or a client the caller
  already has (never closed by us);
- the lazy client and ``close()`` / context-manager support;
- ``_call``: bounded retries of the errors the store's ``ERRORS`` table calls transient, and client errors
  mapped onto ``StoreUnavailableError`` / ``StoreRejectedError`` / ``StoreError`` (``connectors._retry``);
  an exception the table does not know is a bug and reaches the caller as itself;
- the read-target cache (which physical index a search goes to, and its spec) with a TTL;
- the query-dims check;
- ``upsert`` / ``delete``: dedupe, per-record validation, batching, and bisection of a rejected batch so
  the good records are written and the bad ones reported by id;
- ``ensure_index``: create-or-verify against the recorded spec;
- rebuilds: versioned physical names, ``begin_rebuild`` / ``open_rebuild`` (a sibling store bound to the
  rebuild's physical index, sharing the client), ``commit_rebuild`` (native switch, grace, drop of the
  old index), ``abort_rebuild``.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, ClassVar, NoReturn, TypeVar

import numpy as np

from embedrail.connectors._fusion import FUSIONS
from embedrail.connectors._records import batched, check_query, check_record, check_spec, dedupe_last
from embedrail.connectors._retry import (
    BASE_ERRORS,
    ErrorKind,
    ErrorTable,
    RetryPolicy,
    as_store_error,
    classify,
    retry_call,
)
from embedrail.connectors._urls import StoreURL, is_embedded, parse_url
from embedrail.connectors.base import (
    DEFAULT_ALPHA,
    DEFAULT_FUSION,
    NOT_STORED,
    DeleteResult,
    Hit,
    IndexInfo,
    IndexSpec,
    Record,
    UpsertResult,
)
from embedrail.errors import (
    ConfigError,
    IndexMismatchError,
    StoreError,
    StoreUnavailableError,
    UnsupportedError,
)
from embedrail.secrets import short_error

__all__ = ["BaseStore", "ReadTarget"]

log = logging.getLogger("connectors")

#: (id, store-native payload) pairs: one batch of writes or deletes
Batch = list[tuple[str, Any]]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ReadTarget:
    """The physical index requests go to now, its recorded spec, and a store-native handle (if any)."""

    physical: str
    spec: IndexSpec | None
    handle: Any = None


def version_suffix() -> str:
    """A sortable, unique-enough physical-index version suffix (UTC timestamp + random)."""
    now = datetime.now(UTC)
    return f"v{now:%Y%m%d%H%M%S}{now.microsecond // 1000:03d}{random.randrange(16**3):03x}"


class BaseStore:
    """Base class of the store connectors (see the module docstring)."""

    #: the registry name of the store; a URL given to the constructor must be of this store
    STORE: ClassVar[str] = ""
    #: how a user names the index in a URL, for the "no name" error
    NAME_HINT: ClassVar[str] = "…/NAME"
    #: which errors of the store's client library are transient, rejections or server failures
    ERRORS: ClassVar[ErrorTable] = BASE_ERRORS

    url: str
    name: str

    def __init__(
        self,
        client_or_url: Any,
        name: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        read_cache_ttl: float = 2.0,
        drop_grace: float = 0.5,
        _physical: str | None = None,
    ) -> None:
        self._u: StoreURL | None = None
        self._client: Any = None
        self._owns_client = False
        self._secrets: list[str | None] = []
        if isinstance(client_or_url, str):
            u = parse_url(client_or_url)
            if u.store != self.STORE:
                raise ConfigError(f"{type(self).__name__} needs a {self.STORE}:// URL, got {u.safe}")
            self._u, self._owns_client, self._secrets = u, True, list(u.secrets)
            given = name
            name = name or self._name_from_url(u)
            self.url = u.safe if not given or given == self._name_from_url(u) else self._url_with_name(u, given)
        else:
            self._client = client_or_url
            self.url = self._describe_client(client_or_url, name)
        if not name:
            raise ConfigError(f"{self.url}: no index name; use {self.NAME_HINT} or name it explicitly")
        self.name = self._check_name(name)
        self.retry = retry or RetryPolicy()
        self.read_cache_ttl = read_cache_ttl
        self.drop_grace = drop_grace
        self._physical_fixed = _physical  # set on the store that writes a rebuild's physical index
        self._reset_caches()

    @property
    def embedded(self) -> bool:
        """Whether the store runs inside this process on local files (embedded Chroma, Qdrant local mode):
        one process at a time may write it. A store given a client object says so itself (``_embedded_client``)."""
        return is_embedded(self._u) if self._u is not None else self._embedded_client(self._client)

    @staticmethod
    def _embedded_client(client: Any) -> bool:  # native (stores with an in-process mode)
        return False

    # ------------------------------------------------------------------------- URL and name (native)
    def _name_from_url(self, u: StoreURL) -> str | None:
        return u.name

    def _url_with_name(self, u: StoreURL, name: str) -> str:
        """The safe URL naming ``name`` (when the name was given apart from the URL)."""
        return replace(u, path="/" + name).safe

    def _check_name(self, name: str) -> str:
        """Validate (or normalise) the index name."""
        return name

    @staticmethod
    def _describe_client(client: Any, name: str | None) -> str:
        """A credential-free URL describing a client the caller passed in (for messages and ledger keys)."""
        return f"client://{name or ''}"

    # --------------------------------------------------------------------------- client and calls
    @property
    def client(self) -> Any:
        """The store's client, created on first use (for a URL-constructed store)."""
        if self._client is None:
            self._client = self._call(self._make_client, "connect")
        return self._client

    def _make_client(self) -> Any:  # native
        raise NotImplementedError

    def _close_client(self, client: Any) -> None:  # native (default: the client's own close())
        closer = getattr(client, "close", None)
        if callable(closer):
            closer()

    def _classify(self, e: BaseException) -> ErrorKind:
        """What a client library's exception is (``ERRORS``; a store may refine it, e.g. by SQLSTATE)."""
        return classify(e, self.ERRORS)

    @staticmethod
    def _is_not_found(e: BaseException) -> bool:  # native: "no such index" (handled by callers)
        return False

    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        """``fn()``, its transient failures retried (``ERRORS``); the others become ``StoreRejectedError`` /
        ``StoreError`` (credentials scrubbed, the client's exception as the cause), except "not found", which
        is raised as is for the caller to handle, and a bug, which stays itself."""
        return retry_call(fn, classify=self._classify, policy=self.retry, what=what, url=self.url,
                          secrets=self._secrets, passthrough=self._is_not_found)  # fmt: skip

    def _error(self, e: BaseException, what: str) -> BaseException:
        """``e`` as our error, named after the store and the operation (an error of ours is kept as is:
        ``_call`` already named it; a bug stays itself). Raise it ``from e``."""
        if isinstance(e, StoreError):
            return e
        return as_store_error(e, self._classify(e), f"{self.url}: {what} failed: {short_error(e, *self._secrets)}")

    def _fail(self, e: BaseException, what: str) -> NoReturn:
        """Raise ``e`` as our error (``_error``), the client's exception kept as its cause."""
        err = self._error(e, what)
        if err is e:
            raise e
        raise err from e

    def _store_failure(self, e: BaseException) -> bool:
        """Whether ``e`` (caught around ``_call``) is the store's answer: our error, or "not found" (which
        ``_call`` passes through); anything else is a bug, to be raised as it is."""
        return isinstance(e, StoreError) or self._is_not_found(e)

    def close(self) -> None:
        """Release what this store opened (its client, if it made one). A client passed in by the
        caller stays open: its owner closes it."""
        self._reset_caches()
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            self._close_client(client)

    def __enter__(self) -> BaseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------- caches and targets
    def _reset_caches(self) -> None:
        """Forget what was learnt about indices (native stores extend this with their own caches)."""
        self._read_cache: tuple[float, ReadTarget] | None = None

    @property
    def _address(self) -> str:
        """The name requests are addressed to: the user-facing name (an alias the server resolves
        atomically), or the physical index of a rebuild this store writes."""
        return self._physical_fixed or self.name

    def _current_physical(self) -> str | None:  # native, or this default for stores that keep their own pointer
        """The physical index behind the name now (the rebuild's own, if this store writes one);
        None: no index exists."""
        physical = self.resolve()
        return physical if physical is not None and self._exists(physical) else None

    # Stores without server-side aliases (Chroma, pgvector) keep a name -> physical pointer themselves;
    # Qdrant reads its aliases the same way. They implement _pointer and _exists; ES/Weaviate override
    # _current_physical instead.
    def _pointer(self) -> str | None:  # native (pointer stores)
        """The physical index the name's pointer (or alias) names, None if there is none."""
        return None

    def _exists(self, physical: str) -> bool:  # native (pointer stores)
        raise NotImplementedError

    def _unpoint(self, target: str | None) -> None:  # native (pointer stores)
        """Remove the name's pointer (alias, registry row, view); ``target``: what it pointed at, if anything."""
        raise NotImplementedError

    def drop(self) -> None:
        """Drop the index behind the name, the name's pointer, and an index that has the plain name (no error
        if absent). A rebuild's store drops only its own physical index. ES and Weaviate override this."""
        self._invalidate()
        if self._physical_fixed:
            self._drop_physical(self._physical_fixed)
            return
        target = self._pointer()
        self._unpoint(target)
        if target:
            self._drop_physical(target)
        if self._exists(self.name):
            self._drop_physical(self.name)

    def resolve(self) -> str | None:
        """The physical index the name points at (None: no such index): the rebuild's own, the pointer's
        target, or an index that simply has the name (one made before embedrail, used as is)."""
        if self._physical_fixed:
            return self._physical_fixed
        return self._pointer() or (self.name if self._exists(self.name) else None)

    def _spec_of(self, physical: str) -> IndexSpec | None:  # native
        raise NotImplementedError

    def _handle(self, physical: str) -> Any:  # native (optional): e.g. a collection object
        return None

    def _require(self, what: str) -> ReadTarget:
        physical = self._current_physical()
        if physical is None:
            raise StoreError(f"{self.url}: index {self.name!r} does not exist; call ensure_index(spec) first ({what})")
        return ReadTarget(physical, self._spec_of(physical), self._handle(physical))

    def _read_target(self) -> ReadTarget:
        """The search target, cached for ``read_cache_ttl`` seconds (saves resolving the name per query).

        Safe across a rebuild: the old index stays complete until it is dropped, and a query that fails
        on a dropped index re-resolves (``_invalidate``) and runs again.
        """
        now = time.monotonic()
        if self._read_cache is not None and now < self._read_cache[0]:
            return self._read_cache[1]
        target = self._require("search")
        if self.read_cache_ttl > 0:
            self._read_cache = (now + self.read_cache_ttl, target)
        return target

    def _invalidate(self) -> None:
        self._read_cache = None

    def _forget(self, physical: str) -> None:
        """Drop what is cached about ``physical`` (a store with per-index handles extends this)."""

    def _on_read_target(self, what: str, fn: Callable[[ReadTarget], T]) -> T:
        """``fn(target)`` on the read target. A read that fails because a rebuild swapped the name to
        another index and dropped the old one meanwhile is run again on the new target (up to 3 tries);
        any other failure is raised as this store's error."""
        last: BaseException | None = None
        for attempt in range(3):
            target = self._read_target() if attempt == 0 else self._require(what)
            try:
                return fn(target)
            except (StoreUnavailableError, ConfigError, IndexMismatchError):
                raise
            except Exception as e:  # maybe the index was swapped away under us
                if not self._store_failure(e):
                    raise  # a bug
                last = e
                self._invalidate()
                self._forget(target.physical)
                if self._physical_fixed or (self.resolve() == target.physical and self._exists(target.physical)):
                    self._fail(e, what)
        if last is not None:
            self._fail(last, what)
        raise StoreError(f"{self.url}: {what} failed: the index kept changing")

    def _query_vector(self, vector: Any, spec: IndexSpec | None) -> np.ndarray:
        return check_query(self.url, vector, spec)

    def max_dims(self) -> int | None:
        return None

    # ---------------------------------------------------------------------------------- creation
    def ensure_index(self, spec: IndexSpec) -> IndexInfo:
        """Create the index, or verify that the existing one records ``spec`` (nothing is written on a
        mismatch)."""
        self._invalidate()
        physical = self._current_physical()
        if physical is None:
            if self._physical_fixed:
                self._create_physical(self._physical_fixed, spec)
                return self.describe()
            physical = self._create_named(spec)
        recorded = self._spec_of(physical)
        if recorded is None:
            self._adopt(physical, spec)
        else:
            check_spec(physical, recorded, spec, self.url)
            self._verify(physical, recorded)
        return self.describe()

    def _create_physical(self, physical: str, spec: IndexSpec) -> None:  # native
        raise NotImplementedError

    def _create_named(self, spec: IndexSpec) -> str:  # native
        """Create a versioned physical index and point the name at it atomically; when a concurrent
        caller won the race, drop ours and return theirs."""
        raise NotImplementedError

    def _adopt(self, physical: str, spec: IndexSpec) -> None:
        """An index embedrail did not create sits under the name: refuse (stores may adopt instead)."""
        raise IndexMismatchError(
            f"{self.url}: index {physical!r} was not created by embedrail (no embedrail spec in its metadata); "
            "nothing was written. Use another index name or rebuild into a new index."
        )

    def _verify(self, physical: str, recorded: IndexSpec) -> None:
        """Store-specific checks of an existing index beyond its recorded spec (optional)."""

    def describe(self) -> IndexInfo:  # native
        raise NotImplementedError

    # ------------------------------------------------------------------------------------ writing
    def upsert(self, records: Iterable[Record]) -> UpsertResult:
        """Write records (idempotent per id; the last record per id wins). Bad records are reported in
        ``failed`` by id; the good ones are written."""
        result = UpsertResult()
        recs = dedupe_last(records)
        if not recs:
            return result
        target = self._write_target()
        dims = target.spec.dims if target.spec else None
        items: list[tuple[Record, np.ndarray]] = []
        for r in recs:
            vec, err = check_record(r, dims)
            if err:
                result.failed[str(r.id)] = err
            else:
                assert vec is not None
                items.append((r, vec))
        if items:
            self._write(target, items, result)
        return result

    def _write_target(self) -> ReadTarget:
        return self._require("upsert")

    def _write(self, target: ReadTarget, items: list[tuple[Record, np.ndarray]], result: UpsertResult) -> None:
        """Encode each record (a record that cannot be encoded fails alone), then send batches."""
        batch: Batch = []
        for r, encoded in zip((r for r, _ in items), self._encode_all(target, items), strict=True):
            if isinstance(encoded, _Unencodable):
                result.failed[r.id] = f"metadata is not JSON-serialisable: {encoded.error}"
            else:
                batch.append((r.id, encoded))
        for part in batched(batch, self._batch_size()):
            self._send(list(part), lambda b: self._write_batch(target, b), result)

    def _encode_all(self, target: ReadTarget, items: list[tuple[Record, np.ndarray]]) -> list[Any]:
        """Each record as the store's client takes it (``_encode``), or ``_Unencodable`` for one that cannot be
        (a store that encodes a batch at once, e.g. sparse vectors from a model, overrides this)."""
        out: list[Any] = []
        for r, vec in items:
            try:
                out.append(self._encode(target, r, vec))
            except (TypeError, ValueError) as e:
                out.append(_Unencodable(e))
        return out

    def _encode(self, target: ReadTarget, record: Record, vector: np.ndarray) -> Any:  # native
        raise NotImplementedError

    def _write_batch(self, target: ReadTarget, batch: Batch) -> dict[str, str]:  # native
        """Send one batch; return the ids the store rejected one by one (with the reason)."""
        raise NotImplementedError

    def _batch_size(self) -> int:
        return 1000

    def _splittable(self, e: StoreError) -> bool:
        """Whether a batch the store refused as a whole is bisected to find the bad records."""
        return True

    def _send(self, batch: Batch, send: Callable[[Batch], dict[str, str]], result: UpsertResult | DeleteResult,
              split: bool = True) -> None:  # fmt: skip
        """Send a batch; per-id failures go to ``result``. A batch refused as a whole is bisected (when
        ``split`` and the store says the error allows it), so one bad record fails alone. A store that is
        down, and a bug, are raised."""
        try:
            failed = send(batch)
        except StoreUnavailableError:
            raise
        except StoreError as e:  # refused as a whole
            if split and len(batch) > 1 and self._splittable(e):
                mid = len(batch) // 2
                self._send(batch[:mid], send, result, split)
                self._send(batch[mid:], send, result, split)
                return
            failed = {i: short_error(e, *self._secrets) for i, _ in batch}
        ok = sum(1 for i, _ in batch if i not in failed)
        if isinstance(result, UpsertResult):
            result.written += ok
        else:
            result.deleted += ok
        for i, _ in batch:
            if i in failed:
                result.failed[i] = failed[i]
            else:
                result.failed.pop(i, None)

    def update_metadata(self, items: Iterable[tuple[str, Mapping[str, Any]]]) -> UpsertResult:
        """Replace the metadata of stored records, keeping their vectors and text (the last item per id
        wins; an id the store does not hold fails with ``NOT_STORED``), in batches (``_update_batch``)."""
        result = UpsertResult()
        latest = {str(i): dict(md or {}) for i, md in items}
        if not latest:
            return result
        target = self._write_target()
        for part in batched(list(latest.items()), self._batch_size()):
            self._update_batch(target, list(part), result)
        return result

    def _update_batch(self, target: ReadTarget, part: list[tuple[str, dict[str, Any]]], result: UpsertResult) -> None:
        """One batch of ``update_metadata``. This default reads the stored vectors and texts back (native
        ``_stored``) and writes the records again whole: one read and one write, no model; exact (the
        vector is the stored float32), and the metadata is replaced, not merged. A store with a native
        metadata-only update (Chroma) overrides it."""
        stored = self._stored(target, [i for i, _ in part])
        records = []
        for i, md in part:
            if i in stored:
                vector, text, _ = stored[i]
                records.append(Record(i, vector, text, md))
            else:
                result.failed[i] = NOT_STORED
        if records:
            result.merge(self.upsert(records))

    def _stored(self, target: ReadTarget, ids: list[str]) -> dict[str, tuple[np.ndarray, str, dict[str, Any]]]:  # native
        """The stored vector, text and metadata of each of ``ids`` the index holds (as ``get`` decodes the
        metadata), every write acknowledged so far included."""
        raise NotImplementedError

    def _vectors_as_written(self, target: ReadTarget, ids: list[str]) -> dict[str, tuple[np.ndarray, str, dict[str, Any]]]:
        """``_stored``, where a store can skip making the latest writes visible first (Elasticsearch's refresh)."""
        return self._stored(target, ids)

    def _lossless(self, target: ReadTarget) -> bool:
        """Whether a vector read back is the float32 vector written (not a lower-precision copy)."""
        return True

    def stored_vectors(self, ids: Sequence[str]) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
        """The vectors of the records among ``ids`` the index holds, as written (float32), each with its own
        record's metadata (``_fp`` included, read with the vector): what a run takes instead of embedding a
        text again. A record written in the last moments may be missing (nothing is refreshed for this read).
        Empty where the index keeps vectors at a lower precision (pgvector ``halfvec``), or holds none yet."""
        unique = list(dict.fromkeys(str(i) for i in ids))
        physical = self._current_physical() if unique else None
        if physical is None:
            return {}
        target = ReadTarget(physical, self._spec_of(physical), self._handle(physical))
        if not self._lossless(target):
            return {}
        out: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
        for part in batched(unique, self._batch_size()):
            out.update((i, (vec, md)) for i, (vec, _, md) in self._vectors_as_written(target, list(part)).items())
        return out

    def delete(self, ids: Iterable[str]) -> DeleteResult:
        """Delete by id; deleting an id that is not there counts as done."""
        res = DeleteResult()
        unique = list(dict.fromkeys(str(i) for i in ids))
        if not unique:
            return res
        physical = self._current_physical()
        if physical is None:  # nothing to delete in a missing index
            res.deleted = len(unique)
            return res
        for part in batched(unique, self._batch_size()):
            self._send([(i, None) for i in part], lambda b: self._delete_batch(physical, [i for i, _ in b]), res,
                       split=False)  # fmt: skip
        return res

    def _delete_batch(self, physical: str, ids: list[str]) -> dict[str, str]:  # native
        raise NotImplementedError

    def flush(self) -> None:
        """Make the writes so far visible to search (a no-op where acknowledged writes are visible)."""

    def set_owner(self, owner: Mapping[str, str]) -> None:
        """Record in the index's own metadata who keeps it in step (``{"ledger": ..., "key": ...}``, no
        secrets); ``describe().owner`` reads it back. A rebuild's store records it on the rebuild."""
        record = {"ledger": str(owner["ledger"]), "key": str(owner["key"])}
        self._invalidate()
        physical = self._current_physical()
        if physical is None:
            raise StoreError(f"{self.url}: index {self.name!r} does not exist; call ensure_index(spec) first (set owner)")
        self._set_meta(physical, "owner", record)

    def set_search_defaults(self, defaults: Mapping[str, Any] | None) -> None:
        """Record in the index's own metadata how it is best searched (``{"hybrid": True, "alpha": 0.7,
        "fusion": "relative", ...}``, as ``embedrail eval --tune --save`` measured it; None clears them);
        ``describe().search`` reads them back and ``Searcher`` uses them for a query that does not say."""
        self._invalidate()
        physical = self._current_physical()
        if physical is None:
            raise StoreError(f"{self.url}: index {self.name!r} does not exist; call ensure_index(spec) first (set search defaults)")
        self._set_meta(physical, "search", json.loads(json.dumps(dict(defaults))) if defaults else None)

    def _set_meta(self, physical: str, key: str, value: Any) -> None:  # native
        """Set (None: remove) one of embedrail's entries in the index's metadata: ``owner`` or ``search``."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------ hybrid
    #: whether ``hybrid_search`` works on this store (keyword search over ``text`` fused with kNN)
    supports_hybrid: ClassVar[bool] = False

    def hybrid_search(self, query: str, vector: Any, k: int = 10, filter: Mapping[str, Any] | None = None, *,
                      alpha: float = DEFAULT_ALPHA, candidates: int | None = None, fusion: str = DEFAULT_FUSION) -> list[Hit]:  # fmt: skip
        """Keyword (BM25-like) search on the text fused with kNN on ``vector``: ``alpha`` weighs the vector
        side (1.0: kNN only, 0.0: keywords only); ``candidates`` per side (default ``max(50, 5·k)``); the
        filter applies to both sides. ``fusion``: ``relative`` (each side's scores min-max normalised, then
        weighted: Weaviate's default, and the better one on benchmarks/retrieval_quality.py) or ``rrf``
        (weighted reciprocal rank). Scores are the fusion's."""
        raise UnsupportedError(f"{self.url}: {type(self).__name__} has no keyword search to fuse with kNN, so no "
                               "hybrid search; use search() (kNN), or a store that has it (Elasticsearch, OpenSearch, "
                               "Weaviate, pgvector, Qdrant)")  # fmt: skip

    def _hybrid_args(self, query: str, alpha: float, k: int, candidates: int | None, fusion: str = "relative") -> tuple[int, int]:
        if fusion not in FUSIONS:
            raise ConfigError(f"unknown fusion {fusion!r}; use 'relative', 'rrf' or 'guarded'")
        if not isinstance(query, str) or not query.strip():
            raise ConfigError("hybrid search needs a non-empty query text")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ConfigError(f"alpha must be between 0 (keywords only) and 1 (kNN only), got {alpha!r}")
        k = max(1, int(k))
        return k, max(k, int(candidates or max(50, 5 * k)))

    def _fused(self, query: str, vector: Any, k: int, filter: Mapping[str, Any] | None, alpha: float,
               candidates: int | None, fusion: str, keyword: Callable[[str, int, Mapping[str, Any] | None], list[Hit]]) -> list[Hit]:  # fmt: skip
        """Client-side hybrid: kNN and ``keyword`` search, ``candidates`` each, fused (``fusion``)."""
        from embedrail.connectors._fusion import fuse

        k, n = self._hybrid_args(query, alpha, k, candidates, fusion)
        dense = self.search(vector, k=n, filter=filter) if alpha > 0 else []  # type: ignore[attr-defined]
        sparse = keyword(query, n, filter) if alpha < 1 else []
        return fuse(fusion, [dense, sparse], [float(alpha), 1.0 - float(alpha)], k)

    # ----------------------------------------------------------------------------------- rebuilds
    def _new_physical_name(self) -> str:
        """The name of a new versioned physical index behind ``self.name``."""
        return f"{self.name}__{version_suffix()}"

    def _sibling(self, physical: str) -> Any:
        """A store like this one, bound to ``physical`` (sharing the client, which it does not close)."""
        client = self.client
        new = copy.copy(self)
        new._client, new._owns_client, new._physical_fixed = client, False, physical
        new._reset_caches()
        return new

    def _check_rebuilds(self) -> None:
        """Raise when the server cannot switch a name atomically (optional)."""

    def begin_rebuild(self, spec: IndexSpec) -> Any:
        """Create a new versioned physical index (the name still points at the old one) and return a
        store writing to it."""
        self._check_rebuilds()
        physical = self._new_physical_name()
        new = self._sibling(physical)
        new._create_physical(physical, spec)
        log.info("%s: rebuilding into %s", self.url, physical)
        return new

    def open_rebuild(self, physical: str) -> Any:
        """A store writing to a rebuild begun elsewhere (another process, another Airflow task)."""
        if not physical.startswith(f"{self.name}__"):
            raise ConfigError(f"{physical!r} is not a rebuild of {self.name!r} (expected {self.name}__v...)")
        return self._sibling(physical)

    def commit_rebuild(self, new: Any) -> None:
        """Point the name at the rebuilt index atomically, then drop the old index (after ``drop_grace``
        seconds, so searches that resolved the name before the switch can finish)."""
        if not isinstance(new, type(self)) or not new._physical_fixed:
            raise ConfigError("commit_rebuild needs the store returned by begin_rebuild()/open_rebuild()")
        target = new._physical_fixed
        self._finish_physical(target)
        self._invalidate()
        old = self._switch(target)
        log.info("%s: %s now points at %s", self.url, self.name, target)
        old = [p for p in old if p != target]
        if old and self.drop_grace > 0:
            time.sleep(self.drop_grace)
        for p in old:
            self._drop_physical(p)

    def _finish_physical(self, physical: str) -> None:  # native, optional
        """Complete a loaded rebuild before readers are switched to it (pgvector builds its HNSW index
        here); idempotent, since a commit may be retried after a crash."""

    def _switch(self, physical: str) -> Sequence[str]:  # native
        """Point the name at ``physical`` atomically; return the physical indices it pointed at before."""
        raise NotImplementedError

    def abort_rebuild(self, new: Any) -> None:
        """Drop a half-built rebuild (never the index the name points at)."""
        target = getattr(new, "_physical_fixed", None)
        if target and target != self._current_physical():
            self._drop_physical(target)
        if isinstance(new, BaseStore):
            new._reset_caches()

    def _drop_physical(self, physical: str) -> None:  # native; no error if it is already gone
        raise NotImplementedError


@dataclass(frozen=True)
class _Unencodable:
    """A record ``_encode`` refused (its metadata is not JSON): it fails alone."""

    error: Exception
