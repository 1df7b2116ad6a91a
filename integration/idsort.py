"""Document ids collected in any order and read back sorted: what a snapshot delete merges with the ledger.

A snapshot delete needs "the ids the ledger holds that the source no longer has". Two sets of every id
(the source's and the ledger's) in memory grow with the corpus: about 100 bytes per id in Python, a
gigabyte per task at 10^7 documents. Instead the source's ids go into a ``SortedIds`` (runs of ``run``
ids sorted in memory and spilled to temporary files), the ledger yields its ids in the same order a page
at a time (``Ledger.iter_doc_ids``), and :func:`absent` walks both streams once. Memory: one run.

Order: Python's ``str`` order (code points), which is SQLite's binary collation of UTF-8 text and
PostgreSQL's ``COLLATE "C"`` (the ledger sorts by that).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO

__all__ = ["SeenIds", "SortedIds", "absent"]


class SortedIds:
    """A multiset of ids, iterated in sorted order without repeats (see the module doc)."""

    RUN = 200_000

    def __init__(self, run: int | None = None) -> None:
        self.run = max(1, run or self.RUN)
        self._buf: list[str] = []
        self._files: list[IO[str]] = []
        self.spilled = 0  # ids written to temporary files

    def add(self, doc_id: str) -> None:
        self._buf.append(doc_id)
        if len(self._buf) >= self.run:
            self._spill()

    def update(self, ids: Iterable[str]) -> SortedIds:
        for i in ids:
            self.add(i)
        return self

    def _spill(self) -> None:
        self._buf.sort()
        f = tempfile.TemporaryFile("w+", encoding="utf-8", newline="\n", prefix="embedrail-ids-")
        f.writelines(json.dumps(i) + "\n" for i in self._buf)  # JSON: an id may hold a newline
        self.spilled += len(self._buf)
        self._files.append(f)
        self._buf = []

    @staticmethod
    def _read(f: IO[str]) -> Iterator[str]:
        f.seek(0)
        for line in f:
            yield json.loads(line)

    def __iter__(self) -> Iterator[str]:
        self._buf.sort()
        previous = None
        for doc_id in heapq.merge(self._buf, *(self._read(f) for f in self._files)):
            if doc_id != previous:
                yield doc_id
                previous = doc_id

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files, self._buf = [], []

    def __enter__(self) -> SortedIds:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def absent(held: Iterable[str], seen: Iterable[str]) -> Iterator[str]:
    """The ids of ``held`` that ``seen`` lacks; both sorted (``str`` order) without repeats, each read once."""
    it = iter(seen)
    s = next(it, None)
    for h in held:
        while s is not None and s < h:
            s = next(it, None)
        if s != h:
            yield h


class SeenIds:
    """Which ids a source has yielded in this run, in 16 bytes per id: a 128-bit digest of each id (a collision
    is as likely as guessing a random 128-bit key), kept in a sorted numpy array plus a small set of the most
    recent ones merged into it every ``RECENT`` ids. A set of the ids themselves costs about 90 bytes per id."""

    RECENT = 65536

    def __init__(self) -> None:
        import numpy as np

        self._np = np
        self._sorted = np.empty(0, dtype="S16")
        self._recent: set[bytes] = set()

    @staticmethod
    def _digest(doc_id: str) -> bytes:
        return hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def add(self, doc_id: str) -> bool:
        """Record ``doc_id``; False if it was recorded before (a repeated id)."""
        return self.add_many([doc_id])[0]

    def _merge(self) -> None:
        np = self._np
        fresh = np.array(sorted(self._recent), dtype="S16")
        self._sorted = np.concatenate([self._sorted, fresh])
        self._sorted.sort(kind="stable")
        self._recent = set()

    def add_many(self, doc_ids: list[str]) -> list[bool]:
        """``add`` for each id, in order (the first of repeated ids is new), with one vectorised look-up in the
        sorted array for the whole batch."""
        digests = [self._digest(i) for i in doc_ids]
        arr = self._sorted
        if len(arr):
            np = self._np
            probe = np.array(digests, dtype="S16")
            pos = np.minimum(np.searchsorted(arr, probe), len(arr) - 1)
            old = (arr[pos] == probe).tolist()
        else:
            old = [False] * len(digests)
        out = []
        for d, was in zip(digests, old, strict=True):
            if was or d in self._recent:
                out.append(False)
                continue
            self._recent.add(d)
            out.append(True)
        if len(self._recent) >= self.RECENT:
            self._merge()
        return out

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)
