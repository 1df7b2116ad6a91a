"""The in-memory reference store: the whole ``VectorStore`` protocol in plain Python and numpy, with no
server and no client library.

``memory://SPACE/NAME`` (``memory:///NAME``: the space ``default``). A *space* stands for a server: every
store opened on one space in this process sees the same indexes (so two connectors, the sync engine and
a test, meet there); nothing is persisted and nothing crosses a process boundary (``embedded``: one
process). Use it for fast tests of code built on embedrail, and as the template for a new store: each
native hook of ``BaseStore`` is implemented here in its plainest form.

- Indexes are dicts id -> (vector, text, metadata); the user-facing name is a pointer to a versioned
  physical index (``NAME__v<timestamp>``), so rebuilds switch atomically (one assignment under the
  space's lock).
- Search is exact (brute force): cosine, dot or l2 (scores: similarity, or minus the distance). Filters
  are the portable form (``connectors._filters``); a list value matches when any element does.
- ``text_search`` is BM25 over the texts (k1 = 1.2, b = 0.75, lower-cased word tokens), so hybrid search
  works as on the server stores.
- Metadata makes a JSON round trip on write: what comes back is what a server store gives.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedrail.connectors._filters import Cond, parse_filter
from embedrail.connectors._records import batched
from embedrail.connectors._store import BaseStore, Batch, ReadTarget
from embedrail.connectors._urls import StoreURL
from embedrail.connectors.base import DEFAULT_ALPHA, DEFAULT_FUSION, Hit, IndexInfo, IndexSpec, Record
from embedrail.errors import ConfigError, StoreError

__all__ = ["MemoryStore"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_WORD = re.compile(r"\w+")


@dataclass
class _Index:
    spec: IndexSpec
    rows: dict[str, tuple[np.ndarray, str, dict[str, Any]]] = field(default_factory=dict)
    owner: dict[str, str] | None = None
    search: dict[str, Any] | None = None
    dropped: bool = False  # a reader still holding it is told, as a server answers for a deleted index


@dataclass
class _Space:
    """What a server holds: physical indexes, the names' pointers, and a lock for all of it."""

    indexes: dict[str, _Index] = field(default_factory=dict)
    pointers: dict[str, str] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)


_SPACES: dict[str, _Space] = {}
_SPACES_LOCK = threading.Lock()


