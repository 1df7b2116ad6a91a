"""The run report: what a sync did, per target. ``to_dict()`` is the JSON the CLI prints with
``--json`` and the Airflow report task returns as its XCom."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Report"]

PLAN_KEYS = {"new": 0, "changed": 0, "retagged": 0, "unchanged": 0, "deleted": 0}


@dataclass
class Report:
    mode: str = "incremental"
    dry_run: bool = False
    documents: int = 0  # source documents seen (tombstones included, bad rows excluded)
    #: documents the partitions read from the source, all together (a source that splits: about ``documents``;
    #: one that cannot: each partition reads it whole, so about ``partitions`` times as many)
    read: int = 0
    chunks: int = 0  # chunks the source documents make (unchanged docs: as recorded)
    embedded: int = 0  # chunks embedded in this run (once, whatever the number of targets)
    reused: int = 0  # chunks to write whose text was already embedded in this run (identical text elsewhere)
    #: texts whose vector was read back from a target's index instead of embedded: the same text stored under
    #: another id (a renamed or moved document, a section that moved within its document); once per text, as
    #: ``embedded`` (further chunks of that text count as ``reused``)
    from_index: int = 0
    unchanged: int = 0  # chunks every target already held
    tombstones: int = 0
    upserted: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    retagged: dict[str, int] = field(default_factory=dict)  # records whose metadata was updated in place
    failed: dict[str, int] = field(default_factory=dict)  # chunks/ids not written, per target
    errors: dict[str, str] = field(default_factory=dict)  # target -> first error (one line)
    plan: dict[str, dict[str, int]] = field(default_factory=dict)  # target -> new/changed/unchanged/deleted
    target_dims: dict[str, int] = field(default_factory=dict)  # target -> the dims its index holds
    skipped_bad_rows: int = 0
    bad_rows: list[dict[str, Any]] = field(default_factory=list)  # first few, with location
    model: str | None = None
    dims: int | None = None
    fingerprint: str | None = None
    notes: list[str] = field(default_factory=list)
    #: per target: what the drift probe (or a repair) found, see ``integration.drift.Drift``
    drift: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: per target: snapshot deletes not made because they exceeded ``max_delete_fraction`` (the run fails)
    refused_deletes: dict[str, dict[str, Any]] = field(default_factory=dict)
    ledger: str | None = None  # the ledger's URL (no password)
    #: a file / object-storage source: files listed, fetched (read), parsed, and skipped unchanged by their
    #: listing version (neither fetched nor parsed); empty for other sources
    files: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    embed_seconds: float = 0.0
    partitions: int = 1

    MAX_BAD_ROWS = 20

    def add_target(self, target: str, dims: int | None = None) -> None:
        if dims is not None:
            self.target_dims[target] = dims
        self.upserted.setdefault(target, 0)
        self.deleted.setdefault(target, 0)
        self.retagged.setdefault(target, 0)
        self.failed.setdefault(target, 0)
        self.plan.setdefault(target, dict(PLAN_KEYS))

    def count_plan(self, target: str, counts: dict[str, int], *, unchanged: int = 0) -> None:
        """Add a document's plan for ``target`` (``DocPlan.counts()``), or ``unchanged`` chunks it holds."""
        p = self.plan[target]
        for k, n in counts.items():
            p[k] = p.get(k, 0) + n
        p["unchanged"] += unchanged

    def count_files(self, what: str, n: int = 1) -> None:
        self.files[what] = self.files.get(what, 0) + n

    def fail(self, target: str, error: str, count: int = 0) -> None:
        self.add_target(target)
        self.failed[target] += count
        self.errors.setdefault(target, error.splitlines()[0] if error else "failed")

    @property
    def ok(self) -> bool:
        return not self.errors and not any(self.failed.values()) and not self.refused_deletes

    def failed_targets(self) -> list[str]:
        return sorted(t for t in self.upserted if self.failed.get(t) or t in self.errors or t in self.refused_deletes)

    def refuse_deletes(self, target: str, deleting: int, held: int, limit: float) -> None:
        """Record snapshot deletes not made: ``deleting`` of the target's ``held`` documents, over ``limit``."""
        self.add_target(target)
        self.refused_deletes[target] = {"documents": deleting, "held": held, "fraction": round(deleting / max(held, 1), 4),
                                        "max_delete_fraction": limit}  # fmt: skip

    def raise_for_failures(self) -> Report:
        """Raise ``SyncError`` naming what failed if the run is not ``ok``; else return self."""
        if not self.ok:
            from embedrail.errors import SyncError

            raise SyncError(self.failure_message())
        return self

    def failure_message(self) -> str:
        """One line: why each failed target failed."""
        parts = []
        for t in self.failed_targets():
            if t in self.refused_deletes:
                r = self.refused_deletes[t]
                parts.append(f"{t} (refused to delete {r['documents']} of its {r['held']} documents, more than "
                             f"max_delete_fraction {r['max_delete_fraction']}: if the source really shrank, re-run with "
                             "--allow-mass-delete or a higher --max-delete-fraction)")  # fmt: skip
            else:
                parts.append(f"{t} ({self.errors.get(t) or str(self.failed.get(t, 0)) + ' failures'})")
        retry = any(t in self.errors or self.failed.get(t) for t in self.failed_targets())
        return "sync incomplete for " + ", ".join(parts) + ("; re-run to catch up" if retry else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "mode": self.mode,
            "dry_run": self.dry_run,
            "documents": self.documents,
            "read": self.read,
            "chunks": self.chunks,
            "embedded": self.embedded,
            "reused": self.reused,
            "from_index": self.from_index,
            "unchanged": self.unchanged,
            "tombstones": self.tombstones,
            "upserted": dict(self.upserted),
            "deleted": dict(self.deleted),
            "retagged": dict(self.retagged),
            "failed": dict(self.failed),
            "errors": dict(self.errors),
            "plan": {k: dict(v) for k, v in self.plan.items()},
            "target_dims": dict(self.target_dims),
            "skipped_bad_rows": self.skipped_bad_rows,
            "bad_rows": list(self.bad_rows),
            "model": self.model,
            "dims": self.dims,
            "fingerprint": self.fingerprint,
            "notes": list(self.notes),
            "drift": {k: dict(v) for k, v in self.drift.items()},
            "refused_deletes": {k: dict(v) for k, v in self.refused_deletes.items()},
            "ledger": self.ledger,
            "files": dict(self.files),
            "partitions": self.partitions,
            "seconds": round(self.seconds, 3),
            "embed_seconds": round(self.embed_seconds, 3),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        r = cls()
        for k in (
            "mode", "dry_run", "documents", "read", "chunks", "embedded", "reused", "from_index", "unchanged", "tombstones",
            "skipped_bad_rows", "model", "dims", "fingerprint", "seconds", "embed_seconds", "partitions", "ledger",
        ):  # fmt: skip
            if k in d:
                setattr(r, k, d[k])
        r.upserted = dict(d.get("upserted", {}))
        r.deleted = dict(d.get("deleted", {}))
        r.retagged = dict(d.get("retagged", {}))
        r.failed = dict(d.get("failed", {}))
        r.errors = dict(d.get("errors", {}))
        r.plan = {k: dict(v) for k, v in d.get("plan", {}).items()}
        r.target_dims = dict(d.get("target_dims", {}))
        r.bad_rows = list(d.get("bad_rows", []))
        r.notes = list(d.get("notes", []))
        r.drift = {k: dict(v) for k, v in d.get("drift", {}).items()}
        r.refused_deletes = {k: dict(v) for k, v in d.get("refused_deletes", {}).items()}
        r.files = dict(d.get("files", {}))
        return r

    def merge(self, other: Report) -> Report:
        """Add another partition's counts into this report (used by ``SyncEngine.finalize``)."""
        for k in ("documents", "read", "chunks", "embedded", "reused", "from_index", "unchanged", "tombstones", "skipped_bad_rows"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.embed_seconds += other.embed_seconds
        for mine, theirs in ((self.upserted, other.upserted), (self.deleted, other.deleted), (self.retagged, other.retagged),
                             (self.failed, other.failed)):  # fmt: skip
            for t, n in theirs.items():
                mine[t] = mine.get(t, 0) + n
        for t, e in other.errors.items():
            self.errors.setdefault(t, e)
        for t, n in other.target_dims.items():
            self.target_dims.setdefault(t, n)
        for t, p in other.plan.items():
            mp = self.plan.setdefault(t, dict(PLAN_KEYS))
            for k, n in p.items():
                mp[k] = mp.get(k, 0) + n
        self.bad_rows = (self.bad_rows + other.bad_rows)[: self.MAX_BAD_ROWS]
        for n in other.notes:
            if n not in self.notes:
                self.notes.append(n)
        for t, v in other.drift.items():
            self.drift.setdefault(t, v)
        for t, v in other.refused_deletes.items():
            self.refused_deletes.setdefault(t, v)
        for k, n in other.files.items():  # a partition that lists the whole source reports "listed" only as the first
            self.files[k] = self.files.get(k, 0) + n
        self.ledger = self.ledger or other.ledger
        self.model = self.model or other.model
        self.dims = self.dims or other.dims
        self.fingerprint = self.fingerprint or other.fingerprint
        return self

    def summary(self) -> str:
        """A few human lines (the non-JSON CLI output)."""
        verb = "would embed" if self.dry_run else "embedded"
        per_target = len(set(self.target_dims.values())) > 1  # targets at different dims: each says its own
        lines = [
            f"{self.documents} documents, {self.chunks} chunks: {verb} {self.embedded}, unchanged {self.unchanged}"
            + (f", {self.reused} reused (same text)" if self.reused else "")
            + (f", {self.from_index} vectors taken from the index (same text, another id)" if self.from_index else "")
            + (f", {self.skipped_bad_rows} bad rows skipped" if self.skipped_bad_rows else "")
            + f" ({self.model}, {self.dims} dims{' embedded' if per_target else ''}, {self.seconds:.1f}s)"
        ]
        for t in self.upserted:
            p = self.plan.get(t, {})
            state = "FAILED: " + self.errors[t] if t in self.errors else ("FAILED" if self.failed.get(t) else "ok")
            if t in self.refused_deletes and t not in self.errors:
                r = self.refused_deletes[t]
                state = (f"FAILED: deletes refused: {r['documents']} of {r['held']} documents ({r['fraction']:.0%}) are gone "
                         f"from the source, more than max_delete_fraction {r['max_delete_fraction']:g}")  # fmt: skip
            name = f"{t} ({self.target_dims[t]} dims)" if per_target and t in self.target_dims else t
            if self.dry_run:
                lines.append(
                    f"  {name}: plan new={p.get('new', 0)} changed={p.get('changed', 0)} retagged={p.get('retagged', 0)} "
                    f"unchanged={p.get('unchanged', 0)} delete={p.get('deleted', 0)} [{state}]"
                )
            else:
                lines.append(
                    f"  {name}: upserted {self.upserted[t]}, metadata updated {self.retagged.get(t, 0)}, "
                    f"deleted {self.deleted.get(t, 0)}, failed {self.failed.get(t, 0)} [{state}]"
                )
        for t, d in self.drift.items():
            if d.get("found"):
                lines.append(f"  drift {t}: store {d['store_count']} records, ledger {d['ledger_count']}; "
                             f"{d['missing']} missing, {d['stale']} stale" + (f", {d['unknown']} unknown" if d.get("unknown") else "")
                             + (" -> repaired" if d.get("repaired") else " -> NOT repaired (--repair)"))  # fmt: skip
        if self.files:
            f = self.files
            lines.append(f"  files: {f.get('listed', 0)} listed, {f.get('fetched', 0)} fetched, {f.get('parsed', 0)} parsed, "
                         f"{f.get('skipped_unchanged', 0)} unchanged (not fetched)")  # fmt: skip
        lines.extend(f"  note: {n}" for n in self.notes)
        if self.ledger:
            lines.append(f"  ledger: {self.ledger}")
        return "\n".join(lines)
