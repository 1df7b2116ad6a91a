"""How embedrail records map onto an Elasticsearch index, and queries back: the mapping (vector
field, index options per server version, filterable metadata copies), the portable filter form as
ES query DSL, and ES scores turned back into similarities. Pure functions, no client (the store
module sends what these build)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np

from embedrail.connectors._filters import Cond
from embedrail.connectors._records import parse_version, spec_to_dict
from embedrail.connectors.base import Hit, IndexSpec
from embedrail.errors import ConfigError

__all__ = ["ANALYSIS_PROBE", "FILTER_FIELD", "HEADING_KEYS", "INDEX_OPTION_TYPES", "default_index_options", "dims_limit", "es_filter",
           "filterable", "hit", "index_mapping", "keyword_query", "resolve_index_options", "score", "text_analysis",
           "vector_bytes"]  # fmt: skip

INDEX_OPTION_TYPES = ("hnsw", "int8_hnsw", "int4_hnsw", "bbq_hnsw", "flat", "int8_flat", "int4_flat", "bbq_flat")
_MIN_VERSION = {"int8_hnsw": (8, 12), "flat": (8, 13), "int8_flat": (8, 13), "int4_hnsw": (8, 15),
                "int4_flat": (8, 15), "bbq_hnsw": (8, 16), "bbq_flat": (8, 16)}  # fmt: skip
FILTER_FIELD = "m"  # filterable copies of metadata values
#: metadata keys whose values are also searched as words, boosted (the document title and a chunk's headings)
HEADING_KEYS = ("title", "heading_path")
HEADING_BOOST = 2
_ANALYZER, _QUERY_ANALYZER = "embedrail_text", "embedrail_query"


def text_analysis(settings: Mapping[str, Any] | None = None, *, full: bool = True) -> dict[str, Any]:
    """``settings`` (the user's index settings) with the analysis of a new index added: English words for
    keyword search. ``full`` (a server with the ``analysis-common`` module, as every full distribution):
    the standard tokenizer, identifiers split into their parts (``cgi.parse_header`` -> cgi, parse, header;
    ``ArgumentParser`` -> argument, parser; the whole identifier kept as well), lowercased, English stop
    words removed, Porter stemming; the query side is the same chain without ``flatten_graph`` (which only
    an index needs). Without the module (a minimal build) the mapping names the built-in ``stop`` analyzer
    (letters only, lowercased, English stop words: ``cgi.parse_header`` is still split, camel case and
    stems are not) and no analysis is added."""
    parts = ["embedrail_parts", "lowercase", "embedrail_stop", "embedrail_stem"]
    ours: dict[str, Any] = {
        "filter": {
            "embedrail_parts": {"type": "word_delimiter_graph", "preserve_original": True, "split_on_numerics": False},
            "embedrail_stop": {"type": "stop", "stopwords": "_english_"},
            "embedrail_stem": {"type": "stemmer", "language": "english"},
        },
        "analyzer": {
            _ANALYZER: {"type": "custom", "tokenizer": "standard", "filter": [parts[0], "flatten_graph", *parts[1:]]},
            _QUERY_ANALYZER: {"type": "custom", "tokenizer": "standard", "filter": parts},
        },
    } if full else {}  # fmt: skip
    out = dict(settings or {})
    theirs = out.get("analysis") if isinstance(out.get("analysis"), Mapping) else {}
    # the user's own analysis settings are kept beside ours (theirs win on a name clash)
    if ours or theirs:
        out["analysis"] = {part: {**ours.get(part, {}), **dict(theirs.get(part) or {})} for part in {*ours, *theirs}}
    return out


#: what ``text_analysis(full=True)`` needs from the server (``_analyze`` with these tells whether it has them)
ANALYSIS_PROBE = {"tokenizer": "standard", "filter": [{"type": "word_delimiter_graph"}, {"type": "stemmer", "language": "english"}],
                  "text": "ArgumentParser"}  # fmt: skip


def keyword_query(query: str) -> dict[str, Any]:
    """BM25 over the chunk text and, boosted, the title and headings (an index created before these fields
    existed has only ``text``: a field it lacks matches nothing)."""
    fields = ["text", *(f"{FILTER_FIELD}.{k}.words^{HEADING_BOOST}" for k in HEADING_KEYS)]
    return {"multi_match": {"query": query, "fields": fields, "type": "most_fields"}}


def dims_limit(version: str | tuple[int, ...]) -> int:
    """The largest indexed ``dense_vector`` dimension a server of this version accepts."""
    v = parse_version(version) if isinstance(version, str) else tuple(version)
    if v < (8, 8):
        return 1024
    if v < (8, 11):
        return 2048
    return 4096


def default_index_options(version: str | tuple[int, ...]) -> str:
    v = parse_version(version) if isinstance(version, str) else tuple(version)
    return "int8_hnsw" if v >= (8, 12) else "hnsw"


def resolve_index_options(opt: str | Mapping[str, Any] | None, version: str, spec: IndexSpec, url: str) -> dict[str, Any]:
    """The explicit ``index_options`` of a new index (the server default never decides)."""
    opt = opt or default_index_options(version)
    opts = dict(opt) if isinstance(opt, Mapping) else {"type": opt}
    typ = str(opts.get("type", ""))
    need = _MIN_VERSION.get(typ)
    if need and parse_version(version) < need:
        raise ConfigError(f"{url}: index_options {typ!r} needs Elasticsearch >= {'.'.join(map(str, need))}, "
                          f"the server is {version}; use 'hnsw'")  # fmt: skip
    if typ.startswith("bbq") and spec.dims < 64:
        raise ConfigError(f"index_options {typ!r} needs at least 64 dims, got {spec.dims}")
    if typ.startswith("int4") and spec.dims % 2:
        raise ConfigError(f"index_options {typ!r} needs an even number of dims, got {spec.dims}")
    if typ.endswith("hnsw"):
        opts.setdefault("m", 16)
        opts.setdefault("ef_construction", 100)
    return opts


def vector_bytes(index_options: Mapping[str, Any] | None, dims: int) -> int:
    """What the kNN graph holds per vector: 4 bytes a dimension as float, 1 as int8, half as int4, one bit as
    bbq (the float vectors are kept beside them for rescoring)."""
    typ = str((index_options or {}).get("type", "hnsw"))
    if typ.startswith("int8"):
        return dims
    if typ.startswith("int4"):
        return -(-dims // 2)
    if typ.startswith("bbq"):
        return -(-dims // 8)
    return dims * 4


def index_mapping(name: str, spec: IndexSpec, similarity: str, index_options: Mapping[str, Any], *,
                  full_analysis: bool = True) -> dict[str, Any]:  # fmt: skip
    """The mapping of a physical index: strict, the spec in ``_meta``, vectors and filter copies not in
    ``_source``; ``text`` and the headings analysed by ``text_analysis`` (``full_analysis``: which one)."""

    def template(tname: str, kind: str, mapping: dict[str, Any], path: str = "*") -> dict[str, Any]:
        return {tname: {"path_match": f"{FILTER_FIELD}.{path}", "match_mapping_type": kind, "mapping": mapping}}

    words = ({"type": "text", "analyzer": _ANALYZER, "search_analyzer": _QUERY_ANALYZER} if full_analysis else
             {"type": "text", "analyzer": "stop"})  # fmt: skip
    return {
        "_meta": {"embedrail": spec_to_dict(spec), "logical_name": name, "created": datetime.now(UTC).isoformat(),
                  "lexical": {"analyzer": _ANALYZER if full_analysis else "stop", "headings": list(HEADING_KEYS)}},
        "_source": {"excludes": ["vector", FILTER_FIELD]},
        "dynamic": "strict",
        "date_detection": False,
        "numeric_detection": False,
        "dynamic_templates": [
            # the title and headings: filterable as given, and searchable as words (keyword_query)
            *(template(f"heading_{k}", "string", {"type": "keyword", "ignore_above": 2048, "fields": {"words": words}}, k)
              for k in HEADING_KEYS),
            template("filter_strings", "string", {"type": "keyword", "ignore_above": 2048}),
            template("filter_longs", "long", {"type": "double"}),
            template("filter_doubles", "double", {"type": "double"}),
        ],
        "properties": {
            "id": {"type": "keyword"},
            "text": dict(words),
            "vector": {"type": "dense_vector", "dims": spec.dims, "index": True, "similarity": similarity,
                       "index_options": dict(index_options)},  # fmt: skip
            # the metadata exactly as given (any JSON), kept in _source, not indexed
            "metadata": {"type": "object", "enabled": False},
            # filterable copies of top-level scalar / scalar-list values; indexed, not stored
            FILTER_FIELD: {"type": "object", "dynamic": True},
        },
    }


def filterable(md: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level scalar and homogeneous scalar-list values (the ones the filter form can address)."""
    out: dict[str, Any] = {}
    for k, v in md.items():
        if not isinstance(k, str) or not k or "." in k or k.startswith("_"):
            continue
        if isinstance(v, bool | str) or (isinstance(v, int | float) and np.isfinite(v)):
            out[k] = v
        elif isinstance(v, list) and v:
            if all(isinstance(x, bool) for x in v) or all(isinstance(x, str) for x in v):
                out[k] = v
            elif all(isinstance(x, int | float) and not isinstance(x, bool) and np.isfinite(x) for x in v):
                out[k] = v
    return out


def hit(h: Mapping[str, Any], score: float) -> Hit:
    src = h.get("_source") or {}
    return Hit(id=str(h["_id"]), score=score, text=src.get("text") or "", metadata=dict(src.get("metadata") or {}))


def score(similarity: str, s: float) -> float:
    """An ES ``_score`` as the similarity (higher is better; minus the distance for l2)."""
    if similarity in ("dot_product", "cosine"):
        return 2.0 * s - 1.0  # ES reports (1 + cos) / 2
    if similarity == "max_inner_product":
        return s - 1.0 if s >= 1.0 else 1.0 - 1.0 / s
    if similarity == "l2_norm":
        return -float(np.sqrt(max(1.0 / s - 1.0, 0.0))) if s > 0 else float("-inf")
    return s


def es_filter(conds: list[Cond]) -> dict[str, Any] | None:
    """The AND-ed portable conditions as a ``bool`` filter on the filterable copies."""
    if not conds:
        return None
    must: list[dict[str, Any]] = []
    must_not: list[dict[str, Any]] = []
    ranges: dict[str, dict[str, Any]] = {}
    ops = {"$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}
    for c in conds:
        f = f"{FILTER_FIELD}.{c.field}"
        if c.op == "$eq":
            must.append({"term": {f: c.value}})
        elif c.op == "$ne":
            must_not.append({"term": {f: c.value}})
        elif c.op == "$in":
            must.append({"terms": {f: c.value}})
        elif c.op == "$nin":
            must_not.append({"terms": {f: c.value}})
        else:
            ranges.setdefault(f, {})[ops[c.op]] = c.value
    must += [{"range": {f: r}} for f, r in ranges.items()]
    q: dict[str, Any] = {}
    if must:
        q["filter"] = must
    if must_not:
        q["must_not"] = must_not
    return {"bool": q}
