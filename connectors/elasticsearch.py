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
- Writes: streaming ``_bulk`` sized by document count and bytes, retries with backoff on 429/5xx and
  connection errors (whole requests and individual 429-rejected items), per-item failures with ids,
  no refresh per batch: ``flush()`` refreshes once at the end of a write session.
- Search: kNN with ``num_candidates`` and filters; ``text`` is a ``text`` field (BM25) and
  ``text_search()`` queries it.
- The user-facing name is always an alias of a versioned physical index ``<name>__v<timestamp>``
  (from the first ``ensure_index``), so rebuilds are one atomic ``_aliases`` call.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from connectors._common import (
    Cond,
    RebuildMixin,
    RetryPolicy,
    check_record,
    check_spec,
    chunks,
    flag,
    log,
    parse_filter,
    parse_url,
    parse_version,
    retry_call,
    short_error,
    spec_from_dict,
    spec_to_dict,
)
from connectors.base import (
    ConfigError,
    DeleteResult,
    DimensionLimitError,
    Hit,
    IndexInfo,
    IndexMismatchError,
    IndexSpec,
    Record,
    StoreError,
    StoreUnavailableError,
    UpsertResult,
)

try:  # optional, faster and more compact (float32 shortest repr) serialisation of vectors
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None

INDEX_OPTION_TYPES = ("hnsw", "int8_hnsw", "int4_hnsw", "bbq_hnsw", "flat", "int8_flat", "int4_flat", "bbq_flat")
_MIN_VERSION = {
    "int8_hnsw": (8, 12),
    "flat": (8, 13),
    "int8_flat": (8, 13),
    "int4_hnsw": (8, 15),
    "int4_flat": (8, 15),
    "bbq_hnsw": (8, 16),
    "bbq_flat": (8, 16),
}
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_TRANSIENT_STATUS = {429, 500, 502, 503, 504}
FILTER_FIELD = "m"  # filterable copies of metadata values


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


def _es() -> Any:
    try:
        import elasticsearch
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise ConfigError(
            "the Elasticsearch connector needs the elasticsearch client: pip install 'embedrail[elasticsearch]'"
        ) from e
    return elasticsearch


def _status(e: BaseException) -> int | None:
    st = getattr(e, "status_code", None)
    if st is None:
        meta = getattr(e, "meta", None)
        st = getattr(meta, "status", None)
    return st if isinstance(st, int) else None


def _is_transient(e: BaseException) -> bool:
    try:
        import elastic_transport as et

        if isinstance(e, et.TlsError):
            return False
        if isinstance(e, et.ConnectionError | et.ConnectionTimeout):
            return True
    except ImportError:  # pragma: no cover
        pass
    if isinstance(e, ConnectionError | TimeoutError):
        return True
    st = _status(e)
    return st in _TRANSIENT_STATUS


def _is_not_found(e: BaseException) -> bool:
    return _status(e) == 404