class MemoryStore(BaseStore):
    """An index in this process's memory (see the module doc)."""

    STORE = "memory"
    NAME_HINT = "memory://SPACE/NAME or memory:///NAME"
    supports_hybrid = True

    def _check_name(self, name: str) -> str:
        if not _NAME_RE.match(name):
            raise ConfigError(f"invalid memory index name {name!r}: 1-200 characters [A-Za-z0-9._-], starting with a letter or digit")
        return name

    @property
    def embedded(self) -> bool:
        """Always: the indexes live in this process."""
        return True

    # ------------------------------------------------------------------------------ client
    def _make_client(self) -> _Space:
        u: StoreURL = self._u  # type: ignore[assignment]
        with _SPACES_LOCK:
            return _SPACES.setdefault(u.host or "default", _Space())

    def _close_client(self, client: Any) -> None:
        """Nothing to release: the space outlives its stores (as a server does)."""

    def _index(self, physical: str) -> _Index:
        index = self.client.indexes.get(physical)
        if index is None:
            raise ConfigError(f"{self.url}: index {physical!r} does not exist")
        return index

    # ------------------------------------------------------------------------------ names and pointers
    def _exists(self, physical: str) -> bool:
        return physical in self.client.indexes

    def _pointer(self) -> str | None:
        return self.client.pointers.get(self.name)

    def _unpoint(self, target: str | None) -> None:
        self.client.pointers.pop(self.name, None)

    def _spec_of(self, physical: str) -> IndexSpec | None:
        index = self.client.indexes.get(physical)
        return index.spec if index is not None else None

    def _handle(self, physical: str) -> Any:
        return self._index(physical)

    # ------------------------------------------------------------------------------ creation
    def _create_physical(self, physical: str, spec: IndexSpec) -> None:
        with self.client.lock:
            self.client.indexes.setdefault(physical, _Index(spec))

    def _create_named(self, spec: IndexSpec) -> str:
        space = self.client
        with space.lock:  # check-then-act under the space's lock: concurrent callers converge on one index
            existing = space.pointers.get(self.name)
            if existing and existing in space.indexes:
                return existing
            physical = self._new_physical_name()
            space.indexes[physical] = _Index(spec)
            space.pointers[self.name] = physical
            return physical

    def describe(self) -> IndexInfo:
        physical = self._current_physical()
        if physical is None:
            return IndexInfo(name=self.name, exists=False, extra={"store": "memory"})
        index = self._index(physical)
        return IndexInfo(name=self.name, exists=True, physical_name=physical, spec=index.spec, count=len(index.rows),
                         extra={"store": "memory", "url": self.url},
                         owner=dict(index.owner) if index.owner else None, search=index.search)  # fmt: skip

    def _set_meta(self, physical: str, key: str, value: Any) -> None:
        setattr(self._index(physical), key, value)

    # ------------------------------------------------------------------------------ writing
    def _encode(self, target: ReadTarget, record: Record, vector: np.ndarray) -> Any:
        # a JSON round trip, as a server store's: a value JSON cannot hold fails this record alone
        metadata = json.loads(json.dumps(dict(record.metadata or {}), allow_nan=False))
        return vector.astype(np.float32, copy=True), record.text or "", metadata

    def _write_batch(self, target: ReadTarget, batch: Batch) -> dict[str, str]:
        index: _Index = target.handle
        with self.client.lock:
            for i, row in batch:
                index.rows[i] = row
        return {}

    def _stored(self, target: ReadTarget, ids: list[str]) -> dict[str, tuple[np.ndarray, str, dict[str, Any]]]:
        with self.client.lock:
            rows = target.handle.rows
            return {i: (rows[i][0].copy(), rows[i][1], _hit((i, rows[i]), 1.0).metadata) for i in ids if i in rows}

    def _delete_batch(self, physical: str, ids: list[str]) -> dict[str, str]:
        index = self.client.indexes.get(physical)
        if index is not None:
            with self.client.lock:
                for i in ids:
                    index.rows.pop(i, None)
        return {}

    # ------------------------------------------------------------------------------ reading
    def _candidates(self, index: _Index, conds: list[Cond]) -> list[tuple[str, tuple[np.ndarray, str, dict[str, Any]]]]:
        with self.client.lock:
            if index.dropped:  # a rebuild switched the name and dropped this index: the caller resolves the name again
                raise StoreError(f"{self.url}: the index was dropped")
            rows = list(index.rows.items())
        return [(i, r) for i, r in rows if all(_matches(r[2], c) for c in conds)]

    def search(self, vector: np.ndarray | Sequence[float], k: int = 10, filter: Mapping[str, Any] | None = None) -> list[Hit]:
        conds = parse_filter(filter)

        def run(target: ReadTarget) -> list[Hit]:
            q = self._query_vector(vector, target.spec)
            rows = self._candidates(target.handle, conds)
            if not rows:
                return []
            m = np.stack([r[0] for _, r in rows])
            metric = target.spec.metric if target.spec else "cosine"
            if metric == "l2":
                scores = -np.linalg.norm(m - q, axis=1)
            elif metric == "dot":
                scores = m @ q
            else:
                scores = (m @ q) / np.maximum(np.linalg.norm(m, axis=1) * np.linalg.norm(q), 1e-12)
            top = np.argsort(-scores, kind="stable")[: max(1, int(k))]
            return [_hit(rows[j], float(scores[j])) for j in top]

        return self._on_read_target("search", run)

    def hybrid_search(self, query: str, vector: Any, k: int = 10, filter: Mapping[str, Any] | None = None, *,
                      alpha: float = DEFAULT_ALPHA, candidates: int | None = None, fusion: str = DEFAULT_FUSION) -> list[Hit]:  # fmt: skip
        """BM25 on the texts and exact kNN, each ``candidates`` deep, fused as the other stores fuse."""
        return self._fused(query, vector, k, filter, alpha, candidates, fusion, self.text_search)

    def text_search(self, query: str, k: int = 10, filter: Mapping[str, Any] | None = None) -> list[Hit]:
        """BM25 over the texts of the records that pass the filter (score: the BM25 score)."""
        conds = parse_filter(filter)
        terms = _WORD.findall(query.lower())

        def run(target: ReadTarget) -> list[Hit]:
            rows = self._candidates(target.handle, conds)
            docs = [Counter(_WORD.findall(r[1].lower())) for _, r in rows]
            if not rows or not terms:
                return []
            avg = sum(sum(d.values()) for d in docs) / len(docs) or 1.0
            scores = np.zeros(len(rows))
            for t in set(terms):
                df = sum(1 for d in docs if t in d)
                if not df:
                    continue
                idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
                for j, d in enumerate(docs):
                    tf = d.get(t, 0)
                    if tf:
                        length = sum(d.values())
                        scores[j] += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * length / avg))
            top = [j for j in np.argsort(-scores, kind="stable")[: max(1, int(k))] if scores[j] > 0]
            return [_hit(rows[j], float(scores[j])) for j in top]

        return self._on_read_target("text search", run)

    def count(self) -> int:
        physical = self._current_physical()
        return 0 if physical is None else len(self._index(physical).rows)

    def iter_ids(self) -> Iterator[str]:
        physical = self._current_physical()
        if physical is None:
            return
        with self.client.lock:
            ids = sorted(self._index(physical).rows)
        yield from ids

    def get(self, ids: Sequence[str]) -> dict[str, Hit]:
        physical = self._current_physical() if ids else None
        if physical is None:
            return {}
        rows = self._index(physical).rows
        out: dict[str, Hit] = {}
        for part in batched(list(dict.fromkeys(ids)), 1000):
            for i in part:
                if i in rows:
                    out[i] = _hit((i, rows[i]), 1.0)
        return out

    # ------------------------------------------------------------------------------ lifecycle
    def _drop_physical(self, physical: str) -> None:
        with self.client.lock:
            index = self.client.indexes.pop(physical, None)
            if index is not None:
                index.dropped = True

    def _switch(self, physical: str) -> list[str]:
        with self.client.lock:
            old = self.client.pointers.get(self.name)
            self.client.pointers[self.name] = physical
        return [old] if old else []


