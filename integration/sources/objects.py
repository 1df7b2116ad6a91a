"""Files in a directory or a bucket — any fsspec URL — parsed into documents: PDF, DOCX, HTML, Markdown, ...

``FileSource("s3://bucket/docs")`` (also ``gs://``, ``az://`` / ``abfs://``, ``file://``, a plain path,
``memory://``, any URL fsspec knows) lists the files under the root, one document per file, its id the
path relative to the root. Credentials come from where the filesystem's own library looks (environment,
profiles, instance roles), from ``storage_options`` (URL parameters such as ``endpoint_url`` included), or
in Airflow from a connection (``?conn_id=aws_docs``).

Cheap change detection: the listing already says each file's ETag (object stores) or mtime and size
(disks). Every document is yielded *listed, not read* (``Document.loader``); the sync engine reads and
parses only a file whose listing version (that token, the parser's identity) differs from what the
ledger recorded for every target, so an unchanged bucket is listed, not downloaded. The content hash stays
the truth for what is re-embedded: a touched file is read again, found equal, and embeds nothing.

A file that cannot be read or parsed (encrypted, corrupt, a scanned image without text, no parser for its
type, larger than ``max_file_bytes``) is a bad row with its URL and the reason; its chunks already in the
index are kept. A listing that fails (the store is down, a timeout) raises ``SourceUnavailableError``:
nothing is deleted because a listing came back short.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from embedrail.connectors._retry import BASE_ERRORS, classify
from embedrail.errors import ConfigError, SourceUnavailableError
from embedrail.integration.documents import Document
from embedrail.integration.parsers import ParseError, Parser, parser_for, resolve_parsers
from embedrail.integration.sources.base import BadRow, Source

__all__ = ["FileSource", "is_fsspec_url"]

log = logging.getLogger("embedrail.sources")

#: the parts of a source URL's query that are the source's own; the rest are the filesystem's options
OWN_OPTIONS = {"glob", "include", "exclude", "fetch", "max_file_bytes", "conn_id"}
_TOKEN_KEYS = ("ETag", "etag", "md5Hash", "content_md5", "generation", "checksum")
_TIME_KEYS = ("mtime", "LastModified", "last_modified", "updated", "modified")
#: a store that is down or slow, as the filesystem libraries raise it when they do not make it an ``OSError``
#: (s3fs passes botocore's connection errors through): the run fails as "source unavailable", deleting nothing
STORAGE_ERRORS = BASE_ERRORS.extend(transient=(
    "botocore.exceptions.EndpointConnectionError", "botocore.exceptions.ConnectTimeoutError",
    "botocore.exceptions.ReadTimeoutError", "botocore.exceptions.ConnectionClosedError", "aiohttp.ClientConnectionError",
    "aiohttp.ServerTimeoutError", "asyncio.TimeoutError", "google.auth.exceptions.TransportError",
    "azure.core.exceptions.ServiceRequestError", "azure.core.exceptions.ServiceResponseError"))  # fmt: skip


def _unavailable(e: BaseException) -> bool:
    return isinstance(e, OSError) or classify(e, STORAGE_ERRORS) == "transient"


def is_fsspec_url(spec: str) -> bool:
    """``scheme://...`` other than the store and SQL schemes: a filesystem URL."""
    head, sep, _ = spec.partition("://")
    return bool(sep) and head.replace("+", "").replace("-", "").isalnum() and not head.startswith("sql")


def _patterns(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    return [str(p) for p in value]


def _match(rel: str, pattern: str) -> bool:
    """Glob on the relative path (``*`` crosses ``/``; ``**/`` also matches at the top); a pattern without
    ``/`` matches the file name anywhere, as in ``.gitignore``."""
    if "/" not in pattern:
        return fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], pattern)
    return fnmatch.fnmatchcase(rel, pattern) or (pattern.startswith("**/") and fnmatch.fnmatchcase(rel, pattern[3:]))


def listing_token(info: Mapping[str, Any]) -> str | None:
    """What the listing says of a file's content without reading it: the ETag / MD5 / generation where the
    store gives one, else modification time and size (and inode, on a disk); None: nothing usable."""
    size = info.get("size", info.get("Size"))
    for k in _TOKEN_KEYS:
        v = info.get(k)
        if v:
            return f"{k}={str(v).strip(chr(34))}:{size}"
    for k in _TIME_KEYS:
        v = info.get(k)
        if v:
            ino = info.get("ino")
            return f"{k}={v}:{size}" + (f":{ino}" if ino else "")
    return None


