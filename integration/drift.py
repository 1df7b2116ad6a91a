"""What keeps a target's ledger rows true to its index when something other than a crash gets between
them: which ledger keeps an index (its *owner* stamp), taking over an index from its records (adopt), and
finding and repairing drift between the ledger and the store.

- **Owner.** Every index a run writes is stamped (``VectorStore.set_owner``) with the ledger's id and the
  key the ledger knows it by. A run that reaches the index through another spelling of its URL (another
  host name, extra query parameters, a client object) finds the stamp and uses the ledger rows of that
  key (``ledger_key``); a non-empty index without this ledger's stamp is refused by the engine unless
  the user adopts it or rebuilds it.
- **Adopt.** The records carry their document id (``_doc``), chunk number (``_n``) and fingerprint
  (``_fp``): ``adopt`` rebuilds the target's chunk rows from them, so the next plan writes only what
  differs and snapshot deletes remove what the source no longer has.
- **Drift.** ``probe`` compares the store's count and a random sample of records with the ledger (every
  incremental run: a count and one read of ``sample`` records); ``diff`` compares every id (and
  fingerprint), and with ``apply`` repairs as it goes: it makes the ledger describe what the store really
  holds (missing records are forgotten, stale fingerprints replaced by the stored ones) and deletes the
  records the ledger does not know, so the run that follows rewrites exactly the difference: a missing
  record is embedded again, a record whose stored vector is still right only gets its metadata.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from embedrail.connectors.base import IndexInfo, VectorStore
from embedrail.integration.ledger import Ledger
from embedrail.integration.plan import META_FP, TEXT_FP

__all__ = ["Diff", "Drift", "adopt", "diff", "ledger_key", "owner_record", "pages", "probe", "record_of"]

log = logging.getLogger("embedrail.sync")

_PAGE = 256  # records read back per request


def owner_record(ledger: Ledger, key: str) -> dict[str, str]:
    """The owner stamp a run writes into the index of target ``key``."""
    return {"ledger": ledger.id, "key": key}


def ledger_key(ledger: Ledger, key: str, info: IndexInfo | None) -> str:
    """The key under which ``ledger`` keeps the index ``info`` describes: the key this ledger stamped into
    it (the URL may be spelt differently now), else ``key`` (the target URL without credentials)."""
    owner = info.owner if info is not None and info.exists else None
    if owner and owner.get("ledger") == ledger.id and owner.get("key"):
        return owner["key"]
    return key


def record_of(chunk_id: str, metadata: Mapping[str, Any] | None) -> tuple[str, str, str | None]:
    """(chunk id, document id, fingerprint) of a stored record, from its ``_doc`` / ``_fp`` metadata (the
    document id falls back to the chunk id's ``doc#n`` form; a missing or malformed fingerprint is None:
    the record is then planned as changed and written again)."""
    md = metadata or {}
    doc = md.get("_doc")
    if not isinstance(doc, str) or not doc:
        doc = chunk_id.rpartition("#")[0] or chunk_id
    fp = md.get("_fp")
    return chunk_id, doc, fp if isinstance(fp, str) and len(fp) == TEXT_FP + META_FP else None


def pages(ids: Iterable[str], size: int = _PAGE) -> Iterator[list[str]]:
    """``ids`` in lists of ``size`` (the last one shorter), read lazily."""
    page: list[str] = []
    for i in ids:
        page.append(i)
        if len(page) >= size:
            yield page
            page = []
    if page:
        yield page


def adopt(ledger: Ledger, store: VectorStore, key: str, generation: str) -> int:
    """Replace target ``key``'s ledger rows for ``generation`` by what the index holds (read page by page,
    never all in memory); returns the number of records adopted. Document rows are left out: each
    document is planned chunk by chunk on the next run (nothing unchanged is embedded)."""
    ledger.reset(key, generation)
    n = 0
    for page in pages(store.iter_ids()):
        got = store.get(page)
        rows = [record_of(c, got[c].metadata if c in got else None) for c in page]
        ledger.record_store(key, generation, held=rows)
        n += len(rows)
    return n


@dataclass
class Drift:
    """What the drift probe (and a repair) found for one target."""

    store_count: int
    ledger_count: int  # chunks the ledger records as written
    in_flight: int = 0  # intents: chunks a crashed run may or may not have written
    sampled: int = 0
    missing: int = 0  # records the ledger has and the store lacks (in the sample, or in all with a full diff)
    stale: int = 0  # records whose stored fingerprint is not the ledger's
    unknown: int | None = None  # records the ledger does not know (full diff only)
    full: bool = False  # every id was compared
    repaired: bool = False
    examples: list[str] = field(default_factory=list)

    @property
    def count_ok(self) -> bool:
        return self.ledger_count <= self.store_count <= self.ledger_count + self.in_flight

    @property
    def found(self) -> bool:
        return not self.count_ok or bool(self.missing or self.stale or self.unknown)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "found": self.found}

    def summary(self) -> str:
        parts = [f"store {self.store_count} records, ledger {self.ledger_count}" + (f" (+{self.in_flight} in flight)" if self.in_flight else "")]
        where = "of all" if self.full else f"of {self.sampled} sampled"
        parts.append(f"{self.missing} missing, {self.stale} stale {where}" + (f", {self.unknown} unknown" if self.unknown else ""))
        return "; ".join(parts)


def probe(ledger: Ledger, store: VectorStore, key: str, generation: str, sample: int) -> Drift:
    """The store's count against the ledger's, and ``sample`` random recorded chunks read back."""
    counts = ledger.counts(key, generation)
    store.flush()  # a count lags writes and deletes where search visibility does (Elasticsearch: until a refresh)
    d = Drift(store_count=store.count(), ledger_count=counts["chunks"], in_flight=counts["pending_chunks"])
    picked = ledger.sample(key, generation, sample) if sample else {}
    got = store.get(list(picked)) if picked else {}
    d.sampled = len(picked)
    missing = [c for c in picked if c not in got]
    stale = [c for c in picked if c in got and got[c].metadata.get("_fp") != picked[c]]
    d.missing, d.stale, d.examples = len(missing), len(stale), (missing + stale)[:10]
    return d


@dataclass
class Diff:
    """What comparing every id (and fingerprint) of a target's ledger rows with its index found: counts and
    the first few ids, never the lists themselves (a store that lost everything would make them as long as the
    corpus)."""

    missing: int = 0  # recorded as written, not in the store
    unknown: int = 0  # in the store, not in the ledger at all
    stale: int = 0  # stored with a fingerprint that is not the ledger's
    store_count: int = 0
    examples: list[str] = field(default_factory=list)
    applied: bool = False  # the ledger now describes the store and the unknown records were deleted
    deleted: int = 0  # unknown records the store acknowledged deleting

    @property
    def found(self) -> bool:
        return bool(self.missing or self.unknown or self.stale)

    def drift(self, ledger_count: int, in_flight: int) -> Drift:
        return Drift(store_count=self.store_count, ledger_count=ledger_count, in_flight=in_flight, missing=self.missing,
                     stale=self.stale, unknown=self.unknown, full=True, repaired=self.applied,
                     examples=self.examples[:10])  # fmt: skip


def _merge(ledger_rows: Iterable[tuple[str, str | None]], store_ids: Iterable[str]) -> Iterator[tuple[str, str | None, bool, bool]]:
    """(id, ledger fingerprint, in the ledger, in the store) for the union of two id streams, both sorted
    (``str`` order) without repeats."""
    led, sto = iter(ledger_rows), iter(store_ids)
    lrow, sid = next(led, None), next(sto, None)
    while lrow is not None or sid is not None:
        if sid is None or (lrow is not None and lrow[0] < sid):
            assert lrow is not None
            yield lrow[0], lrow[1], True, False
            lrow = next(led, None)
        elif lrow is None or sid < lrow[0]:
            yield sid, None, False, True
            sid = next(sto, None)
        else:
            yield sid, lrow[1], True, True
            lrow, sid = next(led, None), next(sto, None)


def diff(ledger: Ledger, store: VectorStore, key: str, generation: str, *, fingerprints: bool = True,
         apply: bool = False, page: int | None = None) -> Diff:  # fmt: skip
    """Compare every id (and, with ``fingerprints``, every stored record's ``_fp``) with the ledger; with
    ``apply``, repair as it goes, a page at a time: the ledger is made to describe the store
    (``Ledger.record_store``: missing records forgotten, stale fingerprints replaced by the stored ones) and
    records the ledger does not know are deleted, so the run that follows rewrites exactly the difference.

    Memory does not grow with the index: the store's ids are sorted in runs spilled to temporary files
    (``SortedIds``), the ledger's are read a page at a time in the same order, and the two streams are
    walked once."""
    from embedrail.integration.idsort import SortedIds

    page = page or _PAGE
    store.flush()
    out = Diff()
    missing: list[str] = []
    unknown: list[str] = []
    stale: list[tuple[str, str, str | None]] = []
    check: dict[str, str] = {}  # chunk id -> the ledger's fingerprint, to compare with the stored record's

    def note(ids: Iterable[str]) -> None:
        for c in ids:
            if len(out.examples) < 10:
                out.examples.append(c)

    def flush(final: bool = False) -> None:
        nonlocal missing, unknown, stale, check
        if check and (final or len(check) >= page):
            got = store.get(list(check))
            found = [record_of(c, got[c].metadata) for c, fp in check.items() if c in got and got[c].metadata.get("_fp") != fp]
            out.stale += len(found)
            note(c for c, _, _ in found)
            stale += found
            check = {}
        if apply and (final or len(missing) + len(stale) >= page):
            ledger.record_store(key, generation, held=stale, missing=missing)
            missing, stale = [], []
        if apply and unknown and (final or len(unknown) >= page):
            res = store.delete(unknown)
            if res.failed:
                log.warning("%s: %d of the records the ledger does not know could not be deleted", key, len(res.failed))
            out.deleted += len(unknown) - len(res.failed)
            unknown = []
        if not apply:  # counted and noted: nothing to keep
            missing, unknown, stale = [], [], []

    with SortedIds() as in_store:
        in_store.update(store.iter_ids())
        for chunk_id, fp, in_ledger, stored in _merge(ledger.iter_chunks(key, generation), in_store):
            out.store_count += stored
            if stored and not in_ledger:
                out.unknown += 1
                note([chunk_id])
                unknown.append(chunk_id)
            elif in_ledger and fp is not None:  # an intent (fp None) may or may not have reached the store
                if not stored:
                    out.missing += 1
                    note([chunk_id])
                    missing.append(chunk_id)
                elif fingerprints:
                    check[chunk_id] = fp
            flush()
        flush(final=True)
    out.applied = apply
    return out
