"""The two units the sync engine moves: a source ``Document`` and the ``Chunk`` s cut from it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Chunk", "Document", "canonical_json", "chunk_id", "doc_hash", "partition_of", "sha256"]


@dataclass(slots=True)
class Document:
    """One source item. ``deleted`` marks a tombstone (a feed saying "this id is gone")."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    deleted: bool = False
    location: str | None = None  # "file:line" or similar, for error messages only


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a document that is embedded as one vector. ``id`` is ``f"{doc_id}#{n}"``."""

    id: str
    doc_id: str
    n: int
    text: str


def sha256(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        b = p.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def canonical_json(value: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace); non-JSON values fall back to ``str``."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def chunk_id(doc_id: str, n: int) -> str:
    return f"{doc_id}#{n}"


def doc_hash(doc: Document, config: str = "") -> str:
    """Hash of everything that decides a document's chunks and records: text, metadata and the
    chunking/embedding configuration string. Equal hash => the target already holds this doc."""
    return sha256(doc.text, canonical_json(doc.metadata), config)[:32]


def partition_of(doc_id: str, count: int) -> int:
    """Stable partition number of a document id (same on every machine and Python process)."""
    if count <= 1:
        return 0
    digest = hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count