class ElasticsearchStore(RebuildMixin):
    """An Elasticsearch index (behind an alias) implementing the ``VectorStore`` protocol.

    ``ElasticsearchStore(es_client, index="docs")`` or ``ElasticsearchStore("es://host:9200/docs")``.
    """

    def __init__(
        self,
        client_or_url: Any,
        index: str | None = None,
        *,
        index_options: str | Mapping[str, Any] | None = None,
        similarity: str | None = None,
        num_candidates: int | None = None,
        chunk_docs: int = 500,
        chunk_bytes: int = 10 * 1024 * 1024,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        settings: Mapping[str, Any] | None = None,
        drop_grace: float = 0.5,
        read_cache_ttl: float = 2.0,
        _physical: str | None = None,
    ) -> None:
        self._secrets: list[str | None] = []
        if isinstance(client_or_url, str):
            u = parse_url(client_or_url)
            if u.store != "es":
                raise ConfigError(f"ElasticsearchStore needs an es:// URL, got {u.safe}")
            index = index or u.name
            self.url = u.safe
            self._secrets += [u.password, u.param("api_key")]
            index_options = index_options or u.param("index_options")
            similarity = similarity or u.param("similarity")
            if u.param("num_candidates"):
                num_candidates = num_candidates or int(u.param("num_candidates") or 0)
            if u.param("timeout"):
                timeout = float(u.param("timeout") or timeout)
            self._client = None
            self._u = u
        else:
            self._client = client_or_url
            self._u = None
            self.url = _describe_client(client_or_url, index)
        if not index:
            raise ConfigError(f"{self.url}: no index name; use es://host:9200/INDEX or index=...")
        if not _NAME_RE.match(index) or len(index.encode()) > 200:
            raise ConfigError(
                f"invalid Elasticsearch index name {index!r}: lowercase letters, digits, '.', '_', '-', "
                "starting with a letter or digit, at most 200 bytes"
            )
        self.name = index
        if self._u is not None and self._u.name != index:
            self.url = self.url.split("?")[0].rstrip("/") + "/" + index
        if similarity not in (None, "cosine", "dot_product", "l2_norm", "max_inner_product"):
            raise ConfigError(f"unknown similarity {similarity!r}; use cosine, dot_product, l2_norm or max_inner_product")
        if isinstance(index_options, str) and index_options not in INDEX_OPTION_TYPES:
            raise ConfigError(f"unknown index_options {index_options!r}; use one of {INDEX_OPTION_TYPES} or a dict")
        self.index_options = index_options
        self.similarity = similarity
        self.num_candidates = num_candidates
        self.chunk_docs = max(1, chunk_docs)
        self.chunk_bytes = max(1024, chunk_bytes)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.settings = dict(settings or {})
        self.drop_grace = drop_grace
        self.read_cache_ttl = read_cache_ttl
        self._read_cache: tuple[float, tuple[str, IndexSpec | None]] | None = None
        self._physical_fixed = _physical
        self._dirty = False  # written since the last refresh: reads refresh first (read-your-writes)
        self._version: str | None = None
        self._specs: dict[str, IndexSpec | None] = {}
        self._sims: dict[str, str] = {}

    # ------------------------------------------------------------------------------ plumbing
    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        es = _es()
        u = self._u
        assert u is not None
        host = f"[{u.host}]" if ":" in u.host else (u.host or "localhost")
        node = f"{u.transport}://{host}:{u.port or 9200}"
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
            return es.Elasticsearch(node, **kw)
        except Exception as e:  # noqa: BLE001 - e.g. a missing CA file
            raise ConfigError(f"{self.url}: cannot create the Elasticsearch client: {short_error(e, *self._secrets)}") from None

    def _call(self, fn: Any, what: str) -> Any:
        return retry_call(
            fn,
            is_transient=_is_transient,
            policy=self.retry,
            what=what,
            url=self.url,
            secrets=self._secrets,
            passthrough=_is_not_found,
        )

    def _err(self, e: BaseException, what: str) -> StoreError:
        return StoreError(f"{self.url}: {what} failed: {short_error(e, *self._secrets)}")

    def server_version(self) -> str:
        if self._version is None:
            try:
                info = self._call(lambda: self.client.info(), "read server version")
                self._version = str(info["version"]["number"])
            except StoreUnavailableError:
                raise
            except Exception:  # noqa: BLE001 - GET / is absent on minimal distributions (integ-test-zip)
                nodes = self._call(
                    lambda: self.client.nodes.info(node_id="_local", filter_path="nodes.*.version"),
                    "read server version",
                )
                versions = [str(n["version"]) for n in nodes["nodes"].values()]
                self._version = min(versions, key=parse_version)
        return self._version

    def max_dims(self) -> int | None:
        return dims_limit(self.server_version())

    def _read_name(self) -> str:
        return self._physical_fixed or self.name

    def _physicals(self) -> list[str]:
        """The concrete indices behind the name (alias targets, or the name itself if it is an index)."""
        if self._physical_fixed:
            return [self._physical_fixed] if self._index_exists(self._physical_fixed) else []
        try:
            got = self._call(lambda: self.client.indices.get_alias(name=self.name), "resolve alias")
            return sorted(got.body.keys() if hasattr(got, "body") else got.keys())
        except StoreUnavailableError:
            raise
        except Exception as e:  # noqa: BLE001
            if not _is_not_found(e):
                raise self._err(e, "resolve alias") from None
        return [self.name] if self._index_exists(self.name) else []

    def _index_exists(self, index: str) -> bool:
        return bool(self._call(lambda: self.client.indices.exists(index=index), "check index"))

    def _mapping(self, physical: str) -> dict[str, Any]:
        got = self._call(lambda: self.client.indices.get_mapping(index=physical), "read mapping")
        body = got.body if hasattr(got, "body") else got
        return dict(body[physical]["mappings"])

    def _spec_of(self, physical: str) -> IndexSpec | None:
        if physical not in self._specs:
            m = self._mapping(physical)
            self._specs[physical] = spec_from_dict((m.get("_meta") or {}).get("embedrail"))
            vec = (m.get("properties") or {}).get("vector") or {}
            self._sims[physical] = str(vec.get("similarity", "cosine"))
        return self._specs[physical]

    # ------------------------------------------------------------------------------ creation
    def _resolve_index_options(self, spec: IndexSpec) -> dict[str, Any]:
        version = self.server_version()
        opt = self.index_options or default_index_options(version)
        opts = dict(opt) if isinstance(opt, Mapping) else {"type": opt}
        typ = str(opts.get("type", ""))
        need = _MIN_VERSION.get(typ)
        if need and parse_version(version) < need:
            raise ConfigError(
                f"{self.url}: index_options {typ!r} needs Elasticsearch >= {'.'.join(map(str, need))}, "
                f"the server is {version}; use 'hnsw'"
            )
        if typ.startswith("bbq") and spec.dims < 64:
            raise ConfigError(f"index_options {typ!r} needs at least 64 dims, got {spec.dims}")
        if typ.startswith("int4") and spec.dims % 2:
            raise ConfigError(f"index_options {typ!r} needs an even number of dims, got {spec.dims}")
        if typ.endswith("hnsw"):
            opts.setdefault("m", 16)
            opts.setdefault("ef_construction", 100)
        return opts

    def _similarity(self, spec: IndexSpec) -> str:
        if spec.metric == "l2":
            return "l2_norm"
        if self.similarity:
            return self.similarity
        return "dot_product"

    def _create_physical(self, physical: str, spec: IndexSpec, alias: bool) -> None:
        limit = self.max_dims()
        if limit is not None and spec.dims > limit:
            raise DimensionLimitError(
                f"{self.url}: Elasticsearch {self.server_version()} indexes dense_vector fields of at most "
                f"{limit} dims, {spec.dims} were requested (limits: 1024 before 8.8, 2048 up to 8.10, "
                "4096 from 8.11). Use a smaller dimension (MRL truncation) or upgrade the server."
            )
        sim = self._similarity(spec)
        index_options = self._resolve_index_options(spec)
        mappings = {
            "_meta": {
                "embedrail": spec_to_dict(spec),
                "logical_name": self.name,
                "created": datetime.now(UTC).isoformat(),
            },
            "_source": {"excludes": ["vector", FILTER_FIELD]},
            "dynamic": "strict",
            "date_detection": False,
            "numeric_detection": False,
            "dynamic_templates": [
                {"filter_strings": {"path_match": f"{FILTER_FIELD}.*", "match_mapping_type": "string", "mapping": {"type": "keyword", "ignore_above": 2048}}},
                {"filter_longs": {"path_match": f"{FILTER_FIELD}.*", "match_mapping_type": "long", "mapping": {"type": "double"}}},
                {"filter_doubles": {"path_match": f"{FILTER_FIELD}.*", "match_mapping_type": "double", "mapping": {"type": "double"}}},
            ],
            "properties": {
                "id": {"type": "keyword"},
                "text": {"type": "text"},
                "vector": {
                    "type": "dense_vector",
                    "dims": spec.dims,
                    "index": True,
                    "similarity": sim,
                    "index_options": index_options,
                },
                # the metadata exactly as given (any JSON), kept in _source, not indexed
                "metadata": {"type": "object", "enabled": False},
                # filterable copies of top-level scalar / scalar-list values; indexed, not stored
                FILTER_FIELD: {"type": "object", "dynamic": True},
            },
        }
        settings = {"number_of_shards": 1, **self.settings}
        kw: dict[str, Any] = {"index": physical, "mappings": mappings, "settings": settings}
        if alias:
            kw["aliases"] = {self.name: {}}
        try:
            self._call(lambda: self.client.indices.create(**kw), "create index")
        except StoreUnavailableError:
            raise
        except Exception as e:  # noqa: BLE001
            raise self._err(e, f"create index {physical}") from None
        self._specs[physical] = spec
        self._sims[physical] = sim
        log.info("%s: created %s (dims=%d, %s, %s)", self.url, physical, spec.dims, sim, index_options)

    def ensure_index(self, spec: IndexSpec) -> IndexInfo:
        self._read_cache = None
        phys = self._physicals()
        if not phys:
            if self._physical_fixed:
                self._create_physical(self._physical_fixed, spec, alias=False)
                return self.describe()
            physical = self._new_physical_name()
            self._create_physical(physical, spec, alias=True)
            phys = self._physicals()
            if len(phys) > 1:  # a concurrent ensure_index created another one: the first name wins
                winner = phys[0]
                for p in phys[1:]:
                    self._delete_index(p)
                phys = [winner]
        if len(phys) > 1:
            raise StoreError(
                f"{self.url}: alias {self.name!r} points at several indices {phys}; point it at one "
                "(POST _aliases) before writing"
            )
        recorded = self._spec_of(phys[0])
        if recorded is None:
            raise IndexMismatchError(
                f"{self.url}: index {phys[0]!r} was not created by embedrail (no _meta.embedrail in its "
                "mapping); nothing was written. Use another index name or rebuild into a new index."
            )
        check_spec(phys[0], recorded, spec, self.url)
        return self.describe()

    def describe(self) -> IndexInfo:
        phys = self._physicals()
        if not phys:
            return IndexInfo(name=self.name, exists=False, extra={"store": "elasticsearch", "server_version": self.server_version(), "max_dims": self.max_dims()})
        m = self._mapping(phys[0])
        vec = (m.get("properties") or {}).get("vector") or {}
        spec = spec_from_dict((m.get("_meta") or {}).get("embedrail"))
        return IndexInfo(
            name=self.name,
            exists=True,
            physical_name=phys[0],
            spec=spec,
            count=self.count(),
            extra={
                "store": "elasticsearch",
                "server_version": self.server_version(),
                "max_dims": self.max_dims(),
                "similarity": vec.get("similarity"),
                "index_options": vec.get("index_options"),
                "url": self.url,
            },
        )

    def _read_target(self) -> tuple[str, IndexSpec | None]:
        """(physical index, spec) for searches, cached for ``read_cache_ttl`` s. Searches go through the
        alias (resolved atomically by the server); the cache only serves the dims check and scoring."""
        now = time.monotonic()
        if self._read_cache is not None and now < self._read_cache[0]:
            return self._read_cache[1]
        t = self._require("search")
        if self.read_cache_ttl > 0:
            self._read_cache = (now + self.read_cache_ttl, t)
        return t

    def _require(self, what: str) -> tuple[str, IndexSpec | None]:
        phys = self._physicals()
        if not phys:
            raise StoreError(f"{self.url}: index {self.name!r} does not exist; call ensure_index(spec) first ({what})")
        return phys[0], self._spec_of(phys[0])

    # ------------------------------------------------------------------------------ writing
    def _dumps(self, obj: Any) -> bytes:
        if _orjson is not None:
            return _orjson.dumps(obj, option=_orjson.OPT_SERIALIZE_NUMPY)
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=_json_default).encode()

    def upsert(self, records: Iterable[Record]) -> UpsertResult:
        """Stream records into ``_bulk`` requests of at most ``chunk_docs`` docs / ``chunk_bytes`` bytes."""
        physical, spec = self._read_target()  # writes go through the alias; this only serves the dims check
        dims = spec.dims if spec else None
        target = self._physical_fixed or self.name
        result = UpsertResult()
        batch: list[tuple[str, bytes]] = []
        size = 0
        head = b'{"index":{"_index":' + self._dumps(target) + b',"_id":'
        for r in records:
            vec, err = check_record(r, dims)
            if err:
                result.failed[str(r.id)] = err
                continue
            try:
                md = dict(r.metadata or {})
                doc = self._dumps(
                    {"id": r.id, "text": r.text or "", "metadata": md, FILTER_FIELD: _filterable(md), "vector": vec}
                )
            except (TypeError, ValueError) as e:
                result.failed[r.id] = f"metadata is not JSON-serialisable: {e}"
                continue
            self._dirty = True
            line = head + self._dumps(r.id) + b"}}\n" + doc + b"\n"
            if batch and (len(batch) >= self.chunk_docs or size + len(line) > self.chunk_bytes):
                self._send(batch, result, "upsert")
                batch, size = [], 0
            batch.append((r.id, line))
            size += len(line)
        if batch:
            self._send(batch, result, "upsert")
        return result

    def _send(self, batch: list[tuple[str, bytes]], result: UpsertResult | DeleteResult, what: str) -> None:
        """One bulk request with retries; per-item 429s are re-sent, other item errors reported by id."""
        pending = batch
        delays = self.retry.delays()
        start = time.monotonic()
        while pending:
            body = b"".join(line for _, line in pending)
            try:
                resp = self._call(lambda b=body: self.client.bulk(operations=b, refresh=False), what)
            except StoreUnavailableError:
                raise
            except Exception as e:  # noqa: BLE001 - the whole request was refused (413 too large, 400, 404...)
                msg = short_error(e, *self._secrets)
                if len(pending) > 1 and ("413" in msg or "too large" in msg.lower() or "too_long" in msg):
                    mid = len(pending) // 2
                    self._send(pending[:mid], result, what)
                    self._send(pending[mid:], result, what)
                else:
                    for doc_id, _ in pending:
                        result.failed[doc_id] = msg
                return
            items = (resp.body if hasattr(resp, "body") else resp)["items"]
            retry_later: list[tuple[str, bytes]] = []
            for (doc_id, line), item in zip(pending, items, strict=False):
                (op, res), = item.items()
                status = int(res.get("status", 500))
                if status < 300 or (op == "delete" and status == 404):
                    if isinstance(result, UpsertResult):
                        result.written += 1
                    else:
                        result.deleted += 1
                    result.failed.pop(doc_id, None)
                elif status in _TRANSIENT_STATUS:
                    retry_later.append((doc_id, line))
                    result.failed[doc_id] = _item_error(res)
                else:
                    result.failed[doc_id] = _item_error(res)
            pending = retry_later
            if pending:
                delay = next(delays, None)
                if delay is None or time.monotonic() - start + delay > self.retry.deadline:
                    log.warning("%s: %d items still rejected after retries", self.url, len(pending))
                    return  # reported in result.failed
                log.warning("%s: %d items rejected with 429/5xx; retrying in %.1fs", self.url, len(pending), delay)
                time.sleep(delay)

    def delete(self, ids: Iterable[str]) -> DeleteResult:
        res = DeleteResult()
        ids = list(dict.fromkeys(str(i) for i in ids))
        if not ids:
            return res
        if not self._physicals():
            res.deleted = len(ids)
            return res
        target = self._dumps(self._physical_fixed or self.name)
        self._dirty = True
        for batch in chunks(ids, self.chunk_docs):
            lines = [(i, b'{"delete":{"_index":' + target + b',"_id":' + self._dumps(i) + b"}}\n") for i in batch]
            self._send(lines, res, "delete")
        return res

    def flush(self) -> None:
        """Refresh once so that everything written so far is searchable."""
        if self._physicals():
            self._call(lambda: self.client.indices.refresh(index=self._read_name()), "refresh")
        self._dirty = False

    def _fresh(self) -> None:
        if self._dirty:
            self.flush()

    # ------------------------------------------------------------------------------ reading
    def search(
        self, vector: np.ndarray | Sequence[float], k: int = 10, filter: Mapping[str, Any] | None = None
    ) -> list[Hit]:
        conds = parse_filter(filter)
        physical, spec = self._read_target()
        self._fresh()
        vec = np.asarray(vector, dtype=np.float32).reshape(-1)
        if spec is not None and vec.shape[0] != spec.dims:
            raise IndexMismatchError(
                f"{self.url}: query vector has {vec.shape[0]} dims but the index holds {spec.dims}-d vectors; "
                "embed the query with the model the index was built with (see describe())"
            )
        k = max(1, int(k))
        nc = self.num_candidates or max(100, 10 * k)
        knn: dict[str, Any] = {
            "field": "vector",
            "query_vector": vec.tolist(),
            "k": k,
            "num_candidates": min(max(nc, k), 10000),
        }
        q = _es_filter(conds)
        if q is not None:
            knn["filter"] = q
        for attempt in range(3):
            try:
                resp = self._call(
                    lambda: self.client.search(
                        index=self._read_name(), knn=knn, size=k, source=["id", "text", "metadata"]
                    ),
                    "search",
                )
            except StoreUnavailableError:
                raise
            except Exception as e:  # noqa: BLE001
                if attempt == 0 and self._read_cache is not None:  # maybe stale after a rebuild: re-resolve
                    self._read_cache = None
                    physical, _ = self._read_target()
                    continue
                raise self._err(e, "search") from None
            # a shard failure (e.g. the old index of a rebuild deleted mid-query) gives partial results
            # with HTTP 200: never return those silently
            if not (resp.get("_shards") or {}).get("failed"):
                break
            if attempt == 2:
                raise StoreError(f"{self.url}: search failed on some shards: {resp['_shards'].get('failures')}"[:800])
            physical, _ = self._require("search")
        sim = self._sims.get(physical, "dot_product")
        return [_hit(h, _score(sim, float(h["_score"]))) for h in resp["hits"]["hits"]]

    def text_search(self, query: str, k: int = 10, filter: Mapping[str, Any] | None = None) -> list[Hit]:
        """BM25 search over the ``text`` field (score is the BM25 score)."""
        conds = parse_filter(filter)
        self._require("text_search")
        self._fresh()
        must: dict[str, Any] = {"match": {"text": query}}
        f = _es_filter(conds)
        body = {"bool": {"must": [must], **({"filter": [f]} if f else {})}}
        resp = self._call(
            lambda: self.client.search(index=self._read_name(), query=body, size=k, source=["id", "text", "metadata"]),
            "text search",
        )
        return [_hit(h, float(h["_score"] or 0.0)) for h in resp["hits"]["hits"]]

    def count(self) -> int:
        if not self._physicals():
            return 0
        self._fresh()
        return int(self._call(lambda: self.client.count(index=self._read_name()), "count")["count"])

    def iter_ids(self) -> Iterator[str]:
        if not self._physicals():
            return
        self._fresh()
        after: list[Any] | None = None
        while True:
            kw: dict[str, Any] = {
                "index": self._read_name(),
                "size": 5000,
                "sort": [{"id": "asc"}],
                "source": False,
                "track_total_hits": False,
            }
            if after is not None:
                kw["search_after"] = after
            resp = self._call(lambda kw=kw: self.client.search(**kw), "list ids")
            hits = resp["hits"]["hits"]
            for h in hits:
                yield h["_id"]
            if len(hits) < 5000:
                return
            after = hits[-1]["sort"]

    def get(self, ids: Sequence[str]) -> dict[str, Hit]:
        out: dict[str, Hit] = {}
        ids = list(dict.fromkeys(ids))
        if not ids or not self._physicals():
            return out
        for batch in chunks(ids, 1000):
            resp = self._call(
                lambda b=batch: self.client.mget(index=self._read_name(), ids=list(b), source=["id", "text", "metadata"]),
                "get",
            )
            for d in resp["docs"]:
                if d.get("found"):
                    out[d["_id"]] = _hit(d, 1.0)
        return out

    # ------------------------------------------------------------------------------ lifecycle
    def _delete_index(self, index: str) -> None:
        try:
            self._call(lambda: self.client.indices.delete(index=index), "delete index")
        except StoreUnavailableError:
            raise
        except Exception as e:  # noqa: BLE001
            if not _is_not_found(e):
                raise self._err(e, f"delete index {index}") from None
        self._specs.pop(index, None)

    def drop(self) -> None:
        self._read_cache = None
        for p in self._physicals():
            self._delete_index(p)

    def begin_rebuild(self, spec: IndexSpec) -> ElasticsearchStore:
        """Create a new versioned physical index (no alias yet) and return a store writing to it."""
        physical = self._new_physical_name()
        new = self._sibling(physical)
        new._create_physical(physical, spec, alias=False)
        return new

    def _sibling(self, physical: str) -> ElasticsearchStore:
        new = ElasticsearchStore(
            self.client,
            self.name,
            index_options=self.index_options,
            similarity=self.similarity,
            num_candidates=self.num_candidates,
            chunk_docs=self.chunk_docs,
            chunk_bytes=self.chunk_bytes,
            timeout=self.timeout,
            retry=self.retry,
            settings=self.settings,
            drop_grace=self.drop_grace,
            read_cache_ttl=self.read_cache_ttl,
            _physical=physical,
        )
        new.url, new._secrets, new._version = self.url, self._secrets, self._version
        return new

    def commit_rebuild(self, new: Any) -> None:
        target = self._rebuild_target(new)
        self._call(lambda: self.client.indices.refresh(index=target), "refresh")
        old = [p for p in self._physicals() if p != target]
        actions: list[dict[str, Any]] = [{"add": {"index": target, "alias": self.name}}]
        for p in old:
            if p == self.name:  # a plain index with the name: replace it by the alias atomically
                actions.append({"remove_index": {"index": p}})
            else:
                actions.append({"remove": {"index": p, "alias": self.name}})
        try:
            self._call(lambda: self.client.indices.update_aliases(actions=actions), "swap alias")
        except StoreUnavailableError:
            raise
        except Exception as e:  # noqa: BLE001
            raise self._err(e, "swap alias") from None
        log.info("%s: alias %s -> %s", self.url, self.name, target)
        if old and self.drop_grace > 0:
            time.sleep(self.drop_grace)  # let searches that resolved the alias before the swap finish
        for p in old:
            if p != self.name:
                self._delete_index(p)

    def abort_rebuild(self, new: Any) -> None:
        target = getattr(new, "_physical_fixed", None)
        if target and target not in self._physicals():
            self._delete_index(target)

    def close(self) -> None:
        if self._u is not None and self._client is not None:
            self._client.close()
            self._client = None


