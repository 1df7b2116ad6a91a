"""How embedrail records map onto Weaviate objects, and back: collection names, deterministic object
UUIDs, the typed filterable ``m_<key>`` properties, portable filter conditions, hits and scores. Pure
functions, no client (the store module, :mod:`connectors.weaviate`, sends what these build)."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import numpy as np

from embedrail.connectors.base import Hit, Record
from embedrail.errors import ConfigError

__all__ = ["HEADINGS", "HEADING_BOOST", "META_PREFIX", "PROP_RE", "RETURN_PROPS", "condition", "normalize_name", "object_properties", "object_uuid",
           "to_hit", "to_score", "type_of"]  # fmt: skip

PROP_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,200}$")
META_PREFIX = "m_"
RETURN_PROPS = ["doc_id", "text", "meta_json"]
HEADINGS = "headings"  # the title and heading path as words (a searchable property of new collections)
HEADING_BOOST = 2
_HEADING_KEYS = ("title", "heading_path")


def normalize_name(name: str) -> str:
    """Map any index name to a valid Weaviate collection name: ``[A-Z][A-Za-z0-9_]*``."""
    n = re.sub(r"[^A-Za-z0-9_]", "_", name.strip())
    if not n:
        raise ConfigError("empty Weaviate collection name")
    if not n[0].isalpha():
        n = "C" + n
    return n[0].upper() + n[1:]


def object_uuid(doc_id: str) -> str:
    # same as weaviate.util.generate_uuid5(doc_id): uuid5 of the id in the DNS namespace
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, doc_id))




def condition(p: Any, op: str, val: Any, many: bool) -> Any:
    """One portable filter condition on a Weaviate property (``many``: an array property)."""
    if op == "$eq":
        return p.contains_any([val]) if many else p.equal(val)
    if op == "$ne":
        return p.contains_none([val]) if many else p.not_equal(val)
    if op == "$in":
        return p.contains_any(val)
    if op == "$nin":
        return p.contains_none(val)
    return {"$gt": p.greater_than, "$gte": p.greater_or_equal, "$lt": p.less_than, "$lte": p.less_or_equal}[op](val)


def object_properties(r: Record, *, headings: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """(the object's properties, the types of its ``m_<key>`` ones); ``headings``: the collection has the
    ``headings`` property (the metadata title and heading path, searched as words)."""
    md = dict(r.metadata or {})
    props: dict[str, Any] = {"doc_id": r.id, "text": r.text or "",
                             "meta_json": json.dumps(md, ensure_ascii=False, separators=(",", ":"), allow_nan=False)}  # fmt: skip
    if headings:
        props[HEADINGS] = " ".join(v for k in _HEADING_KEYS if isinstance(v := md.get(k), str))
    types: dict[str, str] = {}
    for k, v in md.items():
        t = type_of(v) if isinstance(k, str) and PROP_RE.match(k) else None
        if t is not None:
            name = META_PREFIX + k
            props[name] = [float(x) for x in v] if t == "number[]" else float(v) if t == "number" else v
            types[name] = t
    return props, types


def type_of(v: Any) -> str | None:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "text"
    if isinstance(v, list) and v:
        if all(isinstance(x, bool) for x in v):
            return "boolean[]"
        if all(isinstance(x, int | float) and not isinstance(x, bool) for x in v):
            return "number[]"
        if all(isinstance(x, str) for x in v):
            return "text[]"
    return None


def to_hit(o: Any, score: float) -> Hit:
    p = o.properties or {}
    try:
        md = json.loads(p.get("meta_json") or "{}")
    except ValueError:
        md = {}
    return Hit(id=str(p.get("doc_id") or o.uuid), score=score, text=str(p.get("text") or ""), metadata=md)


def to_score(metric: str, d: float) -> float:
    if metric == "cosine":
        return 1.0 - d  # Weaviate cosine distance = 1 - cos
    if metric == "dot":
        return -d  # Weaviate dot distance = -dot
    return -float(np.sqrt(max(d, 0.0)))  # l2-squared -> minus the euclidean distance
