"""The planner (DESIGN.md: "Planner (ledger diff per target) -> {new, changed, unchanged, deleted}").

Pure functions from a document, its chunks and what the ledger records per target to a ``DocPlan``
per target: no store, no ledger connection, no model. The pipeline feeds them ledger rows and
chunks and acts on the plans; the report counts them.

Two stages keep an unchanged corpus cheap:

1. ``triage``: the document's hash (its text, metadata and the chunking/embedding configuration)
   against the hash each target recorded for it. Equal everywhere: nothing to do, and the document is
   never chunked or tokenised.
2. ``plan_document``: for the targets that need it, chunk fingerprints against the ledger's chunk
   rows: which chunks are new, changed, only re-tagged (same text, new metadata) or unchanged, and which
   recorded chunks are now stale (the document shrank). A row whose fingerprint is ``None`` is an
   *intent* (the write may or may not have reached the store before a crash): it is planned as
   changed, so it is written again.

A chunk fingerprint has two parts: ``text`` (the chunk text and the embedding configuration: what the
vector depends on) and ``meta`` (the document metadata the record carries). Same text part, another
meta part: the stored vector is still right, so the target only updates the record's metadata and
nothing is embedded. Rows recorded before the split (32 characters, one part) plan as changed once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from embedrail.integration.documents import Chunk, Document, canonical_json, doc_hash, sha256

__all__ = ["DocPlan", "PlannedChunk", "Triage", "chunk_fingerprint", "plan_chunks", "plan_document", "plan_removal", "same_vector",
           "text_fingerprint", "triage"]


TEXT_FP = 32  # hex characters of the text part of a chunk fingerprint
META_FP = 16  # hex characters of its metadata part


def text_fingerprint(text: str, embedding_fingerprint: str) -> str:
    """What a chunk's vector depends on: its text and the embedding configuration."""
    return sha256(text, embedding_fingerprint)[:TEXT_FP]


def chunk_fingerprint(text: str, embedding_fingerprint: str, metadata_json: str) -> str:
    """What a stored chunk record depends on: the text part (:func:`text_fingerprint`) followed by the
    metadata part (a hash of the document's metadata)."""
    return text_fingerprint(text, embedding_fingerprint) + sha256(metadata_json)[:META_FP]


def same_vector(recorded: str | None, fingerprint: str) -> bool:
    """Whether a recorded fingerprint has the text part of ``fingerprint`` (its vector can be kept)."""
    return recorded is not None and len(recorded) == TEXT_FP + META_FP and recorded[:TEXT_FP] == fingerprint[:TEXT_FP]


@dataclass(frozen=True, slots=True)
class PlannedChunk:
    chunk: Chunk
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Triage:
    """Stage 1 for one document: which targets need it."""

    hashes: Mapping[str, str] | None  # target -> the document's hash under its configuration (None: a tombstone)
    need: tuple[str, ...]  # targets whose record of the document differs (or that hold a tombstoned one)
    known_chunks: int = 0  # when no target needs it: how many chunks the targets hold for it


@dataclass(frozen=True, slots=True)
class DocPlan:
    """What one target needs for one document."""

    doc_id: str
    new: tuple[str, ...] = ()  # chunk ids the target does not hold
    changed: tuple[str, ...] = ()  # chunk ids it holds with another text/embedding (or only as an intent)
    retagged: tuple[str, ...] = ()  # chunk ids it holds with the same text but other metadata
    unchanged: tuple[str, ...] = ()  # chunk ids it holds as they are
    stale: tuple[str, ...] = ()  # chunk ids it holds that the document no longer has
    removed: bool = False  # the document is gone (tombstone): every chunk it holds is stale

    @property
    def writes(self) -> tuple[str, ...]:
        """Chunk ids whose vector must be written (so embedded)."""
        return self.new + self.changed

    def counts(self) -> dict[str, int]:
        return {"new": len(self.new), "changed": len(self.changed), "retagged": len(self.retagged),
                "unchanged": len(self.unchanged), "deleted": len(self.stale)}  # fmt: skip


def triage(doc: Document, doc_config: str | Mapping[str, str], recorded: Mapping[str, tuple[str, int] | None]) -> Triage:
    """``recorded``: per target, the (doc hash, chunk count) its ledger holds for ``doc.id`` (None: nothing).
    ``doc_config``: the chunking/embedding configuration, one for all targets or one per target (targets
    at different dims hold different vectors); the document is hashed once per distinct configuration."""
    if doc.deleted:
        return Triage(None, tuple(recorded))
    by_config: dict[str, str] = {}
    hashes: dict[str, str] = {}
    for key in recorded:
        config = doc_config if isinstance(doc_config, str) else doc_config[key]
        if config not in by_config:
            by_config[config] = doc_hash(doc, config)
        hashes[key] = by_config[config]
    need = tuple(key for key, rec in recorded.items() if rec is None or rec[0] != hashes[key])
    known = 0 if need else max((rec[1] for rec in recorded.values() if rec is not None), default=0)
    return Triage(hashes, need, known)


def plan_chunks(chunks: Iterable[Chunk], embedding_fingerprint: str, metadata_json: str,
                metadata: Mapping[str, Any] | None = None) -> list[PlannedChunk]:  # fmt: skip
    """A document's chunks with the fingerprint each stored record will carry: the text part over what is
    embedded (a contextual header included), the metadata part over the document's metadata (``metadata_json``)
    with the chunk's own (``heading_path``, ``page``) added."""
    out = []
    for c in chunks:
        mj = metadata_json if not c.metadata else canonical_json({**(metadata or {}), **c.metadata})
        out.append(PlannedChunk(c, chunk_fingerprint(c.to_embed, embedding_fingerprint, mj)))
    return out


def plan_document(doc_id: str, chunks: Sequence[PlannedChunk], held: Mapping[str, str | None]) -> DocPlan:
    """``held``: chunk id -> fingerprint the target's ledger records for this document (None: an intent)."""
    new, changed, retagged, unchanged = [], [], [], []
    for pc in chunks:
        cid = pc.chunk.id
        if cid not in held:
            new.append(cid)
        elif held[cid] == pc.fingerprint:
            unchanged.append(cid)
        elif same_vector(held[cid], pc.fingerprint):
            retagged.append(cid)
        else:
            changed.append(cid)
    ids = {pc.chunk.id for pc in chunks}
    stale = tuple(cid for cid in held if cid not in ids)
    return DocPlan(doc_id, tuple(new), tuple(changed), tuple(retagged), tuple(unchanged), stale)


def plan_removal(doc_id: str, held: Mapping[str, str | None]) -> DocPlan:
    """A tombstone: everything the target holds of the document is stale."""
    return DocPlan(doc_id, stale=tuple(held), removed=True)
