"""The sync ledger: what each target holds, so a run does the least work and a crash is repairable.

Any SQLAlchemy URL works, given explicitly (or as ``$EMBEDRAIL_LEDGER``): SQLite (WAL mode, so several
processes — e.g. Airflow mapped tasks on one machine — can write different documents at once), or
PostgreSQL (``postgresql+psycopg://...``) when workers are spread over machines. The CLI's default is
``.embedrail/ledger.sqlite`` under the working directory, made absolute and reported.

Per target (key = the target URL without credentials) and generation (the physical index the rows
describe) it records

- ``er_chunks``: chunk id -> fingerprint (+ doc id). A row with a NULL fingerprint is an *intent*:
  written just before an upsert, it says "this id may exist in the store" so a later delete finds it
  even if the process died between the store's ack and the ledger commit.
- ``er_docs``: doc id -> hash of (text, metadata, chunking + embedding config), set only after every
  chunk of the document was acknowledged and its stale chunks deleted. Equal hash => skip the doc
  before chunking or tokenising it. For a file source also the listing version the document was read
  at (ETag or mtime + size, the parser): equal version => the file is not even fetched.
- ``er_targets``: the active generation, a pending full rebuild, the index fingerprint and spec.
- ``er_watermarks``: per target and feed, the highest watermark whose rows the target fully holds.
- ``er_leases``: which run is syncing each target (run id, owner, expiry): one run at a time per target
  (see ``acquire``); renewed by every intent and commit of the holding run.
- ``er_meta``: the ledger's own id (``ledger_id``, a UUID made when the ledger is created: every index a
  run writes is stamped with it and its key, see ``embedrail.integration.drift``) and a small cache (e.g. a
  model's fingerprint/dims) so an unchanged run needs no model.

Transactions are retried on a lost connection, a lock or a serialization failure (``OperationalError``,
an invalidated connection); an integrity error is retried only by the operations where another process
may insert the same key first (leases, target rows, metadata); anywhere else it is a bug and raised.

The tables themselves are declared in :mod:`integration.ledger_schema`.

The rule of DESIGN.md holds by construction: the engine calls ``commit_*`` only after the target
acknowledged, so the ledger is never ahead of the store.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import random
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Table,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from embedrail.errors import ConfigError, LedgerError, RunConflictError
from embedrail.integration.ledger_schema import (
    bad_t,
    chunks_t,
    chunks_text_part,
    docs_t,
    leases_t,
    meta_t,
    metadata,
    migrate,
    targets_t,
    watermarks_t,
)
from embedrail.integration.plan import TEXT_FP
from embedrail.secrets import redact_url

__all__ = ["Lease", "Ledger", "TargetState", "default_ledger_url"]
T = TypeVar("T")
_IN_BATCH = 400

@dataclass(slots=True)
class TargetState:
    target: str
    generation: str
    fingerprint: str
    spec: dict[str, Any]
    pending_generation: str | None
    pending_fingerprint: str | None


@dataclass
class Lease:
    """One run's hold on its targets, passed to every write the run makes (``mark_intent``, ``commit``):
    each renews it (at most every ``ttl / 10`` seconds per target) and refuses to write once another run
    took the target over. Scoped to the run: nothing about it lives on the ``Ledger``, so engines and
    threads sharing one ``Ledger`` each hold their own."""

    run_id: str
    ttl: int = 900
    renewed: dict[str, float] = field(default_factory=dict)  # target -> when this process last pushed its expiry out


def _chunks(seq: Sequence[T], n: int = _IN_BATCH) -> Iterable[Sequence[T]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def ledger_url(url: str) -> Any:
    """``url`` parsed as a SQLAlchemy URL; a PostgreSQL URL without a driver (``postgresql://``, or
    libpq's ``postgres://``) gets psycopg 3, the driver embedrail's ``postgres`` extra installs
    (SQLAlchemy's own default, psycopg2, is not installed by it)."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    try:
        parsed = make_url(url)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"bad ledger URL {redact_url(url)!r}: {e}") from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "postgresql" and parsed.drivername.endswith("psycopg"):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise ConfigError("the ledger on PostgreSQL needs psycopg 3: pip install 'embedrail[postgres]'") from None
    return parsed


def _insert(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """An executemany of one cached INSERT (psycopg pipelines it). Measured against multi-row VALUES
    statements, which SQLAlchemy compiles afresh per batch: those were slower on SQLite and PostgreSQL."""
    conn.execute(insert(table), rows)


def default_ledger_url() -> str:
    """The CLI's ledger when none is given: ``$EMBEDRAIL_LEDGER``, else ``.embedrail/ledger.sqlite`` under the
    working directory (absolute, so the report names the file)."""
    return os.environ.get("EMBEDRAIL_LEDGER") or f"sqlite:///{Path.cwd() / '.embedrail' / 'ledger.sqlite'}"


class Ledger:
    def __init__(self, url: str | None = None) -> None:
        url = url or os.environ.get("EMBEDRAIL_LEDGER")
        if not url:
            raise ConfigError("no ledger URL: give one (e.g. 'sqlite:////var/lib/embedrail/ledger.sqlite') or set EMBEDRAIL_LEDGER")
        parsed = ledger_url(url)
        self.url = parsed.render_as_string(hide_password=True)
        kwargs: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            db = parsed.database
            if db and db != ":memory:" and not db.startswith("file:"):
                Path(db).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 60}
        else:
            # pre-ping: a connection the server (or a failover, or an idle timeout) closed is replaced
            # instead of failing the next statement; small pool: a task uses one connection per thread
            kwargs.update(pool_pre_ping=True, pool_size=4, max_overflow=8, pool_recycle=1800)
        self.engine: Engine = create_engine(parsed, **kwargs)
        # a Ledger dropped without close() still hands its pooled connections back to the server
        self._finalizer = weakref.finalize(self, self.engine.dispose)
        # SQLite has one writer at a time. Threads of this process (a run's writer threads, one per
        # target) take turns on a lock, which wakes the next one the moment a transaction ends; left to
        # SQLite, a waiting connection sleeps in its busy handler's growing steps (or gets SQLITE_BUSY on a
        # read-to-write upgrade and backs off in _retry), which slows every commit with two targets. Other
        # processes still wait on SQLite's own lock (busy_timeout).
        self._tx_lock: threading.Lock | contextlib.nullcontext[None] = contextlib.nullcontext()
        if parsed.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            self._tx_lock = threading.Lock()
        self._retry(lambda: metadata.create_all(self.engine), integrity=True)  # another process may create them first
        self._retry(lambda: migrate(self.engine))
        self.id: str = self._tx(_ledger_id, integrity=True)

    def close(self) -> None:
        self._finalizer()

    # --- run leases: one run at a time per target -------------------------------------------
    def acquire(self, targets: Sequence[str], run_id: str, owner: str, ttl: int,
                may_take_over: Callable[[str], bool] = lambda _owner: False) -> Lease:  # fmt: skip
        """Lease every target to ``run_id`` (all or none), or raise ``RunConflictError`` naming the run that
        holds one. A lease held by another run is taken over when it expired (its run stopped writing
        ``ttl`` seconds ago) or ``may_take_over(its owner)`` says its holder is gone. Returns the run's
        ``Lease``, for its writes."""

        def q(conn: Connection) -> None:
            now = int(time.time())
            for target in targets:
                row = conn.execute(select(leases_t).where(leases_t.c.target == target)).mappings().first()
                if row is not None and row["run_id"] != run_id and row["expires_at"] > now and not may_take_over(row["owner"]):
                    raise RunConflictError(
                        f"{target}: run {row['run_id']} ({row['owner']}, started {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(row['started_at']))} "
                        f"UTC) is syncing it; two runs writing one target at once could leave the store and the ledger "
                        f"disagreeing, so this run stops before writing. Wait for it to finish (its lease lapses "
                        f"{row['expires_at'] - now}s after its last write if it died)"
                    )
                conn.execute(delete(leases_t).where(leases_t.c.target == target))
                conn.execute(insert(leases_t).values(target=target, run_id=run_id, owner=owner, started_at=now, expires_at=now + ttl))

        self._tx(q, integrity=True)  # two runs inserting the same lease row: the loser retries and sees the winner
        return Lease(run_id, int(ttl), dict.fromkeys(targets, time.time()))

    def release(self, targets: Sequence[str], run_id: str) -> None:
        """End ``run_id``'s leases (a lease another run took over stays)."""

        def q(conn: Connection) -> None:
            for part in _chunks(list(targets)):
                conn.execute(delete(leases_t).where(and_(leases_t.c.target.in_(part), leases_t.c.run_id == run_id)))

        self._tx(q)

    def lease(self, target: str) -> dict[str, Any] | None:
        """The lease on ``target`` (run_id, owner, started_at, expires_at), or None."""

        def q(conn: Connection) -> dict[str, Any] | None:
            row = conn.execute(select(leases_t).where(leases_t.c.target == target)).mappings().first()
            return dict(row) if row is not None else None

        return self._tx(q)

    def _keep_lease(self, target: str, lease: Lease | None) -> None:
        """Before a write: push the run's lease expiry out, in a short transaction of its own, at most
        every ``ttl / 10`` seconds per process (the partitions of a run share one lease row: updating it
        inside every write transaction would make them wait on each other's row lock)."""
        now = time.time()
        if lease is None or now - lease.renewed.get(target, 0.0) <= lease.ttl / 10:
            return
        lease.renewed[target] = now
        self._tx(lambda conn: conn.execute(update(leases_t).where(and_(leases_t.c.target == target, leases_t.c.run_id == lease.run_id))
                                           .values(expires_at=int(now) + lease.ttl)))  # fmt: skip

    @staticmethod
    def _check_lease(conn: Connection, target: str, lease: Lease | None) -> None:
        """Inside a writing transaction: refuse if another run took the target over (a plain read: no lock)."""
        if lease is None:
            return
        row = conn.execute(select(leases_t.c.run_id, leases_t.c.owner).where(leases_t.c.target == target)).first()
        if row is None:  # nobody holds it (released): hold it again
            now = int(time.time())
            conn.execute(insert(leases_t).values(target=target, run_id=lease.run_id, owner="(renewed)", started_at=now,
                                                 expires_at=now + lease.ttl))  # fmt: skip
        elif row[0] != lease.run_id:
            raise RunConflictError(f"{target}: run {lease.run_id} lost its lease to run {row[0]} ({row[1]}) after "
                                   f"{lease.ttl}s without a write; this run stops writing (what it wrote is "
                                   "recorded as intents: the next run repairs it)")  # fmt: skip

    # --- plumbing -----------------------------------------------------------------------------
    def _retry(self, fn: Callable[[], T], attempts: int = 8, integrity: bool = False) -> T:
        """Run a transaction, again on a lost connection, a lock, a deadlock or a serialization failure
        (and, with ``integrity``, on a key another process inserted first): ~6 s of backoff in all, then a
        ``LedgerError`` (retryable). Any other database error is raised as it is: retrying cannot help."""
        for i in range(attempts):
            try:
                return fn()
            except DBAPIError as e:
                transient = isinstance(e, OperationalError) or e.connection_invalidated
                if not (transient or (integrity and isinstance(e, IntegrityError))):
                    raise  # a programming error or a broken invariant: retrying cannot help
                if i == attempts - 1:
                    cause = e.orig if e.orig is not None else e
                    first = (str(cause).strip().splitlines() or [""])[0]
                    raise LedgerError(
                        f"the ledger at {self.url} failed {attempts} times ({type(cause).__name__}: {first}); nothing is "
                        "lost (the ledger only moves after the stores acknowledged): run again when the database is back"
                    ) from e
                time.sleep(min(2.0, 0.05 * 2**i) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def _tx(self, fn: Callable[[Connection], T], integrity: bool = False) -> T:
        def run() -> T:
            with self._tx_lock, self.engine.begin() as conn:
                return fn(conn)

        return self._retry(run, integrity=integrity)

    # --- targets ------------------------------------------------------------------------------
    def target(self, target: str) -> TargetState | None:
        def q(conn: Connection) -> TargetState | None:
            row = conn.execute(select(targets_t).where(targets_t.c.target == target)).mappings().first()
            if row is None:
                return None
            return TargetState(
                row["target"], row["generation"], row["fingerprint"], json.loads(row["spec"] or "{}"),
                row["pending_generation"], row["pending_fingerprint"],
            )  # fmt: skip

        return self._tx(q)

    def set_target(self, target: str, *, generation: str, fingerprint: str, spec: dict[str, Any]) -> None:
        values = {"generation": generation, "fingerprint": fingerprint, "spec": json.dumps(spec), "updated_at": int(time.time())}

        def q(conn: Connection) -> None:
            n = conn.execute(update(targets_t).where(targets_t.c.target == target).values(**values)).rowcount
            if not n:
                conn.execute(insert(targets_t).values(target=target, **values))

        self._tx(q, integrity=True)

    def set_pending(self, target: str, generation: str | None, fingerprint: str | None) -> None:
        """Record a full rebuild in progress (its physical index and embedding fingerprint); None clears it."""

        def q(conn: Connection) -> None:
            values = {"pending_generation": generation, "pending_fingerprint": fingerprint}
            n = conn.execute(update(targets_t).where(targets_t.c.target == target).values(**values)).rowcount
            if not n:
                conn.execute(insert(targets_t).values(target=target, generation="", fingerprint="", spec="{}",
                                                      updated_at=int(time.time()), **values))  # fmt: skip

        self._tx(q, integrity=True)

    def switch_generation(self, target: str, generation: str, fingerprint: str, spec: dict[str, Any]) -> None:
        """After a committed rebuild: make ``generation`` active, forget every other generation."""

        def q(conn: Connection) -> None:
            for t in (docs_t, chunks_t):
                conn.execute(delete(t).where(and_(t.c.target == target, t.c.generation != generation)))
            conn.execute(
                update(targets_t).where(targets_t.c.target == target).values(
                    generation=generation, fingerprint=fingerprint, spec=json.dumps(spec),
                    pending_generation=None, pending_fingerprint=None, updated_at=int(time.time()),
                )
            )  # fmt: skip

        self._tx(q)

    def reset(self, target: str, generation: str | None = None) -> None:
        """Forget what a target (generation) holds, e.g. because its index was dropped by hand."""

        def q(conn: Connection) -> None:
            for t in (docs_t, chunks_t, bad_t):
                cond = t.c.target == target
                if generation is not None:
                    cond = and_(cond, t.c.generation == generation)
                conn.execute(delete(t).where(cond))
            if generation is None:
                conn.execute(delete(watermarks_t).where(watermarks_t.c.target == target))

        self._tx(q)

    # --- reading ------------------------------------------------------------------------------
    def doc_hashes(self, target: str, generation: str, doc_ids: Sequence[str] | None = None) -> dict[str, tuple[str, int, str | None]]:
        """doc id -> (doc hash, chunk count, listing version or None) of the given documents the target holds
        (``doc_ids=None``: every one; the sync pipeline asks per window of documents, never for all)."""

        def q(conn: Connection) -> dict[str, tuple[str, int, str | None]]:
            cols = select(docs_t.c.doc_id, docs_t.c.doc_hash, docs_t.c.n_chunks, docs_t.c.version)
            base = and_(docs_t.c.target == target, docs_t.c.generation == generation)
            if doc_ids is None:
                return {r[0]: (r[1], r[2], r[3]) for r in conn.execute(cols.where(base))}
            out: dict[str, tuple[str, int, str | None]] = {}
            for part in _chunks(list(doc_ids)):
                out.update((r[0], (r[1], r[2], r[3])) for r in conn.execute(cols.where(and_(base, docs_t.c.doc_id.in_(part)))))
            return out

        return self._tx(q)

    def chunk_fingerprints(self, target: str, generation: str, doc_ids: Sequence[str]) -> dict[str, dict[str, str | None]]:
        """doc id -> {chunk id -> fingerprint (None: intent only)} for the given documents."""

        def q(conn: Connection) -> dict[str, dict[str, str | None]]:
            out: dict[str, dict[str, str | None]] = {}
            for part in _chunks(list(doc_ids)):
                rows = conn.execute(
                    select(chunks_t.c.doc_id, chunks_t.c.chunk_id, chunks_t.c.fingerprint).where(
                        and_(chunks_t.c.target == target, chunks_t.c.generation == generation, chunks_t.c.doc_id.in_(part))
                    )
                )
                for d, c, fp in rows:
                    out.setdefault(d, {})[c] = fp
            return out

        return self._tx(q)

    def has_chunks(self, target: str, generation: str) -> bool:
        """Whether the target holds any committed chunk row in ``generation`` (one indexed row read)."""

        def q(conn: Connection) -> bool:
            cond = and_(chunks_t.c.target == target, chunks_t.c.generation == generation, chunks_t.c.fingerprint.is_not(None))
            return conn.execute(select(chunks_t.c.chunk_id).where(cond).limit(1)).first() is not None

        return self._tx(q)

    def chunks_with_text(self, target: str, generation: str, text_fps: Sequence[str], per_text: int = 2) -> dict[str, list[str]]:
        """text fingerprint -> up to ``per_text`` chunk ids whose recorded fingerprint has that text part (committed
        rows only, any document): the records whose vectors a chunk of the same text can take (an index lookup)."""
        wanted = list(dict.fromkeys(t for t in text_fps if len(t) == TEXT_FP))
        if not wanted:
            return {}

        def q(conn: Connection) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for part in _chunks(wanted):
                rows = conn.execute(
                    select(chunks_text_part.label("t"), chunks_t.c.chunk_id).where(
                        and_(chunks_t.c.target == target, chunks_t.c.generation == generation, chunks_text_part.in_(part))
                    )
                )
                for t, c in rows:
                    have = out.setdefault(t, [])
                    if len(have) < per_text:
                        have.append(c)
            return out

        return self._tx(q)

    def iter_doc_ids(self, target: str, generation: str, page: int = 5000) -> Iterator[str]:
        """Every doc id with a row (committed doc or chunk rows, incl. intents), in code-point order (the order of
        Python's ``sorted``), read a page at a time: what a streaming snapshot delete merges with the source's
        sorted ids. Each page is its own short transaction."""

        def pages(table: Table) -> Iterator[str]:
            col = table.c.doc_id
            key = col.collate("C") if self.engine.dialect.name == "postgresql" else col  # byte order = code-point order
            last: str | None = None
            while True:
                cond = and_(table.c.target == target, table.c.generation == generation)
                if last is not None:
                    cond = and_(cond, key > last)
                stmt = select(key.label("doc_id")).where(cond).distinct().order_by(key).limit(page)
                rows = [r[0] for r in self._tx(lambda conn, s=stmt: list(conn.execute(s)))]
                yield from rows
                if len(rows) < page:
                    return
                last = rows[-1]

        previous = None
        for doc_id in heapq.merge(pages(docs_t), pages(chunks_t)):
            if doc_id != previous:
                yield doc_id
                previous = doc_id

    def iter_chunks(self, target: str, generation: str, page: int = 5000) -> Iterator[tuple[str, str | None]]:
        """(chunk id, fingerprint; None: an intent) of every chunk row, in code-point order of the chunk id, read a
        page at a time (each page its own short transaction): what a drift diff merges with the store's ids."""
        col = chunks_t.c.chunk_id
        key = col.collate("C") if self.engine.dialect.name == "postgresql" else col
        last: str | None = None
        while True:
            cond = and_(chunks_t.c.target == target, chunks_t.c.generation == generation)
            if last is not None:
                cond = and_(cond, key > last)
            stmt = select(key.label("chunk_id"), chunks_t.c.fingerprint).where(cond).order_by(key).limit(page)
            rows = [(r[0], r[1]) for r in self._tx(lambda conn, s=stmt: list(conn.execute(s)))]
            yield from rows
            if len(rows) < page:
                return
            last = rows[-1][0]

    def doc_ids(self, target: str, generation: str) -> set[str]:
        """Every doc id with a row (committed doc or chunk rows, incl. intents) in the ledger, as a set (small
        ledgers, tests; the sync engine streams :meth:`iter_doc_ids`)."""
        return set(self.iter_doc_ids(target, generation))

    def chunk_map(self, target: str, generation: str) -> dict[str, str | None]:
        """chunk id -> fingerprint for the whole target, in memory (tests, small ledgers; the drift compare streams
        :meth:`iter_chunks`)."""

        def q(conn: Connection) -> dict[str, str | None]:
            rows = conn.execute(
                select(chunks_t.c.chunk_id, chunks_t.c.fingerprint).where(
                    and_(chunks_t.c.target == target, chunks_t.c.generation == generation)
                )
            )
            return {r[0]: r[1] for r in rows}

        return self._tx(q)

    def counts(self, target: str, generation: str) -> dict[str, int]:
        def q(conn: Connection) -> dict[str, int]:
            cond_d = and_(docs_t.c.target == target, docs_t.c.generation == generation)
            cond_c = and_(chunks_t.c.target == target, chunks_t.c.generation == generation)
            docs = conn.execute(select(func.count()).select_from(docs_t).where(cond_d)).scalar_one()
            chunks = conn.execute(select(func.count()).select_from(chunks_t).where(cond_c)).scalar_one()
            pending = conn.execute(
                select(func.count()).select_from(chunks_t).where(and_(cond_c, chunks_t.c.fingerprint.is_(None)))
            ).scalar_one()
            return {"documents": docs, "chunks": chunks - pending, "pending_chunks": pending}

        return self._tx(q)

    # --- writing (only after the store acknowledged, except intents) ---------------------------
    def mark_intent(self, target: str, generation: str, items: Sequence[tuple[str, str]], lease: Lease | None = None) -> None:
        """Record chunk ids (with doc id) that are about to be written and are not in the ledger yet
        (``lease``: the writing run's, renewed and checked)."""
        if not items:
            return

        self._keep_lease(target, lease)

        def q(conn: Connection) -> None:
            self._check_lease(conn, target, lease)
            ids = [c for c, _ in items]
            existing: set[str] = set()
            for part in _chunks(ids):
                existing.update(
                    r[0]
                    for r in conn.execute(
                        select(chunks_t.c.chunk_id).where(
                            and_(chunks_t.c.target == target, chunks_t.c.generation == generation, chunks_t.c.chunk_id.in_(part))
                        )
                    )
                )
            new = [
                {"target": target, "generation": generation, "chunk_id": c, "doc_id": d, "fingerprint": None}
                for c, d in items
                if c not in existing
            ]
            if new:
                _insert(conn, chunks_t, new)

        self._tx(q)

    def forget_fingerprints(self, target: str, generation: str, chunk_ids: Sequence[str]) -> None:
        """Turn recorded chunks back into intents (NULL fingerprint): the next run writes them whole."""
        if not chunk_ids:
            return

        def q(conn: Connection) -> None:
            base = and_(chunks_t.c.target == target, chunks_t.c.generation == generation)
            for part in _chunks(list(chunk_ids)):
                conn.execute(update(chunks_t).where(and_(base, chunks_t.c.chunk_id.in_(part))).values(fingerprint=None))

        self._tx(q)

    def commit(
        self,
        target: str,
        generation: str,
        *,
        written: Sequence[tuple[str, str, str]] = (),
        deleted: Sequence[str] = (),
        docs_done: Sequence[tuple[str, str, int] | tuple[str, str, int, str | None]] = (),
        docs_removed: Sequence[str] = (),
        lease: Lease | None = None,
    ) -> None:
        """One transaction: chunks written (id, doc, fp), chunk ids deleted, documents completed
        (doc, hash, n_chunks[, listing version]) and documents removed entirely (``lease``: the writing run's)."""
        if not (written or deleted or docs_done or docs_removed):
            return

        self._keep_lease(target, lease)

        def q(conn: Connection) -> None:
            self._check_lease(conn, target, lease)
            base_c = and_(chunks_t.c.target == target, chunks_t.c.generation == generation)
            base_d = and_(docs_t.c.target == target, docs_t.c.generation == generation)
            gone = [c for c, _, _ in written] + list(deleted)
            for part in _chunks(gone):
                conn.execute(delete(chunks_t).where(and_(base_c, chunks_t.c.chunk_id.in_(part))))
            if written:
                _insert(conn, chunks_t, [{"target": target, "generation": generation, "chunk_id": c, "doc_id": d, "fingerprint": fp}
                                         for c, d, fp in written])  # fmt: skip
            # A removed document loses its doc row and the chunk rows named in ``deleted`` (what the store
            # acknowledged deleting) -- never "every chunk row of the doc": a run overlapping this one may
            # have just recorded an intent for a chunk it is writing, and that row is the only trace of it.
            doc_ids = [x[0] for x in docs_done] + list(docs_removed)
            base_b = and_(bad_t.c.target == target, bad_t.c.generation == generation)
            for part in _chunks(doc_ids):
                conn.execute(delete(docs_t).where(and_(base_d, docs_t.c.doc_id.in_(part))))
                conn.execute(delete(bad_t).where(and_(base_b, bad_t.c.doc_id.in_(part))))
            if docs_done:
                _insert(conn, docs_t, [{"target": target, "generation": generation, "doc_id": x[0], "doc_hash": x[1],
                                        "n_chunks": x[2], "version": x[3] if len(x) > 3 else None} for x in docs_done])  # fmt: skip

        self._tx(q)

    def set_versions(self, target: str, generation: str, items: Sequence[tuple[str, str, str]]) -> None:
        """Record the listing version (doc id, doc hash, version) of documents read again and found unchanged
        (a touched file): only where the row still has that hash (a concurrent change wins)."""
        if not items:
            return

        def q(conn: Connection) -> None:
            stmt = (
                update(docs_t)
                .where(and_(docs_t.c.target == target, docs_t.c.generation == generation, docs_t.c.doc_id == bindparam("d"),
                            docs_t.c.doc_hash == bindparam("h")))
                .values(version=bindparam("v"))
            )  # fmt: skip
            conn.execute(stmt, [{"d": d, "h": h, "v": v} for d, h, v in items])
            base_b = and_(bad_t.c.target == target, bad_t.c.generation == generation)
            for part in _chunks([d for d, _, _ in items]):  # a file that parses again is no longer known bad
                conn.execute(delete(bad_t).where(and_(base_b, bad_t.c.doc_id.in_(part))))

        self._tx(q)

    def bad_files(self, target: str, generation: str, doc_ids: Sequence[str] | None = None) -> dict[str, tuple[str, str]]:
        """doc id -> (listing version, reason) of the listed files that could not be parsed at that version (of
        ``doc_ids``; None: all)."""

        def q(conn: Connection) -> dict[str, tuple[str, str]]:
            cols = select(bad_t.c.doc_id, bad_t.c.version, bad_t.c.reason)
            base = and_(bad_t.c.target == target, bad_t.c.generation == generation)
            if doc_ids is None:
                return {r[0]: (r[1], r[2]) for r in conn.execute(cols.where(base))}
            out: dict[str, tuple[str, str]] = {}
            for part in _chunks(list(doc_ids)):
                out.update((r[0], (r[1], r[2])) for r in conn.execute(cols.where(and_(base, bad_t.c.doc_id.in_(part)))))
            return out

        return self._tx(q)

    def set_bad_files(self, target: str, generation: str, items: Sequence[tuple[str, str, str]]) -> None:
        """Record files (doc id, listing version, reason) that could not be parsed: the next run reports them
        again without reading them, until their listing version changes."""
        if not items:
            return

        def q(conn: Connection) -> None:
            base = and_(bad_t.c.target == target, bad_t.c.generation == generation)
            for part in _chunks([d for d, _, _ in items]):
                conn.execute(delete(bad_t).where(and_(base, bad_t.c.doc_id.in_(part))))
            _insert(conn, bad_t, [{"target": target, "generation": generation, "doc_id": d, "version": v, "reason": r}
                                  for d, v, r in dict((x[0], x) for x in items).values()])  # fmt: skip

        self._tx(q)

    # --- drift: probes, repairs, adoption ------------------------------------------------------
    def sample(self, target: str, generation: str, n: int) -> dict[str, str]:
        """Up to ``n`` recorded chunks (id -> fingerprint; intents excluded), drawn at random."""

        def q(conn: Connection) -> dict[str, str]:
            rows = conn.execute(
                select(chunks_t.c.chunk_id, chunks_t.c.fingerprint).where(
                    and_(chunks_t.c.target == target, chunks_t.c.generation == generation, chunks_t.c.fingerprint.is_not(None))
                ).order_by(func.random()).limit(max(0, int(n)))
            )
            return {r[0]: r[1] for r in rows}

        return self._tx(q)

    def record_store(self, target: str, generation: str, *, held: Sequence[tuple[str, str, str | None]] = (),
                     missing: Sequence[str] = ()) -> None:  # fmt: skip
        """Make the ledger describe what the store really holds, so the next plan repairs the difference:
        ``held`` (chunk id, doc id, the fingerprint the stored record carries, None: unknown) replaces what
        the ledger records for those chunks, ``missing`` chunks (not in the store) are forgotten, and the
        documents of both lose their document row (they are planned chunk by chunk again, not skipped)."""
        if not (held or missing):
            return

        def q(conn: Connection) -> None:
            base_c = and_(chunks_t.c.target == target, chunks_t.c.generation == generation)
            ids = [c for c, _, _ in held] + list(missing)
            docs = set(d for _, d, _ in held)
            for part in _chunks(ids):
                docs.update(r[0] for r in conn.execute(select(chunks_t.c.doc_id).where(and_(base_c, chunks_t.c.chunk_id.in_(part)))))
                conn.execute(delete(chunks_t).where(and_(base_c, chunks_t.c.chunk_id.in_(part))))
            if held:
                _insert(conn, chunks_t, [{"target": target, "generation": generation, "chunk_id": c, "doc_id": d, "fingerprint": fp}
                                         for c, d, fp in held])  # fmt: skip
            base_d = and_(docs_t.c.target == target, docs_t.c.generation == generation)
            for part in _chunks(sorted(docs)):
                conn.execute(delete(docs_t).where(and_(base_d, docs_t.c.doc_id.in_(part))))

        self._tx(q)

    def absent_docs(self, target: str, generation: str, other: str) -> tuple[int, int]:
        """(documents of ``generation`` that ``other`` lacks, documents of ``generation``): what switching
        from ``generation`` to the rebuilt ``other`` would delete."""

        def q(conn: Connection) -> tuple[int, int]:
            old = and_(docs_t.c.target == target, docs_t.c.generation == generation)
            newer = docs_t.alias("n")
            held = conn.execute(select(func.count()).select_from(docs_t).where(old)).scalar_one()
            kept = (select(newer.c.doc_id).where(and_(newer.c.target == target, newer.c.generation == other,
                                                      newer.c.doc_id == docs_t.c.doc_id)).exists())  # fmt: skip
            gone = conn.execute(select(func.count()).select_from(docs_t).where(and_(old, ~kept))).scalar_one()
            return int(gone), int(held)

        return self._tx(q)

    # --- watermarks and meta ------------------------------------------------------------------
    def watermark(self, target: str, source: str) -> str | None:
        def q(conn: Connection) -> str | None:
            return conn.execute(
                select(watermarks_t.c.value).where(and_(watermarks_t.c.target == target, watermarks_t.c.source == source))
            ).scalar_one_or_none()

        return self._tx(q)

    def set_watermark(self, target: str, source: str, value: str | None) -> None:
        def q(conn: Connection) -> None:
            conn.execute(delete(watermarks_t).where(and_(watermarks_t.c.target == target, watermarks_t.c.source == source)))
            conn.execute(insert(watermarks_t).values(target=target, source=source, value=value))

        self._tx(q, integrity=True)

    def meta(self, key: str) -> Any:
        def q(conn: Connection) -> Any:
            raw = conn.execute(select(meta_t.c.value).where(meta_t.c.key == key)).scalar_one_or_none()
            return json.loads(raw) if raw is not None else None

        return self._tx(q)

    def set_meta(self, key: str, value: Any) -> None:
        def q(conn: Connection) -> None:
            conn.execute(delete(meta_t).where(meta_t.c.key == key))
            conn.execute(insert(meta_t).values(key=key, value=json.dumps(value, sort_keys=True)))

        self._tx(q, integrity=True)


def _ledger_id(conn: Connection) -> str:
    """The ledger's id: made (a UUID) when the ledger is new, read ever after."""
    raw = conn.execute(select(meta_t.c.value).where(meta_t.c.key == "ledger_id")).scalar_one_or_none()
    if raw is not None:
        return str(json.loads(raw))
    new = uuid.uuid4().hex
    conn.execute(insert(meta_t).values(key="ledger_id", value=json.dumps(new)))
    return new


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
    finally:
        cur.close()
