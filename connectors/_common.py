"""Helpers shared by the store connectors: URLs, credential redaction, the portable filter form,
vector coercion, metadata encoding, retries. Imports nothing but numpy, stdlib and our own errors."""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, unquote, urlsplit

import numpy as np

from connectors.base import IndexMismatchError, IndexSpec, Record
from embedrail.errors import ConfigError, EmbedrailError, StoreError, StoreUnavailableError

log = logging.getLogger("connectors")

T = TypeVar("T")

# Metadata keys of the IndexSpec as stored in each store's own index metadata.
SPEC_KEY = "embedrail"
SPEC_VERSION = 1

_SECRET_PARAMS = {"api_key", "apikey", "password", "token", "secret", "auth"}


# --------------------------------------------------------------------------------------- URLs
@dataclass(slots=True)
class StoreURL:
    """A parsed connector URL. ``safe`` is the credential-free form for messages and logs."""

    raw_scheme: str  # e.g. "es+https"
    store: str  # "es" | "chroma" | "weaviate"
    transport: str  # "http" | "https" | "file"
    host: str = ""
    port: int | None = None
    path: str = ""  # the part after the host, without the leading "/" (index/collection name)
    username: str | None = None
    password: str | None = None
    params: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str | None:
        n = self.path.strip("/")
        return n or None

    @property
    def safe(self) -> str:
        return redact_url(self)

    def param(self, key: str, default: str | None = None) -> str | None:
        return self.params.get(key, default)

    def http_base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port else ""
        return f"{self.transport}://{host}{port}"


_STORE_ALIASES = {
    "es": "es",
    "elasticsearch": "es",
    "chroma": "chroma",
    "weaviate": "weaviate",
}


