"""What every connector does to records, specs and metadata before the store-native part: validate a
record, keep the last record per id, check a query vector, store/read/compare the ``IndexSpec``, and
encode metadata for stores that hold scalars only."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from embedrail.connectors.base import IndexSpec, Record
from embedrail.errors import ConfigError, IndexMismatchError

__all__ = [
    "JSON_PREFIX",
    "batched",
    "check_query",
    "check_record",
    "check_spec",
    "decode_scalar_metadata",
    "dedupe_last",
    "encode_scalar_metadata",
    "OWNER_KEY",
    "owner_from",
    "parse_version",
    "spec_from_dict",
    "spec_to_dict",
]

T = TypeVar("T")
SPEC_VERSION = 1


# ------------------------------------------------------------------------------------------ records
def check_record(rec: Record, dims: int | None) -> tuple[np.ndarray | None, str | None]:
    """Validate one record; returns ``(vector, None)`` or ``(None, reason)``."""
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
    """Keep the last record per id, in the order of those last occurrences (a batch holding an id twice
    writes the later record, as a store applying the writes in order would)."""
    by_id: dict[str, Record] = {}
    for r in records:
        by_id.pop(r.id, None)
        by_id[r.id] = r
    return list(by_id.values())


def check_query(url: str, vector: Any, spec: IndexSpec | None) -> np.ndarray:
    """A query vector as float32, checked against the index's dims (and for NaN/inf)."""
    vec = np.asarray(vector, dtype=np.float32).reshape(-1)
    if spec is not None and vec.shape[0] != spec.dims:
        raise IndexMismatchError(
            f"{url}: query vector has {vec.shape[0]} dims but the index holds {spec.dims}-d vectors; "
            "embed the query with the model the index was built with (see describe())"
        )
    if not np.all(np.isfinite(vec)):
        raise ConfigError("query vector contains NaN or infinite values")
    return vec


def batched(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), max(1, size)):
        yield items[i : i + size]


def parse_version(v: str) -> tuple[int, ...]:
    """``"8.19.3-SNAPSHOT"`` -> ``(8, 19, 3)``."""
    nums = re.findall(r"\d+", v.split("-")[0])
    return tuple(int(x) for x in nums[:3]) or (0,)


# ------------------------------------------------------------------------------------------- specs
def spec_to_dict(spec: IndexSpec) -> dict[str, Any]:
    return {"v": SPEC_VERSION, "dims": spec.dims, "metric": spec.metric, "fingerprint": spec.fingerprint,
            "embedding": dict(spec.embedding)}  # fmt: skip


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
    except Exception:  # noqa: BLE001 - foreign or corrupt metadata reads as "no spec"
        return None


OWNER_KEY = "embedrail_owner"  # where an index's metadata records its owner (beside the spec)
SEARCH_KEY = "embedrail_search"  # ... and its search defaults (set_search_defaults)
#: the metadata key of each of embedrail's entries (``_set_meta``) in stores whose metadata is one flat map
META_KEYS = {"owner": OWNER_KEY, "search": SEARCH_KEY}


def _mapping(raw: Any) -> Any:
    """A metadata entry as a store keeps it: a mapping, or its JSON (stores whose metadata holds strings)."""
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return None
    return raw


def owner_from(raw: Any) -> dict[str, str] | None:
    """An owner record as ``set_owner`` stores it (a mapping, or its JSON), or None if absent or malformed."""
    raw = _mapping(raw)
    if isinstance(raw, Mapping) and isinstance(raw.get("ledger"), str) and isinstance(raw.get("key"), str):
        return {"ledger": raw["ledger"], "key": raw["key"]}
    return None


def search_from(raw: Any) -> dict[str, Any] | None:
    """Search defaults as ``set_search_defaults`` stores them (a mapping, or its JSON), or None."""
    raw = _mapping(raw)
    return dict(raw) if isinstance(raw, Mapping) and raw else None


def check_spec(name: str, recorded: IndexSpec | None, wanted: IndexSpec, where: str) -> None:
    """Raise ``IndexMismatchError`` when an existing index does not match the requested spec."""
    if recorded is None:
        return
    problems = []
    if recorded.dims != wanted.dims:
        problems.append(f"dims {recorded.dims} != requested {wanted.dims}")
    if recorded.metric != wanted.metric:
        problems.append(f"metric {recorded.metric!r} != requested {wanted.metric!r}")
    if recorded.fingerprint != wanted.fingerprint:
        problems.append(f"embedding fingerprint {recorded.fingerprint!r} != requested {wanted.fingerprint!r}")
    if problems:
        model = recorded.embedding.get("model") if recorded.embedding else None
        built = f" (built with model {model!r})" if model else ""
        raise IndexMismatchError(
            f"{where}: index {name!r}{built} does not match: " + "; ".join(problems)
            + ". Nothing was written. Use the embedding configuration the index was built with, another "
            "index name, or rebuild the index with the new one (`embedrail reindex --mode full`, or "
            "begin_rebuild/commit_rebuild)."
        )


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