def _hit(row: tuple[str, tuple[np.ndarray, str, dict[str, Any]]], score: float) -> Hit:
    i, (_, text, metadata) = row
    return Hit(id=i, score=score, text=text, metadata=json.loads(json.dumps(metadata)))


def _matches(metadata: Mapping[str, Any], c: Cond) -> bool:
    """One portable condition on a record's metadata; a list value matches when any element does (and
    ``$ne`` / ``$nin`` when none does), as a keyword field holding several values does on a server."""
    if c.field not in metadata:
        return c.op in ("$ne", "$nin")
    raw = metadata[c.field]
    values = raw if isinstance(raw, list) else [raw]

    def same(a: Any, b: Any) -> bool:
        return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b

    if c.op == "$eq":
        return any(same(v, c.value) for v in values)
    if c.op == "$ne":
        return not any(same(v, c.value) for v in values)
    if c.op == "$in":
        return any(same(v, x) for v in values for x in c.value)
    if c.op == "$nin":
        return not any(same(v, x) for v in values for x in c.value)
    nums = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    test = {"$gt": lambda v: v > c.value, "$gte": lambda v: v >= c.value, "$lt": lambda v: v < c.value,
            "$lte": lambda v: v <= c.value}[c.op]  # fmt: skip
    return any(test(v) for v in nums)
