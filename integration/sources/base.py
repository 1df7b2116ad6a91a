"""Sources: the base class every source derives from, and the bad-row policy.

A source yields ``Document`` s. Subclasses implement ``_rows()`` yielding ``(location, row)`` where row
is a dict, a ``Document`` or a ``BadRow``; the base class turns dicts into documents (configurable field
names, every other field becomes metadata), reports bad rows with their location and drops duplicate
ids (first occurrence kept).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from embedrail.errors import ConfigError, InputError
from embedrail.integration.documents import Document
from embedrail.integration.idsort import SeenIds
from embedrail.integration.options import BAD_ROW_POLICIES, truthy

__all__ = ["BadRow", "Source", "jsonable"]


@dataclass(slots=True)
class BadRow:
    location: str
    reason: str
    id: str | None = None
    #: the same bytes would fail again (a file that cannot be parsed), so its listing version is remembered
    lasting: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"location": self.location, "reason": self.reason, "id": self.id}


class Source:
    """Base class: subclasses implement ``_rows()`` yielding ``(location, row)`` where row is a dict,
    a ``Document``, or a ``BadRow`` (a row that could not even be parsed)."""

    #: a feed yields only changes (watermark); a snapshot yields the whole data set every time
    is_feed: bool = False
    #: an ``Iterable`` that can only be consumed once
    single_pass: bool = False

    def __init__(
        self,
        *,
        id_field: str = "id",
        text_field: str = "text",
        deleted_field: str = "_deleted",
        on_bad_row: str = "skip",
        name: str = "",
    ) -> None:
        if on_bad_row not in BAD_ROW_POLICIES:
            raise ConfigError(f"on_bad_row must be one of {BAD_ROW_POLICIES}, got {on_bad_row!r}")
        self.id_field = id_field
        self.text_field = text_field
        self.deleted_field = deleted_field
        self.on_bad_row = on_bad_row
        self.name = name or type(self).__name__
        self.bad_rows: list[BadRow] = []
        #: ids of bad rows that still carried an id: never deleted as "absent" by a snapshot
        self.bad_ids: set[str] = set()
        #: ids met again after their first occurrence in the last iteration (the repeats dropped), in file order
        self.repeated: list[str] = []

    # --- to implement -------------------------------------------------------------------------
    def _rows(self) -> Iterator[tuple[str, Any]]:
        raise NotImplementedError

    # --- watermark feeds (SQL) ---------------------------------------------------------------
    watermark_key: str | None = None

    def set_watermark(self, value: Any) -> None:  # pragma: no cover - only feeds use it
        pass

    def max_watermark(self) -> Any:
        return None

    def close(self) -> None:
        """Release what reading opened (a database connection pool); the source can be read again after."""

    # --- split reads (partitions) -------------------------------------------------------------
    #: the share the next iteration reads (``read_share``); None: the whole source
    share: dict[str, Any] | None = None

    def state(self) -> dict[str, Any] | None:
        """What the plan step records so that every partition reads the same data (a file's size); JSON-able."""
        return None

    def shares(self, count: int, state: dict[str, Any] | None) -> list[dict[str, Any]] | None:
        """``count`` JSON-able shares that together read the source once (byte ranges of a file, key ranges of a
        query), decided once by the plan step; None: this source cannot split, so every partition reads it whole
        and keeps the documents whose id hashes to it (``partition_of``)."""
        return None

    def read_share(self, share: dict[str, Any] | None) -> None:
        """The next iterations read only ``share`` (one of ``shares()``); None: the whole source again."""
        self.share = share

    # --- iteration ----------------------------------------------------------------------------
    #: documents converted before their ids are checked for repeats together (one vectorised look-up)
    BATCH = 1024

    def __iter__(self) -> Iterator[Document]:
        self.bad_rows = []
        self.bad_ids = set()
        self.repeated = []
        seen = SeenIds()  # 16 bytes per id, not a set of the ids (about 90 bytes each)
        batch: list[tuple[str, Document | BadRow]] = []
        for location, row in self._rows():
            if not isinstance(row, BadRow) and not isinstance(row, Document):
                row = self._to_document(row, location)
            batch.append((location, row))
            if len(batch) >= self.BATCH:
                yield from self._checked(batch, seen)
                batch = []
        yield from self._checked(batch, seen)

    def _checked(self, batch: list[tuple[str, Document | BadRow]], seen: SeenIds) -> Iterator[Document]:
        """The batch's documents in order, bad rows reported, a repeated id dropped (first occurrence kept)."""
        docs = [row for _, row in batch if isinstance(row, Document)]
        new = iter(seen.add_many([d.id for d in docs]))
        for location, row in batch:
            if isinstance(row, BadRow):
                self._bad(row)
            elif next(new):
                yield row
            else:
                self.repeated.append(row.id)
                self._bad(BadRow(location, f"duplicate id {row.id!r} (first occurrence kept)", None))

    def report_bad(self, bad: BadRow) -> None:
        """A document found bad after it was listed (its file could not be read or parsed): the policy applies
        as to any bad row, and its id is kept from snapshot deletes."""
        self._bad(bad)

    def _bad(self, bad: BadRow) -> None:
        if self.on_bad_row == "fail":
            raise InputError(f"{bad.location}: {bad.reason} (use --on-bad-row skip to skip bad rows)")
        self.bad_rows.append(bad)
        if bad.id is not None:
            self.bad_ids.add(bad.id)

    def _to_document(self, row: Any, location: str) -> Document | BadRow:
        if not isinstance(row, Mapping):
            return BadRow(location, f"expected an object/mapping, got {type(row).__name__}")
        raw_id = row.get(self.id_field)
        if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()) or isinstance(raw_id, bool):
            return BadRow(location, f"missing id field {self.id_field!r}")
        if not isinstance(raw_id, str | int):
            return BadRow(location, f"id field {self.id_field!r} must be a string or integer")
        doc_id = str(raw_id)
        if _has_surrogates(doc_id):
            return BadRow(location, "invalid UTF-8 in id")
        deleted = truthy(row.get(self.deleted_field)) if self.deleted_field else False
        text = row.get(self.text_field)
        if deleted:
            text = text if isinstance(text, str) else ""
        elif text is None:
            return BadRow(location, f"missing text field {self.text_field!r}", doc_id)
        elif not isinstance(text, str):
            return BadRow(location, f"text field {self.text_field!r} must be a string", doc_id)
        elif not text.strip():
            return BadRow(location, "empty text", doc_id)
        if _has_surrogates(text):
            return BadRow(location, "invalid UTF-8 in text", doc_id)
        metadata: dict[str, Any] = {}
        for k, v in row.items():
            if k in (self.id_field, self.text_field, self.deleted_field):
                continue
            if isinstance(v, str) and _has_surrogates(v):
                return BadRow(location, f"invalid UTF-8 in field {k!r}", doc_id)
            metadata[str(k)] = jsonable(v)
        return Document(doc_id, text, metadata, deleted=deleted, location=location)


def _has_surrogates(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def jsonable(v: Any) -> Any:
    if v is None or isinstance(v, str | int | float | bool):
        return v
    if isinstance(v, _dt.datetime | _dt.date | _dt.time):
        return v.isoformat()
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    return str(v)