class FileSource(Source):
    """One document per file under ``url`` (see the module doc).

    ``glob`` / ``include``: patterns a file must match (one of; comma-separated or a list), ``exclude``:
    patterns it must not; without them every file with a parser is taken (the others are counted as
    ``ignored``). ``parsers``: suffix -> callable (or ``"module:function"``) added to the built-ins.
    ``fetch="always"``: read every file every run (no listing shortcut). ``fs``: an fsspec filesystem
    to use as it is (then ``url`` is the path in it), e.g. from Airflow's ``ObjectStoragePath``.
    """

    def __init__(self, url: str, *, glob: str | Sequence[str] | None = None, include: str | Sequence[str] | None = None,
                 exclude: str | Sequence[str] | None = None, parsers: Mapping[str, Callable[..., Any] | str] | None = None,
                 storage_options: Mapping[str, Any] | None = None, fetch: str = "changed",
                 max_file_bytes: int | str = 256 << 20, fs: Any = None, **opts: Any) -> None:  # fmt: skip
        opts.setdefault("name", url)
        super().__init__(**opts)
        if fetch not in ("changed", "always"):
            raise ConfigError(f"fetch must be 'changed' or 'always', got {fetch!r}")
        self.url, self.fetch_mode = url, fetch
        self.include = _patterns(glob) + _patterns(include)
        self.exclude = _patterns(exclude)
        self.max_file_bytes = int(max_file_bytes)
        self.parsers: dict[str, Parser] = resolve_parsers(parsers)
        self.stats: dict[str, int] = {}
        self._lock = threading.Lock()
        if fs is not None:
            self.fs, self.root = fs, str(url)
        else:
            import fsspec

            try:
                self.fs, self.root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
            except ImportError as e:  # s3fs / gcsfs / adlfs not installed
                raise ConfigError(f"{url}: {e} (pip install 'embedrail[documents]' brings s3fs; gcsfs / adlfs for gs:// / az://)") from None
            except ValueError as e:
                raise ConfigError(f"{url}: {e}") from None
        self.root = self.root.rstrip("/")
        self.protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]

    # ------------------------------------------------------------------ listing
    def _url_of(self, path: str) -> str:
        """Where a file is, for reports and ``metadata["url"]``: a local file's path, else its full URL."""
        return path if self.protocol in ("file", "local") else self.fs.unstrip_protocol(path)

    def _list(self) -> dict[str, dict[str, Any]]:
        """Path -> listing entry of every file under the root, or, reading a share, of the files in its range."""
        try:
            if self.protocol in ("file", "local") and not self.fs.isdir(self.root):
                raise ConfigError(f"source directory not found: {self.url}")
            if self.share is not None:
                return self._list_range(self.share.get("from"), self.share.get("to"))
            found = self.fs.find(self.root, detail=True, withdirs=False)
        except ConfigError:
            raise
        except FileNotFoundError:
            raise ConfigError(f"source not found: {self.url} (does the bucket exist?)") from None
        except PermissionError as e:
            raise ConfigError(f"{self.url}: listing refused ({e}); check the credentials (environment, profile, "
                              "storage options or the Airflow connection)") from None  # fmt: skip
        except Exception as e:  # the store is down, a timeout, a dropped connection: try again later
            if not _unavailable(e):
                raise
            raise SourceUnavailableError(f"{self.url}: listing failed: {e}; nothing was deleted: run again when the store "
                                         "is back") from e  # fmt: skip
        return found if isinstance(found, dict) else {p: self.fs.info(p) for p in found}

    def _list_range(self, lo: str | None, hi: str | None) -> dict[str, dict[str, Any]]:
        """The files whose relative path is in ``[lo, hi)`` (None: unbounded), listing only what can hold them: a
        folder wholly inside the range in one recursive listing, a folder the range cuts through level by level,
        a folder outside it not at all. On S3 a level is listed from the range's start (``StartAfter``) up to its
        end, so a flat prefix of many objects is not listed whole by every partition (``_ls``)."""
        out: dict[str, dict[str, Any]] = {}

        def inside(rel: str) -> bool:
            return (lo is None or rel >= lo) and (hi is None or rel < hi)

        def walk(path: str) -> None:
            for info in self._ls(path, lo, hi):
                name = info["name"].rstrip("/")
                rel = self._rel(name)
                if info.get("type") == "directory":
                    p = rel + "/"  # every path below starts with p: p is the least of them, p + U+10FFFF... the greatest
                    if (lo is None or p >= lo) and (hi is None or (p < hi and not hi.startswith(p))):
                        found = self.fs.find(name, detail=True, withdirs=False)
                        out.update(found if isinstance(found, dict) else {f: self.fs.info(f) for f in found})
                    elif (lo is None or p >= lo or lo.startswith(p)) and (hi is None or p < hi):
                        walk(name)
                elif rel and inside(rel):
                    out[name] = info

        walk(self.root)
        return out

    LIST_PAGE = 1000  # keys per S3 listing request (S3's own maximum): a partition lists at most this many past its range

    def _ls(self, path: str, lo: str | None, hi: str | None) -> list[dict[str, Any]]:
        """``fs.ls(path, detail=True)``; on S3 (s3fs) only the entries from relative path ``lo`` on (ListObjectsV2
        ``StartAfter``, a few entries before it included) and the pages up to the first past ``hi``: what a
        partition's range needs of one level, in the store's own order (keys by their bytes: the code-point order
        the ranges are cut in). Elsewhere, or on an s3fs without the paging it uses, the whole level."""
        fs = self.fs
        if (lo is None and hi is None) or self.protocol not in ("s3", "s3a") or getattr(fs, "version_aware", False) \
                or not (hasattr(fs, "_list_pages") and hasattr(fs, "_fill_info") and hasattr(fs, "loop")):  # fmt: skip
            return list(fs.ls(path, detail=True))
        from fsspec.asyn import sync

        bucket, key = fs.split_path(path)[:2]
        root_key = fs.split_path(self.root)[1].strip("/")
        base = root_key + "/" if root_key else ""
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key.strip("/") + "/" if key.strip("/") else "", "Delimiter": "/",
                                  "MaxKeys": self.LIST_PAGE, **getattr(fs, "req_kw", {})}  # fmt: skip
        level = self._rel(path.rstrip("/"))
        level = level + "/" if level else ""
        if lo and lo.startswith(level) and lo != level:
            # the entries of this level from lo's component on: start after that component less its last character,
            # which is below the component and below the folder "component/" alike (stores differ on whether a folder
            # counts from its own name or from its keys, and this start gives the same answer either way)
            kwargs["StartAfter"] = base + level + lo[len(level):].split("/", 1)[0][:-1]
        stop = base + hi if hi is not None else None

        async def pages() -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            async for page in fs._list_pages("list_objects_v2", **kwargs):  # noqa: SLF001 - s3fs's own paging
                last = ""
                for p in page.get("CommonPrefixes", []):
                    c = {"Key": p["Prefix"][:-1], "Size": 0, "StorageClass": "DIRECTORY", "type": "directory"}
                    fs._fill_info(c, bucket, versions=False)  # noqa: SLF001
                    out.append(c)
                    last = max(last, p["Prefix"])
                for c in page.get("Contents", []):
                    last = max(last, c["Key"])
                    c["type"] = "file"
                    fs._fill_info(c, bucket, versions=False)  # noqa: SLF001
                    out.append(c)
                if stop is not None and last >= stop:
                    break
            return out

        return sync(fs.loop, pages)

    #: what reading one file costs beyond its bytes, in bytes, when the plan weighs the shares
    FILE_WEIGHT = 16 << 10

    def shares(self, count: int, state: dict[str, Any] | None) -> list[dict[str, Any]] | None:
        """``count`` ranges of relative paths (``from`` inclusive, ``to`` exclusive, None: open), cut where the
        listed files' bytes (plus ``FILE_WEIGHT`` each) reach 1/count, 2/count, ...: the plan step lists the root
        once; each partition lists and reads only its range. Together the ranges cover every path, so a file
        added after the plan is still read by one partition."""
        reading, self.share = self.share, None  # the plan lists the whole root
        try:
            listing = self._list()
        finally:
            self.share = reading
        files = sorted((self._rel(p), int(i.get("size", i.get("Size", 0)) or 0)) for p, i in listing.items()
                       if i.get("type", "file") == "file")  # fmt: skip
        total = sum(size + self.FILE_WEIGHT for _, size in files)
        cuts: list[str] = []
        acc = 0
        for rel, size in files:
            while len(cuts) < count - 1 and acc >= total * (len(cuts) + 1) / count:
                cuts.append(rel)
            acc += size + self.FILE_WEIGHT
        cuts += [cuts[-1] if cuts else ""] * (count - 1 - len(cuts))  # fewer files than shares: empty ranges [x, x)
        bounds: list[str | None] = [None, *cuts, None]
        return [{"from": bounds[i], "to": bounds[i + 1]} for i in range(count)]

    def _rel(self, path: str) -> str:
        root = self.root
        return path[len(root) :].lstrip("/") if root and path.startswith(root) else path.lstrip("/")

    def _rows(self) -> Iterator[tuple[str, Any]]:
        self.stats = {"listed": 0, "fetched": 0, "parsed": 0, "ignored": 0, "bytes_fetched": 0}
        listing = self._list()
        self.stats["listed"] = len(listing)
        for path in sorted(listing):
            info = listing[path]
            if info.get("type", "file") != "file":
                continue
            rel = self._rel(path)
            if not rel or any(part.startswith(".") for part in rel.split("/")):
                self.stats["ignored"] += 1
                continue
            if self.include and not any(_match(rel, p) for p in self.include):
                self.stats["ignored"] += 1
                continue
            if any(_match(rel, p) for p in self.exclude):
                self.stats["ignored"] += 1
                continue
            url = self._url_of(path)
            parser = parser_for(rel, self.parsers, info.get("ContentType") or info.get("mimetype") or info.get("content_type"))
            if parser is None:
                if self.include:  # asked for by name: say why it is not indexed
                    yield url, BadRow(url, "no parser for this file type (add one: parsers={'.ext': fn})", rel)
                else:
                    self.stats["ignored"] += 1
                continue
            token = listing_token(info) if self.fetch_mode == "changed" else None
            version = f"{token}|{parser.identity}" if token else None
            size = int(info.get("size", info.get("Size", 0)) or 0)
            yield url, Document(rel, "", self._metadata(rel, url), location=url, version=version,
                                loader=_Loader(self, path, rel, url, size, parser, version))  # fmt: skip

    def _metadata(self, rel: str, url: str) -> dict[str, Any]:
        """``path`` (relative to the root), and ``url`` for a remote file (a local one keeps its hash when the
        folder moves)."""
        return {"path": rel} if self.protocol in ("file", "local") else {"path": rel, "url": url}

    # ------------------------------------------------------------------ reading one file
    def read(self, path: str, rel: str, url: str, size: int, parser: Parser, version: str | None) -> Document | BadRow:
        data = self.fetch(path, rel, url, size)
        return data if isinstance(data, BadRow) else self.parse(data, rel, url, parser, version)

    def fetch(self, path: str, rel: str, url: str, size: int) -> bytes | BadRow:
        """A file's bytes (thread-safe: the pipeline fetches several files at once), or why not."""
        if size > self.max_file_bytes:
            return BadRow(url, f"{size} bytes, more than max_file_bytes={self.max_file_bytes}", rel, lasting=True)
        try:
            data = self.fs.cat_file(path)
        except FileNotFoundError:
            return BadRow(url, "gone since the listing (the next run deletes its chunks)", rel)
        except PermissionError as e:
            return BadRow(url, f"cannot read: {e}", rel)
        except IsADirectoryError:
            return BadRow(url, "a directory, not a file", rel)
        except Exception as e:
            if not _unavailable(e):
                raise
            raise SourceUnavailableError(f"{url}: reading failed: {e}; run again when the store is back") from e
        with self._lock:
            self.stats["fetched"] = self.stats.get("fetched", 0) + 1
            self.stats["bytes_fetched"] = self.stats.get("bytes_fetched", 0) + len(data)
        return data

    def parse(self, data: bytes, rel: str, url: str, parser: Parser, version: str | None) -> Document | BadRow:
        """Fetched bytes -> the document (one thread at a time: PDFium is not thread-safe)."""
        try:
            parsed = parser(data, rel)
        except ParseError as e:
            return BadRow(url, str(e), rel, lasting=True)
        except Exception as e:  # noqa: BLE001 - a parser library failing on a malformed file: the file is bad input
            log.warning("%s: parser %s failed", url, parser.name, exc_info=True)
            return BadRow(url, f"parser {parser.name} failed: {type(e).__name__}: {e}", rel, lasting=True)
        self.stats["parsed"] = self.stats.get("parsed", 0) + 1
        metadata = self._metadata(rel, url)
        if parsed.title:
            metadata["title"] = parsed.title
        metadata.update(parsed.metadata)
        text = parsed.text
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return BadRow(url, "invalid UTF-8 in the extracted text", rel, lasting=True)
        return Document(rel, text, metadata, location=url, sections=parsed.sections, version=version)


class _Loader:
    """A listed file's reader (a small object rather than a closure: what it holds is visible)."""

    __slots__ = ("source", "path", "rel", "url", "size", "parser", "version")

    def __init__(self, source: FileSource, path: str, rel: str, url: str, size: int, parser: Parser, version: str | None) -> None:
        self.source, self.path, self.rel, self.url, self.size, self.parser, self.version = source, path, rel, url, size, parser, version

    def __call__(self) -> Document | BadRow:
        return self.source.read(self.path, self.rel, self.url, self.size, self.parser, self.version)

    def fetch(self) -> bytes | BadRow:
        return self.source.fetch(self.path, self.rel, self.url, self.size)

    def parse(self, data: bytes) -> Document | BadRow:
        return self.source.parse(data, self.rel, self.url, self.parser, self.version)
