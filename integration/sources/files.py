"""File and Python sources: JSONL, CSV/TSV, any Python iterable (directories and buckets: ``objects.FileSource``)."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from embedrail.errors import ConfigError
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


class JsonlSource(Source):
    def __init__(self, path: str | Path, **opts: Any) -> None:
        opts.setdefault("name", str(path))
        super().__init__(**opts)
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"source file not found: {self.path}")

    def _rows(self) -> Iterator[tuple[str, Any]]:
        with self.path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
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


class CsvSource(Source):
    def __init__(self, path: str | Path, delimiter: str = ",", **opts: Any) -> None:
        opts.setdefault("name", str(path))
        super().__init__(**opts)
        self.path = Path(path)
        self.delimiter = delimiter
        if not self.path.is_file():
            raise ConfigError(f"source file not found: {self.path}")

    def _rows(self) -> Iterator[tuple[str, Any]]:
        csv.field_size_limit(sys.maxsize)
        with self.path.open("r", encoding="utf-8", errors="surrogateescape", newline="") as f:
            reader = csv.DictReader(f, delimiter=self.delimiter)
            start = 2
            for row in reader:
                loc = f"{self.path}:{start}"
                start = reader.line_num + 1
                if None in row:  # more fields than header
                    yield loc, BadRow(loc, "more fields than the header has")
                    continue
                yield loc, {k: (v if v != "" or k == self.text_field else None) for k, v in row.items()}
