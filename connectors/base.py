"""The one small protocol every store connector implements, and the types that cross it.

Vectors cross this boundary as ``numpy.float32`` arrays (one row per record), L2-normalised by the
embedding side. A connector knows nothing about models: the embedding configuration arrives as an
opaque ``IndexSpec`` (dims, metric, fingerprint, free-form ``embedding`` dict) that the connector
stores in the index's own metadata and compares on ``ensure_index``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from embedrail.errors import ConfigError, WriteError

__all__ = ["DEFAULT_ALPHA", "DEFAULT_FUSION", "METRICS", "NOT_STORED", "DeleteResult", "Hit", "IndexInfo", "IndexSpec", "Metric", "Record", "UpsertResult", "VectorStore"]

Metric = str  # "cosine" | "dot" | "l2"
NOT_STORED = "not in the store"  # the reason ``update_metadata`` gives for an id the store does not hold
METRICS = ("cosine", "dot", "l2")


@dataclass(slots=True)
class Record:
    """One item to write: a chunk id, its vector, its text and flat-or-nested JSON metadata."""

    id: str
    vector: np.ndarray | Sequence[float]
    text: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IndexSpec:
    """What an index/collection must be: vector size, distance metric and the embedding identity.

    ``fingerprint`` identifies the embedding configuration (model, revision, dims, pooling,
    document instruction); vectors of another fingerprint must never be mixed into the index.
    ``embedding`` is extra, human-readable configuration (e.g. {"model": ..., "dims": ...}) stored
    alongside so that ``describe()`` can tell a CLI which model to load for queries.
    """

    dims: int
    metric: Metric = "cosine"
    fingerprint: str = ""
    embedding: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.dims, int) or self.dims <= 0:
            raise ConfigError(f"IndexSpec.dims must be a positive integer, got {self.dims!r}")
        if self.metric not in METRICS:
            raise ConfigError(f"IndexSpec.metric must be one of {METRICS}, got {self.metric!r}")


@dataclass(slots=True)
class IndexInfo:
    """What ``describe()`` reports about the index/collection a connector points at."""

    name: str  # the name users address (alias / logical name)
    exists: bool
    physical_name: str | None = None  # the concrete versioned index behind an alias, if any
    spec: IndexSpec | None = None  # as recorded in the index's own metadata
    count: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # server version, index options, ...
    #: who keeps the index in step, as recorded in its own metadata by ``set_owner`` (for embedrail: the
    #: sync ledger's id and the key it knows the index by, ``{"ledger": ..., "key": ...}``); None: nobody
    owner: dict[str, str] | None = None
    #: how the index is best searched, as recorded by ``set_search_defaults`` (``embedrail eval --tune
    #: --save``): ``{"hybrid": ..., "alpha": ..., "fusion": ...}``; None: nothing recorded
    search: dict[str, Any] | None = None


@dataclass(slots=True)
class Hit:
    id: str
    score: float  # higher is better, whatever the store's native distance
    text: str
    metadata: dict[str, Any]


@dataclass(slots=True)
class UpsertResult:
    written: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # record id -> reason

    @property
    def ok(self) -> bool:
        return not self.failed

    def merge(self, other: UpsertResult) -> UpsertResult:
        self.written += other.written
        self.failed.update(other.failed)
        return self

    def raise_on_failure(self) -> UpsertResult:
        """Raise ``WriteError`` (carrying ``failed``) if any record was rejected; else return self."""
        if self.failed:
            first = next(iter(self.failed.items()))
            raise WriteError(f"{len(self.failed)} of {len(self.failed) + self.written} records were rejected "
                             f"(first: {first[0]}: {first[1]})", self.failed)  # fmt: skip
        return self


@dataclass(slots=True)
class DeleteResult:
    deleted: int = 0  # ids acknowledged as gone (deleting an absent id counts as done)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def raise_on_failure(self) -> DeleteResult:
        """Raise ``WriteError`` (carrying ``failed``) if any delete was rejected; else return self."""
        if self.failed:
            first = next(iter(self.failed.items()))
            raise WriteError(f"{len(self.failed)} deletes were rejected (first: {first[0]}: {first[1]})", self.failed)
        return self


#: hybrid search's defaults: the weight of the vector side and the fusion, chosen by measurement on three
#: corpora and four stores so that hybrid search is not below kNN on any of them (docs/search.md, the figures
#: in docs/benchmarks.md#hybrid-search-defaults)
DEFAULT_ALPHA = 0.5
DEFAULT_FUSION = "guarded"


@runtime_checkable
class VectorStore(Protocol):
    """The connector contract. All methods raise ``StoreError`` subclasses on failure. Connectors are
    context managers: ``close()`` (or leaving the ``with`` block) releases the client they opened.

    - ``url`` is safe to log: it never contains credentials.
    - ``max_dims()`` is the largest vector dimension the server accepts (None: no limit).
    - ``ensure_index(spec)`` creates the index, or verifies the existing one matches ``spec``
      (dims, metric, fingerprint); a mismatch raises ``IndexMismatchError`` and writes nothing.
    - ``upsert`` is idempotent per id (re-upserting an id replaces it, never duplicates it) and
      reports per-id failures instead of raising for them; the good items are written.
    - ``update_metadata(items)`` replaces the metadata of records the store holds (``(id, metadata)``
      pairs), keeping their vector and text: nothing is embedded. An id the store does not hold fails
      with ``NOT_STORED`` in ``failed``; like ``upsert`` it reports per-id failures instead of raising.
    - ``flush()`` makes writes so far visible to search (ES refresh); call once per write session.
    - Optional, outside the protocol: ``stored_vectors(ids)`` (every store of this package has it) returns the
      stored float32 vectors with their records' metadata; a sync takes vectors from it for texts the index
      already holds under other ids. A store without it has those texts embedded again.
    - ``set_owner({"ledger": ID, "key": KEY})`` records in the index's own metadata (next to its spec) who
      keeps it in step; ``describe().owner`` reads it back. A rebuild's store records it on the rebuild.
    - Rebuilds: ``begin_rebuild(spec)`` creates a new versioned physical index and returns a
      connector writing to it; ``open_rebuild(physical)`` returns such a connector for a rebuild begun
      elsewhere (another process) by the physical name ``describe()`` reported for it;
      ``commit_rebuild(new)`` atomically points the user-facing name at it and drops the old physical
      index; ``abort_rebuild(new)`` drops the half-built one.
    """

    url: str
    name: str

    def max_dims(self) -> int | None: ...

    def ensure_index(self, spec: IndexSpec) -> IndexInfo: ...

    def describe(self) -> IndexInfo: ...

    def upsert(self, records: Iterable[Record]) -> UpsertResult: ...

    def update_metadata(self, items: Iterable[tuple[str, Mapping[str, Any]]]) -> UpsertResult: ...

    def delete(self, ids: Iterable[str]) -> DeleteResult: ...

    def search(
        self, vector: np.ndarray | Sequence[float], k: int = 10, filter: Mapping[str, Any] | None = None
    ) -> list[Hit]: ...

    #: whether ``hybrid_search`` is supported (else it raises ``UnsupportedError``)
    supports_hybrid: bool

    def hybrid_search(
        self, query: str, vector: np.ndarray | Sequence[float], k: int = 10, filter: Mapping[str, Any] | None = None, *,
        alpha: float = DEFAULT_ALPHA, candidates: int | None = None, fusion: str = DEFAULT_FUSION,
    ) -> list[Hit]: ...

    def count(self) -> int: ...

    def iter_ids(self) -> Iterator[str]: ...

    def get(self, ids: Sequence[str]) -> dict[str, Hit]: ...

    def flush(self) -> None: ...

    def set_owner(self, owner: Mapping[str, str]) -> None: ...

    def drop(self) -> None: ...

    def begin_rebuild(self, spec: IndexSpec) -> VectorStore: ...

    def open_rebuild(self, physical: str) -> VectorStore: ...

    def commit_rebuild(self, new: VectorStore) -> None: ...

    def abort_rebuild(self, new: VectorStore) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> VectorStore: ...

    def __exit__(self, *exc: object) -> None: ...
