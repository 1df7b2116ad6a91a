"""Full rebuilds and their crash recovery.

A full run writes a new physical index next to the live one and switches the user-facing name to it
at the end (``commit_rebuild``), so readers never see a half-built index. The ledger records the
rebuild as *pending* (its physical name and fingerprint) before anything is written to it, and rows of
the new generation are kept apart from the live one's. A run that finds a pending rebuild:

- the store already points at it (the process died between the store's switch and the ledger's):
  finish the switch in the ledger;
- a full run with the same embedding: resume it (what the dead run wrote stays; only the rest is embedded);
- otherwise: drop the half-built index and forget its rows.
"""

from __future__ import annotations

import logging

from embedrail.connectors.base import IndexSpec, VectorStore
from embedrail.errors import ConfigError
from embedrail.integration.context import TargetRun, spec_dict
from embedrail.integration.ledger import Ledger, TargetState
from embedrail.integration.targets import TargetSet, TargetSlot
from embedrail.secrets import one_line

__all__ = ["begin", "commit", "recover", "spec_dict"]

log = logging.getLogger("embedrail.sync")


def recover(ledger: Ledger, targets: TargetSet, t: TargetSlot, run: TargetRun, state: TargetState, spec: IndexSpec, *,
            full: bool, dry_run: bool, notes: list[str]) -> bool:  # fmt: skip
    """Deal with the interrupted rebuild ``state`` records. Returns True when this run resumes it
    (``run`` then writes into it), False when the target is free for a new rebuild or an incremental run."""
    store = targets.store(t)
    pending = state.pending_generation
    assert pending is not None
    info = store.describe()
    if dry_run:
        notes.append(f"{t.key}: an interrupted rebuild ({pending}) will be finished or dropped by the next run")
        return False
    if info.exists and info.physical_name == pending:
        recorded = info.spec or spec
        ledger.switch_generation(t.key, pending, recorded.fingerprint, spec_dict(recorded))
        notes.append(f"{t.key}: finished an interrupted rebuild ({pending})")
        return False
    try:
        rebuild: VectorStore | None = store.open_rebuild(pending)
    except ConfigError:  # not a rebuild of this index (renamed?): nothing to reopen
        rebuild = None
    if rebuild is not None and full and state.pending_fingerprint == spec.fingerprint:
        rebuild.ensure_index(spec)  # same embedding: keep what the interrupted run wrote
        targets.hold_rebuild(t, rebuild)
        run.generation, run.rebuild = pending, True
        notes.append(f"{t.key}: resuming an interrupted rebuild ({pending})")
        return True
    if rebuild is not None:
        try:
            store.abort_rebuild(rebuild)
        except Exception as e:  # noqa: BLE001 - the index may be gone already; the ledger is reset anyway
            log.warning("%s: could not drop the abandoned rebuild %s: %s", t.key, pending, one_line(e))
        finally:
            rebuild.close()
    ledger.reset(t.key, pending)
    ledger.set_pending(t.key, None, None)
    notes.append(f"{t.key}: dropped an interrupted rebuild ({pending})")
    return False


def begin(ledger: Ledger, targets: TargetSet, t: TargetSlot, run: TargetRun, spec: IndexSpec) -> None:
    """Create the new physical index and record it as pending before anything is written to it."""
    rebuild = targets.store(t).begin_rebuild(spec)
    info = rebuild.describe()
    generation = info.physical_name or info.name
    ledger.set_pending(t.key, generation, spec.fingerprint)
    ledger.reset(t.key, generation)
    targets.hold_rebuild(t, rebuild)
    run.generation, run.rebuild = generation, True


def commit(ledger: Ledger, targets: TargetSet, t: TargetSlot, run: TargetRun, spec: IndexSpec) -> None:
    """Switch the name to the rebuilt index (the store first, then the ledger: a crash in between is
    finished by ``recover``), and let go of the rebuild's store."""
    assert run.generation is not None
    targets.store(t).commit_rebuild(targets.writer(t, run))
    ledger.switch_generation(t.key, run.generation, spec.fingerprint, spec_dict(spec))
    targets.release_rebuild(t)
