"""The targets of a run: what the user names (``Target``: a store URL or object, and its own dims), their
ledger keys, their stores (connected on first use, closed with the engine), and the store each run
writes to (the user-facing index, or a full rebuild's new one)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from embedrail.connectors.base import VectorStore
from embedrail.errors import ConfigError
from embedrail.integration.context import RunContext, TargetRun
from embedrail.secrets import one_line, redact_url

__all__ = ["Target", "TargetSet", "TargetSlot", "split_target", "target_key"]

log = logging.getLogger("embedrail.sync")


def target_key(url: str) -> str:
    """The key under which the ledger and the report know a target: its URL without credentials (the
    connectors' canonical form for a store URL). Stable across runs: changing it orphans a ledger."""
    try:
        from embedrail.connectors import safe_url

        return safe_url(url)
    except Exception:  # noqa: BLE001 - not a store URL the connectors know: redact it generically
        return redact_url(url)


def split_target(spec: str) -> tuple[str, int | None]:
    """``URL#dims=N`` -> (URL, N); a URL without a fragment -> (URL, None). The fragment is embedrail's
    (store URLs never carry one) and never reaches the store or the ledger key."""
    url, sep, fragment = spec.partition("#")
    if not sep:
        return spec, None
    opts = dict(parse_qsl(fragment, keep_blank_values=True))
    unknown = set(opts) - {"dims"}
    if unknown or not opts:
        raise ConfigError(f"target {target_key(url)}#{fragment}: the only target option is #dims=N")
    return url, _dims(opts["dims"], target_key(url))


def _dims(value: Any, where: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{where}: dims must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class Target:
    """A target as the user names it: a store URL (``URL#dims=N`` also gives its dims) or a ``VectorStore``,
    and the dimension its index gets (None: the run's ``dims`` option, else what the index records, else
    the model's native size, capped by the store's limit).

    With a Matryoshka model every target may have its own dims: the run embeds once, at the largest one,
    and writes each target the truncation to its own, renormalised (``embed_core.mrl``)."""

    target: str | VectorStore
    dims: int | None = None

    @classmethod
    def of(cls, t: str | VectorStore | Target | Mapping[str, Any]) -> Target:
        """From a URL string (``#dims=N`` allowed), a store, a ``Target`` or ``{"url": ..., "dims": N}``."""
        if isinstance(t, Target):
            return t
        if isinstance(t, str):
            url, dims = split_target(t.strip())
            if not url:
                raise ConfigError("empty target URL")
            return cls(url, dims)
        if isinstance(t, Mapping):
            unknown = set(t) - {"url", "dims"}
            if unknown or "url" not in t:
                raise ConfigError(f"a target mapping takes url: and dims:, got {sorted(t)}")
            base = cls.of(str(t["url"]))
            dims = t.get("dims")
            if dims is not None and base.dims is not None and _dims(dims, "dims") != base.dims:
                raise ConfigError(f"{target_key(str(base.target))}: dims given twice ({base.dims} in the URL, {dims})")
            return cls(base.target, base.dims if dims is None else _dims(dims, target_key(str(base.target))))
        return cls(t)

    def __post_init__(self) -> None:
        if self.dims is not None:
            object.__setattr__(self, "dims", _dims(self.dims, "target dims"))


@dataclass
class TargetSlot:
    given: str  # the URL without credentials, as the user gave it
    key: str = ""  # the ledger key (and report key): ``given``, or the key the index is stamped with (``prepare``)
    dims: int | None = None  # what the user asked for this target (None: the run's default)
    url: str | None = None  # what the user gave (may hold credentials: never logged or put in a context)
    store: VectorStore | None = None  # the user-facing store (ours to close when we connected it)
    owned: bool = False  # we connected the store (from the URL), so we close it
    error: str | None = None  # why it is out of this run (set while preparing)

    def __post_init__(self) -> None:
        self.key = self.key or self.given


class TargetSet:
    """The run's targets, in order, with their stores and the rebuild stores this process holds."""

    def __init__(self, targets: Sequence[str | VectorStore | Target], connect: Callable[[str], VectorStore] | None = None) -> None:
        if not targets:
            raise ConfigError("at least one target is needed (--target URL)")
        self._connect = connect
        self.items: list[TargetSlot] = []
        for t in map(Target.of, targets):
            if isinstance(t.target, str):
                self.items.append(TargetSlot(target_key(t.target), dims=t.dims, url=t.target))
            else:
                self.items.append(TargetSlot(target_key(getattr(t.target, "url", repr(t.target))), dims=t.dims, store=t.target))
        keys = [t.key for t in self.items]
        if len(set(keys)) != len(keys):
            raise ConfigError("the same target is given twice")
        self._rebuilds: dict[str, VectorStore] = {}  # target key -> store writing its rebuild

    def __iter__(self) -> Iterator[TargetSlot]:
        return iter(self.items)

    def store(self, t: TargetSlot) -> VectorStore:
        """The target's user-facing store (connected now if it was given as a URL)."""
        if t.store is None:
            assert t.url is not None
            t.store = self._connect(t.url) if self._connect is not None else connect_target(t.url)
            t.owned = True
        return t.store

    def check_distinct(self) -> None:
        """Refuse two targets that are one index (their ledger keys, once resolved, are equal)."""
        seen: dict[str, str] = {}
        for t in self.items:
            if t.key in seen:
                raise ConfigError(f"{seen[t.key]} and {t.given} are the same index (known to the ledger as {t.key}): give it once")
            seen[t.key] = t.given

    def bind(self, ctx: RunContext) -> list[tuple[TargetSlot, TargetRun]]:
        """Pair each target with its state in ``ctx`` (which must have been prepared for these targets), and
        take the ledger key ``prepare`` resolved for it."""
        if len(ctx.targets) != len(self.items) or any((r.given or r.key) != self.items[r.index].given for r in ctx.targets):
            raise ConfigError("the run context was prepared for other targets")
        for r in ctx.targets:
            self.items[r.index].key = r.key
        return [(self.items[r.index], r) for r in ctx.targets]

    # --------------------------------------------------------------------------- rebuild stores
    def hold_rebuild(self, t: TargetSlot, store: VectorStore) -> None:
        self._rebuilds[t.key] = store

    def release_rebuild(self, t: TargetSlot) -> None:
        store = self._rebuilds.pop(t.key, None)
        if store is not None:
            _close(store)

    def writer(self, t: TargetSlot, run: TargetRun) -> VectorStore:
        """Where this run writes for ``t``: its rebuild's store (reopened by the physical name when
        another process began it) or the user-facing store."""
        if not run.rebuild:
            return self.store(t)
        store = self._rebuilds.get(t.key)
        if store is None:
            assert run.generation is not None
            store = self.store(t).open_rebuild(run.generation)
            self._rebuilds[t.key] = store
        return store

    def close(self) -> None:
        """Close the rebuild stores and every store we connected (a store passed in stays open)."""
        for key in list(self._rebuilds):
            _close(self._rebuilds.pop(key))
        for t in self.items:
            if t.owned and t.store is not None:
                _close(t.store)
                t.store, t.owned = None, False


def _close(store: VectorStore) -> None:
    try:
        store.close()
    except Exception as e:  # noqa: BLE001 - closing must not hide the run's own outcome
        log.debug("closing %s: %s", getattr(store, "url", store), one_line(e))


def connect_target(url: str, *, device: str = "auto") -> VectorStore:
    """``connect(url)``, with the models a URL names loaded here, where the embedding models live:
    ``?sparse_model=MODEL`` (a Qdrant or pgvector target) opens that SPLADE model (``embed_core.sparse``) and
    gives it to the store as its ``sparse_encoder``: the index then keeps the model's learned sparse vectors,
    the keyword side of its hybrid search. ``&sparse_top_k=N`` keeps each vector's N heaviest terms (pgvector
    stores at most 16,000 non-zero terms per ``sparsevec``)."""
    from embedrail.connectors import connect
    from embedrail.connectors._urls import parse_url

    parsed = parse_url(url)
    model = parsed.param("sparse_model")
    top_k = parsed.param("sparse_top_k")
    if not model:
        if top_k is not None:
            raise ConfigError(f"{redact_url(url)}: ?sparse_top_k= goes with ?sparse_model= (the SPLADE model it bounds)")
        return connect(url)
    if parsed.store not in ("qdrant", "pgvector"):
        raise ConfigError(f"{redact_url(url)}: ?sparse_model= is for Qdrant and pgvector targets (learned sparse vectors)")
    if top_k is not None and not (top_k.isdigit() and int(top_k) > 0):
        raise ConfigError(f"{redact_url(url)}: ?sparse_top_k= must be a positive integer, got {top_k!r}")
    from embedrail.embed_core.sparse import open_sparse_encoder

    encoder = open_sparse_encoder(model, device=device, top_k=int(top_k) if top_k else None)
    return connect(url, sparse_encoder=encoder)
