"""Token-aware, structure-aware chunking with the embedder's own tokenizer.

A document becomes chunks ``doc_id#0 .. doc_id#n-1`` of at most ``max_tokens`` tokens (default: the
model's limit) overlapping by ``overlap`` tokens. Chunk ids depend only on the document id and the
position, so re-chunking a changed document overwrites its chunks in place; chunks beyond the new
count are deleted by the engine (a document shrinking from 5 to 2 chunks leaves nothing stale).

A parsed document (PDF, DOCX, HTML, Markdown, reStructuredText: ``Document.sections``) is split on its own
structure first: a chunk never spans two headings or two PDF pages, and carries ``heading_path``
(``"Install > Linux"``) and ``page``; a section longer than the limit is split by tokens as above.

``context``: a template for a *contextual chunk header*: what is embedded is the template filled in
(``{context}``: the title and heading path joined by ``" > "``; ``{title}``, ``{heading_path}``, ``{page}``,
``{path}``, ``{text}``), while the stored text stays the chunk itself. ``custom``: the user's own splitter,
``fn(doc, max_tokens, overlap) -> iterable of str or (str, metadata)``. Both are part of the chunking
configuration string, so changing them re-plans every document (and re-embeds what changes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from embedrail.errors import ConfigError, InputError
from embedrail.integration.documents import Chunk, Document, chunk_id, sha256

__all__ = ["DEFAULT_CONTEXT", "Chunker", "chunker_identity", "resolve_chunker"]

#: ``--chunk-context default``: the title and heading path, a blank line, the chunk
DEFAULT_CONTEXT = "{context}\n\n{text}"
_CUSTOM: dict[str, Callable[..., Any]] = {}  # identity -> a chunker given as a Python object (this process)


def chunker_identity(fn: Callable[..., Any] | str) -> str:
    """``module:qualname`` (plus ``fn.version`` if set): what the fingerprint records of a custom chunker. A
    callable is remembered under it, so this process resolves it even when it cannot be imported (a lambda)."""
    if isinstance(fn, str):
        return fn
    ident = f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', type(fn).__name__)}"
    version = getattr(fn, "version", None)
    if version is not None:
        ident += f"@{version}"
    _CUSTOM[ident] = fn
    return ident


def resolve_chunker(ident: str) -> Callable[..., Any]:
    fn = _CUSTOM.get(ident)
    if fn is not None:
        return fn
    from embedrail.integration.parsers import import_callable

    return import_callable(ident.split("@", 1)[0], "chunker")


def _template(context: str | None) -> str | None:
    if context is None or context == "":
        return None
    return DEFAULT_CONTEXT if context in ("default", "on", "true", "1") else context


class Chunker:
    def __init__(self, embedder: Any, max_tokens: int | None = None, overlap: int = 0, *, context: str | None = None,
                 custom: str | None = None) -> None:  # fmt: skip
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
        self.template = _template(context)
        if self.template is not None and "{text}" not in self.template:
            raise ConfigError("a chunk context template must contain {text} (the chunk itself)")
        self.custom = resolve_chunker(custom) if custom else None

    @staticmethod
    def config_string(max_tokens: int | None, overlap: int, context: str | None = None, custom: str | None = None) -> str:
        s = f"chunk:{max_tokens or 'model'}:{overlap}"
        template = _template(context)
        if template is not None:
            s += f":ctx={sha256(template)[:12]}"
        if custom:
            s += f":fn={custom}"
        return s

    def chunk(self, doc: Document) -> list[Chunk]:
        if self.custom is not None:
            return self._chunks(doc, self._custom_pieces(doc))
        budget = self._budget(doc)
        return self._chunks(doc, self._pieces(doc, lambda text: self._split(text, budget)))

    def chunk_many(self, docs: Sequence[Document]) -> list[list[Chunk]]:
        """``chunk`` for many documents, with the same chunks: their texts are tokenised in one batched call
        (``split_texts``) instead of one call per document."""
        split_many = getattr(self.embedder, "split_texts", None)
        if self.custom is not None or split_many is None or len(docs) < 2:
            return [self.chunk(d) for d in docs]
        budgets = [self._budget(d) for d in docs]
        texts: dict[int | None, dict[str, list[str] | None]] = {}  # budget -> text -> its pieces
        for d, b in zip(docs, budgets, strict=True):
            want = texts.setdefault(b, {})
            for t in [s.text for s in d.sections] if d.sections else [d.text]:
                want[t] = None
        for b, want in texts.items():
            order = list(want)
            for t, pieces in zip(order, split_many(order, b, self.overlap), strict=True):
                want[t] = [p for p in pieces if p.strip()]

        def split_for(b: int | None) -> Callable[[str], list[str]]:
            def split(text: str) -> list[str]:
                got = texts[b].get(text)
                return got if got is not None else self._split(text, b)

            return split

        return [self._chunks(d, self._pieces(d, split_for(b))) for d, b in zip(docs, budgets, strict=True)]

    def _chunks(self, doc: Document, pieces: list[tuple[str, dict[str, Any]]]) -> list[Chunk]:
        title = doc.metadata.get("title") if isinstance(doc.metadata.get("title"), str) else None
        out = []
        for n, (text, meta) in enumerate(pieces):
            embed = self._header(doc, text, meta, title) if self.template is not None else None
            out.append(Chunk(chunk_id(doc.id, n), doc.id, n, text, meta or None, embed))
        return out

    @staticmethod
    def _pieces(doc: Document, split: Callable[[str], list[str]]) -> list[tuple[str, dict[str, Any]]]:
        if doc.sections:
            out: list[tuple[str, dict[str, Any]]] = []
            for s in doc.sections:
                meta: dict[str, Any] = {}
                if s.heading_path:
                    meta["heading_path"] = " > ".join(s.heading_path)
                if s.page is not None:
                    meta["page"] = s.page
                out.extend((p, meta) for p in split(s.text))
            if out:
                return out
        pieces = split(doc.text)
        return [(p, {}) for p in pieces] or [(doc.text, {})]

    def _split(self, text: str, budget: int | None) -> list[str]:
        return [p for p in self.embedder.split_text(text, budget, self.overlap) if p.strip()]

    def _budget(self, doc: Document) -> int | None:
        """Chunk size in tokens: with a contextual header, the room the header leaves (so nothing embedded is
        truncated); the header's widest form for the document is measured once."""
        if self.template is None:
            return self.max_tokens
        limit = self.max_tokens or int(getattr(self.embedder, "max_tokens", 0) or 512) - 2
        paths = {" > ".join(s.heading_path) for s in (doc.sections or [])} or {""}
        widest = max(paths, key=len)
        title = doc.metadata.get("title") if isinstance(doc.metadata.get("title"), str) else None
        header = self._header(doc, "", {"heading_path": widest, "page": 99999}, title)
        if not header.strip():  # no title and no heading: nothing is added to the chunk
            used = 0
        elif hasattr(self.embedder, "count_tokens"):
            used = self.embedder.count_tokens([header])[0]
        else:
            used = len(header.split()) * 2
        budget = limit - used
        if budget < max(16, self.overlap + 1):
            raise InputError(f"{doc.id}: the chunk context header takes {used} of the {limit} tokens a chunk may have; "
                             "shorten the template or raise --chunk-tokens")  # fmt: skip
        return budget

    def _header(self, doc: Document, text: str, meta: Mapping[str, Any], title: str | None) -> str:
        assert self.template is not None
        heading = str(meta.get("heading_path") or "")
        parts = [p for p in (title, heading) if p]
        if title and heading.startswith(title):  # a Markdown H1 that is the title: once
            parts = [heading]
        values = {"context": " > ".join(parts), "title": title or "", "heading_path": heading,
                  "page": "" if meta.get("page") is None else meta["page"], "path": doc.metadata.get("path", doc.id),
                  "text": text}  # fmt: skip
        try:
            out = self.template.format_map(values)
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"chunk context template {self.template!r}: {e} (placeholders: {', '.join(values)})") from None
        return out.lstrip() if not values["context"] else out

    def _custom_pieces(self, doc: Document) -> list[tuple[str, dict[str, Any]]]:
        assert self.custom is not None
        got = self.custom(doc, self.max_tokens, self.overlap)
        out: list[tuple[str, dict[str, Any]]] = []
        for i, item in enumerate(got or ()):
            text, meta = (item, {}) if isinstance(item, str) else (item[0], dict(item[1] or {}))
            if not isinstance(text, str):
                raise InputError(f"{doc.id}: the chunker returned a {type(text).__name__} as chunk {i}, expected str or (str, dict)")
            if text.strip():
                out.append((text, meta))
        if not out:
            raise InputError(f"{doc.id}: the chunker returned no chunk")
        return out
