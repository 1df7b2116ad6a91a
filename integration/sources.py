"""Sources: where documents come from.

``open_source(spec, **opts)`` understands

- ``path/to/file.jsonl`` (or ``.ndjson``): one JSON object per line, ``{"id": ..., "text": ..., ...}``;
- ``path/to/file.csv``: a header row, one document per row;
- ``path/to/dir`` (optionally ``dir?glob=**/*.md``): one document per text file, id = relative path;
- ``pydoc:`` (optionally ``pydoc:?max_chars=2000&modules=argparse,json&per=module|member``): the
  Python standard library's own documentation, one document per module (or per public member);
- ``sql+<sqlalchemy-url>?query=SELECT ...`` or ``?table=name``, optionally ``&watermark=updated_at``
  for an incremental feed (only rows with a newer watermark are read on the next run);
- any Python iterable (or zero-argument callable returning one) of ``Document`` s or dicts.

Field names are configurable (``id_field``, ``text_field``, ``deleted_field``); every other field
becomes metadata. A truthy ``deleted_field`` (default ``_deleted``) marks a tombstone. Bad rows
(missing id/text, invalid UTF-8 or JSON, duplicate ids in one run) are reported with their location
and skipped (``on_bad_row="skip"``) or fail the run (``"fail"``); they never reach the ledger.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import importlib
import inspect
import io
import json
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

from embedrail.errors import ConfigError, InputError

from .documents import Document

__all__ = [
    "BadRow",
    "CsvSource",
    "DirectorySource",
    "IterableSource",
    "JsonlSource",
    "PydocSource",
    "Source",
    "SqlSource",
    "open_source",
]

BAD_ROW_POLICIES = ("skip", "fail")
_TRUE = {"1", "true", "t", "yes", "y", "on"}
DEFAULT_DIR_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".text")


@dataclass(slots=True)
class BadRow:
    location: str
    reason: str
    id: str | None = None

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

    # --- to implement -------------------------------------------------------------------------
    def _rows(self) -> Iterator[tuple[str, Any]]:
        raise NotImplementedError

    # --- watermark feeds (SQL) ---------------------------------------------------------------
    watermark_key: str | None = None

    def set_watermark(self, value: Any) -> None:  # pragma: no cover - only feeds use it
        pass

    def max_watermark(self) -> Any:
        return None

    # --- iteration ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Document]:
        self.bad_rows = []
        self.bad_ids = set()
        seen: set[str] = set()
        for location, row in self._rows():
            if isinstance(row, BadRow):
                self._bad(row)
                continue
            doc = row if isinstance(row, Document) else self._to_document(row, location)
            if isinstance(doc, BadRow):
                self._bad(doc)
                continue
            if doc.id in seen:
                self._bad(BadRow(location, f"duplicate id {doc.id!r} (first occurrence kept)", None))
                continue
            seen.add(doc.id)
            yield doc

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
        deleted = _truthy(row.get(self.deleted_field)) if self.deleted_field else False
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
            metadata[str(k)] = _jsonable(v)
        return Document(doc_id, text, metadata, deleted=deleted, location=location)


def _truthy(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, str):
        return v.strip().lower() in _TRUE
    return bool(v)


def _has_surrogates(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, str | int | float | bool):
        return v
    if isinstance(v, _dt.datetime | _dt.date | _dt.time):
        return v.isoformat()
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)


# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
PYDOC_SKIP = frozenset(
    {
        "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "lib2to3", "pydoc_data",
        "ensurepip", "msilib", "msvcrt", "nt", "winreg", "winsound",
    }
)  # fmt: skip
_ADDR = re.compile(r" at 0x[0-9a-fA-F]+")


class PydocSource(Source):
    """The standard library's own documentation: offline, deterministic, present everywhere.

    One document per top-level public module (``per="module"``, id = module name) with the module
    docstring followed by the signature and first paragraph of each public class/function, cut at
    ``max_chars``; or one document per public member (``per="member"``, id = ``module.member``)
    with its full docstring, which gives a few thousand documents.
    """

    def __init__(
        self,
        *,
        max_chars: int | None = None,
        modules: Iterable[str] | str | None = None,
        per: str = "module",
        limit: int | None = None,
        **opts: Any,
    ) -> None:
        opts.setdefault("name", "pydoc:")
        super().__init__(**opts)
        self.max_chars = int(max_chars) if max_chars not in (None, "") else None
        if isinstance(modules, str):
            modules = [m for m in modules.split(",") if m]
        self.modules = sorted(modules) if modules else None
        if per not in ("module", "member"):
            raise ConfigError(f"pydoc: per must be 'module' or 'member', got {per!r}")
        self.per = per
        self.limit = int(limit) if limit not in (None, "") else None

    def module_names(self) -> list[str]:
        if self.modules is not None:
            return list(self.modules)
        return sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in PYDOC_SKIP)

    def _rows(self) -> Iterator[tuple[str, Any]]:
        count = 0
        for name in self.module_names():
            mod = _quiet_import(name)
            if mod is None:
                continue
            docs = [_module_doc(name, mod, self.max_chars)] if self.per == "module" else _member_docs(name, mod, self.max_chars)
            for doc in docs:
                if not doc.text.strip():
                    continue
                if self.limit is not None and count >= self.limit:
                    return
                count += 1
                yield f"pydoc:{doc.id}", doc


def _quiet_import(name: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                return importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - platform-specific modules simply do not exist here
            return None


def _clean(doc: str | None) -> str:
    return _ADDR.sub("", inspect.cleandoc(doc)) if doc else ""


def _first_paragraph(doc: str | None) -> str:
    text = _clean(doc)
    return text.split("\n\n", 1)[0].strip()


class _Elided:
    def __repr__(self) -> str:
        return "..."


_SIMPLE = (int, float, bool, type(None), complex)


def _signature(obj: Any) -> str:
    """The signature with only simple literal defaults shown: a default such as ``os.environ``
    would otherwise put the machine's environment (secrets!) into the text, differently per run."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    params = []
    for p in sig.parameters.values():
        d = p.default
        simple = d is inspect.Parameter.empty or isinstance(d, _SIMPLE) or (
            isinstance(d, str | bytes) and len(d) <= 40 and not d.startswith("/" if isinstance(d, str) else b"/")  # no machine paths
        )
        params.append(p if simple else p.replace(default=_Elided()))
    try:
        text = str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))
    except ValueError:
        return "(...)"
    return _ADDR.sub("", text)