def _item_error(res: Mapping[str, Any]) -> str:
    err = res.get("error")
    if isinstance(err, Mapping):
        reason = err.get("reason", "")
        cause = err.get("caused_by")
        if isinstance(cause, Mapping) and cause.get("reason"):
            reason = f"{reason}: {cause.get('reason')}"
        return f"{res.get('status')} {err.get('type', 'error')}: {reason}"[:500]
    return f"{res.get('status')} {err or 'rejected'}"


def _filterable(md: Mapping[str, Any]) -> dict[str, Any]:
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


def _hit(h: Mapping[str, Any], score: float) -> Hit:
    src = h.get("_source") or {}
    return Hit(id=str(h["_id"]), score=score, text=src.get("text") or "", metadata=dict(src.get("metadata") or {}))


def _score(similarity: str, s: float) -> float:
    if similarity in ("dot_product", "cosine"):
        return 2.0 * s - 1.0  # ES reports (1 + cos) / 2
    if similarity == "max_inner_product":
        return s - 1.0 if s >= 1.0 else 1.0 - 1.0 / s
    if similarity == "l2_norm":
        return -float(np.sqrt(max(1.0 / s - 1.0, 0.0))) if s > 0 else float("-inf")
    return s


def _es_filter(conds: list[Cond]) -> dict[str, Any] | None:
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


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _describe_client(client: Any, index: str | None) -> str:
    """A credential-free description of an existing client's first node, for messages."""
    try:
        node = client.transport.node_pool.all()[0].config
        scheme = "es+https" if node.scheme == "https" else "es"
        return f"{scheme}://{node.host}:{node.port}/{index or ''}"
    except Exception:  # noqa: BLE001
        return f"es+client://{index or ''}"


__all__ = ["ElasticsearchStore", "default_index_options", "dims_limit"]
