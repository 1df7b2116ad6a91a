"""Sources: where documents come from.

``open_source(spec, **opts)`` understands

- ``path/to/file.jsonl`` (or ``.ndjson``): one JSON object per line, ``{"id": ..., "text": ..., ...}``;
- ``path/to/file.csv``: a header row, one document per row;
- ``path/to/dir``, ``file:///path``, ``s3://bucket/prefix``, ``gs://``, ``az://``, ``abfs://`` or any fsspec URL
  (optionally ``?glob=**/*.pdf&exclude=drafts/*``, storage options such as ``&endpoint_url=...``, in Airflow
  ``&conn_id=...``): one document per file (PDF, DOCX, HTML, Markdown, reStructuredText, text), id = the
  path relative to the root, parsed into sections (see ``FileSource`` and ``integration.parsers``);
- ``pydoc:`` (optionally ``pydoc:?max_chars=2000&modules=argparse,json&per=module|member``): the
  Python standard library's own documentation, one document per module (or per public member);
- ``sql+<sqlalchemy-url>?query=SELECT ...`` or ``?table=name``, optionally ``&watermark=updated_at``
  for an incremental feed (the next run reads the rows at or above the highest watermark read, less
  ``&watermark_lag=SECONDS``, which catches rows committed late with an older watermark);
- any Python iterable (or zero-argument callable returning one) of ``Document`` s or dicts.

Field names are configurable (``id_field``, ``text_field``, ``deleted_field``); every other field
becomes metadata. A truthy ``deleted_field`` (default ``_deleted``) marks a tombstone. Bad rows
(missing id/text, invalid UTF-8 or JSON, duplicate ids in one run) are reported with their location
and skipped (``on_bad_row="skip"``) or fail the run (``"fail"``); they never reach the ledger.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

from embedrail.errors import ConfigError
from embedrail.integration.sources.base import BadRow, Source
from embedrail.integration.sources.files import CsvSource, IterableSource, JsonlSource
from embedrail.integration.sources.objects import OWN_OPTIONS, FileSource, is_fsspec_url
from embedrail.integration.sources.pydoc import PydocSource
from embedrail.integration.sources.sql import SqlSource, decode_watermark, encode_watermark

__all__ = [
    "BadRow",
    "CsvSource",
    "FileSource",
    "IterableSource",
    "JsonlSource",
    "PydocSource",
    "Source",
    "SqlSource",
    "decode_watermark",
    "encode_watermark",
    "open_source",
]

_COMMON = {"id_field", "text_field", "deleted_field", "on_bad_row", "name"}
_ALIASES = {"id": "id_field", "text": "text_field", "deleted": "deleted_field"}


def _split_query(spec: str) -> tuple[str, dict[str, str]]:
    if "?" not in spec:
        return spec, {}
    base, q = spec.split("?", 1)
    return base, {_ALIASES.get(k, k): v for k, v in parse_qsl(q, keep_blank_values=True)}


def _check(opts: Mapping[str, Any], allowed: set[str], what: str) -> None:
    unknown = set(opts) - allowed - _COMMON
    if unknown:
        raise ConfigError(f"unknown option(s) for a {what} source: {', '.join(sorted(unknown))}")


def _open_pydoc(spec: str, opts: dict[str, Any]) -> Source:
    _, q = _split_query(spec)
    q.update(opts)
    _check(q, {"max_chars", "modules", "per", "limit"}, "pydoc:")
    return PydocSource(**q)


def _open_files(spec: str, opts: dict[str, Any]) -> Source:
    """A directory or an fsspec URL: the query's own options (glob, include, ...) and the common ones go to the
    source, the rest are the filesystem's storage options (``endpoint_url``, ``anon``, ...)."""
    base, q = _split_query(spec)
    mine = {k: q.pop(k) for k in list(q) if k in OWN_OPTIONS | _COMMON}
    mine.update(opts)
    storage = {**{k: _scalar(v) for k, v in q.items()}, **dict(mine.pop("storage_options", None) or {})}
    if mine.pop("conn_id", None) is not None:
        raise ConfigError(f"{spec}: conn_id names an Airflow connection, which only an Airflow task resolves (use "
                          "storage options or the environment outside Airflow)")  # fmt: skip
    _check(mine, OWN_OPTIONS | {"parsers", "fs"}, "file")
    return FileSource(unquote(base), storage_options=storage, **mine)


def _scalar(v: str) -> Any:
    """A storage option from a URL: true/false and numbers as such (``anon=true``, ``default_block_size=...``)."""
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    try:
        return int(v)
    except ValueError:
        return v


def _open_sql(spec: str, opts: dict[str, Any]) -> Source:
    base, q = _split_query(spec.removeprefix("sql+"))
    own = {"query", "table", "watermark", "watermark_lag"}
    mine = {k: q.pop(k) for k in list(q) if k in own | _COMMON}
    rest = "&".join(f"{k}={v}" for k, v in q.items())  # the database URL's own parameters
    mine.update(opts)
    _check(mine, own, "sql+")
    return SqlSource(base + (f"?{rest}" if rest else ""), **mine)


#: spec prefix -> how to open it
SCHEMES: dict[str, Callable[[str, dict[str, Any]], Source]] = {"pydoc:": _open_pydoc, "sql+": _open_sql}
#: file suffix -> (source class, its own options, their defaults)
SUFFIXES: dict[str, tuple[type[Source], set[str], dict[str, Any]]] = {
    ".jsonl": (JsonlSource, set(), {}),
    ".ndjson": (JsonlSource, set(), {}),
    ".csv": (CsvSource, {"delimiter"}, {}),
    ".tsv": (CsvSource, {"delimiter"}, {"delimiter": "\t"}),
}


def open_source(spec: Any, **opts: Any) -> Source:
    """Open a source from a spec string (see the module doc), a ``Source``, or a Python iterable/callable."""
    opts = {k: v for k, v in opts.items() if v is not None}
    if isinstance(spec, Source):
        return spec
    if not isinstance(spec, str | Path):
        _check(opts, set(), "Python iterable")
        return IterableSource(spec, **opts)
    spec = str(spec)
    for prefix, opener in SCHEMES.items():
        if spec.startswith(prefix):
            return opener(spec, opts)
    if is_fsspec_url(spec):
        return _open_files(spec, opts)
    path, q = spec, {}
    if not Path(spec).exists() and "?" in spec:
        path, q = _split_query(spec)
        path = unquote(path)
    q.update(opts)
    p = Path(path)
    if p.is_dir():
        return _open_files(spec, opts)
    known = SUFFIXES.get(p.suffix.lower())
    if known is not None:
        cls, allowed, defaults = known
        _check(q, allowed, p.suffix.lower().lstrip(".").upper())
        return cls(p, **{**defaults, **q})
    if not p.exists():
        raise ConfigError(f"source not found: {spec} (a .jsonl/.csv file, a directory, s3://... or another fsspec URL, "
                          "pydoc: or sql+URL)")  # fmt: skip
    raise ConfigError(f"unsupported source file type {p.suffix.lower()!r}: use .jsonl, .csv, a directory or a bucket URL")