def parse_url(url: str) -> StoreURL:
    """Parse ``es://``, ``es+https://``, ``chroma:///path``, ``chroma+http://``, ``weaviate://`` URLs."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(
            f"not a store URL: {_redact_str(str(url))!r}; expected e.g. es://host:9200/index, "
            "chroma:///abs/path?collection=name, chroma+http://host:8000/name, weaviate://host:8080/Name"
        )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    base, _, transport = scheme.partition("+")
    store = _STORE_ALIASES.get(base)
    if store is None:
        raise ConfigError(
            f"unknown store scheme {scheme!r} in {_redact_str(url)!r}; use es://, es+https://, chroma://, "
            "chroma+http://, chroma+https:// or weaviate:// (weaviate+https://)"
        )
    params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    if store == "chroma" and not transport:
        transport = "file"
    transport = transport or "http"
    if transport not in ("http", "https", "file"):
        raise ConfigError(f"unknown transport {transport!r} in {_redact_str(url)!r}; use +http or +https")
    try:
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"bad port in {_redact_str(url)!r}: {e}") from None
    return StoreURL(
        raw_scheme=scheme,
        store=store,
        transport=transport,
        host=parts.hostname or "",
        port=port,
        path=unquote(parts.path),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        params=params,
    )


def redact_url(u: StoreURL) -> str:
    """The URL without user info and with secret query parameters removed."""
    if u.transport == "file":
        base = f"{u.raw_scheme}://{quote(u.path)}"
    else:
        host = f"[{u.host}]" if ":" in u.host else u.host
        port = f":{u.port}" if u.port else ""
        base = f"{u.raw_scheme}://{host}{port}{quote(u.path)}"
    keep = [(k, v) for k, v in u.params.items() if k.lower() not in _SECRET_PARAMS]
    if keep:
        base += "?" + "&".join(f"{k}={quote(v, safe='/')}" for k, v in keep)
    return base


_USERINFO_RE = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")
_SECRET_QS_RE = re.compile(r"(?i)([?&](?:api_key|apikey|password|token|secret|auth)=)[^&\s#]*")
_AUTH_HDR_RE = re.compile(r"(?i)((?:authorization|api[-_]?key)['\"]?\s*[:=]\s*['\"]?)(?:ApiKey |Basic |Bearer )?[^'\",\s}]+")


def _redact_str(s: str) -> str:
    s = _USERINFO_RE.sub(r"\g<scheme>", s)
    s = _SECRET_QS_RE.sub(r"\1***", s)
    return _AUTH_HDR_RE.sub(r"\1***", s)


def scrub(text: str, *secrets: str | None) -> str:
    """Remove credentials from a message (user info, secret params, and the given literal secrets)."""
    out = _redact_str(str(text))
    for s in secrets:
        if s and len(s) >= 3:
            out = out.replace(s, "***")
    return out


def flag(value: str | None, default: bool = False) -> bool:
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


# ---------------------------------------------------------------------------- names, versions
def version_suffix() -> str:
    """A sortable, unique-enough physical-index version suffix (UTC timestamp + random)."""
    now = datetime.now(UTC)
    return f"v{now:%Y%m%d%H%M%S}{now.microsecond // 1000:03d}{random.randrange(16**3):03x}"


def parse_version(v: str) -> tuple[int, ...]:
    nums = re.findall(r"\d+", v.split("-")[0])
    return tuple(int(x) for x in nums[:3]) or (0,)


# ----------------------------------------------------------------------------------- vectors
def as_matrix(vectors: Sequence[Any] | np.ndarray, dims: int | None = None) -> np.ndarray:
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if dims is not None and arr.shape[1] != dims:
        raise IndexMismatchError(f"vector has {arr.shape[1]} dims, the index holds {dims}-d vectors")
    return arr


def as_vector(vector: Any, dims: int | None = None) -> np.ndarray:
    arr = np.asarray(vector, dtype=np.float32).reshape(-1)
    if dims is not None and arr.shape[0] != dims:
        raise IndexMismatchError(
            f"query vector has {arr.shape[0]} dims but the index holds {dims}-d vectors; "
            "embed the query with the model the index was built with (see describe())"
        )
    if not np.all(np.isfinite(arr)):
        raise ConfigError("query vector contains NaN or infinite values")
    return arr


def check_record(rec: Record, dims: int | None) -> tuple[np.ndarray | None, str | None]:
    """Validate one record; returns (vector, None) or (None, reason)."""
    if not isinstance(rec.id, str) or not rec.id:
        return None, "record id must be a non-empty string"
    try:
        vec = np.asarray(rec.vector, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as e:
        return None, f"vector is not numeric: {e}"
    if dims is not None and vec.shape[0] != dims:
        return None, f"vector has {vec.shape[0]} dims, the index holds {dims}-d vectors"
    if vec.shape[0] == 0:
        return None, "empty vector"
    if not np.all(np.isfinite(vec)):
        return None, "vector contains NaN or infinite values"
    if rec.metadata is not None and not isinstance(rec.metadata, Mapping):
        return None, "metadata must be a dict"
    return vec, None


def dedupe_last(records: Iterable[Record]) -> list[Record]:
    """Keep the last record per id (a batch with the same id twice upserts the last one)."""
    by_id: dict[str, Record] = {}
    for r in records:
        if r.id in by_id:
            del by_id[r.id]
        by_id[r.id] = r
    return list(by_id.values())


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ------------------------------------------------------------------------------- spec <-> json
def spec_to_dict(spec: IndexSpec) -> dict[str, Any]:
    return {
        "v": SPEC_VERSION,
        "dims": spec.dims,
        "metric": spec.metric,
        "fingerprint": spec.fingerprint,
        "embedding": dict(spec.embedding),
    }


def spec_from_dict(d: Mapping[str, Any] | None) -> IndexSpec | None:
    if not d or "dims" not in d:
        return None
    try:
        return IndexSpec(
            dims=int(d["dims"]),
            metric=str(d.get("metric", "cosine")),
            fingerprint=str(d.get("fingerprint", "")),
            embedding=dict(d.get("embedding") or {}),
        )
    except Exception:
        return None


def check_spec(name: str, recorded: IndexSpec | None, wanted: IndexSpec, where: str) -> None:
    """Raise IndexMismatchError when an existing index does not match the requested spec."""
    if recorded is None:
        return
    problems = []
    if recorded.dims != wanted.dims:
        problems.append(f"dims {recorded.dims} != requested {wanted.dims}")
    if recorded.metric != wanted.metric:
        problems.append(f"metric {recorded.metric!r} != requested {wanted.metric!r}")
    if recorded.fingerprint != wanted.fingerprint:
        problems.append(
            f"embedding fingerprint {recorded.fingerprint!r} != requested {wanted.fingerprint!r}"
        )
    if problems:
        model = recorded.embedding.get("model") if recorded.embedding else None
        built = f" (built with model {model!r})" if model else ""
        raise IndexMismatchError(
            f"{where}: index {name!r}{built} does not match: " + "; ".join(problems)
            + ". Nothing was written. Use the embedding configuration the index was built with, "
            "another index name, or rebuild the index (begin_rebuild/commit_rebuild, CLI --rebuild)."
        )


# ------------------------------------------------------------------------------ filter language
FILTER_OPS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin")
Scalar = str | int | float | bool


@dataclass(frozen=True, slots=True)
class Cond:
    field: str
    op: str  # one of FILTER_OPS
    value: Any  # scalar, or a list of scalars for $in/$nin


def parse_filter(flt: Mapping[str, Any] | None) -> list[Cond]:
    """Parse the portable filter form into a list of AND-ed conditions.

    ``{"lang": "en", "year": {"$gte": 2020, "$lt": 2025}, "tag": {"$in": ["a", "b"]}}``: keys are
    top-level metadata keys, a bare value means equality, operators are $eq $ne $gt $gte $lt $lte
    $in $nin, all conditions are AND-ed. Values are scalars (str, int, float, bool).
    """
    if not flt:
        return []
    if not isinstance(flt, Mapping):
        raise ConfigError(f"filter must be a dict like {{'lang': 'en'}}, got {type(flt).__name__}")
    out: list[Cond] = []
    for key, val in flt.items():
        if not isinstance(key, str) or not key or key.startswith("$"):
            raise ConfigError(
                f"filter key {key!r} is not a metadata field; the filter form is "
                "{'field': value, 'field2': {'$gte': 1}} (implicit AND, no $and/$or)"
            )
        if isinstance(val, Mapping):
            if not val:
                raise ConfigError(f"filter on {key!r} has no operator")
            for op, arg in val.items():
                if op not in FILTER_OPS:
                    raise ConfigError(f"unknown filter operator {op!r} on {key!r}; supported: {FILTER_OPS}")
                out.append(_cond(key, op, arg))
        else:
            out.append(_cond(key, "$eq", val))
    return out


def _cond(key: str, op: str, arg: Any) -> Cond:
    if op in ("$in", "$nin"):
        if isinstance(arg, str | bytes) or not isinstance(arg, Iterable):
            raise ConfigError(f"{op} on {key!r} needs a list of values, got {arg!r}")
        vals = list(arg)
        if not vals:
            raise ConfigError(f"{op} on {key!r} needs a non-empty list")
        for v in vals:
            _check_scalar(key, op, v)
        return Cond(key, op, vals)
    _check_scalar(key, op, arg)
    if op in ("$gt", "$gte", "$lt", "$lte") and (isinstance(arg, bool) or not isinstance(arg, int | float)):
        raise ConfigError(f"{op} on {key!r} needs a number, got {arg!r}")
    return Cond(key, op, arg)


def _check_scalar(key: str, op: str, v: Any) -> None:
    if not isinstance(v, str | int | float | bool) or (isinstance(v, float) and not math.isfinite(v)):
        raise ConfigError(f"filter value for {key!r} {op} must be a str, int, float or bool, got {v!r}")


# ------------------------------------------------------------------- metadata for scalar stores
JSON_PREFIX = "__json__"


def encode_scalar_metadata(md: Mapping[str, Any] | None) -> dict[str, Any]:
    """Encode metadata for stores that only accept scalar values (Chroma).

    Scalars (str, int, float, bool) are kept as they are, so they stay filterable. Anything else
    (lists, dicts, None, ...) is stored as a JSON string under the key ``"__json__" + key``; the
    decoder turns it back. Keys that themselves start with the prefix are encoded too, so the
    round trip is exact for every JSON-serialisable value.
    """
    out: dict[str, Any] = {}
    for k, v in (md or {}).items():
        k = str(k)
        if isinstance(v, str | bool | int | float) and not k.startswith(JSON_PREFIX) and not (
            isinstance(v, float) and not math.isfinite(v)
        ):
            out[k] = v
        else:
            out[JSON_PREFIX + k] = json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    return out


def decode_scalar_metadata(md: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (md or {}).items():
        if k.startswith(JSON_PREFIX) and isinstance(v, str):
            try:
                out[k[len(JSON_PREFIX) :]] = json.loads(v)
                continue
            except ValueError:
                pass
        out[k] = v
    return out


# --------------------------------------------------------------------------------- retrying
@dataclass(slots=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and jitter."""

    attempts: int = 4  # total tries
    initial: float = 0.5  # seconds before the 2nd try
    maximum: float = 8.0  # cap on one backoff
    deadline: float = 60.0  # stop retrying once this much time has passed since the first try

    def delays(self) -> Iterator[float]:
        d = self.initial
        for _ in range(self.attempts - 1):
            yield min(d, self.maximum) * (0.75 + random.random() * 0.5)
            d *= 2


