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

One run at a time per target: ``prepare`` leases every target to its run in the ledger (``er_leases``),
every intent and commit of the run renews the lease, ``finalize`` (or the end of ``run()``) releases it.
A second run that finds a live lease of another run raises ``RunConflictError`` before writing: two runs
writing the same chunk ids could interleave their store writes and ledger commits in opposite orders and
leave a stored vector that the ledger does not describe. A lease is taken over when its run stopped
writing for ``lease_ttl`` seconds, when its holder was a process of this machine that is gone, or when
the holder has this engine's ``run_owner`` (runs of one Airflow DAG, which Airflow already serialises:
the DAG factory sets ``max_active_runs=1``; or one process's own earlier, abandoned run).
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
from typing import Any

from connectors.base import IndexInfo, IndexSpec, VectorStore
from embedrail.errors import ConfigError, IndexMismatchError, is_retryable
from embedrail.secrets import one_line

from . import rebuilds
from .context import RunContext, TargetRun, Watermark, spec_dict
from .documents import Document, partition_of
from .embedding import ModelResolver, TargetNeed
from .ledger import Ledger, TargetState
from .options import SyncOptions
from .pipeline import Lane, PartitionRun
from .report import Report
from .sources import Source, decode_watermark, encode_watermark, open_source
from .targets import Target, TargetSet, TargetSlot, target_key

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
    ``ledger``: a SQLAlchemy URL or a ``Ledger`` (default: ``$EMBEDRAIL_LEDGER``, else SQLite under
    ``.embedrail/``). ``embedder``: an already loaded embedder to use; ``embedder_factory(name, dims=,
    device=)`` loads one (e.g. a per-process cache); ``connect(url)`` opens a store. ``run_owner``: who
    holds the run lease (default: this process, ``process:HOST:PID``; the Airflow tasks pass
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
        self.source: Source = open_source(source, on_bad_row=self.options.on_bad_row, **self.options.source_options)
        self._owns_ledger = not isinstance(ledger, Ledger)
        self.ledger = ledger if isinstance(ledger, Ledger) else Ledger(ledger)
        self.models = ModelResolver(self.ledger, self.options.device, embedder, embedder_factory, self.options.dtype)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.run_owner = run_owner or _process_owner()
        self.lease_ttl = int(lease_ttl or os.environ.get("EMBEDRAIL_LEASE_TTL") or self.LEASE_TTL)
        # ids a single-partition pass of this process saw; delete_absent re-reads the source without them
        self._snapshot_ids: set[str] | None = None

    # ------------------------------------------------------------------------------------ prepare
    def prepare(self) -> RunContext:
        """Choose model and dims, recover interrupted rebuilds, ensure the indexes (or begin full rebuilds).

        Raises ``IndexMismatchError`` (an incremental run against an index of another embedding) and
        ``DimensionLimitError`` before anything is written; a target that is down is marked failed in
        the context instead, and the others go on.
        """
        opts = self.options
        needs = []  # per target: the dims asked for it and the most its store accepts (None: no limit, or down)
        for t in self.targets:
            lim = self._max_dims(t)
            needs.append(TargetNeed(t.key, t.dims or opts.dims, lim if t.error is None else None))
        choice = self.models.choose(opts.model, needs, incremental=opts.mode == "incremental", recorded=self._recorded_embedding)
        deletes = opts.deletes if opts.deletes != "auto" else ("tombstone" if self.source.is_feed else "snapshot")
        if deletes == "snapshot" and self.source.is_feed:
            raise ConfigError("a watermark feed yields only changed rows: use --deletes tombstone (or none), not snapshot")
        run_id = uuid.uuid4().hex[:12]
        if not opts.dry_run:  # before the first write (an index created, a rebuild begun)
            self.ledger.acquire([t.key for t in self.targets], run_id, self.run_owner, self.lease_ttl, self._may_take_over)
        ctx = RunContext(run_id=run_id, mode=opts.mode, dry_run=opts.dry_run, deletes=deletes, model=choice.name, load_dims=choice.load_dims,
                         model_id=choice.info.model_id, spec=choice.spec, chunk_tokens=opts.chunk_tokens,
                         chunk_overlap=opts.chunk_overlap, notes=list(choice.notes))  # fmt: skip
        for i, t in enumerate(self.targets):
            run = TargetRun(index=i, key=t.key, error=t.error, spec=choice.specs[t.key])
            ctx.targets.append(run)
            if run.ok:
                self._prepare_target(t, run, ctx)
        if self.source.is_feed and self.source.watermark_key:  # the lowest any target holds (None: read all)
            held = [None if opts.mode == "full" else decode_watermark(self.ledger.watermark(t.key, self.source.watermark_key))
                    for t in self.targets]  # fmt: skip
            since = None if any(v is None for v in held) else min(held)
            ctx.watermark = Watermark(self.source.watermark_key, encode_watermark(since))
        return ctx

    def _may_take_over(self, owner: str) -> bool:
        """Whether a live lease of ``owner`` may be taken: ours (one Airflow DAG, serialised by Airflow; or
        this process), or a process of this machine that no longer exists."""
        if owner == self.run_owner:
            return True
        kind, _, rest = owner.partition(":")
        host, _, pid = rest.rpartition(":")
        return kind == "process" and host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid))

    def _hold(self, ctx: RunContext) -> None:
        if not ctx.dry_run:
            self.ledger.hold(ctx.run_id, self.lease_ttl)

    def _max_dims(self, t: TargetSlot) -> int | None:
        try:
            return self.targets.store(t).max_dims()
        except Exception as e:
            if not is_retryable(e):
                raise
            t.error = one_line(e)
            return None

    def _recorded_embedding(self, key: str) -> Mapping[str, Any] | None:
        """The embedding target ``key``'s existing index records (None: no index, or the target is down)."""
        t = next(t for t in self.targets if t.key == key)
        if t.error:
            return None
        try:
            info = self.targets.store(t).describe()
        except Exception as e:
            if not is_retryable(e):
                raise
            t.error = one_line(e)  # a down target is reported, not retried again
            return None
        return info.spec.embedding if info.exists and info.spec is not None and info.spec.embedding else None

    def _prepare_target(self, t: TargetSlot, run: TargetRun, ctx: RunContext) -> None:
        spec = ctx.spec_of(run)
        try:
            state = self.ledger.target(t.key)
            if state and state.pending_generation:
                if rebuilds.recover(self.ledger, self.targets, t, run, state, spec, full=ctx.mode == "full",
                                    dry_run=ctx.dry_run, notes=ctx.notes):  # fmt: skip
                    return
                state = self.ledger.target(t.key)
            if ctx.mode == "full":
                if ctx.dry_run:
                    run.rebuild = True  # nothing begun: every chunk is planned as new
                else:
                    rebuilds.begin(self.ledger, self.targets, t, run, spec)
                return
            store = self.targets.store(t)
            if ctx.dry_run:
                info = store.describe()
                if info.exists and info.spec is not None and info.spec.fingerprint and info.spec.fingerprint != spec.fingerprint:
                    raise IndexMismatchError(f"{t.key}: index fingerprint {info.spec.fingerprint} != {spec.fingerprint}")
                run.generation = (info.physical_name or info.name) if info.exists else None
            else:
                info = store.ensure_index(spec)
                run.generation = info.physical_name or info.name
                self._align_ledger(t.key, state, info, run.generation, spec, store)
        except IndexMismatchError as e:
            if ctx.mode == "incremental":
                raise IndexMismatchError(f"{one_line(e)} — the index holds vectors of another embedding (model/dims); "
                                         f"run with --mode full to rebuild it with {ctx.model} at {spec.dims} dims") from None  # fmt: skip
            raise
        except Exception as e:
            if not is_retryable(e):
                raise
            run.error = t.error = one_line(e)  # the store is down or broken: the others go on

    def _align_ledger(self, key: str, state: TargetState | None, info: IndexInfo, generation: str, spec: IndexSpec,
                      store: Any) -> None:  # fmt: skip
        """Forget ledger rows that do not describe the physical index the target has now."""
        if state is not None and state.generation != generation:
            self.ledger.reset(key, state.generation)
        elif state is not None and info.count == 0:
            counts = self.ledger.counts(key, generation)
            held = counts["chunks"] + counts["pending_chunks"] + counts["documents"]
            if held:
                # A count can lag another process's writes (Elasticsearch counts what its last refresh made
                # visible, and an idle shard skips scheduled refreshes): make them visible before believing it.
                store.flush()
            if held and store.count() == 0:
                log.warning("%s: the index is empty but the ledger remembers %s chunks: forgetting them", key, counts["chunks"])
                self.ledger.reset(key, generation)
        if state is None or state.generation != generation or state.fingerprint != spec.fingerprint:
            self.ledger.set_target(key, generation=generation, fingerprint=spec.fingerprint, spec=spec_dict(spec))

    # ------------------------------------------------------------------------------------ partition
    def sync_partition(self, index: int, count: int, ctx: RunContext | dict[str, Any]) -> dict[str, Any]:
        """Sync the documents whose stable ``partition_of(doc_id, count) == index``: plan, embed, write,
        delete their stale chunks, commit the ledger. Returns a partial report (JSON-able) for ``finalize``."""
        if not 0 <= index < max(count, 1):
            raise ConfigError(f"partition {index} out of range for {count} partitions")
        ctx, started = RunContext.of(ctx), time.time()
        self._hold(ctx)
        rep = ctx.new_report(partitions=count)
        rep.notes.extend(ctx.notes)
        lanes: dict[str, Lane] = {}
        for t, run in self.targets.bind(ctx):
            if not run.ok:
                rep.fail(t.key, run.error or "failed")
                continue
            try:
                store = None if ctx.dry_run else self.targets.writer(t, run)
            except Exception as e:
                if not is_retryable(e) and not isinstance(e, ConfigError):
                    raise
                rep.fail(t.key, one_line(e))
                continue
            hashes = self.ledger.doc_hashes(t.key, run.generation) if run.generation is not None else {}
            lanes[t.key] = Lane(run, store, hashes)
        if ctx.watermark:
            self.source.set_watermark(decode_watermark(ctx.watermark.since))
        pipe = PartitionRun(ctx=ctx, ledger=self.ledger, report=rep, lanes=lanes, embedder=lambda: self.models.for_run(ctx),
                            batch_size=self.options.batch_size, queue_depth=self.options.queue_depth)  # fmt: skip
        seen: set[str] | None = set() if count == 1 else None
        try:
            for doc in self._documents():
                if seen is not None:
                    seen.add(doc.id)
                if count == 1 or partition_of(doc.id, count) == index:
                    pipe.add(doc)
            pipe.finish()
        finally:
            pipe.close()
        if seen is not None:
            self._snapshot_ids = seen | self.source.bad_ids
        if count == 1 or index == 0:  # every partition reads the bad rows: report them once
            rep.skipped_bad_rows = len(self.source.bad_rows)
            rep.bad_rows = [b.to_dict() for b in self.source.bad_rows[: Report.MAX_BAD_ROWS]]
        d = rep.to_dict()
        d["seconds"] = round(time.time() - started, 3)
        d["watermark_max"] = encode_watermark(self.source.max_watermark()) if ctx.watermark else None
        return d

    def _documents(self) -> Iterator[Document]:
        if not self.progress:
            return iter(self.source)
        from tqdm import tqdm

        return iter(tqdm(self.source, unit=" documents", desc="sync", file=sys.stderr, leave=False))

    # ------------------------------------------------------------------------------------ deletes
    def delete_absent(self, ctx: RunContext | dict[str, Any]) -> dict[str, Any]:
        """Snapshot deletes: remove from every target the documents the source no longer has."""
        ctx = RunContext.of(ctx)
        self._hold(ctx)
        bound, rep = self.targets.bind(ctx), ctx.new_report()
        if ctx.deletes != "snapshot":
            return rep.to_dict()
        seen = self._snapshot_ids
        if seen is None:  # another process read the source: read its ids again
            seen = {d.id for d in self.source} | self.source.bad_ids
        for t, run in bound:
            if not run.ok or run.generation is None:
                continue
            absent = sorted(self.ledger.doc_ids(t.key, run.generation) - seen)
            if not absent:
                continue
            if not seen and not self.options.allow_empty_source:
                rep.notes.append(f"{t.key}: the source is empty; not deleting its {len(absent)} documents "
                                 "(allow_empty_source / --allow-empty-source)")  # fmt: skip
                continue
            chunks_of = self.ledger.chunk_fingerprints(t.key, run.generation, absent)
            rep.plan[t.key]["deleted"] += sum(len(v) for v in chunks_of.values())
            if not ctx.dry_run:
                try:
                    self._delete_documents(t, run, absent, chunks_of, rep)
                except Exception as e:
                    if not is_retryable(e):
                        raise
                    rep.fail(t.key, one_line(e))
        return rep.to_dict()

    def _delete_documents(self, t: TargetSlot, run: TargetRun, docs: list[str], chunks_of: dict[str, dict[str, Any]], rep: Report) -> None:
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
            self.ledger.commit(t.key, gen, deleted=gone, docs_removed=part)  # after the store acknowledged
            rep.deleted[t.key] += len(gone)

    # ------------------------------------------------------------------------------------ finalize
    def finalize(self, ctx: RunContext | dict[str, Any], partial_reports: Iterable[dict[str, Any]]) -> dict[str, Any]:
        """Merge the partial reports, flush every target, switch full rebuilds (targets without failures),
        advance feed watermarks. Returns the run report (JSON-able)."""
        ctx = RunContext.of(ctx)
        self._hold(ctx)
        rep = ctx.new_report()
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
        rep.seconds = time.time() - ctx.started
        return rep.to_dict()

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
        """Close what the engine opened: stores it connected, the embedder it loaded, its ledger."""
        self.targets.close()
        self.models.close()
        if self._owns_ledger:
            self.ledger.close()

    def __enter__(self) -> SyncEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _process_owner() -> str:
    return f"process:{socket.gethostname()}:{os.getpid()}"


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
