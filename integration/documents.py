"""The two units the sync engine moves: a source ``Document`` and the ``Chunk`` s cut from it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Chunk", "Document", "Section", "canonical_json", "chunk_id", "doc_hash", "partition_of", "sha256"]


@dataclass(frozen=True, slots=True)
class Section:
    """A run of a document's text under one heading path (and on one page, for a PDF): what a parser gives
    and structure-aware chunking splits on first."""

    text: str
    heading_path: tuple[str, ...] = ()
    page: int | None = None


@dataclass(slots=True)
class Document:
    """One source item. ``deleted`` marks a tombstone (a feed saying "this id is gone")."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    deleted: bool = False
    location: str | None = None  # "file:line" or similar, for error messages only
    #: the parsed structure (``text`` is their texts joined by blank lines); None: plain text
    sections: list[Section] | None = None
    #: a cheap token of the document's content from a listing (ETag or mtime, size, and the parser): equal
    #: token and configuration as last time => the file is not read again (``doc_hash`` stays the truth)
    version: str | None = None
    #: a listed, not yet read document (``text`` empty): returns the read and parsed document, or a bad row
    loader: Callable[[], Any] | None = None

    @property
    def lazy(self) -> bool:
        return self.loader is not None


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a document that is embedded as one vector. ``id`` is ``f"{doc_id}#{n}"``. ``metadata``:
    the chunk's own (``heading_path``, ``page``), added to the document's; ``embed_text``: what is embedded
    when it differs from the stored ``text`` (a contextual header before it)."""

    id: str
    doc_id: str
    n: int
    text: str
    metadata: dict[str, Any] | None = None
    embed_text: str | None = None

    @property
    def to_embed(self) -> str:
        return self.text if self.embed_text is None else self.embed_text


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
    chunking/embedding configuration string. Equal hash => the target already holds this doc. A parsed
    document's structure (where its sections begin, their heading paths and pages) counts too."""
    if doc.sections:
        outline = canonical_json([[list(s.heading_path), s.page, len(s.text)] for s in doc.sections])
        return sha256(doc.text, canonical_json(doc.metadata), config, outline)[:32]
    return sha256(doc.text, canonical_json(doc.metadata), config)[:32]


def partition_of(doc_id: str, count: int) -> int:
    """Stable partition number of a document id (same on every machine and Python process)."""
    if count <= 1:
        return 0
    digest = hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count