def retry_call(
    fn: Callable[[], T],
    *,
    is_transient: Callable[[BaseException], bool],
    policy: RetryPolicy,
    what: str,
    url: str,
    secrets: Sequence[str | None] = (),
    passthrough: Callable[[BaseException], bool] | None = None,
) -> T:
    """Run ``fn``; retry transient failures with backoff; raise StoreUnavailableError when exhausted.

    Other failures become ``StoreError`` (message scrubbed of credentials), except our own errors and
    those ``passthrough`` selects (e.g. "not found", which callers handle).
    """
    start = time.monotonic()
    delays = policy.delays()
    while True:
        try:
            return fn()
        except Exception as e:
            if isinstance(e, EmbedrailError) or (passthrough is not None and passthrough(e)):
                raise
            if not is_transient(e):
                raise StoreError(f"{url}: {what} failed: {scrub(_short(e), *secrets)}") from None
            delay = next(delays, None)
            elapsed = time.monotonic() - start
            if delay is None or elapsed + delay > policy.deadline:
                raise StoreUnavailableError(
                    f"{url}: {what} failed after {elapsed:.1f}s and retries: "
                    f"{scrub(_short(e), *secrets)}. Is the store running and reachable?"
                ) from None
            log.warning("%s: %s failed (%s); retrying in %.1fs", url, what, scrub(_short(e), *secrets), delay)
            time.sleep(delay)


