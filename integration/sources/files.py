"""File and Python sources: JSONL, CSV/TSV, a directory of text files, any Python iterable."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from embedrail.errors import ConfigError
from embedrail.integration.documents import Document
from embedrail.integration.sources.base import BadRow, Source

__all__ = ["DEFAULT_DIR_SUFFIXES", "CsvSource", "DirectorySource", "IterableSource", "JsonlSource"]

DEFAULT_DIR_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".text")


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


class DirectorySource(Source):
    def __init__(self, path: str | Path, glob: str | None = None, **opts: Any) -> None:
        opts.setdefault("name", str(path))
        super().__init__(**opts)
        self.path = Path(path)
        self.glob = glob
        if not self.path.is_dir():
            raise ConfigError(f"source directory not found: {self.path}")

    def _files(self) -> list[Path]:
        if self.glob:
            files = self.path.glob(self.glob)
        else:
            files = (p for p in self.path.rglob("*") if p.suffix.lower() in DEFAULT_DIR_SUFFIXES)
        out = []
        for p in files:
            rel = p.relative_to(self.path)
            if p.is_file() and not any(part.startswith(".") for part in rel.parts):
                out.append(p)
        return sorted(out)

    def _rows(self) -> Iterator[tuple[str, Any]]:
        for p in self._files():
            rel = p.relative_to(self.path).as_posix()
            loc = str(p)
            try:
                text = p.read_bytes().decode("utf-8")
            except UnicodeDecodeError as e:
                yield loc, BadRow(loc, f"invalid UTF-8 at byte {e.start}", rel)
                continue
            except OSError as e:
                yield loc, BadRow(loc, f"cannot read: {e.strerror}", rel)
                continue
            if not text.strip():
                yield loc, BadRow(loc, "empty file", rel)
                continue
            yield loc, Document(rel, text, {"path": rel}, location=loc)

