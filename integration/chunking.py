"""Token-aware chunking with the embedder's own tokenizer.

A document becomes chunks ``doc_id#0 .. doc_id#n-1`` of at most ``max_tokens`` tokens (default: the
model's limit) overlapping by ``overlap`` tokens. Chunk ids depend only on the document id and the
position, so re-chunking a changed document overwrites its chunks in place; chunks beyond the new
count are deleted by the engine (a document shrinking from 5 to 2 chunks leaves nothing stale).
"""

from __future__ import annotations

from typing import Any

from embedrail.errors import ConfigError
from embedrail.integration.documents import Chunk, Document, chunk_id

__all__ = ["Chunker"]


class Chunker:
    def __init__(self, embedder: Any, max_tokens: int | None = None, overlap: int = 0) -> None:
        """``max_tokens=None``: the model's limit minus its special tokens (a chunk is never truncated)."""
        limit = int(getattr(embedder, "max_tokens", 0) or 0)
        if max_tokens is not None:
            if max_tokens <= 0:
                raise ConfigError(f"chunk size must be positive, got {max_tokens}")
            if limit and max_tokens > limit:
                raise ConfigError(
                    f"chunk size {max_tokens} is above the model's limit of {limit} tokens; use --chunk-tokens {limit} or less"
                )
        if overlap < 0 or overlap >= (max_tokens or limit or 1 << 30):
            raise ConfigError(f"chunk overlap must be in [0, chunk size), got {overlap}")
        self.embedder = embedder
        self.max_tokens = max_tokens
        self.overlap = overlap

    @staticmethod
    def config_string(max_tokens: int | None, overlap: int) -> str:
        return f"chunk:{max_tokens or 'model'}:{overlap}"

    def chunk(self, doc: Document) -> list[Chunk]:
        pieces = [p for p in self.embedder.split_text(doc.text, self.max_tokens, self.overlap) if p.strip()]
        if not pieces:
            pieces = [doc.text]
        return [Chunk(chunk_id(doc.id, n), doc.id, n, text) for n, text in enumerate(pieces)]
