"""The targets of a run: their ledger keys, their stores (connected on first use, closed with the
engine), and the store each run writes to (the user-facing index, or a full rebuild's new one)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from connectors.base import VectorStore
from embedrail.errors import ConfigError
from embedrail.secrets import one_line, redact_url

from .context import RunContext, TargetRun

__all__ = ["Target", "TargetSet", "target_key"]

log = logging.getLogger("embedrail.sync")


def target_key(url: str) -> str:
    """The key under which the ledger and the report know a target: its URL without credentials (the
    connectors' canonical form for a store URL). Stable across runs: changing it orphans a ledger."""
    try:
        from connectors import safe_url

        return safe_url(url)
    except Exception:  # noqa: BLE001 - not a store URL the connectors know: redact it generically
        return redact_url(url)


@dataclass
class Target:
    key: str  # redacted URL: ledger key, report key
    url: str | None = None  # what the user gave (may hold credentials: never logged or put in a context)
    store: VectorStore | None = None  # the user-facing store (ours to close when we connected it)
    owned: bool = False  # we connected the store (from the URL), so we close it
    error: str | None = None  # why it is out of this run (set while preparing)


class TargetSet:
    """The run's targets, in order, with their stores and the rebuild stores this process holds."""

    def __init__(self, targets: Sequence[str | VectorStore], connect: Callable[[str], VectorStore] | None = None) -> None:
        if not targets:
            raise ConfigError("at least one target is needed (--target URL)")
        self._connect = connect
        self.items: list[Target] = []
        for t in targets:
            if isinstance(t, str):
                self.items.append(Target(key=target_key(t), url=t))
            else:
                self.items.append(Target(key=target_key(getattr(t, "url", repr(t))), store=t))
        keys = [t.key for t in self.items]
        if len(set(keys)) != len(keys):
            raise ConfigError("the same target is given twice")
        self._rebuilds: dict[str, VectorStore] = {}  # target key -> store writing its rebuild

    def __iter__(self) -> Iterator[Target]:
        return iter(self.items)

    def store(self, t: Target) -> VectorStore:
        """The target's user-facing store (connected now if it was given as a URL)."""
        if t.store is None:
            assert t.url is not None
            if self._connect is not None:
                t.store = self._connect(t.url)
            else:
                from connectors import connect

                t.store = connect(t.url)
            t.owned = True
        return t.store

    def bind(self, ctx: RunContext) -> list[tuple[Target, TargetRun]]:
        """Pair each target with its state in ``ctx`` (which must have been prepared for these targets)."""
        if len(ctx.targets) != len(self.items) or any(r.key != self.items[r.index].key for r in ctx.targets):
            raise ConfigError("the run context was prepared for other targets")
        return [(self.items[r.index], r) for r in ctx.targets]

    # --------------------------------------------------------------------------- rebuild stores
    def hold_rebuild(self, t: Target, store: VectorStore) -> None:
        self._rebuilds[t.key] = store

    def release_rebuild(self, t: Target) -> None:
        store = self._rebuilds.pop(t.key, None)
        if store is not None:
            _close(store)

    def writer(self, t: Target, run: TargetRun) -> VectorStore:
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