def _public_members(name: str, mod: Any) -> list[tuple[str, Any]]:
    names = getattr(mod, "__all__", None)
    if not isinstance(names, list | tuple):
        names = [n for n in dir(mod) if not n.startswith("_")]
    out = []
    for n in sorted({str(x) for x in names}):
        obj = getattr(mod, n, None)
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        owner = getattr(obj, "__module__", None) or ""
        if owner != name and not owner.startswith(name + ".") and not owner.startswith("_"):
            continue
        out.append((n, obj))
    return out


def _cap(text: str, max_chars: int | None) -> str:
    if max_chars is None or len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    sp = cut.rfind(" ", max(0, max_chars - 80))
    return cut[:sp] if sp > 0 else cut


def _module_doc(name: str, mod: Any, max_chars: int | None) -> Document:
    parts = [f"Module {name}", _clean(mod.__doc__)]
    for n, obj in _public_members(name, mod):
        kind = "class" if inspect.isclass(obj) else "def"
        summary = _first_paragraph(getattr(obj, "__doc__", None))
        parts.append(f"{kind} {n}{_signature(obj)}" + (f": {summary}" if summary else ""))
        if max_chars is not None and sum(len(p) for p in parts) > max_chars:
            break
    text = _cap("\n\n".join(p for p in parts if p), max_chars)
    return Document(name, text, {"module": name, "kind": "module"}, location=f"pydoc:{name}")


def _member_docs(name: str, mod: Any, max_chars: int | None) -> list[Document]:
    docs = [_module_doc(name, mod, max_chars)]
    for n, obj in _public_members(name, mod):
        kind = "class" if inspect.isclass(obj) else "function"
        body = _clean(getattr(obj, "__doc__", None))
        if not body:
            continue
        text = _cap(f"{name}.{n}{_signature(obj)}\n\n{body}", max_chars)
        docs.append(Document(f"{name}.{n}", text, {"module": name, "kind": kind}, location=f"pydoc:{name}.{n}"))
    return docs


