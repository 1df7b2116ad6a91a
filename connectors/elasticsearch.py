"""Elasticsearch connector (client 8.x and 9.x; servers 8.x and 9.x).

- The ``dense_vector`` dims limit is derived from the server version (8.0–8.7: 1024, 8.8–8.10: 2048,
  from 8.11: 4096) and stated in ``DimensionLimitError``.
- ``index_options`` is always set explicitly, so behaviour does not drift with server defaults (9.1+
  picks bbq_hnsw for >= 384 dims). Default: ``int8_hnsw`` (ES's own default from 8.14 to 9.0: 4x less
  vector memory than float HNSW for a recall loss that is negligible at >= 384 dims); ``hnsw`` on
  servers older than 8.12 where int8 does not exist. Configurable: hnsw, int8_hnsw, int4_hnsw,
  bbq_hnsw, flat, int8_flat, int4_flat, bbq_flat, or a full ``index_options`` dict.
- Similarity: ``dot_product`` for the cosine and dot metrics (vectors are unit length by contract;
  ES rejects non-unit vectors per item, which surfaces as a per-id failure), ``cosine`` when
  ``similarity="cosine"`` is asked for, ``l2_norm`` for l2. Scores are converted back so that higher
  is better: cosine similarity (or dot product), or minus the euclidean distance for l2.
- The IndexSpec lives in the mapping ``_meta.embedrail``. Vectors are excluded from ``_source``; the
  connector never reads them back.
- Writes: our own streaming ``_bulk`` (NDJSON built once per record, requests sized by document count
  and bytes, per-item 429s re-sent with backoff, a 413 bisected, per-item failures with ids, no refresh
  per batch: ``flush()`` refreshes once at the end of a write session). It replaces
  ``elasticsearch.helpers.bulk`` because it is measurably faster on the same data
  (``benchmarks/upsert_throughput.py`` prints the ratio) and reports every failure by id.
- Search: kNN with ``num_candidates`` and filters; on a quantised index (int8, int4, bbq) ``rescore=`` (or
  ``?rescore=``, e.g. 3) asks the server (>= 8.18) to re-rank ``rescore`` x k candidates by the float vectors
  (``rescore_vector.oversample``); ``text`` is a ``text`` field (BM25) and
  ``text_search()`` queries it.
- The user-facing name is always an alias of a versioned physical index ``<name>__v<timestamp>``
  (from the first ``ensure_index``), so rebuilds are one atomic ``_aliases`` call.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from embedrail.connectors._es_schema import (
    ANALYSIS_PROBE,
    FILTER_FIELD,
    INDEX_OPTION_TYPES,
    default_index_options,
    dims_limit,
    es_filter,
    filterable,
    hit,
    index_mapping,
    keyword_query,
    resolve_index_options,
    score,
    text_analysis,
    vector_bytes,
)
from embedrail.connectors._filters import parse_filter
from embedrail.connectors._records import (
    META_KEYS,
    OWNER_KEY,
    SEARCH_KEY,
    batched,
    owner_from,
    parse_version,
    search_from,
    spec_from_dict,
)
from embedrail.connectors._retry import BASE_ERRORS, TRANSIENT_STATUS, log
from embedrail.connectors._store import BaseStore, Batch, ReadTarget
from embedrail.connectors._urls import StoreURL, flag
from embedrail.connectors.base import (
    DEFAULT_ALPHA,
    DEFAULT_FUSION,
    Hit,
    IndexInfo,
    IndexSpec,
    Record,
    UpsertResult,
)
from embedrail.errors import (
    ConfigError,
    DimensionLimitError,
    StoreError,
    StoreRejectedError,
    StoreUnavailableError,
)
from embedrail.secrets import short_error

try:  # optional, faster and more compact (float32 shortest repr) serialisation of vectors
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None

__all__ = ["ElasticsearchStore", "default_index_options", "dims_limit"]

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_SOURCE = ["id", "text", "metadata"]


def _status(e: BaseException) -> int | None:
    st = getattr(e, "status_code", None)
    if st is None:
        st = getattr(getattr(e, "meta", None), "status", None)
    return st if isinstance(st, int) else None


def _body(resp: Any) -> Any:
    return resp.body if hasattr(resp, "body") else resp


class ElasticsearchStore(BaseStore):
    """An Elasticsearch index (behind an alias) implementing the ``VectorStore`` protocol.

    ``ElasticsearchStore(es_client, index="docs")`` or ``ElasticsearchStore("es://host:9200/docs")``.
    """

    STORE = "es"
    NAME_HINT = "es://host:9200/INDEX or index=..."
    ERRORS = BASE_ERRORS.extend(
        never=("elastic_transport.TlsError",),  # a certificate problem: retrying cannot fix it
        transient=("elastic_transport.ConnectionError", "elastic_transport.ConnectionTimeout"),
        status=("elasticsearch.ApiError",),  # HTTP status: 429/502/503/504 transient, 4xx rejected, 5xx failed
    )

    def __init__(
        self,
        client_or_url: Any,
        index: str | None = None,
        *,
        index_options: str | Mapping[str, Any] | None = None,
        similarity: str | None = None,
        num_candidates: int | None = None,
        rescore: float | None = None,
        chunk_docs: int = 500,
        chunk_bytes: int = 10 * 1024 * 1024,
        timeout: float = 30.0,
        settings: Mapping[str, Any] | None = None,
        **base: Any,
    ) -> None:
        super().__init__(client_or_url, index, **base)
        if self._u is not None:  # URL parameters fill what the arguments leave open
            index_options = index_options or self._u.param("index_options")
            similarity = similarity or self._u.param("similarity")
            num_candidates = num_candidates or int(self._u.param("num_candidates") or 0) or None
            rescore = rescore or float(self._u.param("rescore") or 0) or None
            timeout = float(self._u.param("timeout") or timeout)
        if similarity not in (None, "cosine", "dot_product", "l2_norm", "max_inner_product"):
            raise ConfigError(f"unknown similarity {similarity!r}; use cosine, dot_product, l2_norm or max_inner_product")
        if isinstance(index_options, str) and index_options not in INDEX_OPTION_TYPES:
            raise ConfigError(f"unknown index_options {index_options!r}; use one of {INDEX_OPTION_TYPES} or a dict")
        if rescore is not None and not 1.0 <= float(rescore) <= 10.0:
            raise ConfigError(f"rescore={rescore!r}: the oversampling factor is from 1 to 10 (e.g. 3)")
        self.index_options, self.similarity, self.num_candidates = index_options, similarity, num_candidates
        self.rescore = float(rescore) if rescore is not None else None
        self.chunk_docs, self.chunk_bytes = max(1, chunk_docs), max(1024, chunk_bytes)
        self.timeout, self.settings = timeout, dict(settings or {})
        self._version: str | None = None

    def _check_name(self, name: str) -> str:
        if not _NAME_RE.match(name) or len(name.encode()) > 200:
            raise ConfigError(
                f"invalid Elasticsearch index name {name!r}: lowercase letters, digits, '.', '_', '-', "
                "starting with a letter or digit, at most 200 bytes"
            )
        return name

    def _reset_caches(self) -> None:
        super()._reset_caches()
        self._specs: dict[str, IndexSpec | None] = {}
        self._sims: dict[str, str] = {}
        self._types: dict[str, str] = {}  # physical -> its index_options type (hnsw, int8_hnsw, bbq_hnsw, ...)
        self._dirty = False  # written since the last refresh: reads refresh first (read-your-writes)

    # ------------------------------------------------------------------------------ client
    def _make_client(self) -> Any:
        try:
            import elasticsearch
        except ImportError as e:  # pragma: no cover - depends on the installed extras
            raise ConfigError("the Elasticsearch connector needs its client: pip install 'embedrail[elasticsearch]'") from e
        u: StoreURL = self._u  # type: ignore[assignment]
        host = f"[{u.host}]" if ":" in u.host else (u.host or "localhost")
        kw: dict[str, Any] = {"request_timeout": self.timeout, "max_retries": 0, "retry_on_timeout": False}
        if u.param("api_key"):
            kw["api_key"] = u.param("api_key")
        elif u.username:
            kw["basic_auth"] = (u.username, u.password or "")
        if u.param("ca_certs"):
            kw["ca_certs"] = u.param("ca_certs")
        if u.param("verify_certs") is not None:
            kw["verify_certs"] = flag(u.param("verify_certs"), True)
        try:
            return elasticsearch.Elasticsearch(f"{u.transport}://{host}:{u.port or 9200}", **kw)
        except Exception as e:  # noqa: BLE001 - e.g. a missing CA file
            raise ConfigError(f"{self.url}: cannot create the Elasticsearch client: {short_error(e, *self._secrets)}") from None

    @staticmethod
    def _is_not_found(e: BaseException) -> bool:
        return _status(e) == 404

    @staticmethod
    def _describe_client(client: Any, name: str | None) -> str:
        try:
            node = client.transport.node_pool.all()[0].config
            scheme = "es+https" if node.scheme == "https" else "es"
            return f"{scheme}://{node.host}:{node.port}/{name or ''}"
        except Exception:  # noqa: BLE001 - best effort, for messages only
            return f"es+client://{name or ''}"

    def server_version(self) -> str:
        if self._version is None:
            try:
                self._version = str(self._call(lambda: self.client.info(), "read server version")["version"]["number"])
            except StoreUnavailableError:
                raise
            except Exception as e:  # GET / is absent on minimal distributions (integ-test-zip)
                if not self._store_failure(e):
                    raise  # a bug
                nodes = self._call(lambda: self.client.nodes.info(node_id="_local", filter_path="nodes.*.version"),
                                   "read server version")  # fmt: skip
                self._version = min((str(n["version"]) for n in nodes["nodes"].values()), key=parse_version)
        return self._version

    def max_dims(self) -> int | None:
        return dims_limit(self.server_version())

    # ------------------------------------------------------------------------------ names and specs
    def _physicals(self) -> list[str]:
        """The concrete indices behind the name (alias targets, or the name itself if it is an index)."""
        if self._physical_fixed:
            return [self._physical_fixed] if self._index_exists(self._physical_fixed) else []
        try:
            return sorted(_body(self._call(lambda: self.client.indices.get_alias(name=self.name), "resolve alias")))
        except Exception as e:
            if not self._is_not_found(e):
                raise
        return [self.name] if self._index_exists(self.name) else []

    def _current_physical(self) -> str | None:
        phys = self._physicals()
        return phys[0] if phys else None

    def _index_exists(self, index: str) -> bool:
        return bool(self._call(lambda: self.client.indices.exists(index=index), "check index"))

    def _mapping(self, physical: str) -> dict[str, Any]:
        got = _body(self._call(lambda: self.client.indices.get_mapping(index=physical), "read mapping"))
        return dict(got[physical]["mappings"])

    def _spec_of(self, physical: str) -> IndexSpec | None:
        if physical not in self._specs:
            m = self._mapping(physical)
            self._specs[physical] = spec_from_dict((m.get("_meta") or {}).get("embedrail"))
            vec = (m.get("properties") or {}).get("vector") or {}
            self._sims[physical] = str(vec.get("similarity", "cosine"))
            self._types[physical] = str((vec.get("index_options") or {}).get("type", "hnsw"))
        return self._specs[physical]

    # ------------------------------------------------------------------------------ creation
    def _similarity(self, spec: IndexSpec) -> str:
        return "l2_norm" if spec.metric == "l2" else self.similarity or "dot_product"

    def _index_body(self, spec: IndexSpec) -> tuple[dict[str, Any], dict[str, Any], str]:
        """(mappings, settings, similarity) of a new physical index (the store-native part of creating one)."""
        limit = self.max_dims()
        if limit is not None and spec.dims > limit:
            raise DimensionLimitError(
                f"{self.url}: Elasticsearch {self.server_version()} indexes dense_vector fields of at most "
                f"{limit} dims, {spec.dims} were requested (limits: 1024 before 8.8, 2048 up to 8.10, "
                "4096 from 8.11). Use a smaller dimension (MRL truncation) or upgrade the server."
            )
        version = self.server_version()
        sim, index_options = self._similarity(spec), resolve_index_options(self.index_options, version, spec, self.url)
        full = self._full_analysis()
        settings = {"number_of_shards": 1, **text_analysis(self.settings, full=full)}
        return index_mapping(self.name, spec, sim, index_options, full_analysis=full), settings, sim

    def _full_analysis(self) -> bool:
        """Whether the server has the ``analysis-common`` module that keyword search's analyzer is built from
        (every full distribution has it; a minimal build such as the integ-test zip does not): one
        ``_analyze`` request when an index is created; a 400 answer means it has not."""
        try:
            self._call(lambda: self.client.indices.analyze(**ANALYSIS_PROBE), "check analyzers")
            return True
        except StoreRejectedError as e:
            if e.__cause__ is None or _status(e.__cause__) != 400:
                raise
        log.warning("%s: the server has no analysis-common module: keyword search uses the 'stop' analyzer "
                    "(no stemming, no camel-case splitting)", self.url)  # fmt: skip
        return False

    def _create_index(self, physical: str, spec: IndexSpec, alias: bool) -> None:
        mappings, settings, sim = self._index_body(spec)
        kw: dict[str, Any] = {"index": physical, "mappings": mappings, "settings": settings}
        if alias:
            kw["aliases"] = {self.name: {}}
        self._call(lambda: self.client.indices.create(**kw), f"create index {physical}")
        self._specs[physical], self._sims[physical] = spec, sim
        self._types[physical] = str((mappings["properties"]["vector"].get("index_options") or {}).get("type", "hnsw"))
        log.info("%s: created %s (dims=%d, %s)", self.url, physical, spec.dims, sim)

    def _create_physical(self, physical: str, spec: IndexSpec) -> None:
        self._create_index(physical, spec, alias=False)

    def _create_named(self, spec: IndexSpec) -> str:
        self._create_index(self._new_physical_name(), spec, alias=True)
        phys = self._physicals()
        for loser in phys[1:]:  # a concurrent ensure_index created another one: the first name wins
            self._delete_index(loser)
        return phys[0]

    def _verify(self, physical: str, recorded: IndexSpec) -> None:
        phys = self._physicals()
        if len(phys) > 1:
            raise StoreRejectedError(f"{self.url}: alias {self.name!r} points at several indices {phys}; point it at one "
                             "(POST _aliases) before writing")  # fmt: skip

    def describe(self) -> IndexInfo:
        extra: dict[str, Any] = {"store": "elasticsearch", "server_version": self.server_version(), "max_dims": self.max_dims()}
        physical = self._current_physical()
        if physical is None:
            return IndexInfo(name=self.name, exists=False, extra=extra)
        m = self._mapping(physical)
        vec = (m.get("properties") or {}).get("vector") or {}
        extra.update(similarity=vec.get("similarity"), index_options=vec.get("index_options"), url=self.url)
        if vec.get("dims"):
            extra["bytes_per_vector"] = vector_bytes(vec.get("index_options"), int(vec["dims"]))
        meta = m.get("_meta") or {}
        # keyword search: the analyzer and boosted heading fields (absent: an index created before 0.2.0 has the standard analyzer)
        extra["lexical"] = meta.get("lexical") or {"analyzer": "standard", "headings": []}
        return IndexInfo(name=self.name, exists=True, physical_name=physical, spec=spec_from_dict(meta.get("embedrail")),
                         count=self.count(), extra=extra, owner=owner_from(meta.get(OWNER_KEY)),
                         search=search_from(meta.get(SEARCH_KEY)))  # fmt: skip

    def _set_meta(self, physical: str, key: str, value: Any) -> None:
        meta = {**(self._mapping(physical).get("_meta") or {}), META_KEYS[key]: value}  # _meta is replaced as a whole
        if value is None:
            meta.pop(META_KEYS[key])
        self._call(lambda: self.client.indices.put_mapping(index=physical, meta=meta), f"record {key}")

    # ------------------------------------------------------------------------------ writing
    def _dumps(self, obj: Any) -> bytes:
        if _orjson is not None:
            return _orjson.dumps(obj, option=_orjson.OPT_SERIALIZE_NUMPY)
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=_json_default).encode()

    def _write_target(self) -> ReadTarget:
        return self._read_target()  # writes go through the alias; the cached target only serves the dims check

    def _batch_size(self) -> int:
        return self.chunk_docs

    def _write(self, target: ReadTarget, items: list[tuple[Record, np.ndarray]], result: UpsertResult) -> None:
        """Stream the records into ``_bulk`` requests of at most ``chunk_docs`` docs / ``chunk_bytes`` bytes."""
        head = b'{"index":{"_index":' + self._dumps(self._address) + b',"_id":'
        batch: Batch = []
        size = 0
        for r, vec in items:
            try:
                md = dict(r.metadata or {})
                doc = self._dumps({"id": r.id, "text": r.text or "", "metadata": md, FILTER_FIELD: filterable(md), "vector": vec})
            except (TypeError, ValueError) as e:
                result.failed[r.id] = f"metadata is not JSON-serialisable: {e}"
                continue
            self._dirty = True
            line = head + self._dumps(r.id) + b"}}\n" + doc + b"\n"
            if batch and (len(batch) >= self.chunk_docs or size + len(line) > self.chunk_bytes):
                self._send(batch, self._bulk, result)
                batch, size = [], 0
            batch.append((r.id, line))
            size += len(line)
        if batch:
            self._send(batch, self._bulk, result)

    def _stored(self, target: ReadTarget, ids: list[str]) -> dict[str, tuple[np.ndarray, str, dict[str, Any]]]:
        """Vectors and texts by id. The mapping keeps vectors out of ``_source`` (they would double the
        index size), so they are read from the vector field's doc values (the stored float32 values,
        also under a quantised ``index_options``) by a search, after a refresh: a search sees only refreshed
        changes, and a record deleted by anyone since the last refresh must not come back."""
        self.flush()
        return self._vectors_as_written(target, ids)

    def _vectors_as_written(self, target: ReadTarget, ids: list[str]) -> dict[str, tuple[np.ndarray, str, dict[str, Any]]]:
        """What search sees, without a refresh first: a vector with its own record's ``_fp`` is right whenever it
        was written (a refresh per read would cost a run writing into the index small segments)."""
        resp = self._call(lambda: self.client.search(index=self._address, query={"ids": {"values": ids}}, size=len(ids),
                                                     source=_SOURCE, docvalue_fields=["vector"]), "read vectors")  # fmt: skip
        out: dict[str, tuple[np.ndarray, str, dict[str, Any]]] = {}
        for d in resp["hits"]["hits"]:
            vec = (d.get("fields") or {}).get("vector")
            if vec:
                h = hit(d, 1.0)
                out[h.id] = (np.asarray(vec[0], dtype=np.float32), h.text, h.metadata)
        return out

    def _splittable(self, e: StoreError) -> bool:
        """A request over the server's size limit (HTTP 413) is split; other whole-request refusals are not."""
        return _status(e.__cause__) == 413 if e.__cause__ is not None else False

    def _bulk(self, batch: Batch) -> dict[str, str]:
        """One ``_bulk`` request; items rejected with 429/5xx are re-sent with backoff, other item errors
        are returned by id. A request refused as a whole raises (the caller bisects a 413)."""
        failed: dict[str, str] = {}
        pending, delays, start = batch, self.retry.delays(), time.monotonic()
        while pending:
            body = b"".join(line for _, line in pending)
            try:
                resp = _body(self._call(lambda b=body: self.client.bulk(operations=b, refresh=False), "bulk write"))
            except StoreUnavailableError:
                raise
            except StoreError as e:
                if pending is batch:
                    raise
                failed.update((i, short_error(e, *self._secrets)) for i, _ in pending)  # a re-send was refused
                return failed
            retry_later = []
            for (doc_id, line), item in zip(pending, resp["items"], strict=False):
                ((op, res),) = item.items()
                status = int(res.get("status", 500))
                if status < 300 or (op == "delete" and status == 404):
                    failed.pop(doc_id, None)
                    continue
                failed[doc_id] = _item_error(res)
                if status in TRANSIENT_STATUS:
                    retry_later.append((doc_id, line))
            pending = retry_later
            if pending:
                delay = next(delays, None)
                if delay is None or time.monotonic() - start + delay > self.retry.deadline:
                    log.warning("%s: %d items still rejected after retries", self.url, len(pending))
                    break
                log.warning("%s: %d items rejected with 429/5xx; retrying in %.1fs", self.url, len(pending), delay)
                time.sleep(delay)
        return failed

    def _delete_batch(self, physical: str, ids: list[str]) -> dict[str, str]:
        self._dirty = True
        head = b'{"delete":{"_index":' + self._dumps(self._address) + b',"_id":'
        return self._bulk([(i, head + self._dumps(i) + b"}}\n") for i in ids])

    def flush(self) -> None:
        """Refresh once so that everything written so far is searchable."""
        if self._current_physical() is not None:
            self._call(lambda: self.client.indices.refresh(index=self._address), "refresh")
        self._dirty = False

    def _fresh(self) -> None:
        """Read-your-writes: refresh before a read if this store wrote since the last refresh."""
        if self._dirty:
            self.flush()

    # ------------------------------------------------------------------------------ reading
    def search(self, vector: np.ndarray | Sequence[float], k: int = 10, filter: Mapping[str, Any] | None = None) -> list[Hit]:
        conds = parse_filter(filter)
        target = self._read_target()
        self._fresh()
        vec = self._query_vector(vector, target.spec)
        k = max(1, int(k))
        nc = self.num_candidates or max(100, 10 * k)
        knn: dict[str, Any] = {"field": "vector", "query_vector": vec.tolist(), "k": k, "num_candidates": min(max(nc, k), 10000)}
        q = es_filter(conds)
        if q is not None:
            knn["filter"] = q
        quantised = self._types.get(target.physical, "hnsw").startswith(("int8", "int4", "bbq"))
        if self.rescore and quantised and parse_version(self.server_version()) >= (8, 18):
            knn["rescore_vector"] = {"oversample": self.rescore}
        for attempt in range(3):
            try:
                resp = self._call(lambda: self.client.search(index=self._address, knn=knn, size=k, source=_SOURCE), "search")
            except StoreUnavailableError:
                raise
            except Exception as e:
                if not self._store_failure(e):
                    raise  # a bug
                if attempt == 0 and self._read_cache is not None:  # maybe stale after a rebuild: re-resolve
                    self._invalidate()
                    target = self._read_target()
                    continue
                self._fail(e, "search")
            # a shard failure (e.g. the old index of a rebuild deleted mid-query) gives partial results
            # with HTTP 200: never return those silently
            if not (resp.get("_shards") or {}).get("failed"):
                break
            if attempt == 2:
                raise StoreError(f"{self.url}: search failed on some shards: {resp['_shards'].get('failures')}"[:800])
            target = self._require("search")
        sim = self._sims.get(target.physical, "dot_product")
        return [hit(h, score(sim, float(h["_score"]))) for h in resp["hits"]["hits"]]

    supports_hybrid = True

    def hybrid_search(self, query: str, vector: Any, k: int = 10, filter: Mapping[str, Any] | None = None, *,
                      alpha: float = DEFAULT_ALPHA, candidates: int | None = None, fusion: str = DEFAULT_FUSION) -> list[Hit]:  # fmt: skip
        """BM25 on ``text`` and kNN, each ``candidates`` deep with the same filter, fused client-side
        (``fusion``: relative score or weighted RRF; the server's ``rrf`` retriever needs a paid licence on
        8.x, client-side fusion ranks the same on every version and licence)."""
        return self._fused(query, vector, k, filter, alpha, candidates, fusion, self.text_search)

    def text_search(self, query: str, k: int = 10, filter: Mapping[str, Any] | None = None) -> list[Hit]:
        """BM25 search over the ``text`` field and, boosted, the title and headings (score is the BM25 score)."""
        conds = parse_filter(filter)
        self._require("text_search")
        self._fresh()
        f = es_filter(conds)
        body = {"bool": {"must": [keyword_query(query)], **({"filter": [f]} if f else {})}}
        resp = self._call(lambda: self.client.search(index=self._address, query=body, size=k, source=_SOURCE), "text search")
        return [hit(h, float(h["_score"] or 0.0)) for h in resp["hits"]["hits"]]

    def count(self) -> int:
        if self._current_physical() is None:
            return 0
        self._fresh()
        return int(self._call(lambda: self.client.count(index=self._address), "count")["count"])

    def iter_ids(self) -> Iterator[str]:
        if self._current_physical() is None:
            return
        self._fresh()
        after: list[Any] | None = None
        while True:
            kw: dict[str, Any] = {"index": self._address, "size": 5000, "sort": [{"id": "asc"}], "source": False,
                                  "track_total_hits": False}  # fmt: skip
            if after is not None:
                kw["search_after"] = after
            hits = self._call(lambda kw=kw: self.client.search(**kw), "list ids")["hits"]["hits"]
            yield from (h["_id"] for h in hits)
            if len(hits) < 5000:
                return
            after = hits[-1]["sort"]

    def get(self, ids: Sequence[str]) -> dict[str, Hit]:
        out: dict[str, Hit] = {}
        ids = list(dict.fromkeys(ids))
        if not ids or self._current_physical() is None:
            return out
        for batch in batched(ids, 1000):
            resp = self._call(lambda b=batch: self.client.mget(index=self._address, ids=list(b), source=_SOURCE), "get")
            out.update((d["_id"], hit(d, 1.0)) for d in resp["docs"] if d.get("found"))
        return out

    # ------------------------------------------------------------------------------ lifecycle
    def _delete_index(self, index: str) -> None:
        try:
            self._call(lambda: self.client.indices.delete(index=index), f"delete index {index}")
        except Exception as e:
            if not self._is_not_found(e):
                raise
        self._specs.pop(index, None)

    _drop_physical = _delete_index

    def drop(self) -> None:
        self._invalidate()
        for p in self._physicals():
            self._delete_index(p)

    def _switch(self, physical: str) -> list[str]:
        self._call(lambda: self.client.indices.refresh(index=physical), "refresh")
        old = [p for p in self._physicals() if p != physical]
        actions: list[dict[str, Any]] = [{"add": {"index": physical, "alias": self.name}}]
        for p in old:  # a plain index holding the name is removed by the same atomic call
            actions.append({"remove_index": {"index": p}} if p == self.name else {"remove": {"index": p, "alias": self.name}})
        try:
            self._call(lambda: self.client.indices.update_aliases(actions=actions), "swap alias")
        except Exception as e:
            if not self._is_not_found(e):
                raise
            self._fail(e, "swap alias")
        return [p for p in old if p != self.name]


def _item_error(res: Mapping[str, Any]) -> str:
    err = res.get("error")
    if isinstance(err, Mapping):
        reason = err.get("reason", "")
        cause = err.get("caused_by")
        if isinstance(cause, Mapping) and cause.get("reason"):
            reason = f"{reason}: {cause.get('reason')}"
        return f"{res.get('status')} {err.get('type', 'error')}: {reason}"[:500]
    return f"{res.get('status')} {err or 'rejected'}"


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
