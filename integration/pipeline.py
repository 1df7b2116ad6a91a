"""The partition pipeline: documents -> plan -> embed -> write -> ledger commit, streaming.

The calling thread reads documents, plans them in windows (one ledger read per window and target),
chunks them and embeds batch N+1 while one writer thread per target writes batch N to its target,
through bounded queues: vectors are streamed, never all held in memory, embedding overlaps writing, and
the targets are written in parallel.

Nothing is embedded twice: each chunk once per run, whatever the number of targets that need it; a chunk
whose text was already embedded in this run (the same text in another document: boilerplate, licences,
repeated sections) reuses that vector (a bounded cache keyed by the text fingerprint); a chunk whose text
a target's index already holds under another id (a renamed or moved document, a section that moved) takes
that record's vector, read back from the index (``VectorStore.stored_vectors``; the ledger finds the ids by
the text part of their fingerprints, and the record's own ``_fp``, read with its vector, must carry the same
text part); and a chunk whose text is unchanged but whose document metadata changed is not embedded at
all: each target updates the stored record's metadata in place (``VectorStore.update_metadata``).

A file source yields documents *listed, not read* (``Document.loader``): one whose listing version every
target recorded under its configuration (or that could not be parsed at that very version) is neither
fetched nor parsed; the others are fetched several at a time in threads and parsed here, in order, then
planned like any document. Their listing versions are committed with them (``er_docs.version``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedrail.connectors.base import IndexSpec, Record, VectorStore
from embedrail.embed_core.mrl import truncate_and_normalize
from embedrail.errors import ModelError, StoreError, is_retryable
from embedrail.integration.chunking import Chunker
from embedrail.integration.context import RunContext, TargetRun
from embedrail.integration.documents import Chunk, Document, canonical_json, sha256
from embedrail.integration.ledger import Lease, Ledger
from embedrail.integration.plan import (
    TEXT_FP,
    PlannedChunk,
    Triage,
    plan_chunks,
    plan_document,
    plan_removal,
    text_fingerprint,
    triage,
)
from embedrail.integration.report import Report
from embedrail.integration.sources.base import BadRow
from embedrail.secrets import one_line

__all__ = ["Lane", "PartitionRun"]

log = logging.getLogger("embedrail.sync")


@dataclass
class Lane:
    """A target taking part in this partition: where it writes and what its ledger says it holds."""

    run: TargetRun
    store: VectorStore | None  # None in a dry run
    failed_docs: set[str] = field(default_factory=set)  # documents with a rejected write: not committed as done
    #: the ledger's rows for the documents of the current intake window (never the whole target's):
    #: doc id -> (doc hash, chunk count, listing version), and listed files known unparsable: doc -> (version, reason)
    doc_hashes: dict[str, tuple[str, int, str | None]] = field(default_factory=dict)
    bad: dict[str, tuple[str, str]] = field(default_factory=dict)
    dead: str | None = None  # the error that took the target out of the rest of this partition
    #: a full rebuild's lane: the index it replaces (its user-facing store, None in a dry run) and that index's
    #: ledger generation, when it holds vectors of the same embedding (texts found there are not embedded)
    donor: tuple[VectorStore | None, str] | None = None

    @property
    def key(self) -> str:
        return self.run.key


@dataclass
class _Entry:
    """A chunk to write: the targets that need its vector (so it is embedded) and those that hold the
    vector already and only need the new metadata."""

    chunk: Chunk
    text_fp: str  # its text under the run's embedding (the widest dims): equal texts share one vector
    metadata: dict[str, Any]  # the record's metadata, but for "_fp" (the target's fingerprint)
    fingerprints: dict[str, str]  # target -> the chunk fingerprint its ledger and record carry (its dims)
    targets: list[str]  # write the record (vector, text, metadata)
    retag: list[str] = field(default_factory=list)  # update the stored record's metadata only

    def metadata_for(self, key: str) -> dict[str, Any]:
        return {**self.metadata, "_fp": self.fingerprints[key]}


@dataclass
class _Batch:
    """One unit of work for the writer: embedded chunks, stale chunks and finished documents per target."""

    entries: list[_Entry] = field(default_factory=list)
    vectors: np.ndarray | None = None
    deletes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # target -> [(chunk id, doc id)]
    docs_done: dict[str, list[tuple[str, str, int, str | None]]] = field(default_factory=dict)  # target -> [(doc, hash, n, version)]
    docs_removed: dict[str, list[str]] = field(default_factory=dict)  # target -> [doc id]

    def empty(self) -> bool:
        return not (self.entries or self.deletes or self.docs_done or self.docs_removed)

    @classmethod
    def merged(cls, batches: list[_Batch], dims: int) -> _Batch:
        """One batch holding ``batches`` in order (a new object: every target's writer sees the same batches)."""
        out = cls()
        rows = []
        for b in batches:
            out.entries.extend(b.entries)
            if b.entries:
                rows.append(b.vectors if b.vectors is not None else np.zeros((len(b.entries), dims), dtype=np.float32))
            for mine, theirs in ((out.deletes, b.deletes), (out.docs_done, b.docs_done), (out.docs_removed, b.docs_removed)):
                for key, items in theirs.items():
                    mine.setdefault(key, []).extend(items)  # type: ignore[arg-type]
        out.vectors = np.concatenate(rows) if rows else None
        return out

    def n_deletes(self) -> int:
        return sum(len(v) for v in self.deletes.values())


class PartitionRun:
    """Plan in windows, embed in batches, write in a thread per target. ``add`` each document, then ``finish``;
    ``close`` always (it joins the writer and re-raises its error)."""

    INTAKE = 256  # documents whose ledger rows are read in one round trip per target (memory: this window only)
    WINDOW = 64  # documents planned per ledger round trip
    MAX_DELETES = 1000  # stale chunk ids per batch
    WRITE_MAX = 1024  # records of queued batches one store write takes at most
    WRITE_WAIT = 0.2  # seconds the writer waits for another batch to write with the one it holds
    VECTOR_CACHE_BYTES = 64 << 20  # vectors kept for identical texts later in the run (LRU)

    def __init__(self, *, ctx: RunContext, ledger: Ledger, lease: Lease | None, report: Report, lanes: dict[str, Lane],
                 embedder: Callable[[], Any], batch_size: int, queue_depth: int,
                 on_bad: Callable[[BadRow], None] | None = None) -> None:  # fmt: skip
        self.ctx, self.ledger, self.lease, self.rep, self.lanes = ctx, ledger, lease, report, lanes
        self.on_bad = on_bad
        #: documents whose file could not be read or parsed (this partition's own: reported by each partition)
        self.load_bad: list[BadRow] = []
        self._versions: dict[str, list[tuple[str, str, str]]] = {}  # target -> [(doc, hash, version)] to record
        self._pending: list[Document] = []  # listed files to fetch (together) and parse
        self._intake: list[Document] = []  # documents waiting for their ledger rows
        self._bad_files: dict[str, list[tuple[str, str, str]]] = {}  # target -> [(doc, version, reason)] to record
        self._pool: Any = None
        self._embedder, self.batch_size = embedder, batch_size
        self.window: list[tuple[Document, Triage]] = []
        self.batch = _Batch()
        self._chunker: Chunker | None = None
        self._vectors: OrderedDict[str, np.ndarray | None] = OrderedDict()  # text fingerprint -> vector (LRU)
        self._cache_size = max(1, self.VECTOR_CACHE_BYTES // (4 * max(1, ctx.dims or 1)))
        # each target at its own dims holds its own vectors: its own fingerprint and document hashes
        self._specs: dict[str, IndexSpec] = {key: ctx.spec_of(lane.run) for key, lane in lanes.items()}
        self._doc_configs = {key: ctx.doc_config(lane.run) for key, lane in lanes.items()}
        # where a text's vector may be read back instead of embedded: (target, store, generation) for each target's
        # own index and a full rebuild's old one, at the run's dims, that held chunks when the partition began (a
        # first run looks nothing up: its own texts are in the vector cache above); a read that fails drops it
        self._vector_sources: list[tuple[str, VectorStore | None, str]] = []
        for key, lane in lanes.items():
            if self._specs[key].fingerprint != ctx.fingerprint:
                continue  # a Matryoshka cut: not the model's vectors
            for store, gen in ((lane.store, lane.run.generation), lane.donor or (None, None)):
                if gen is not None and ledger.has_chunks(key, gen):
                    self._vector_sources.append((key, store, gen))
        # one writer thread per target, each with its own bounded queue: the targets are written in
        # parallel (a slow store never holds up a fast one by more than the queue depth) while the
        # calling thread embeds the next batch
        self.writer_error: BaseException | None = None
        self.writers: list[tuple[threading.Thread, queue.Queue[_Batch | None]]] = []
        if not ctx.dry_run:
            for n, lane in enumerate(lanes.values()):
                q: queue.Queue[_Batch | None] = queue.Queue(maxsize=max(1, queue_depth))
                t = threading.Thread(target=self._writer_loop, args=(lane, q), name=f"embedrail-writer-{n}", daemon=True)
                t.start()
                self.writers.append((t, q))

    # --------------------------------------------------------------------------- planning
    def _version_key(self, doc: Document, key: str) -> str:
        """The document's listing version under target ``key``'s configuration (what its ledger row records)."""
        assert doc.version is not None
        return sha256(doc.version, self._doc_configs[key])[:32]

    def _version_keys(self, doc: Document) -> dict[str, str]:
        return {key: self._version_key(doc, key) for key in self._doc_configs}

    def _listed_unchanged(self, doc: Document) -> bool:
        """A listed file whose version every target recorded with this configuration: unchanged, not fetched. A
        file that could not be parsed at this very version is reported again, not fetched either."""
        if doc.version is None or not self.lanes:
            return False
        vkeys = self._version_keys(doc)
        bad = [lane.bad.get(doc.id) for lane in self.lanes.values()]
        if all(b is not None and b[0] == vkeys[k] for k, b in zip(self.lanes, bad, strict=True)):
            reason = bad[0][1] if bad[0] is not None else "unreadable"
            self.rep.count_files("skipped_unchanged")
            self._add_loaded(doc, BadRow(doc.location or doc.id, f"{reason} (unchanged since it was last read)", doc.id))
            return True
        recs = {k: lane.doc_hashes.get(doc.id) for k, lane in self.lanes.items()}
        if not all(rec is not None and len(rec) > 2 and rec[2] == vkeys[k] for k, rec in recs.items()):
            return False
        known = max(rec[1] for rec in recs.values() if rec is not None)  # type: ignore[index]
        self.rep.documents += 1
        self.rep.chunks += known
        self.rep.unchanged += known
        self.rep.count_files("skipped_unchanged")
        for key in self.lanes:
            self.rep.count_plan(key, {}, unchanged=known)
        return True

    FETCH_AHEAD = 16  # listed files fetched at once (I/O in threads; parsing stays on this thread)

    def _fetch_pending(self) -> None:
        """Fetch the pending listed files together (an object store answers each GET in tens of ms: one at a
        time, a bucket of changed files would be bound by round trips), then parse and add them in order."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        fetchers = [getattr(d.loader, "fetch", None) for d in pending]
        if len(pending) > 1 and all(fetchers):
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self.FETCH_AHEAD, thread_name_prefix="embedrail-fetch")
            datas = list(self._pool.map(lambda f: f(), fetchers))
            for doc, data in zip(pending, datas, strict=True):
                got = data if isinstance(data, BadRow) else doc.loader.parse(data)  # type: ignore[union-attr]
                self._add_loaded(doc, got)
        else:
            for doc in pending:
                self._add_loaded(doc, doc.loader())  # type: ignore[misc]

    def _add_loaded(self, listed: Document, got: Document | BadRow) -> None:
        """A listed file read: a bad row (reported, never indexed) or a document planned as any other."""
        if isinstance(got, BadRow):
            if got.lasting and listed.version is not None:  # the same bytes fail again: not read until they change
                for key, vkey in self._version_keys(listed).items():
                    self._bad_files.setdefault(key, []).append((listed.id, vkey, got.reason))
            self.load_bad.append(got)
            if self.on_bad is not None:
                self.on_bad(got)  # the source's policy: skip (and keep its old chunks) or fail the run
            return
        self._add(got)

    def add(self, doc: Document) -> None:
        """Take a document; it is triaged once its intake window's ledger rows are read (``INTAKE`` at a time)."""
        self._intake.append(doc)
        if len(self._intake) >= self.INTAKE:
            self._drain()

    def _drain(self) -> None:
        """Read the intake window's ledger rows (one query per target), triage its documents, and fetch the listed
        files among them that must be read: every document of the window is triaged before the rows are replaced."""
        intake, self._intake = self._intake, []
        if not intake:
            return
        ids = [d.id for d in intake]
        listed = [d.id for d in intake if d.lazy]
        for key, lane in self.lanes.items():
            gen = lane.run.generation
            lane.doc_hashes = self.ledger.doc_hashes(key, gen, ids) if gen is not None else {}
            lane.bad = self.ledger.bad_files(key, gen, listed) if gen is not None and listed else {}
        for doc in intake:
            self._route(doc)
        self._fetch_pending()

    def _route(self, doc: Document) -> None:
        if doc.lazy:
            if self._listed_unchanged(doc):
                return
            if not self.lanes:
                self.rep.documents += 1
                return
            self._pending.append(doc)
            if len(self._pending) >= self.FETCH_AHEAD:
                self._fetch_pending()
            return
        self._add(doc)

    def _add(self, doc: Document) -> None:
        self.rep.documents += 1
        if not self.lanes:  # every target is down: nothing can be written, so embed nothing
            return
        if doc.deleted:
            self.rep.tombstones += 1
            if self.ctx.deletes == "none":
                return
        recorded = {k: lane.doc_hashes.get(doc.id) for k, lane in self.lanes.items()}
        tri = triage(doc, self._doc_configs, {k: rec[:2] if rec is not None else None for k, rec in recorded.items()})
        if doc.version is not None and not doc.deleted:
            self._note_versions(doc, tri, recorded)
        if not tri.need:  # every target holds this very document: not even chunked
            self.rep.chunks += tri.known_chunks
            self.rep.unchanged += tri.known_chunks
            for key in self.lanes:
                self.rep.count_plan(key, {}, unchanged=tri.known_chunks)
            return
        self.window.append((doc, tri))
        if len(self.window) >= self.WINDOW:
            self._plan_window()

    def _note_versions(self, doc: Document, tri: Triage, recorded: dict[str, tuple[str, int, str | None] | None]) -> None:
        """Targets that hold this very content under another listing version (a touched file) record the new
        one, so the next run does not fetch it again; the targets that need it record it with the document."""
        assert tri.hashes is not None
        vkeys = self._version_keys(doc)
        for key, rec in recorded.items():
            if key not in tri.need and rec is not None and (len(rec) < 3 or rec[2] != vkeys[key]):
                self._versions.setdefault(key, []).append((doc.id, tri.hashes[key], vkeys[key]))
        if sum(len(v) for v in self._versions.values()) >= 256:
            self._record_versions()

    def _record_versions(self) -> None:
        pending, self._versions = self._versions, {}
        bad, self._bad_files = self._bad_files, {}
        if self.ctx.dry_run:
            return
        for key, items in pending.items():
            lane = self.lanes.get(key)
            if lane is not None and lane.run.generation is not None and lane.dead is None:
                self.ledger.set_versions(key, lane.run.generation, items)
        for key, bad_items in bad.items():
            lane = self.lanes.get(key)
            if lane is not None and lane.run.generation is not None and lane.dead is None:
                self.ledger.set_bad_files(key, lane.run.generation, bad_items)

    def _plan_window(self) -> None:
        window, self.window = self.window, []
        held: dict[str, dict[str, dict[str, str | None]]] = {}
        for key, lane in self.lanes.items():
            ids = [d.id for d, tri in window if key in tri.need]
            gen = lane.run.generation
            held[key] = self.ledger.chunk_fingerprints(key, gen, ids) if gen is not None and ids else {}
        # the window's documents are chunked together: one batched tokenizer call, not one per document
        live = [doc for doc, _ in window if not doc.deleted]
        chunked = iter(self.chunker().chunk_many(live) if live else ())  # no document to chunk: no model loaded
        for doc, tri in window:
            if doc.deleted:
                self._plan_removal(doc, tri, held)
            else:
                self._plan_document(doc, tri, held, next(chunked))
            if len(self.batch.entries) >= self.batch_size or self.batch.n_deletes() >= self.MAX_DELETES:
                self._flush()

    def _plan_removal(self, doc: Document, tri: Triage, held: dict[str, dict[str, dict[str, str | None]]]) -> None:
        for key in tri.need:
            plan = plan_removal(doc.id, held[key].get(doc.id, {}))
            if plan.stale:
                self.rep.count_plan(key, plan.counts())
                self.batch.deletes.setdefault(key, []).extend((c, doc.id) for c in plan.stale)
                self.batch.docs_removed.setdefault(key, []).append(doc.id)

    def _plan_document(self, doc: Document, tri: Triage, held: dict[str, dict[str, dict[str, str | None]]],
                       chunks: list[Chunk]) -> None:  # fmt: skip
        meta_json = canonical_json(doc.metadata)
        planned: dict[str, list[PlannedChunk]] = {}  # embedding fingerprint -> the chunks with their fingerprints
        self.rep.chunks += len(chunks)
        writers: dict[str, list[str]] = {}  # chunk id -> targets that need it written
        retags: dict[str, list[str]] = {}  # chunk id -> targets that need its metadata updated only
        fps: dict[str, dict[str, str]] = {}  # chunk id -> target -> its fingerprint there
        for key in self.lanes:
            if key not in tri.need:
                self.rep.count_plan(key, {}, unchanged=len(chunks))
                continue
            efp = self._specs[key].fingerprint
            if efp not in planned:
                planned[efp] = plan_chunks(chunks, efp, meta_json, doc.metadata)
            pcs = planned[efp]
            plan = plan_document(doc.id, pcs, held[key].get(doc.id, {}))
            self.rep.count_plan(key, plan.counts())
            for cid in plan.writes:
                writers.setdefault(cid, []).append(key)
            for cid in plan.retagged:
                retags.setdefault(cid, []).append(key)
            if plan.writes or plan.retagged:
                for pc in pcs:
                    fps.setdefault(pc.chunk.id, {})[key] = pc.fingerprint
            if plan.stale:
                self.batch.deletes.setdefault(key, []).extend((cid, doc.id) for cid in plan.stale)
        self.rep.unchanged += sum(1 for c in chunks if c.id not in writers and c.id not in retags)
        wide = planned.get(self.ctx.fingerprint)  # the vectors' own fingerprint: the text part keys the vector cache
        for n, c in enumerate(chunks):
            keys, meta_keys = writers.get(c.id, []), retags.get(c.id, [])
            if keys or meta_keys:
                tfp = wide[n].fingerprint[:TEXT_FP] if wide is not None else text_fingerprint(c.to_embed, self.ctx.fingerprint)
                md = {**doc.metadata, **(c.metadata or {}), "_doc": doc.id, "_n": c.n}
                self.batch.entries.append(_Entry(c, tfp, md, fps[c.id], keys, meta_keys))
                if len(self.batch.entries) >= self.batch_size:
                    self._flush()
        for key in tri.need:  # committed as done only once every chunk above was written
            assert tri.hashes is not None
            vkey = self._version_key(doc, key) if doc.version is not None else None
            self.batch.docs_done.setdefault(key, []).append((doc.id, tri.hashes[key], len(chunks), vkey))

    def chunker(self) -> Chunker:
        if self._chunker is None:
            self._chunker = Chunker(self._embedder(), self.ctx.chunk_tokens, self.ctx.chunk_overlap,
                                    context=self.ctx.chunk_context, custom=self.ctx.chunker)
        return self._chunker

    # --------------------------------------------------------------------------- embedding
    def _flush(self) -> None:
        batch, self.batch = self.batch, _Batch()
        if batch.empty():
            return
        if batch.entries:
            batch.vectors = self._vectors_for(batch.entries)
        if not self.ctx.dry_run:
            self._put(batch)

    def _vectors_for(self, entries: list[_Entry]) -> np.ndarray | None:
        """One row per entry (zeros for a metadata-only entry). Each distinct text not met earlier in the run
        takes the vector of a record of the same text in a target's index, else is embedded, once; its later
        occurrences reuse that vector."""
        needed = [e for e in entries if e.targets]
        todo: dict[str, str] = {}  # text fingerprint -> text, first occurrence order
        for e in needed:
            tfp = e.text_fp
            if tfp in self._vectors:
                self._vectors.move_to_end(tfp)
            elif tfp not in todo:
                todo[tfp] = e.chunk.to_embed
        self.rep.reused += len(needed) - len(todo)
        if self.ctx.dry_run:  # remember the texts (not vectors), so the counts are those of a real run
            known = self._in_ledger(todo) if todo else set()
            self.rep.from_index += len(known)
            self.rep.embedded += len(todo) - len(known)
            for tfp in todo:
                self._remember(tfp, None)
            return None
        if not needed:
            return None
        fresh = self._from_index(todo) if todo else {}
        self.rep.from_index += len(fresh)
        for tfp in fresh:
            del todo[tfp]
        self.rep.embedded += len(todo)
        if todo:
            t0 = time.perf_counter()
            vecs = np.asarray(self._embedder().embed_documents(list(todo.values())), dtype=np.float32)
            self.rep.embed_seconds += time.perf_counter() - t0
            if vecs.shape != (len(todo), self.ctx.dims):
                raise ModelError(f"embedder returned shape {vecs.shape}, expected ({len(todo)}, {self.ctx.dims})")
            fresh.update(zip(todo, vecs, strict=True))
        out = np.zeros((len(entries), self.ctx.dims), dtype=np.float32)
        for row, e in enumerate(entries):
            if e.targets:
                vec = fresh.get(e.text_fp)
                out[row] = vec if vec is not None else self._vectors[e.text_fp]
        for tfp, vec in fresh.items():
            self._remember(tfp, vec)
        return out

    def _in_ledger(self, todo: dict[str, str]) -> set[str]:
        """A dry run's estimate of ``_from_index``: the texts of ``todo`` whose ledger names a record of the same
        text in a target that could give its vector (no store is read: a record lost or rewritten since counts)."""
        known: set[str] = set()
        for key, _, gen in self._vector_sources:
            want = [t for t in todo if t not in known]
            if not want:
                break
            known.update(self.ledger.chunks_with_text(key, gen, want))
        return known

    def _from_index(self, todo: dict[str, str]) -> dict[str, np.ndarray]:
        """text fingerprint -> the vector of a record of the same text that a target's index holds under another id
        (found through the ledger by the text part of its fingerprint), for the texts of ``todo`` that have one.
        A record counts only if its own ``_fp``, read with its vector, has that text part: a record rewritten
        since the ledger's row (by this run's writer, say) is not taken. Only targets at the run's own dims
        (their vectors are the model's, not a cut) that keep float32 vectors can give one."""
        found: dict[str, np.ndarray] = {}
        for n, (key, store, gen) in enumerate(self._vector_sources):
            want = [t for t in todo if t not in found]
            if not want:
                break
            read = getattr(store, "stored_vectors", None)  # optional: a store of the user's own may not have it
            if read is None or self.lanes[key].dead is not None:
                continue
            ids = self.ledger.chunks_with_text(key, gen, want)
            if not ids:
                continue
            try:
                stored = read([c for cs in ids.values() for c in cs])
            except StoreError as e:  # the writer meets the same store: its error decides the run; here, embed instead
                log.warning("reading stored vectors back from %s failed (%s): embedding instead", key, one_line(e))
                self._vector_sources[n] = (key, None, gen)
                continue
            for tfp, cids in ids.items():
                for cid in cids:
                    got = stored.get(cid)
                    if got is not None and str(got[1].get("_fp") or "")[:TEXT_FP] == tfp and got[0].shape == (self.ctx.dims,):
                        found[tfp] = got[0]
                        break
        return found

    def _remember(self, tfp: str, vec: np.ndarray | None) -> None:
        self._vectors[tfp] = None if vec is None else vec.copy()  # a copy: never pin a whole batch's array
        if len(self._vectors) > self._cache_size:
            self._vectors.popitem(last=False)

    def _put(self, batch: _Batch) -> None:
        for thread, q in self.writers:
            while True:
                if self.writer_error is not None:
                    raise self.writer_error
                try:
                    q.put(batch, timeout=0.5)
                    break
                except queue.Full:
                    if not thread.is_alive():
                        raise RuntimeError("writer thread died") from self.writer_error

    def finish(self) -> None:
        self._drain()
        self._plan_window()
        self._flush()
        self._record_versions()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        writers, self.writers = self.writers, []
        for thread, q in writers:
            if thread.is_alive():
                q.put(None)  # a writer that failed drains its queue, so this never blocks for good
        for thread, _ in writers:
            thread.join()
        if self.writer_error is not None:
            err, self.writer_error = self.writer_error, None
            raise err

    # --------------------------------------------------------------------------- writing (writer thread)
    def _writer_loop(self, lane: Lane, q: queue.Queue[_Batch | None]) -> None:
        """Write batches together: up to ``queue_depth`` batches and ``WRITE_MAX`` records per store write,
        waiting at most ``WRITE_WAIT`` seconds for the next one (fewer, larger store requests and ledger
        transactions; a store's cost per request dominates small writes). Memory: at most ``queue_depth``
        batches queued and as many in the group being written."""
        stop = False  # the end mark (None) was taken with a group
        try:
            while not stop and (batch := q.get()) is not None:
                group, n = [batch], len(batch.entries)
                deadline = time.monotonic() + self.WRITE_WAIT
                while n < self.WRITE_MAX and len(group) < q.maxsize:
                    try:
                        more = q.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    group.append(more)
                    n += len(more.entries)
                self._write(lane, batch if len(group) == 1 else _Batch.merged(group, self.ctx.dims))
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            if self.writer_error is None:
                self.writer_error = e
            while not stop:  # drain, so the producer never blocks forever
                try:
                    if q.get_nowait() is None:
                        return
                except queue.Empty:
                    time.sleep(0.05)
                    if not threading.main_thread().is_alive():
                        return

    def _write(self, lane: Lane, batch: _Batch) -> None:
        """One target's share of a batch, under the crash-safety protocol: intent -> store -> ledger."""
        key, gen = lane.key, lane.run.generation
        entries = [(i, e) for i, e in enumerate(batch.entries) if key in e.targets]
        retags = [e for e in batch.entries if key in e.retag]
        deletes = batch.deletes.get(key, [])
        done, removed = batch.docs_done.get(key, []), batch.docs_removed.get(key, [])
        if not (entries or retags or deletes or done or removed):
            return
        if lane.dead is not None:
            self.rep.failed[key] += len(entries) + len(retags) + len(deletes)
            return
        assert lane.store is not None and gen is not None
        try:
            written: list[tuple[str, str, str]] = []
            if entries:
                # 1. Intent BEFORE the write: the ledger learns that these ids may exist in the store. If the
                #    process dies after the store acknowledged but before step 3, the next run still finds them
                #    (planned as changed and rewritten; found by snapshot deletes): nothing is orphaned.
                self.ledger.mark_intent(key, gen, [(e.chunk.id, e.chunk.doc_id) for _, e in entries], lease=self.lease)
                # 2. The write. Rejected records come back by id; the rest is acknowledged.
                assert batch.vectors is not None
                vecs = batch.vectors[[i for i, _ in entries]]
                dims = self._specs[key].dims
                if dims < vecs.shape[1]:  # a narrower target: its Matryoshka truncation, renormalised
                    vecs = truncate_and_normalize(vecs, dims)
                res = lane.store.upsert([Record(e.chunk.id, vecs[j], e.chunk.text, e.metadata_for(key))
                                         for j, (_, e) in enumerate(entries)])  # fmt: skip
                for _, e in entries:
                    if e.chunk.id in res.failed:
                        lane.failed_docs.add(e.chunk.doc_id)
                    else:
                        written.append((e.chunk.id, e.chunk.doc_id, e.fingerprints[key]))
                if res.failed:
                    self.rep.fail(key, f"{len(res.failed)} records rejected: {next(iter(res.failed.values()))}", len(res.failed))
                self.rep.upserted[key] += len(written)
            if retags:
                # Same text, new metadata: the stored vector is kept and only the metadata replaced. No intent
                # is needed: the ids are in the ledger already, and a crash before step 3 leaves the old
                # fingerprint there, so the next run plans the same (idempotent) update again. A record the
                # store no longer holds, or one it refused, gets an intent row (NULL fingerprint) instead: the
                # next run plans it as changed and writes it whole.
                rres = lane.store.update_metadata([(e.chunk.id, e.metadata_for(key)) for e in retags])
                for e in retags:
                    if e.chunk.id in rres.failed:
                        lane.failed_docs.add(e.chunk.doc_id)
                    else:
                        written.append((e.chunk.id, e.chunk.doc_id, e.fingerprints[key]))
                if rres.failed:
                    self.ledger.forget_fingerprints(key, gen, list(rres.failed))
                    self.rep.fail(key, f"{len(rres.failed)} metadata updates rejected: {next(iter(rres.failed.values()))}",
                                  len(rres.failed))  # fmt: skip
                self.rep.retagged[key] += len(retags) - len(rres.failed)
            deleted: list[str] = []
            if deletes:
                dres = lane.store.delete([c for c, _ in deletes])
                for c, d in deletes:
                    if c in dres.failed:
                        lane.failed_docs.add(d)
                    else:
                        deleted.append(c)
                if dres.failed:
                    self.rep.fail(key, f"{len(dres.failed)} deletes rejected: {next(iter(dres.failed.values()))}", len(dres.failed))
                self.rep.deleted[key] += len(deleted)
            # 3. Commit AFTER the store acknowledged, and only what it acknowledged: a document counts as done
            #    only when all its chunks were written and its stale ones deleted. The ledger is never ahead
            #    of the store, so any crash leaves work that the next run repairs, never a gap.
            self.ledger.commit(key, gen, written=written, deleted=deleted,
                               docs_done=[x for x in done if x[0] not in lane.failed_docs],
                               docs_removed=[d for d in removed if d not in lane.failed_docs], lease=self.lease)  # fmt: skip
        except Exception as e:  # noqa: BLE001 - the target failed: the others go on
            if not is_retryable(e):
                raise
            lane.dead = one_line(e)
            log.warning("%s: %s — skipping this target for the rest of the run", key, lane.dead)
            self.rep.fail(key, lane.dead, len(entries) + len(retags) + len(deletes))