def _short(e: BaseException, limit: int = 300) -> str:
    s = f"{type(e).__name__}: {e}"
    return s if len(s) <= limit else s[:limit] + "..."


def short_error(e: BaseException, *secrets: str | None, limit: int = 300) -> str:
    return scrub(_short(e, limit), *secrets)


class RebuildMixin:
    """``open_rebuild`` shared by every store: reopen a rebuild begun elsewhere (another process,
    another Airflow task) by the name of its versioned physical index/collection."""

    name: str

    def _sibling(self, physical: str) -> Any:  # each store builds a copy of itself bound to `physical`
        raise NotImplementedError

    _read_cache: Any

    def _new_physical_name(self) -> str:
        """The name of a new versioned physical index/collection behind ``self.name``."""
        return f"{self.name}__{version_suffix()}"

    def open_rebuild(self, physical: str) -> Any:
        if not physical.startswith(f"{self.name}__"):
            raise ConfigError(f"{physical!r} is not a rebuild of {self.name!r} (expected {self.name}__v...)")
        return self._sibling(physical)

    def _rebuild_target(self, new: Any) -> str:
        """The physical name a ``commit_rebuild(new)`` switches to; drops the cached read target."""
        self._read_cache = None
        target = getattr(new, "_physical_fixed", None)
        if not isinstance(new, type(self)) or not target:
            raise ConfigError("commit_rebuild needs the store returned by begin_rebuild()")
        return target
