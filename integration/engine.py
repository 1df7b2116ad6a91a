"""The incremental sync engine (DESIGN.md, "The data flow"): a short façade over its parts.

```
Source ──Document──▶ Chunker ──Chunk──▶ Planner (ledger diff per target)  ── plan.py
  new + changed ──▶ Embedder (once per run) ──vectors──▶ each target's upsert ──ack──▶ Ledger.commit
  stale / deleted ──▶ each target's delete ──ack──▶ Ledger.commit               ── pipeline.py
```

One run = ``prepare()`` -> ``sync_partition(i, n, ctx)`` for every i (possibly in several processes or
Airflow mapped tasks) -> ``delete_absent(ctx)`` -> ``finalize(ctx, partials)``; ``run()`` does all four
here. ``prepare`` chooses the embedding (``embedding.py``), ensures each target's index or begins /
recovers its full rebuild (``rebuilds.py``), and returns the ``RunContext`` (``context.py``) every later
step takes. Every step is idempotent: re-running one after a crash or a retry repairs, never duplicates,
because upserts are per id and the ledger only moves after the store acknowledged.

Exactness under everyday drift, not only under crashes (``drift.py``): ``prepare`` reads each index's
owner stamp, so a target whose URL is spelt differently keeps its ledger rows, and refuses a non-empty
index this ledger does not know (``--adopt`` takes it over from its records, ``--mode full`` rebuilds
it); every incremental run probes the store against the ledger and repairs what drifted
(``repair``); snapshot deletes above ``max_delete_fraction`` of a target's documents are not made and
fail the run (``allow_mass_delete``).

One run at a time per target: ``prepare`` leases every target to its run in the ledger (``er_leases``),
every intent and commit of the run renews the lease (a ``Lease`` object the run passes to its writes),
``finalize`` (or the end of ``run()``) releases it; so does a ``prepare`` that fails.
A second run that finds a live lease of another run raises ``RunConflictError`` before writing: two runs
writing the same chunk ids could interleave their store writes and ledger commits in opposite orders and
leave a stored vector that the ledger does not describe. A lease is taken over when its run stopped
writing for ``lease_ttl`` seconds, when its holder was a process of this machine that is gone, or when
the holder has this engine's ``run_owner`` (runs of one Airflow DAG, which Airflow already serialises:
the DAG factory sets ``max_active_runs=1``). The default owner is this engine alone
(``process:HOST:PID:NONCE``): two engines, or two threads, on one ledger never hold a target at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

from embedrail.connectors.base import IndexInfo, IndexSpec, VectorStore
from embedrail.errors import ConfigError, IndexMismatchError, IndexOwnershipError, is_retryable
from embedrail.integration import drift, rebuilds
from embedrail.integration.context import RunContext, TargetRun, Watermark, spec_dict
from embedrail.integration.documents import Document, partition_of
from embedrail.integration.embedding import ModelResolver, TargetNeed
from embedrail.integration.idsort import SortedIds, absent
from embedrail.integration.ledger import Lease, Ledger, TargetState
from embedrail.integration.options import SyncOptions
from embedrail.integration.pipeline import Lane, PartitionRun
from embedrail.integration.report import Report
from embedrail.integration.sources import Source, decode_watermark, encode_watermark, open_source
from embedrail.integration.targets import Target, TargetSet, TargetSlot, target_key
from embedrail.secrets import one_line

__all__ = ["SyncEngine", "SyncOptions", "Target", "redact_url", "sync"]

log = logging.getLogger("embedrail.sync")

#: the ledger key of a target URL (kept under its old name)
redact_url = target_key


class SyncEngine:
    """Keep one or more vector-store targets in step with a source.

    ``source``: a spec string for ``open_source`` or a ``Source``/iterable. ``targets``: URLs (for
    ``connectors.connect``; ``URL#dims=N`` gives that target its own dims), ``VectorStore`` objects (the
    caller closes those), or ``Target(url_or_store, dims=N)``. ``options``: a ``SyncOptions``; its fields
    may also be given as keywords (``mode="full"``, ``dims=256``, ...); ``dims`` is the default of the
    targets without their own. With a Matryoshka model the run embeds once, at the largest dims a target
    needs, and writes each target the truncation to its own dims, renormalised.
    ``ledger``: a SQLAlchemy URL or a ``Ledger``; required (``$EMBEDRAIL_LEDGER`` is used when it is None):
    the ledger is what the index is kept exact by, so it never defaults to a path relative to the working
    directory. ``embedder``: an already loaded embedder to use; ``embedder_factory(name, dims=,
    device=)`` loads one (e.g. a per-process cache); ``connect(url)`` opens a store. ``run_owner``: who
    holds the run lease (default: this engine, ``process:HOST:PID:NONCE``; the Airflow tasks pass
    ``airflow:DAG_ID``); ``lease_ttl``: seconds without a write after which a run's lease lapses
    (default ``$EMBEDRAIL_LEASE_TTL`` or 900).
    """

    LEASE_TTL = 900

    def __init__(
        self,
        source: Any,
        targets: Sequence[str | VectorStore | Target],
        *,
        options: SyncOptions | None = None,
        ledger: str | Ledger | None = None,
        embedder: Any = None,
        progress: bool | None = None,
        connect: Callable[[str], VectorStore] | None = None,
        embedder_factory: Callable[..., Any] | None = None,
        run_owner: str | None = None,
        lease_ttl: int | None = None,
        **option_values: Any,
    ) -> None:
        opts = options or SyncOptions()
        self.options = opts.replace(**option_values) if option_values else opts
        self.targets = TargetSet(targets, connect)
        ledger = ledger if ledger is not None else os.environ.get("EMBEDRAIL_LEDGER")
        if not ledger:
            raise ConfigError("no ledger: pass ledger= (a SQLAlchemy URL such as 'sqlite:////var/lib/embedrail/ledger.sqlite' "
                              "or 'postgresql://…', or a Ledger) or set EMBEDRAIL_LEDGER. The ledger is what keeps the "
                              "index exact, so it is never a default path relative to the working directory")  # fmt: skip
        self._owns_source = not isinstance(source, Source)
        self.source: Source = open_source(source, on_bad_row=self.options.on_bad_row, **self.options.source_options)
        self._owns_ledger = not isinstance(ledger, Ledger)
        self.ledger = ledger if isinstance(ledger, Ledger) else Ledger(ledger)
        self.models = ModelResolver(self.ledger, self.options.device, embedder, embedder_factory, self.options.dtype,
                                    model=self.options.model)  # fmt: skip
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.run_owner = run_owner or _process_owner()
        self.lease_ttl = int(lease_ttl or os.environ.get("EMBEDRAIL_LEASE_TTL") or self.LEASE_TTL)
        # ids a single-partition pass of this process saw; delete_absent re-reads the source without them
        self._snapshot_ids: SortedIds | None = None
        self._leases: dict[str, Lease] = {}  # run id -> the lease this engine took in prepare()

    # ------------------------------------------------------------------------------------ prepare
    def prepare(self) -> RunContext:
        """Choose model and dims, recover interrupted rebuilds, ensure the indexes (or begin full rebuilds),
        resolve each index's owner and probe (and repair) drift.

        Raises before anything is written: ``IndexMismatchError`` (an incremental run against an index of
        another embedding), ``DimensionLimitError``, ``IndexOwnershipError`` (a non-empty index this ledger
        does not know); a target that is down is marked failed in the context instead, and the others go
        on. The leases it took are released when it raises.
        """
        opts = self.options
        if opts.adopt and opts.dry_run:
            raise ConfigError("--adopt rebuilds this ledger's rows from the index's records; it cannot be combined with --dry-run")
        looked = {t.given: self._look(t) for t in self.targets}
        for t in self.targets:  # the key the ledger keeps the index by (the index's stamp may name another spelling)
            t.key = drift.ledger_key(self.ledger, t.given, looked[t.given][1])
        self.targets.check_distinct()
        needs = [TargetNeed(t.key, t.dims or opts.dims, looked[t.given][0] if t.error is None else None) for t in self.targets]
        recorded = {t.key: _embedding(looked[t.given][1]) for t in self.targets}
        choice = self.models.choose(opts.model, needs, incremental=opts.mode == "incremental", recorded=recorded.get)
        deletes = opts.deletes if opts.deletes != "auto" else ("tombstone" if self.source.is_feed else "snapshot")
        if deletes == "snapshot" and self.source.is_feed:
            raise ConfigError("a watermark feed yields only changed rows: use --deletes tombstone (or none), not snapshot")
        run_id = uuid.uuid4().hex[:12]
        keys = [t.key for t in self.targets]
        # before the first write (an index created, a rebuild begun)
        lease = None if opts.dry_run else self.ledger.acquire(keys, run_id, self.run_owner, self.lease_ttl, self._may_take_over)
        try:
            ctx = RunContext(run_id=run_id, mode=opts.mode, dry_run=opts.dry_run, deletes=deletes, model=choice.name,
                             load_dims=choice.load_dims, model_id=choice.info.model_id, spec=choice.spec,
                             chunk_tokens=opts.chunk_tokens, chunk_overlap=opts.chunk_overlap, notes=list(choice.notes),
                             chunk_context=opts.chunk_context, chunker=opts.chunker,
                             max_delete_fraction=opts.max_delete_fraction, allow_mass_delete=opts.allow_mass_delete,
                             source_state=self.source.state())  # fmt: skip
            for i, t in enumerate(self.targets):
                run = TargetRun(index=i, key=t.key, given=t.given if t.given != t.key else None, error=t.error,
                                spec=choice.specs[t.key])  # fmt: skip
                if run.given:
                    ctx.notes.append(f"{t.given}: this ledger keeps the index as {t.key} (the same index, its URL spelt "
                                     "another way): continuing with its ledger rows")  # fmt: skip
                ctx.targets.append(run)
                if run.ok:
                    self._prepare_target(t, run, ctx, looked[t.given][1])
            if self.source.is_feed and self.source.watermark_key:  # the lowest any target holds (None: read all)
                held = [None if opts.mode == "full" else decode_watermark(self.ledger.watermark(t.key, self.source.watermark_key))
                        for t in self.targets]  # fmt: skip
                since = None if any(v is None for v in held) else min(held)
                ctx.watermark = Watermark(self.source.watermark_key, encode_watermark(since))
        except BaseException:
            if lease is not None:  # refused or failed: let the next run in at once
                with contextlib.suppress(Exception):
                    self.ledger.release(keys, run_id)
            raise
        if lease is not None:
            self._leases[run_id] = lease
        return ctx

    def _look(self, t: TargetSlot) -> tuple[int | None, IndexInfo | None]:
        """The target's dims limit and what its index records now (None, None: the store is down; the
        target is marked failed and the others go on)."""
        try:
            store = self.targets.store(t)
            return store.max_dims(), store.describe()
        except Exception as e:
            if not is_retryable(e):
                raise
            t.error = one_line(e)
            return None, None

    def _may_take_over(self, owner: str) -> bool:
        """Whether a live lease of ``owner`` may be taken: ours (one Airflow DAG, serialised by Airflow; or
        this very engine), or a process of this machine that no longer exists."""
        if owner == self.run_owner:
            return True
        kind, _, rest = owner.partition(":")
        host, _, pid = rest.partition(":")
        pid = pid.partition(":")[0]
        return kind == "process" and host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid))

    def _lease(self, ctx: RunContext) -> Lease | None:
        """The lease a step of ``ctx``'s run writes under (taken by ``prepare``, in this process or another)."""
        if ctx.dry_run:
            return None
        return self._leases.setdefault(ctx.run_id, Lease(ctx.run_id, self.lease_ttl))

    def _prepare_target(self, t: TargetSlot, run: TargetRun, ctx: RunContext, info: IndexInfo | None) -> None:
        spec = ctx.spec_of(run)
        owner = drift.owner_record(self.ledger, t.key)
        try:
            state = self.ledger.target(t.key)
            if state and state.pending_generation:
                if rebuilds.recover(self.ledger, self.targets, t, run, state, spec, full=ctx.mode == "full",
                                    dry_run=ctx.dry_run, notes=ctx.notes):  # fmt: skip
                    self.targets.writer(t, run).set_owner(owner)
                    return
                state, info = self.ledger.target(t.key), None  # the index may have changed
            if ctx.mode == "full":
                if ctx.dry_run:
                    run.rebuild = True  # nothing begun: every chunk is planned as new
                else:
                    rebuilds.begin(self.ledger, self.targets, t, run, spec)
                    self.targets.writer(t, run).set_owner(owner)
                return
            store = self.targets.store(t)
            info = info if info is not None else store.describe()
            take = self._ownership(t, state, info, store)
            if ctx.dry_run:
                if info.exists and info.spec is not None and info.spec.fingerprint and info.spec.fingerprint != spec.fingerprint:
                    raise IndexMismatchError(f"{t.key}: index fingerprint {info.spec.fingerprint} != {spec.fingerprint}")
                run.generation = (info.physical_name or info.name) if info.exists else None
                if take == "known" and run.generation:
                    self._check_drift(t, run, store, ctx)
                return
            info = store.ensure_index(spec)
            run.generation = info.physical_name or info.name
            if take == "adopt":
                n = drift.adopt(self.ledger, store, t.key, run.generation)
                ctx.notes.append(f"{t.key}: adopted the index into this ledger ({self.ledger.url}): {n} records")
            elif take == "new" and state is not None:
                self.ledger.reset(t.key, run.generation)  # rows of another index of this name: they describe nothing now
            self._align_ledger(t.key, state, run.generation, spec)
            if info.owner != owner:
                store.set_owner(owner)
            if take == "known":
                self._check_drift(t, run, store, ctx)
        except IndexMismatchError as e:
            if ctx.mode == "incremental":
                raise IndexMismatchError(f"{one_line(e)} — the index holds vectors of another embedding (model/dims); "
                                         f"run with --mode full to rebuild it with {ctx.model} at {spec.dims} dims") from None  # fmt: skip
            raise
        except Exception as e:
            if not is_retryable(e):
                raise
            run.error = t.error = one_line(e)  # the store is down or broken: the others go on

    def _ownership(self, t: TargetSlot, state: TargetState | None, info: IndexInfo, store: VectorStore) -> str:
        """Whether this ledger keeps the index (``known``), may take it as it is (``new``: no index yet, or
        an empty one) or adopts it (``adopt``: asked to). A non-empty index it does not know raises
        ``IndexOwnershipError``: an incremental run would embed everything again and leave the documents
        deleted meanwhile in the index for good."""
        if not info.exists:
            return "new"
        if self.options.adopt:
            return "adopt"
        owner = info.owner
        mine = owner is None or owner["ledger"] == self.ledger.id
        if state is not None and mine and state.generation == (info.physical_name or info.name):
            return "known"
        count = info.count or 0
        if count == 0:  # a count can lag writes (Elasticsearch counts what its last refresh made visible)
            store.flush()
            count = store.count()
        if count == 0:
            return "new"
        if owner is not None and not mine:
            who = (f"is kept by another ledger (id {owner['ledger']}, as {owner['key']}), not by this one "
                   f"({self.ledger.url}, id {self.ledger.id}). Run with that ledger (--ledger / EMBEDRAIL_LEDGER), or")  # fmt: skip
        else:
            why = ("its ledger rows describe another index of this name" if state is not None
                   else "no embedrail ledger is recorded in it: written by another tool, before embedrail 0.2, or through "
                        "a ledger since lost" if owner is None else "this ledger has no rows for it (reset by hand?)")  # fmt: skip
            who = f"is not known to this ledger ({self.ledger.url}): {why}. Run with the ledger that wrote it, or"
        raise IndexOwnershipError(
            f"{t.given}: the index holds {count} records and {who} with --adopt to rebuild this ledger's rows from the "
            "records' own _doc/_fp (then only what changed is embedded, and documents gone from the source are "
            "deleted), or with --mode full to rebuild the index. An incremental run now would embed everything again "
            "and leave the documents deleted meanwhile in the index for good, so nothing was written."
        )

    def _check_drift(self, t: TargetSlot, run: TargetRun, store: VectorStore, ctx: RunContext) -> None:
        """Probe the store against the ledger (``repair``: auto / on / off), repair what drifted, report it."""
        opts, gen = self.options, run.generation
        assert gen is not None
        apply = not ctx.dry_run
        found: drift.Diff | None = None
        if opts.repair == "on":
            counts = self.ledger.counts(t.key, gen)  # before the repair changes them
            found = drift.diff(self.ledger, store, t.key, gen, apply=apply)
            d = found.drift(counts["chunks"], counts["pending_chunks"])
        else:
            d = drift.probe(self.ledger, store, t.key, gen, opts.drift_sample)
            if d.found and opts.repair == "auto":
                found = drift.diff(self.ledger, store, t.key, gen, fingerprints=d.stale > 0, apply=apply)
                sampled, d = d.sampled, found.drift(d.ledger_count, d.in_flight)
                d.sampled = sampled
        if d.found:
            if found is not None and found.applied:
                ctx.notes.append(f"{t.key}: drift repaired ({d.summary()}): {found.missing} missing and "
                                 f"{found.stale} stale records planned again, {found.deleted} unknown records deleted")  # fmt: skip
            else:
                ctx.notes.append(f"{t.key}: the store and the ledger disagree ({d.summary()}); "
                                 + ("a run would repair it" if ctx.dry_run and opts.repair != "off" else "run with --repair to repair it"))  # fmt: skip
            log.warning("%s: drift: %s%s", t.key, d.summary(), " (repaired)" if d.repaired else "")
        ctx.drift[t.key] = d.to_dict()

    def _align_ledger(self, key: str, state: TargetState | None, generation: str, spec: IndexSpec) -> None:
        """Forget ledger rows that do not describe the physical index the target has now; record the target."""
        if state is not None and state.generation != generation:
            self.ledger.reset(key, state.generation)
        if state is None or state.generation != generation or state.fingerprint != spec.fingerprint:
            self.ledger.set_target(key, generation=generation, fingerprint=spec.fingerprint, spec=spec_dict(spec))

    # ------------------------------------------------------------------------------------ partition
    def split(self, ctx: RunContext | dict[str, Any], count: int) -> list[dict[str, Any] | None]:
        """The share of the source each of ``count`` partitions reads, decided once (the Airflow ``partitions``
        task; ``sync_partition`` asks itself when not given one): byte ranges of a JSONL/CSV file, key ranges of
        a SQL query, path ranges of a folder or bucket, so that the partitions read the source about once in
        total. ``[None] * count`` for a source that cannot split: every partition then reads it whole and keeps
        the documents whose id hashes to it."""
        ctx = RunContext.of(ctx)
        if count <= 1:
            return [None] * max(count, 1)
        if ctx.watermark:
            self.source.set_watermark(decode_watermark(ctx.watermark.since))
        got = self.source.shares(count, ctx.source_state)
        if got is None:
            return [None] * count
        if len(got) != count:
            raise ConfigError(f"{self.source.name}: split into {len(got)} shares, not {count}")
        return list(got)

    def sync_partition(self, index: int, count: int, ctx: RunContext | dict[str, Any],
                       share: dict[str, Any] | None | Literal["auto"] = "auto") -> dict[str, Any]:  # fmt: skip
        """Sync partition ``index`` of ``count``: plan, embed, write, delete stale chunks, commit the ledger.
        ``share``: the part of the source it reads (one of ``split(ctx, count)``; ``"auto"``: ask the source;
        None: read it whole and keep the documents whose stable ``partition_of(doc_id, count) == index``).
        Returns a partial report (JSON-able) for ``finalize``."""
        if not 0 <= index < max(count, 1):
            raise ConfigError(f"partition {index} out of range for {count} partitions")
        ctx, started = RunContext.of(ctx), time.time()
        if share == "auto":
            share = self.split(ctx, count)[index] if count > 1 else None
        bound = self.targets.bind(ctx)
        if count > 1:
            self._check_embedded(bound, count)
        rep = ctx.new_report(partitions=count)
        rep.notes.extend(ctx.notes)
        lanes: dict[str, Lane] = {}
        for t, run in bound:
            if not run.ok:
                rep.fail(t.key, run.error or "failed")
                continue
            try:
                lanes[t.key] = self._lane(ctx, t, run)
            except Exception as e:
                if not is_retryable(e) and not isinstance(e, ConfigError):
                    raise
                rep.fail(t.key, one_line(e))
                continue
        if ctx.watermark:
            self.source.set_watermark(decode_watermark(ctx.watermark.since))
        pipe = PartitionRun(ctx=ctx, ledger=self.ledger, lease=self._lease(ctx), report=rep, lanes=lanes,
                            embedder=lambda: self.models.for_run(ctx), batch_size=self.options.batch_size,
                            queue_depth=self.options.queue_depth, on_bad=self.source.report_bad)  # fmt: skip
        seen = SortedIds() if count == 1 and ctx.deletes == "snapshot" else None
        mine = count == 1 or share is not None  # every document read is this partition's
        self.source.read_share(share)
        read = 0
        try:
            for doc in self._documents():
                read += 1
                if seen is not None:
                    seen.add(doc.id)
                if mine or partition_of(doc.id, count) == index:
                    pipe.add(doc)
            pipe.finish()
        finally:
            pipe.close()
            self.source.read_share(None)
        rep.read = read
        if seen is not None:
            self._forget_snapshot()
            self._snapshot_ids = seen.update(self.source.bad_ids)
        # reading the whole source, every partition meets its bad rows (report them once); a share's bad rows and a
        # file that could not be read or parsed are this partition's own
        own = {id(b) for b in pipe.load_bad}
        listed_bad = [b for b in self.source.bad_rows if id(b) not in own] if mine or index == 0 else []
        rep.skipped_bad_rows = len(listed_bad) + len(pipe.load_bad)
        rep.bad_rows = [b.to_dict() for b in (listed_bad + pipe.load_bad)[: Report.MAX_BAD_ROWS]]
        stats = getattr(self.source, "stats", None)
        if stats:
            for k in ("listed", "fetched", "parsed"):  # the whole listing, read by every partition, counted once
                rep.count_files(k, stats.get(k, 0) if k != "listed" or mine or index == 0 else 0)
        d = rep.to_dict()
        d["seconds"] = round(time.time() - started, 3)
        d["watermark_max"] = encode_watermark(self.source.max_watermark()) if ctx.watermark else None
        return d

    def _lane(self, ctx: RunContext, t: TargetSlot, run: TargetRun) -> Lane:
        """Where a partition writes for ``t`` (None in a dry run), and for a full rebuild the index it replaces, when
        that holds vectors of the same embedding: a rebuild for another index type, quantisation or sparse vectors
        takes its vectors from there instead of the model."""
        store = None if ctx.dry_run else self.targets.writer(t, run)
        lane = Lane(run, store)
        if run.rebuild:
            state = self.ledger.target(t.key)
            if state is not None and state.generation and state.generation != run.generation \
                    and state.fingerprint == ctx.spec_of(run).fingerprint:  # fmt: skip
                lane.donor = (None if ctx.dry_run else self.targets.store(t), state.generation)
        return lane

    def _check_embedded(self, bound: list[tuple[TargetSlot, TargetRun]], count: int) -> None:
        """Refuse partitions on an embedded store: its files take one process at a time."""
        for t, run in bound:
            if run.ok and getattr(self.targets.store(t), "embedded", False):
                raise ConfigError(f"{t.given} is an embedded store (its files are written by one process at a time), so it "
                                  f"cannot take {count} partitions: use partitions=1 for it, or a server "
                                  "(chroma+http://, qdrant://host)")  # fmt: skip

    def _documents(self) -> Iterator[Document]:
        if not self.progress:
            return iter(self.source)
        from tqdm import tqdm

        return iter(tqdm(self.source, unit=" documents", desc="sync", file=sys.stderr, leave=False))

    # ------------------------------------------------------------------------------------ deletes
    def delete_absent(self, ctx: RunContext | dict[str, Any]) -> dict[str, Any]:
        """Snapshot deletes: remove from every target the documents the source no longer has. A target that
        would lose more than ``max_delete_fraction`` of its documents keeps them (unless
        ``allow_mass_delete``): the report says so, with the numbers, and the run fails."""
        ctx = RunContext.of(ctx)
        bound, rep = self.targets.bind(ctx), ctx.new_report()
        if ctx.deletes != "snapshot":
            return rep.to_dict()
        seen, repeated = self._snapshot_ids, []
        if seen is None:  # another process read the source: read its ids again (the listing, for files)
            seen = SortedIds().update(d.id for d in self.source)
            seen.update(self.source.bad_ids)
            repeated = list(dict.fromkeys(getattr(self.source, "repeated", ())))
        self._snapshot_ids = None
        try:
            if repeated:
                self._rewrite_first_occurrences(ctx, bound, repeated, rep)
            for t, run in bound:
                if not run.ok or run.generation is None:
                    continue
                # two streaming passes over the ledger's ids, merged with the source's (both sorted): first count,
                # for the guard, then delete page by page; neither side is ever held whole in memory
                gen = run.generation
                held = _Counted(self.ledger.iter_doc_ids(t.key, gen))
                deleting = sum(1 for _ in absent(held, seen))
                if not deleting:
                    continue
                if self._mass_delete(ctx, t.key, deleting, held.count, rep):
                    continue
                try:
                    for page in drift.pages(absent(self.ledger.iter_doc_ids(t.key, gen), seen), 1000):
                        chunks_of = self.ledger.chunk_fingerprints(t.key, gen, page)
                        rep.plan[t.key]["deleted"] += sum(len(v) for v in chunks_of.values())
                        if not ctx.dry_run:
                            self._delete_documents(t, run, page, chunks_of, rep, self._lease(ctx))
                except Exception as e:
                    if not is_retryable(e):
                        raise
                    rep.fail(t.key, one_line(e))
        finally:
            seen.close()
        return rep.to_dict()

    def _rewrite_first_occurrences(self, ctx: RunContext, bound: list[tuple[TargetSlot, TargetRun]], ids: list[str],
                                   rep: Report) -> None:  # fmt: skip
        """Ids the source repeats. Partitions that read shares of it (byte ranges of a file) each keep the first
        occurrence *in their share*, so an id repeated in two shares was written by both, racing: the store and the
        ledger may each keep another copy. Write the first occurrence in the whole source again (what one process
        keeps), its ledger rows forgotten first (intents: whatever either copy left is then rewritten or deleted);
        its vectors come from the index where it holds them. A repeat within one share costs the same, once."""
        shown = ", ".join(repr(i) for i in ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        rep.notes.append(f"{len(ids)} ids occur more than once in the source ({shown}): each was written from its first "
                         "occurrence; give every document its own id")  # fmt: skip
        log.warning("%s", rep.notes[-1])
        if ctx.dry_run:
            return
        lease, wanted = self._lease(ctx), set(ids)
        runs = [(t, run) for t, run in bound if run.ok and run.generation is not None]
        lanes = {t.key: self._lane(ctx, t, run) for t, run in runs}
        sub = ctx.new_report()
        pipe = PartitionRun(ctx=ctx, ledger=self.ledger, lease=lease, report=sub, lanes=lanes,
                            embedder=lambda: self.models.for_run(ctx), batch_size=self.options.batch_size,
                            queue_depth=self.options.queue_depth)  # fmt: skip

        def rewrite(group: list[Document]) -> None:
            """Forget what the ledger holds of these documents, then plan them (streamed: never all of them at once)."""
            for t, run in runs:
                assert run.generation is not None
                held = self.ledger.chunk_fingerprints(t.key, run.generation, [d.id for d in group])
                self.ledger.forget_fingerprints(t.key, run.generation, [c for chunks in held.values() for c in chunks])
                self.ledger.commit(t.key, run.generation, docs_removed=[d.id for d in group], lease=lease)
            for d in group:
                pipe.add(d)

        try:
            group: list[Document] = []
            for d in self.source:  # the source yields the first occurrence of an id, and drops the others
                if d.id in wanted:
                    group.append(d)
                    if len(group) >= PartitionRun.INTAKE:
                        rewrite(group)
                        group = []
            rewrite(group)
            pipe.finish()
        finally:
            pipe.close()
        sub.documents = sub.chunks = sub.unchanged = 0  # the partitions counted these documents; their plan too
        sub.plan = {}
        rep.merge(sub)

    def _forget_snapshot(self) -> None:
        if self._snapshot_ids is not None:
            self._snapshot_ids.close()
            self._snapshot_ids = None

    @staticmethod
    def _mass_delete(ctx: RunContext, key: str, deleting: int, held: int, rep: Report) -> bool:
        """Whether deleting ``deleting`` of a target's ``held`` documents is refused (and reported as such)."""
        limit = ctx.max_delete_fraction
        if ctx.allow_mass_delete or deleting <= limit * held:
            return False
        rep.refuse_deletes(key, deleting, held, limit)
        log.warning("%s: %d of its %d documents are gone from the source (more than max_delete_fraction %g): not deleting "
                    "them; if the source really shrank, run with --allow-mass-delete", key, deleting, held, limit)  # fmt: skip
        return True

    def _delete_documents(self, t: TargetSlot, run: TargetRun, docs: list[str], chunks_of: dict[str, dict[str, Any]],
                          rep: Report, lease: Lease | None) -> None:  # fmt: skip
        store, gen = self.targets.writer(t, run), run.generation
        assert gen is not None
        for i in range(0, len(docs), 200):
            part = docs[i : i + 200]
            ids = [c for d in part for c in chunks_of.get(d, {})]
            res = store.delete(ids) if ids else None
            if res is not None and res.failed:
                rep.fail(t.key, f"delete failed for {len(res.failed)} ids: {next(iter(res.failed.values()))}", len(res.failed))
                part = [d for d in part if not any(c in res.failed for c in chunks_of.get(d, {}))]
            gone = [c for d in part for c in chunks_of.get(d, {})]
            self.ledger.commit(t.key, gen, deleted=gone, docs_removed=part, lease=lease)  # after the store acknowledged
            rep.deleted[t.key] += len(gone)

    # ------------------------------------------------------------------------------------ finalize
    def finalize(self, ctx: RunContext | dict[str, Any], partial_reports: Iterable[dict[str, Any]]) -> dict[str, Any]:
        """Merge the partial reports, flush every target, switch full rebuilds (targets without failures),
        advance feed watermarks. Returns the run report (JSON-able)."""
        ctx = RunContext.of(ctx)
        rep = ctx.new_report()
        rep.ledger = self.ledger.url
        wm_max = None
        for p in partial_reports:
            rep.merge(Report.from_dict(p))
            rep.partitions = max(rep.partitions, int(p.get("partitions", 1)))
            if p.get("watermark_max"):
                v = decode_watermark(p["watermark_max"])
                wm_max = v if wm_max is None or v > wm_max else wm_max
        rep.notes.extend(n for n in ctx.notes if n not in rep.notes)
        bound = self.targets.bind(ctx)
        if not ctx.dry_run:
            for t, run in bound:
                if not run.ok or rep.errors.get(t.key):
                    continue
                try:
                    self.targets.writer(t, run).flush()
                    if run.rebuild:
                        if rep.failed.get(t.key):
                            rep.notes.append(f"{t.key}: rebuild not switched ({rep.failed[t.key]} failures); re-run --mode full")
                            continue
                        if self._rebuild_drops_too_much(ctx, t, run, rep):
                            continue
                        rebuilds.commit(self.ledger, self.targets, t, run, ctx.spec_of(run))
                except Exception as e:
                    if not is_retryable(e):
                        raise
                    rep.fail(t.key, one_line(e))
            if ctx.watermark and wm_max is not None:
                for t, _ in bound:
                    if t.key not in rep.errors and not rep.failed.get(t.key):
                        self.ledger.set_watermark(t.key, ctx.watermark.key, encode_watermark(wm_max))
            self.ledger.release([t.key for t in self.targets], ctx.run_id)
            self._leases.pop(ctx.run_id, None)
        rep.seconds = time.time() - ctx.started
        return rep.to_dict()

    def _rebuild_drops_too_much(self, ctx: RunContext, t: TargetSlot, run: TargetRun, rep: Report) -> bool:
        """A full rebuild that lacks more than ``max_delete_fraction`` of the live index's documents is not
        switched to (the guard of snapshot deletes, for the documents a switch would drop)."""
        state = self.ledger.target(t.key)
        if state is None or not state.generation or run.generation is None:
            return False
        gone, held = self.ledger.absent_docs(t.key, state.generation, run.generation)
        if not gone or not self._mass_delete(ctx, t.key, gone, held, rep):
            return False
        rep.notes.append(f"{t.key}: the rebuilt index was not switched to: it lacks {gone} of the live index's {held} "
                         "documents; it stays pending (a --mode full run with --allow-mass-delete switches to it)")  # fmt: skip
        return True

    # ------------------------------------------------------------------------------------ all in one
    def run(self) -> Report:
        """prepare + the one partition + snapshot deletes + finalize, in this process."""
        ctx = self.prepare()
        try:
            part = self.sync_partition(0, 1, ctx)
            dele = self.delete_absent(ctx)
            return Report.from_dict(self.finalize(ctx, [part, dele]))
        finally:
            if not ctx.dry_run:  # this process is done with the run, whatever happened: let the next one in
                with contextlib.suppress(Exception):
                    self.ledger.release([t.key for t in self.targets], ctx.run_id)

    def loaded_embedder(self) -> Any:
        """The embedder this engine loaded or was given (None if no document needed the model)."""
        return self.models.loaded

    def close(self) -> None:
        """Close what the engine opened: stores it connected, the embedder it loaded, its ledger, the source."""
        self.targets.close()
        self.models.close()
        self._forget_snapshot()
        if self._owns_source:
            self.source.close()
        if self._owns_ledger:
            self.ledger.close()

    def __enter__(self) -> SyncEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Counted:
    """An iterator that counts what it yields."""

    def __init__(self, it: Iterable[str]) -> None:
        self._it, self.count = iter(it), 0

    def __iter__(self) -> Iterator[str]:
        for x in self._it:
            self.count += 1
            yield x


def _process_owner() -> str:
    """This engine as a lease owner: its process, and a nonce of its own (two engines of one process are
    two owners)."""
    return f"process:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _embedding(info: IndexInfo | None) -> Mapping[str, Any] | None:
    """The embedding an existing index records (None: no index, or the target is down)."""
    return info.spec.embedding if info is not None and info.exists and info.spec is not None and info.spec.embedding else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sync(source: Any, targets: Sequence[str | VectorStore | Target], **kwargs: Any) -> Report:
    """One call: ``SyncEngine(source, targets, **kwargs).run()``, closed afterwards."""
    with SyncEngine(source, targets, **kwargs) as engine:
        return engine.run()
