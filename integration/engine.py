"""The incremental sync engine (DESIGN.md, "The data flow").

Source -> Document -> (skip if the ledger holds the same doc hash) -> Chunker -> Planner (per target:
new / changed / unchanged / stale) -> Embedder (each needed chunk once per run) -> every target that
needs it (upsert, then delete stale) -> ledger commit after the target's acknowledgement.

Pipelining: the calling thread reads, chunks, plans and embeds batch N+1 while a writer thread writes
batch N to the targets (bounded queue), so vectors are streamed, never all held in memory.

One run = ``prepare()`` -> ``sync_partition(i, n, ctx)`` for every i (possibly in several processes /
Airflow mapped tasks) -> ``delete_absent(ctx)`` -> ``finalize(ctx, reports)``. ``run()`` does all four in
this process. Every step is idempotent: re-running a step after a crash or a retry repairs, never
duplicates, because upserts are per id and the ledger is only advanced after the store acknowledged.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import numpy as np

from connectors.base import IndexInfo, IndexSpec, Record, VectorStore
from embedrail.errors import (
    ConfigError,
    DimensionLimitError,
    EmbedrailError,
    IndexMismatchError,
    ModelError,
    StoreError,
)

from .chunking import Chunker
from .documents import Chunk, Document, canonical_json, doc_hash, partition_of, sha256
from .ledger import Ledger
from .report import Report
from .sources import Source, decode_watermark, encode_watermark, open_source

__all__ = ["DEFAULT_MODEL", "SyncEngine", "redact_url", "sync"]

log = logging.getLogger("embedrail.sync")

DEFAULT_MODEL = "minilm"
MODES = ("incremental", "full")
DELETES = ("auto", "snapshot", "tombstone", "none")
_SECRET_KEYS = {"api_key", "apikey", "password", "token", "secret", "auth", "key"}
CONTEXT_VERSION = 1


def redact_url(url: str) -> str:
    """The URL without user:password@ and secret query parameters: the ledger key of a target."""
    try:
        from connectors import safe_url

        return safe_url(url)
    except Exception:  # noqa: BLE001 - not a store URL the connectors know: redact by hand
        pass
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() not in _SECRET_KEYS])
    out = f"{parts.scheme}://{netloc}{parts.path}"
    return out + (f"?{query}" if query else "")


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    text = msg[0] if msg else ""
    return f"{type(e).__name__}: {text}" if not isinstance(e, EmbedrailError) else text or type(e).__name__


# ------------------------------------------------------------------------------------------------
@dataclass
class _Target:
    key: str  # redacted URL: ledger key, report key
    store: VectorStore | None  # user-facing store
    url: str | None = None  # what the user gave (may hold credentials: never logged or put in a context)
    write: VectorStore | None = None  # where this run writes (the rebuild store in full mode)
    generation: str = ""
    error: str | None = None


@dataclass
class _Entry:
    chunk: Chunk
    fp: str
    metadata: dict[str, Any]
    targets: list[str]


@dataclass
class _Batch:
    entries: list[_Entry] = field(default_factory=list)
    vectors: np.ndarray | None = None
    deletes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # target -> [(chunk id, doc id)]
    docs_done: dict[str, list[tuple[str, str, int]]] = field(default_factory=dict)  # target -> [(doc, hash, n)]
    docs_removed: dict[str, list[str]] = field(default_factory=dict)

    def empty(self) -> bool:
        return not (self.entries or self.deletes or self.docs_done or self.docs_removed)


class SyncEngine:
    """Keep one or more vector-store targets in step with a source.

    ``source``: a spec string for ``open_source`` or a ``Source``/iterable. ``targets``: URLs (for
    ``connectors.connect``) or ``VectorStore`` objects. ``model``/``dims`` default to what the first
    existing target records, then to the packaged MiniLM at its native dims. ``embedder`` (optional)
    is an already loaded embedder to reuse (e.g. one per Airflow worker process).
    """

    def __init__(
        self,
        source: Any,
        targets: Sequence[str | VectorStore],
        *,
        model: str | None = None,
        dims: int | None = None,
        ledger: str | Ledger | None = None,
        embedder: Any = None,
        device: str = "auto",
        mode: str = "incremental",
        deletes: str = "auto",
        dry_run: bool = False,
        chunk_tokens: int | None = None,
        chunk_overlap: int = 0,
        batch_size: int = 64,
        queue_depth: int = 2,
        on_bad_row: str = "skip",
        source_options: dict[str, Any] | None = None,
        allow_empty_source: bool = False,
        progress: bool | None = None,
        connect: Callable[[str], VectorStore] | None = None,
        embedder_factory: Callable[..., Any] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
        if deletes not in DELETES:
            raise ConfigError(f"deletes must be one of {DELETES}, got {deletes!r}")
        if not targets:
            raise ConfigError("at least one --target is needed")
        if dims is not None and (not isinstance(dims, int) or dims <= 0):
            raise ConfigError(f"dims must be a positive integer, got {dims!r}")
        if batch_size <= 0:
            raise ConfigError("batch_size must be positive")
        self.source: Source = open_source(source, on_bad_row=on_bad_row, **(source_options or {}))
        self.model = model
        self.dims = dims
        self.ledger = ledger if isinstance(ledger, Ledger) else Ledger(ledger)
        self._embedder = embedder
        self._embedder_key: tuple[str, int | None] | None = None
        self.device = device
        self.mode = mode
        self.deletes = deletes
        self.dry_run = dry_run
        self.chunk_tokens = chunk_tokens
        self.chunk_overlap = chunk_overlap
        self.batch_size = batch_size
        self.queue_depth = max(1, queue_depth)
        self.allow_empty_source = allow_empty_source
        self.progress = sys.stderr.isatty() if progress is None else progress
        self._connect = connect
        self._embedder_factory = embedder_factory
        self._targets: list[_Target] = []
        for t in targets:
            if isinstance(t, str):
                self._targets.append(_Target(key=redact_url(t), store=None, url=t))
            else:
                self._targets.append(_Target(key=redact_url(getattr(t, "url", repr(t))), store=t))
        keys = [t.key for t in self._targets]
        if len(set(keys)) != len(keys):
            raise ConfigError("the same target is given twice")
        self._seen_ids: set[str] | None = None  # filled by a single-partition pass of this process
        self._rebuilds: dict[str, VectorStore] = {}  # target key -> rebuild store (this process)

    # ---------------------------------------------------------------------------------- helpers
    def _store(self, t: _Target) -> VectorStore:
        if t.store is None:
            assert t.url is not None
            if self._connect is not None:
                t.store = self._connect(t.url)
            else:
                from connectors import connect

                t.store = connect(t.url)
        return t.store

    def _load_embedder(self, name: str, dims: int | None) -> Any:
        if self._embedder is not None and (self._embedder_key is None or self._embedder_key == (name, dims)):
            return self._embedder
        if self._embedder_factory is not None:
            emb = self._embedder_factory(name, dims=dims, device=self.device)
        elif name.startswith(("http://", "https://")):
            # a remote OpenAI-compatible server: --model http://host:8000/v1#model-name
            # (the API key comes from EMBEDRAIL_EMBED_API_KEY, never from the URL)
            import os

            from embed_core import Embedder

            base, _, remote_model = name.partition("#")
            if not remote_model:
                raise ConfigError("a remote model is given as http(s)://host:port/v1#model-name")
            emb = Embedder.remote(base, remote_model, dims=dims, api_key=os.environ.get("EMBEDRAIL_EMBED_API_KEY"))
        else:
            from embed_core import Embedder

            emb = Embedder.load(name, dims=dims, device=self.device)
        self._embedder, self._embedder_key = emb, (name, dims)
        return emb

    def _model_info(self, name: str, dims: int | None) -> dict[str, Any]:
        """Fingerprint, dims, token limit... of a model, from the ledger cache when possible so an
        unchanged run never loads the model."""
        if self._embedder is not None and self._embedder_key is None:  # caller-provided embedder
            return _describe_embedder(self._embedder)
        key = f"model:{name}:{dims or 'native'}:{self.device}"
        cached = self.ledger.meta(key)
        if cached:
            return dict(cached)
        info = _describe_embedder(self._load_embedder(name, dims))
        self.ledger.set_meta(key, info)
        return info

    def _recorded_embedding(self) -> dict[str, Any] | None:
        for t in self._targets:
            if t.error:
                continue
            try:
                info = self._store(t).describe()
            except Exception as e:  # noqa: BLE001 - a down target is reported, not retried again
                if _is_target_failure(e):
                    t.error = _one_line(e)
                    continue
                raise
            if info.exists and info.spec is not None and info.spec.embedding:
                return dict(info.spec.embedding)
        return None

    # ---------------------------------------------------------------------------------- prepare
    def prepare(self) -> dict[str, Any]:
        """Resolve model/dims/spec, recover interrupted rebuilds, ensure indexes (or begin rebuilds).

        Returns the JSON-able run context that every other step takes. Raises ``IndexMismatchError``
        (incremental run against an index of another embedding) and ``DimensionLimitError`` before
        anything is written; a target that is down is marked failed in the context instead.
        """
        started = time.time()
        # 1. limits of every reachable target
        limits: dict[str, int | None] = {}
        for t in self._targets:
            try:
                limits[t.key] = self._store(t).max_dims()
            except EmbedrailError as e:
                if not _is_down(e):
                    raise
                t.error = _one_line(e)
            except Exception as e:  # noqa: BLE001
                t.error = _one_line(e)
        # 2. which model
        recorded = None
        name = self.model
        if name is None or (self.dims is None and self.mode == "incremental"):
            recorded = self._recorded_embedding()
        if name is None:
            name = (recorded or {}).get("load_name") or (recorded or {}).get("model") or DEFAULT_MODEL
        requested = self.dims
        if requested is None and recorded and self.mode == "incremental" and self.model in (None, recorded.get("load_name"), recorded.get("model")):
            rd = recorded.get("dims")
            requested = int(rd) if isinstance(rd, int) else None
        notes: list[str] = []
        for key, lim in limits.items():
            if self.dims is not None and lim is not None and self.dims > lim:
                raise DimensionLimitError(
                    f"{key} accepts at most {lim} dimensions but --dims {self.dims} was requested; "
                    f"use --dims {lim} or less"
                )
        if self._embedder is not None and self._embedder_key is None:
            info = _describe_embedder(self._embedder)
            chosen = info["dims"]
            for key, lim in limits.items():
                if lim is not None and chosen > lim:
                    raise DimensionLimitError(f"{key} accepts at most {lim} dimensions; the embedder gives {chosen}")
        else:
            native = self._model_info(name, None)
            chosen = requested or native["native_dims"] or native["dims"]
            lims = [lim for lim in limits.values() if lim is not None]
            if lims and min(lims) < chosen:
                notes.append(f"dims {chosen} lowered to {min(lims)}: the most a target accepts")
                chosen = min(lims)
            info = native if chosen == native["dims"] else self._model_info(name, chosen)
            if info["dims"] != chosen:
                raise ModelError(f"model {name} gave {info['dims']} dims where {chosen} were asked")
        load_dims = None if (self._embedder is not None and self._embedder_key is None) else (
            None if chosen == self._model_info(name, None)["dims"] else chosen
        )
        embedding = dict(info["embedding"])
        embedding.setdefault("model", info["model_id"])
        embedding["dims"] = info["dims"]
        embedding["load_name"] = name
        spec = IndexSpec(dims=info["dims"], metric=info["metric"], fingerprint=info["fingerprint"], embedding=embedding)
        max_tokens = self.chunk_tokens
        deletes = self.deletes
        if deletes == "auto":
            deletes = "tombstone" if self.source.is_feed else "snapshot"
        if deletes == "snapshot" and self.source.is_feed:
            raise ConfigError("a watermark feed yields only changed rows: use --deletes tombstone (or none), not snapshot")
        ctx: dict[str, Any] = {
            "version": CONTEXT_VERSION,
            "run_id": uuid.uuid4().hex[:12],
            "started": started,
            "mode": self.mode,
            "dry_run": self.dry_run,
            "deletes": deletes,
            "model": name,
            "model_id": info["model_id"],
            "load_dims": load_dims,
            "dims": info["dims"],
            "metric": info["metric"],
            "fingerprint": info["fingerprint"],
            "embedding": embedding,
            "chunk_tokens": max_tokens,
            "chunk_overlap": self.chunk_overlap,
            "doc_config": f"{info['fingerprint']}|{Chunker.config_string(max_tokens, self.chunk_overlap)}",
            "notes": notes,
            "targets": [],
            "watermark": None,
        }
        # 3. per target: recover, ensure, choose the generation
        for i, t in enumerate(self._targets):
            entry: dict[str, Any] = {"index": i, "key": t.key, "generation": "", "rebuild": None, "error": t.error}
            ctx["targets"].append(entry)
            if t.error:
                continue
            try:
                self._prepare_target(t, spec, entry, notes)
            except (IndexMismatchError, DimensionLimitError) as e:
                if isinstance(e, IndexMismatchError) and self.mode == "incremental":
                    raise IndexMismatchError(
                        f"{_one_line(e)} — the index holds vectors of another embedding "
                        f"(model/dims); run with --mode full to rebuild it with {name} at {info['dims']} dims"
                    ) from None
                raise
            except ConfigError:
                raise
            except Exception as e:  # noqa: BLE001 - the store is down or broken: others go on
                entry["error"] = t.error = _one_line(e)
        # 4. watermark for feeds: the lowest any healthy target holds (None = read everything)
        if self.source.is_feed and self.source.watermark_key:
            values = []
            for t in self._targets:
                values.append(None if self.mode == "full" else self.ledger.watermark(t.key, self.source.watermark_key))
            decoded = [decode_watermark(v) for v in values]
            since = None if any(v is None for v in decoded) else min(decoded)
            ctx["watermark"] = {"key": self.source.watermark_key, "since": encode_watermark(since)}
        return ctx

    def _prepare_target(self, t: _Target, spec: IndexSpec, entry: dict[str, Any], notes: list[str]) -> None:
        store = self._store(t)
        state = self.ledger.target(t.key)
        # an interrupted full rebuild: finish it if the store already switched, else resume/abort it
        if state and state.pending_generation:
            info = store.describe()
            pending = state.pending_generation
            if self.dry_run:
                notes.append(f"{t.key}: an interrupted rebuild ({pending}) will be finished or dropped by the next run")
            elif info.exists and info.physical_name == pending:
                self.ledger.switch_generation(t.key, pending, spec.fingerprint if info.spec is None else info.spec.fingerprint,
                                              _spec_dict(info.spec or spec))  # fmt: skip
                notes.append(f"{t.key}: finished an interrupted rebuild ({pending})")
                state = self.ledger.target(t.key)
            else:
                rebuild = self._reopen_rebuild(store, pending)
                if rebuild is not None and self.mode == "full" and state.pending_fingerprint == spec.fingerprint:
                    rebuild.ensure_index(spec)  # same embedding: keep what the interrupted run wrote
                    self._rebuilds[t.key] = rebuild
                    t.write, t.generation = rebuild, pending
                    entry.update(generation=pending, rebuild=pending)
                    notes.append(f"{t.key}: resuming an interrupted rebuild ({pending})")
                    return
                if rebuild is not None:
                    try:
                        store.abort_rebuild(rebuild)
                    except Exception as e:  # noqa: BLE001
                        log.warning("%s: could not drop the abandoned rebuild %s: %s", t.key, pending, _one_line(e))
                self.ledger.reset(t.key, pending)
                self.ledger.set_pending(t.key, None, None)
                notes.append(f"{t.key}: dropped an interrupted rebuild ({pending})")
        if self.mode == "full":
            if self.dry_run:
                entry.update(generation="__dry_run__", rebuild="__dry_run__")
                return
            rebuild = store.begin_rebuild(spec)
            rinfo = rebuild.describe()
            gen = rinfo.physical_name or rinfo.name
            self.ledger.set_pending(t.key, gen, spec.fingerprint)
            self.ledger.reset(t.key, gen)
            self._rebuilds[t.key] = rebuild
            t.write, t.generation = rebuild, gen
            entry.update(generation=gen, rebuild=gen)
            return
        # incremental
        if self.dry_run:
            info = store.describe()
            if info.exists and info.spec is not None and info.spec.fingerprint and info.spec.fingerprint != spec.fingerprint:
                raise IndexMismatchError(f"{t.key}: index fingerprint {info.spec.fingerprint} != {spec.fingerprint}")
            gen = (info.physical_name or info.name) if info.exists else "__new__"
        else:
            info = store.ensure_index(spec)
            gen = info.physical_name or info.name
        self._sync_ledger_generation(t, state, info, gen, spec)
        t.write, t.generation = store, gen
        entry["generation"] = gen

    def _sync_ledger_generation(self, t: _Target, state: Any, info: IndexInfo, gen: str, spec: IndexSpec) -> None:
        """Forget ledger rows that do not describe the physical index the target has now."""
        if self.dry_run:
            return
        if state is not None and state.generation != gen:
            self.ledger.reset(t.key, state.generation)
        elif state is not None and (info.count == 0):
            counts = self.ledger.counts(t.key, gen)
            if counts["chunks"] or counts["documents"]:
                log.warning("%s: the index is empty but the ledger remembers %s chunks: forgetting them", t.key, counts["chunks"])
                self.ledger.reset(t.key, gen)
        if state is None or state.generation != gen or state.fingerprint != spec.fingerprint:
            self.ledger.set_target(t.key, generation=gen, fingerprint=spec.fingerprint, spec=_spec_dict(spec))

    def _reopen_rebuild(self, store: VectorStore, physical: str) -> VectorStore | None:
        """A store writing to an existing physical index of a rebuild (another process began it)."""
        fn = getattr(store, "open_rebuild", None)
        if callable(fn):
            try:
                return fn(physical)
            except ConfigError:
                return None
        return None

    def _write_store(self, t: _Target, entry: dict[str, Any]) -> VectorStore:
        if entry.get("rebuild"):
            rb = self._rebuilds.get(t.key)
            if rb is None:
                rb = self._reopen_rebuild(self._store(t), entry["rebuild"])
                if rb is None:
                    raise ConfigError(f"{t.key}: this connector cannot reopen rebuild {entry['rebuild']} from another process")
                self._rebuilds[t.key] = rb
            return rb
        return self._store(t)

    # ---------------------------------------------------------------------------------- partition
    def _bind(self, ctx: dict[str, Any]) -> list[tuple[_Target, dict[str, Any]]]:
        if ctx.get("version") != CONTEXT_VERSION:
            raise ConfigError("run context of another embedrail version: run prepare() again")
        if len(ctx["targets"]) != len(self._targets) or any(
            e["key"] != self._targets[e["index"]].key for e in ctx["targets"]
        ):
            raise ConfigError("the run context was prepared for other targets")
        out = []
        for e in ctx["targets"]:
            t = self._targets[e["index"]]
            t.generation = e["generation"]
            if not e.get("error"):
                t.error = None
            out.append((t, e))
        return out

    def _embedder_for(self, ctx: dict[str, Any]) -> Any:
        emb = self._load_embedder(ctx["model"], ctx["load_dims"])
        fp = getattr(emb, "fingerprint", "")
        if fp != ctx["fingerprint"]:
            if self._embedder_key is not None:  # our cached description is stale: refresh it
                self.ledger.set_meta(f"model:{ctx['model']}:{ctx['load_dims'] or 'native'}:{self.device}", _describe_embedder(emb))
                raise ModelError(
                    f"model {ctx['model']} changed since the last run (fingerprint {ctx['fingerprint']} -> {fp}); "
                    "run again (an index holding the old vectors will then ask for --mode full)"
                )
            raise ModelError(
                f"model {ctx['model']} here has fingerprint {fp}, the run was prepared with {ctx['fingerprint']}: "
                "every worker must run the same model version"
            )
        return emb

    def sync_partition(self, index: int, count: int, ctx: dict[str, Any]) -> dict[str, Any]:
        """Sync the documents whose stable ``partition_of(doc_id, count) == index``.

        Plans, embeds, writes, deletes the stale chunks of those documents and commits the ledger.
        Returns a partial report (JSON-able dict) for ``finalize``.
        """
        if not 0 <= index < max(count, 1):
            raise ConfigError(f"partition {index} out of range for {count} partitions")
        started = time.time()
        bound = self._bind(ctx)
        rep = Report(mode=ctx["mode"], dry_run=ctx["dry_run"], model=ctx["model_id"], dims=ctx["dims"],
                     fingerprint=ctx["fingerprint"], partitions=count)  # fmt: skip
        rep.notes.extend(ctx.get("notes", []))
        live: dict[str, tuple[_Target, VectorStore | None]] = {}
        hashes: dict[str, dict[str, tuple[str, int]]] = {}
        for t, e in bound:
            rep.add_target(t.key)
            if e.get("error"):
                rep.fail(t.key, e["error"])
                continue
            try:
                ws = None if ctx["dry_run"] else self._write_store(t, e)
            except EmbedrailError as err:
                rep.fail(t.key, _one_line(err))
                continue
            live[t.key] = (t, ws)
            hashes[t.key] = {} if t.generation in ("__new__", "__dry_run__") else self.ledger.doc_hashes(t.key, t.generation)
        wm = ctx.get("watermark")
        if wm:
            self.source.set_watermark(decode_watermark(wm["since"]))
        run = _PartitionRun(self, ctx, rep, live, hashes)
        seen: set[str] | None = set() if count == 1 else None
        try:
            for doc in self._progress(self.source, "documents"):
                if seen is not None:
                    seen.add(doc.id)
                if count > 1 and partition_of(doc.id, count) != index:
                    continue
                run.add(doc)
            run.finish()
        finally:
            run.close()
        if seen is not None:
            seen |= self.source.bad_ids
            self._seen_ids = seen
        rep.skipped_bad_rows = len(self.source.bad_rows)
        rep.bad_rows = [b.to_dict() for b in self.source.bad_rows[: Report.MAX_BAD_ROWS]]
        if count > 1 and index != 0:  # bad rows are seen by every partition: count them once
            rep.skipped_bad_rows, rep.bad_rows = 0, []
        d = rep.to_dict()
        d["seconds"] = round(time.time() - started, 3)
        d["watermark_max"] = encode_watermark(self.source.max_watermark()) if wm else None
        return d

    def _progress(self, it: Iterable[Document], unit: str) -> Iterable[Document]:
        if not self.progress:
            return it
        from tqdm import tqdm

        return tqdm(it, unit=f" {unit}", desc="sync", file=sys.stderr, leave=False)

    # ---------------------------------------------------------------------------------- deletes
    def delete_absent(self, ctx: dict[str, Any]) -> dict[str, Any]:
        """Snapshot deletes: remove from every target the documents the source no longer has."""
        bound = self._bind(ctx)
        rep = Report(mode=ctx["mode"], dry_run=ctx["dry_run"], model=ctx["model_id"], dims=ctx["dims"], fingerprint=ctx["fingerprint"])
        for t, _ in bound:
            rep.add_target(t.key)
        if ctx["deletes"] != "snapshot":
            return rep.to_dict()
        if self._seen_ids is None:
            seen = {d.id for d in self.source}
            seen |= self.source.bad_ids
        else:
            seen = self._seen_ids
        for t, e in bound:
            if e.get("error") or t.generation in ("__new__", "__dry_run__"):
                continue
            absent = sorted(self.ledger.doc_ids(t.key, t.generation) - seen)
            if not absent:
                continue
            if not seen and not self.allow_empty_source:
                rep.notes.append(
                    f"{t.key}: the source is empty; not deleting its {len(absent)} documents (allow_empty_source / --allow-empty-source)"
                )
                continue
            by_doc = self.ledger.chunk_fingerprints(t.key, t.generation, absent)
            n_ids = sum(len(v) for v in by_doc.values())
            rep.plan[t.key]["deleted"] += n_ids
            if ctx["dry_run"]:
                continue
            try:
                ws = self._write_store(t, e)
                for i in range(0, len(absent), 200):
                    docs = absent[i : i + 200]
                    ids = [c for d in docs for c in by_doc.get(d, {})]
                    res = ws.delete(ids) if ids else None
                    if res is not None and res.failed:
                        rep.fail(t.key, f"delete failed for {len(res.failed)} ids: {next(iter(res.failed.values()))}", len(res.failed))
                        ok_docs = [d for d in docs if not any(c in res.failed for c in by_doc.get(d, {}))]
                    else:
                        ok_docs = docs
                    ok_ids = [c for d in ok_docs for c in by_doc.get(d, {})]
                    self.ledger.commit(t.key, t.generation, deleted=ok_ids, docs_removed=ok_docs)
                    rep.deleted[t.key] += len(ok_ids)
            except Exception as err:  # noqa: BLE001
                if not _is_target_failure(err):
                    raise
                rep.fail(t.key, _one_line(err))
        return rep.to_dict()

    # ---------------------------------------------------------------------------------- finalize
    def finalize(self, ctx: dict[str, Any], partial_reports: Iterable[dict[str, Any]]) -> dict[str, Any]:
        """Merge the partial reports, flush every target, commit rebuilds (targets without failures),
        advance feed watermarks. Returns the run report (JSON-able dict)."""
        bound = self._bind(ctx)
        rep = Report(mode=ctx["mode"], dry_run=ctx["dry_run"], model=ctx["model_id"], dims=ctx["dims"], fingerprint=ctx["fingerprint"])
        wm_max = None
        partials = list(partial_reports)
        for t, _ in bound:
            rep.add_target(t.key)
        for p in partials:
            rep.merge(Report.from_dict(p))
            rep.partitions = max(rep.partitions, int(p.get("partitions", 1)))
            if p.get("watermark_max"):
                v = decode_watermark(p["watermark_max"])
                wm_max = v if wm_max is None or v > wm_max else wm_max
        for n in ctx.get("notes", []):
            if n not in rep.notes:
                rep.notes.append(n)
        if not ctx["dry_run"]:
            for t, e in bound:
                if e.get("error") or rep.errors.get(t.key):
                    continue
                try:
                    ws = self._write_store(t, e)
                    ws.flush()
                    if e.get("rebuild"):
                        if rep.failed.get(t.key):
                            rep.notes.append(f"{t.key}: rebuild not switched ({rep.failed[t.key]} failures); re-run --mode full")
                            continue
                        self._store(t).commit_rebuild(ws)
                        self.ledger.switch_generation(t.key, e["generation"], ctx["fingerprint"], _ctx_spec(ctx))
                        self._rebuilds.pop(t.key, None)
                except Exception as err:  # noqa: BLE001
                    if isinstance(err, EmbedrailError) and not _is_down(err):
                        raise
                    rep.fail(t.key, _one_line(err))
            wm = ctx.get("watermark")
            if wm and wm_max is not None:
                for t, _ in bound:
                    if t.key not in rep.errors and not rep.failed.get(t.key):
                        self.ledger.set_watermark(t.key, wm["key"], encode_watermark(wm_max))
        rep.seconds = time.time() - float(ctx["started"])
        return rep.to_dict()

    # ---------------------------------------------------------------------------------- all in one
    def run(self) -> Report:
        """prepare + the one partition + snapshot deletes + finalize, in this process."""
        ctx = self.prepare()
        part = self.sync_partition(0, 1, ctx)
        dele = self.delete_absent(ctx)
        return Report.from_dict(self.finalize(ctx, [part, dele]))

    def loaded_embedder(self) -> Any:
        """The embedder this engine loaded or was given (None if no document needed the model)."""
        return self._embedder

    def close(self) -> None:
        for t in self._targets:
            for s in (t.write, t.store):
                if s is not None:
                    try:
                        s.close()
                    except Exception:  # noqa: BLE001
                        pass
        self.ledger.close()

    def __enter__(self) -> SyncEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------
class _PartitionRun:
    """The streaming pipeline of one partition: plan in windows, embed in batches, write in a thread."""

    WINDOW = 64

    def __init__(
        self,
        engine: SyncEngine,
        ctx: dict[str, Any],
        rep: Report,
        live: dict[str, tuple[_Target, VectorStore | None]],
        hashes: dict[str, dict[str, tuple[str, int]]],
    ) -> None:
        self.engine = engine
        self.ctx = ctx
        self.rep = rep
        self.live = live
        self.hashes = hashes
        self.dry_run = bool(ctx["dry_run"])
        self.doc_config = ctx["doc_config"]
        self.window: list[tuple[Document, str | None, list[str]]] = []
        self.batch = _Batch()
        self.chunker: Chunker | None = None
        self.dead: dict[str, str] = {}  # target -> error (stop writing to it for this partition)
        self.failed_docs: dict[str, set[str]] = {k: set() for k in live}
        self.lock = threading.Lock()
        self.q: queue.Queue[_Batch | None] = queue.Queue(maxsize=engine.queue_depth)
        self.writer_error: BaseException | None = None
        self.writer: threading.Thread | None = None
        if not self.dry_run:
            self.writer = threading.Thread(target=self._writer_loop, name="embedrail-writer", daemon=True)
            self.writer.start()

    # --- planning -----------------------------------------------------------------------------
    def add(self, doc: Document) -> None:
        self.rep.documents += 1
        if not self.live:  # every target is down: nothing can be written, so embed nothing
            return
        deletes = self.ctx["deletes"]
        if doc.deleted:
            self.rep.tombstones += 1
            if deletes == "none" or not self.live:
                return
            self.window.append((doc, None, list(self.live)))
        else:
            h = doc_hash(doc, self.doc_config)
            need = []
            n_known = 0
            for key in self.live:
                rec = self.hashes[key].get(doc.id)
                if rec is not None and rec[0] == h:
                    n_known = rec[1]
                else:
                    need.append(key)
            if not need and self.live:
                self.rep.chunks += n_known
                self.rep.unchanged += n_known
                for key in self.live:
                    self.rep.plan[key]["unchanged"] += n_known
                return
            self.window.append((doc, h, need))
        if len(self.window) >= self.WINDOW:
            self._plan_window()

    def _chunker(self) -> Chunker:
        if self.chunker is None:
            emb = self.engine._embedder_for(self.ctx)
            self.chunker = Chunker(emb, self.ctx["chunk_tokens"], self.ctx["chunk_overlap"])
        return self.chunker

    def _plan_window(self) -> None:
        window, self.window = self.window, []
        if not window:
            return
        ledger = self.engine.ledger
        fps: dict[str, dict[str, dict[str, str | None]]] = {}
        for key, (t, _) in self.live.items():
            ids = [d.id for d, _, need in window if key in need]
            if t.generation in ("__new__", "__dry_run__") or not ids:
                fps[key] = {}
            else:
                fps[key] = ledger.chunk_fingerprints(key, t.generation, ids)
        for doc, h, need in window:
            if doc.deleted:
                for key in need:
                    old = fps[key].get(doc.id, {})
                    if old:
                        self.rep.plan[key]["deleted"] += len(old)
                        self.batch.deletes.setdefault(key, []).extend((c, doc.id) for c in old)
                        self.batch.docs_removed.setdefault(key, []).append(doc.id)
                self._maybe_flush()
                continue
            chunks = self._chunker().chunk(doc)
            meta_json = canonical_json(doc.metadata)
            self.rep.chunks += len(chunks)
            new_ids = {c.id for c in chunks}
            per_chunk_targets: dict[str, list[str]] = {}
            fp_of: dict[str, str] = {}
            for c in chunks:
                fp_of[c.id] = sha256(c.text, self.ctx["fingerprint"], meta_json)[:32]
            for key in self.live:
                if key not in need:
                    continue
                old = fps[key].get(doc.id, {})
                p = self.rep.plan[key]
                for c in chunks:
                    prev = old.get(c.id, "__absent__")
                    if prev == fp_of[c.id]:
                        p["unchanged"] += 1
                    else:
                        p["new" if prev == "__absent__" else "changed"] += 1
                        per_chunk_targets.setdefault(c.id, []).append(key)
                stale = [cid for cid in old if cid not in new_ids]
                if stale:
                    p["deleted"] += len(stale)
                    self.batch.deletes.setdefault(key, []).extend((cid, doc.id) for cid in stale)
            self.rep.unchanged += sum(1 for c in chunks if c.id not in per_chunk_targets)
            metadata = {**doc.metadata}
            for c in chunks:
                targets = per_chunk_targets.get(c.id)
                if not targets:
                    continue
                md = {**metadata, "_doc": doc.id, "_n": c.n, "_fp": fp_of[c.id]}
                self.batch.entries.append(_Entry(c, fp_of[c.id], md, targets))
                if len(self.batch.entries) >= self.engine.batch_size:
                    self._flush()
            for key in need:
                assert h is not None
                self.batch.docs_done.setdefault(key, []).append((doc.id, h, len(chunks)))
            self._maybe_flush()

    def _maybe_flush(self) -> None:
        if len(self.batch.entries) >= self.engine.batch_size or sum(len(v) for v in self.batch.deletes.values()) >= 1000:
            self._flush()

    def _flush(self) -> None:
        batch, self.batch = self.batch, _Batch()
        if batch.empty():
            return
        if self.dry_run:
            self.rep.embedded += len(batch.entries)
            return
        if batch.entries:
            emb = self.engine._embedder_for(self.ctx)
            t0 = time.perf_counter()
            vectors = np.asarray(emb.embed_documents([e.chunk.text for e in batch.entries]), dtype=np.float32)
            self.rep.embed_seconds += time.perf_counter() - t0
            if vectors.shape != (len(batch.entries), self.ctx["dims"]):
                raise ModelError(f"embedder returned shape {vectors.shape}, expected ({len(batch.entries)}, {self.ctx['dims']})")
            batch.vectors = vectors
            self.rep.embedded += len(batch.entries)
        self._put(batch)

    def _put(self, batch: _Batch) -> None:
        while True:
            if self.writer_error is not None:
                raise self.writer_error
            try:
                self.q.put(batch, timeout=0.5)
                return
            except queue.Full:
                if self.writer is None or not self.writer.is_alive():
                    raise RuntimeError("writer thread died") from self.writer_error

    def finish(self) -> None:
        self._plan_window()
        self._flush()

    def close(self) -> None:
        if self.writer is not None:
            if self.writer.is_alive():
                self.q.put(None)
                self.writer.join()
            self.writer = None
            if self.writer_error is not None:
                err, self.writer_error = self.writer_error, None
                raise err

    # --- writing (writer thread) --------------------------------------------------------------
    def _writer_loop(self) -> None:
        try:
            while True:
                batch = self.q.get()
                if batch is None:
                    return
                self._write(batch)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            self.writer_error = e
            # drain so the producer never blocks forever
            while True:
                try:
                    if self.q.get_nowait() is None:
                        return
                except queue.Empty:
                    time.sleep(0.05)
                    if not threading.main_thread().is_alive():
                        return

    def _write(self, batch: _Batch) -> None:
        ledger = self.engine.ledger
        for key, (t, store) in self.live.items():
            assert store is not None
            entries = [(i, e) for i, e in enumerate(batch.entries) if key in e.targets]
            deletes = batch.deletes.get(key, [])
            done = batch.docs_done.get(key, [])
            removed = batch.docs_removed.get(key, [])
            if not (entries or deletes or done or removed):
                continue
            if key in self.dead:
                self.rep.failed[key] += len(entries) + len(deletes)
                continue
            failed_docs = self.failed_docs[key]
            try:
                written: list[tuple[str, str, str]] = []
                if entries:
                    ledger.mark_intent(key, t.generation, [(e.chunk.id, e.chunk.doc_id) for _, e in entries])
                    assert batch.vectors is not None
                    vecs = batch.vectors[[i for i, _ in entries]]
                    records = [Record(e.chunk.id, vecs[j], e.chunk.text, e.metadata) for j, (_, e) in enumerate(entries)]
                    res = store.upsert(records)
                    for _, e in entries:
                        if e.chunk.id in res.failed:
                            failed_docs.add(e.chunk.doc_id)
                        else:
                            written.append((e.chunk.id, e.chunk.doc_id, e.fp))
                    if res.failed:
                        self.rep.fail(key, f"{len(res.failed)} records rejected: {next(iter(res.failed.values()))}", len(res.failed))
                    self.rep.upserted[key] += len(written)
                deleted: list[str] = []
                if deletes:
                    dres = store.delete([c for c, _ in deletes])
                    for c, d in deletes:
                        if c in dres.failed:
                            failed_docs.add(d)
                        else:
                            deleted.append(c)
                    if dres.failed:
                        self.rep.fail(key, f"{len(dres.failed)} deletes rejected: {next(iter(dres.failed.values()))}", len(dres.failed))
                    self.rep.deleted[key] += len(deleted)
                ok_done = [x for x in done if x[0] not in failed_docs]
                ok_removed = [d for d in removed if d not in failed_docs]
                ledger.commit(key, t.generation, written=written, deleted=deleted, docs_done=ok_done, docs_removed=ok_removed)
            except Exception as e:  # noqa: BLE001 - the target failed: the others go on
                if not _is_target_failure(e):
                    raise
                msg = _one_line(e)
                log.warning("%s: %s — skipping this target for the rest of the run", key, msg)
                self.dead[key] = msg
                self.rep.fail(key, msg, len(entries) + len(deletes))


# ------------------------------------------------------------------------------------------------
def _is_down(e: BaseException) -> bool:
    """A store problem that fails this target only (as opposed to a user error that stops the run)."""
    if isinstance(e, IndexMismatchError | DimensionLimitError):
        return False
    return isinstance(e, StoreError)


def _is_target_failure(e: BaseException) -> bool:
    if isinstance(e, EmbedrailError):
        return _is_down(e)
    return isinstance(e, Exception)  # a client library's own error (connection reset, ...)


def _describe_embedder(emb: Any) -> dict[str, Any]:
    info = emb.embedding_info() if hasattr(emb, "embedding_info") else {}
    return {
        "model_id": str(getattr(emb, "model_id", info.get("model", "unknown"))),
        "dims": int(emb.dims),
        "native_dims": int(getattr(emb, "native_dims", emb.dims) or emb.dims),
        "max_tokens": int(getattr(emb, "max_tokens", 0) or 0),
        "fingerprint": str(emb.fingerprint),
        "metric": str(getattr(emb, "metric", "cosine") or "cosine"),
        "embedding": dict(info),
    }


def _spec_dict(spec: IndexSpec) -> dict[str, Any]:
    return {"dims": spec.dims, "metric": spec.metric, "fingerprint": spec.fingerprint, "embedding": dict(spec.embedding)}


def _ctx_spec(ctx: dict[str, Any]) -> dict[str, Any]:
    return {"dims": ctx["dims"], "metric": ctx["metric"], "fingerprint": ctx["fingerprint"], "embedding": ctx["embedding"]}


def sync(source: Any, targets: Sequence[str | VectorStore], **kwargs: Any) -> Report:
    """One-call convenience: ``SyncEngine(source, targets, **kwargs).run()``."""
    with SyncEngine(source, targets, **kwargs) as engine:
        return engine.run()
