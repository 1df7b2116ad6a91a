"""File and Python sources: JSONL, CSV/TSV, any Python iterable (directories and buckets: ``objects.FileSource``)."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from embedrail.errors import ConfigError
from embedrail.integration.sources import split
from embedrail.integration.sources.base import BadRow, Source

__all__ = ["CsvSource", "IterableSource", "JsonlSource"]

class IterableSource(Source):
    """Documents from Python: an iterable (single pass) or a zero-argument callable (re-iterable)."""

    def __init__(self, items: Iterable[Any] | Callable[[], Iterable[Any]], **opts: Any) -> None:
        super().__init__(**opts)
        self._items = items
        self.single_pass = not callable(items) and iter(items) is items  # type: ignore[arg-type]
        self._consumed = False

    def _rows(self) -> Iterator[tuple[str, Any]]:
        if self.single_pass:
            if self._consumed:
                raise ConfigError("this source is a one-shot iterator; pass a list or a callable instead")
            self._consumed = True
        items = self._items() if callable(self._items) else self._items
        for i, item in enumerate(items):
            yield f"{self.name}[{i}]", item


class _SplitFile(Source):
    """A file of one record per line (a CSV record may span lines inside quotes): split by byte ranges."""

    QUOTED = False

    def state(self) -> dict[str, Any] | None:
        return split.file_state(self.path)

    def shares(self, count: int, state: dict[str, Any] | None) -> list[dict[str, Any]] | None:
        state = state or split.file_state(self.path)
        split.check_state(self.path, state)
        start, line = self._body()
        size = max(int(state["size"]), start)
        return [{**sh, **state} for sh in split.shares(self.path, start, size, count, line, quoted=self.QUOTED)]

    def _body(self) -> tuple[int, int]:
        """Where the records start: byte offset and line number."""
        return 0, 1

    def _lines(self, body: tuple[int, int]) -> tuple[Iterator[bytes], int]:
        """The raw lines this iteration reads and the line number of the first (``body``: ``_body()``)."""
        if self.share is None:
            start, line = body
            return split.lines(self.path, start), line
        split.check_state(self.path, self.share)
        return split.lines(self.path, int(self.share["start"]), int(self.share["end"])), int(self.share["line"])


class JsonlSource(_SplitFile):
    def __init__(self, path: str | Path, **opts: Any) -> None:
        opts.setdefault("name", str(path))
        super().__init__(**opts)
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"source file not found: {self.path}")

    def _rows(self) -> Iterator[tuple[str, Any]]:
        raws, first = self._lines(self._body())
        for lineno, raw in enumerate(raws, first):
            loc = f"{self.path}:{lineno}"
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield loc, BadRow(loc, f"invalid UTF-8 at byte {e.start}")
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield loc, BadRow(loc, f"invalid JSON: {e.msg}")
                continue
            yield loc, obj


class CsvSource(_SplitFile):
    """A header row, then one document per record. Split reads assume RFC 4180 quoting (a quote inside a quoted
    field is doubled), which is what ``csv`` writers, spreadsheets and databases produce."""

    QUOTED = True

    def __init__(self, path: str | Path, delimiter: str = ",", **opts: Any) -> None:
        opts.setdefault("name", str(path))
        super().__init__(**opts)
        self.path = Path(path)
        self.delimiter = delimiter
        if not self.path.is_file():
            raise ConfigError(f"source file not found: {self.path}")

    def _body(self) -> tuple[int, int]:
        size = os.stat(self.path).st_size
        (end, lines), = split.boundaries(self.path, 0, size, [1], quoted=True) if size else [(0, 0)]
        return end, 1 + lines

    def _header(self, end: int) -> list[str]:
        text = b"".join(split.lines(self.path, 0, end)).decode("utf-8", "surrogateescape")
        return next(csv.reader(io.StringIO(text, newline=""), delimiter=self.delimiter), [])

    def _rows(self) -> Iterator[tuple[str, Any]]:
        csv.field_size_limit(sys.maxsize)
        body = self._body()
        raws, first = self._lines(body)
        header = self._header(body[0])
        if not header:
            return
        reader = csv.DictReader((r.decode("utf-8", "surrogateescape") for r in raws), fieldnames=header,
                                delimiter=self.delimiter)  # fmt: skip
        start = first
        for row in reader:
            loc = f"{self.path}:{start}"
            start = first + reader.line_num
            if None in row:  # more fields than header
                yield loc, BadRow(loc, "more fields than the header has")
                continue
            yield loc, {k: (v if v != "" or k == self.text_field else None) for k, v in row.items()}