# ------------------------------------------------------------------------------------------------
class SqlSource(Source):
    """Rows of a SQL query through SQLAlchemy. With ``watermark`` (a column name) it is a feed:
    each run reads only rows whose watermark is above the one stored after the previous run."""

    def __init__(
        self,
        url: str,
        *,
        query: str | None = None,
        table: str | None = None,
        watermark: str | None = None,
        **opts: Any,
    ) -> None:
        from sqlalchemy.engine import make_url

        try:
            parsed = make_url(url)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"bad SQL source URL: {e}") from None
        opts.setdefault("name", "sql+" + parsed.render_as_string(hide_password=True))
        super().__init__(**opts)
        if not query and not table:
            raise ConfigError("a sql+ source needs query=SELECT ... or table=NAME")
        if table and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", table):
            raise ConfigError(f"bad table name {table!r}")
        if watermark and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", watermark):
            raise ConfigError(f"bad watermark column {watermark!r}")
        self.url = url
        self.query = query or f"SELECT * FROM {table}"
        self.watermark = watermark
        self.is_feed = bool(watermark)
        self.watermark_key = f"{self.name}|{self.query}|{watermark}" if watermark else None
        self._since: Any = None
        self._max: Any = None
        self._engine: Any = None

    def set_watermark(self, value: Any) -> None:
        self._since = value

    def max_watermark(self) -> Any:
        return self._max

    def _get_engine(self) -> Any:
        if self._engine is None:
            from sqlalchemy import create_engine

            self._engine = create_engine(self.url)
        return self._engine

    def _rows(self) -> Iterator[tuple[str, Any]]:
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        sql, params = self.query, {}
        if self.watermark:
            wm = self.watermark
            where = f" WHERE _src.{wm} > :_wm" if self._since is not None else ""
            sql = f"SELECT * FROM ({self.query}) _src{where} ORDER BY _src.{wm}"
            if self._since is not None:
                params["_wm"] = self._since
        self._max = self._since
        try:
            with self._get_engine().connect() as conn:
                result = conn.execution_options(stream_results=True).execute(text(sql), params)
                for i, row in enumerate(result.mappings(), 1):
                    d = dict(row)
                    if self.watermark:
                        v = d.get(self.watermark)
                        if v is not None and (self._max is None or _wm_gt(v, self._max)):
                            self._max = v
                        d.pop(self.watermark, None)
                        d[self.watermark] = _jsonable(v)
                    yield f"{self.name} row {i}", d
        except SQLAlchemyError as e:
            raise ConfigError(f"SQL source failed: {str(e).splitlines()[0]}") from None


def _wm_gt(a: Any, b: Any) -> bool:
    try:
        return a > b
    except TypeError:
        return str(a) > str(b)


def encode_watermark(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        return json.dumps({"t": "datetime", "v": value.isoformat()})
    if isinstance(value, _dt.date):
        return json.dumps({"t": "date", "v": value.isoformat()})
    if isinstance(value, int | float | str):
        return json.dumps({"t": "json", "v": value})
    return json.dumps({"t": "json", "v": str(value)})


def decode_watermark(raw: str | None) -> Any:
    if raw is None:
        return None
    d = json.loads(raw)
    if d["t"] == "datetime":
        return _dt.datetime.fromisoformat(d["v"])
    if d["t"] == "date":
        return _dt.date.fromisoformat(d["v"])
    return d["v"]


# ------------------------------------------------------------------------------------------------
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


def open_source(spec: Any, **opts: Any) -> Source:
    """Open a source from a spec string (see module doc) or a Python iterable/callable."""
    opts = {k: v for k, v in opts.items() if v is not None}
    if isinstance(spec, Source):
        return spec
    if not isinstance(spec, str | Path):
        _check(opts, set(), "Python iterable")
        return IterableSource(spec, **opts)
    spec = str(spec)
    if spec.startswith("pydoc:"):
        _, q = _split_query(spec)
        q.update(opts)
        _check(q, {"max_chars", "modules", "per", "limit"}, "pydoc:")
        return PydocSource(**q)
    if spec.startswith("sql+"):
        url = spec[4:]
        base, q = _split_query(url)
        mine = {k: q.pop(k) for k in list(q) if k in {"query", "table", "watermark"} | _COMMON}
        rest = "&".join(f"{k}={v}" for k, v in q.items())
        mine.update(opts)
        _check(mine, {"query", "table", "watermark"}, "sql+")
        return SqlSource(base + (f"?{rest}" if rest else ""), **mine)
    path, q = spec, {}
    if not Path(spec).exists() and "?" in spec:
        path, q = _split_query(spec)
        path = unquote(path)
    q.update(opts)
    p = Path(path)
    if p.is_dir():
        _check(q, {"glob"}, "directory")
        return DirectorySource(p, **q)
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        _check(q, set(), "JSONL")
        return JsonlSource(p, **q)
    if suffix in (".csv", ".tsv"):
        _check(q, {"delimiter"}, "CSV")
        if suffix == ".tsv":
            q.setdefault("delimiter", "\t")
        return CsvSource(p, **q)
    if not p.exists():
        raise ConfigError(f"source not found: {spec} (a .jsonl/.csv file, a directory, pydoc: or sql+URL)")
    raise ConfigError(f"unsupported source file type {suffix!r}: use .jsonl, .csv or a directory")
