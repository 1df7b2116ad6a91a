"""Failure behaviour against the real servers, with faults injected by small local proxies.

- a TCP proxy in front of the real Elasticsearch that cuts live connections and drops new ones;
- an HTTP proxy in front of the real Elasticsearch that answers 429 to whole bulk requests, or
  forwards only part of a bulk request and reports the rest as 429-rejected items;
- a closed port: StoreUnavailableError after bounded retries, with the URL but no credentials.
Plus real per-item rejections by the server itself and the ES dims limit of the running server.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from test_connectors_dataset import dataset
from util import with_name

from embedrail.connectors import (
    ChromaStore,
    DimensionLimitError,
    ElasticsearchStore,
    IndexSpec,
    Record,
    RetryPolicy,
    StoreUnavailableError,
    UpsertResult,
    WeaviateStore,
    connect,
)
from embedrail.connectors._urls import parse_url

SPEC = IndexSpec(dims=384, metric="cosine", fingerprint="faults")
FAST = RetryPolicy(attempts=6, initial=0.05, maximum=0.5, deadline=20)


@pytest.fixture(scope="module")
def vecs() -> np.ndarray:
    return dataset(2060)[1]


def _recs(vecs: np.ndarray, n: int, prefix: str = "r") -> list[Record]:
    return [Record(id=f"{prefix}{i}", vector=vecs[i], text=f"text {i}", metadata={"i": i}) for i in range(n)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _name() -> str:
    return f"t_fault_{uuid.uuid4().hex[:10]}"


# ------------------------------------------------------------------------------------ proxies
class DropProxy:
    """TCP proxy: pipes to upstream; can cut all live connections and drop the next n new ones."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.drop_next = 0
        self.dropped = 0
        self.live: list[socket.socket] = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                drop = self.drop_next > 0
                if drop:
                    self.drop_next -= 1
                    self.dropped += 1
            if drop:
                try:
                    c.recv(1024)  # the request starts to arrive, then the connection dies
                finally:
                    c.close()
                continue
            u = socket.create_connection(self.upstream)
            with self.lock:
                self.live += [c, u]
            threading.Thread(target=self._pipe, args=(c, u), daemon=True).start()
            threading.Thread(target=self._pipe, args=(u, c), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut_all(self) -> None:
        with self.lock:
            for s in self.live:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # the pipe thread already shut it down
                s.close()
            self.live.clear()

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        self.cut_all()


class FaultHTTPProxy:
    """HTTP proxy to a real Elasticsearch that injects 429s into ``_bulk`` requests."""

    def __init__(self, host: str, port: int) -> None:
        self.whole_429 = 0  # answer the next n bulk requests with a 429
        self.partial_429 = 0  # forward only the first half of the next n bulk requests, 429 the rest
        self.bulk_bodies: list[bytes] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                rejected: list[dict[str, Any]] = []
                if "/_bulk" in self.path:
                    proxy.bulk_bodies.append(body)
                    if proxy.whole_429 > 0:
                        proxy.whole_429 -= 1
                        err = {"error": {"type": "es_rejected_execution_exception", "reason": "queue full"}, "status": 429}
                        return self._send(429, json.dumps(err).encode())
                    if proxy.partial_429 > 0:
                        proxy.partial_429 -= 1
                        lines = body.splitlines(keepends=True)
                        pairs = [lines[i : i + 2] for i in range(0, len(lines), 2)]
                        keep = pairs[: len(pairs) // 2]
                        for p in pairs[len(pairs) // 2 :]:
                            meta = json.loads(p[0])
                            (op, m), = meta.items()
                            rejected.append({op: {"_index": m.get("_index"), "_id": m["_id"], "status": 429,
                                                  "error": {"type": "es_rejected_execution_exception", "reason": "rejected"}}})
                        body = b"".join(line for p in keep for line in p)
                conn = http.client.HTTPConnection(host, port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
                conn.request(self.command, self.path, body=body if body else None, headers=headers)
                r = conn.getresponse()
                data = r.read()
                if rejected:
                    j = json.loads(data)
                    j["items"] += rejected
                    j["errors"] = True
                    data = json.dumps(j).encode()
                self._send(r.status, data, r.getheader("Content-Type") or "application/json")
                conn.close()

            def _send(self, status: int, data: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("X-Elastic-Product", "Elasticsearch")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def es_direct(es_url: str) -> Iterator[ElasticsearchStore]:
    s = connect(with_name(es_url, _name()))
    assert isinstance(s, ElasticsearchStore)
    yield s
    s.drop()
    s.close()


# ------------------------------------------------------------------------------------- tests
def test_es_dropped_connections_are_retried(es_url: str, es_direct: ElasticsearchStore, vecs: np.ndarray) -> None:
    u = parse_url(es_url)
    proxy = DropProxy(u.host, u.port or 9200)
    try:
        s = ElasticsearchStore(f"es://127.0.0.1:{proxy.port}/{es_direct.name}", retry=FAST, chunk_docs=100)
        s.ensure_index(SPEC)
        assert s.upsert(_recs(vecs, 100)).ok
        proxy.cut_all()  # the pooled keep-alive connections die
        proxy.drop_next = 3  # and the next three new connections are dropped mid-request
        res = s.upsert(_recs(vecs, 400))
        assert res.ok and res.written == 400
        assert proxy.dropped == 3
        s.flush()
        assert es_direct.count() == 400
        s.close()
    finally:
        proxy.close()


def test_es_whole_bulk_429_is_retried(es_url: str, es_direct: ElasticsearchStore, vecs: np.ndarray) -> None:
    u = parse_url(es_url)
    proxy = FaultHTTPProxy(u.host, u.port or 9200)
    try:
        s = ElasticsearchStore(f"es://127.0.0.1:{proxy.port}/{es_direct.name}", retry=FAST, chunk_docs=200)
        s.ensure_index(SPEC)
        proxy.whole_429 = 2
        res = s.upsert(_recs(vecs, 500))
        assert res.ok and res.written == 500
        assert len(proxy.bulk_bodies) == 3 + 2  # three chunks, two of them refused once
        s.flush()
        assert es_direct.count() == 500
        s.close()
    finally:
        proxy.close()


def test_es_item_level_429_resends_only_rejected_items(es_url: str, es_direct: ElasticsearchStore, vecs: np.ndarray) -> None:
    u = parse_url(es_url)
    proxy = FaultHTTPProxy(u.host, u.port or 9200)
    try:
        s = ElasticsearchStore(f"es://127.0.0.1:{proxy.port}/{es_direct.name}", retry=FAST, chunk_docs=100)
        s.ensure_index(SPEC)
        proxy.partial_429 = 1
        res = s.upsert(_recs(vecs, 100))
        assert res.ok and res.written == 100, res.failed
        assert len(proxy.bulk_bodies) == 2
        resent = [json.loads(line)["index"]["_id"] for line in proxy.bulk_bodies[1].splitlines()[::2]]
        assert resent == [f"r{i}" for i in range(50, 100)]
        s.flush()
        assert set(es_direct.iter_ids()) == {f"r{i}" for i in range(100)}
        s.close()
    finally:
        proxy.close()


def test_es_persistent_429_reports_items_not_silence(es_url: str, es_direct: ElasticsearchStore, vecs: np.ndarray) -> None:
    u = parse_url(es_url)
    proxy = FaultHTTPProxy(u.host, u.port or 9200)
    try:
        s = ElasticsearchStore(
            f"es://127.0.0.1:{proxy.port}/{es_direct.name}",
            retry=RetryPolicy(attempts=3, initial=0.05, deadline=5),
            chunk_docs=100,
        )
        s.ensure_index(SPEC)
        proxy.partial_429 = 10
        res = s.upsert(_recs(vecs, 40))
        assert not res.ok and 0 < res.written < 40
        assert all("429" in why for why in res.failed.values())
        assert res.written + len(res.failed) == 40
        s.close()
    finally:
        proxy.close()


def test_es_server_side_item_rejection_is_reported_by_id(es_direct: ElasticsearchStore, vecs: np.ndarray) -> None:
    es_direct.ensure_index(SPEC)
    recs = _recs(vecs, 20)
    recs[3] = Record(id="not-unit", vector=vecs[3] * 3.0)  # dot_product needs unit vectors: ES rejects it
    recs[7] = Record(id="type-clash", vector=vecs[7], metadata={"i": "seven"})  # m.i is a number field
    res = es_direct.upsert(recs)
    assert set(res.failed) == {"not-unit", "type-clash"} and res.written == 18
    assert "unit" in res.failed["not-unit"].lower()
    es_direct.flush()
    assert es_direct.count() == 18 and not es_direct.get(["not-unit", "type-clash"])


def test_es_dims_above_the_server_limit(es_direct: ElasticsearchStore) -> None:
    limit = es_direct.max_dims()
    version = es_direct.server_version()
    assert limit == 4096 and version.startswith(("8.", "9."))
    with pytest.raises(DimensionLimitError) as ei:
        es_direct.ensure_index(IndexSpec(dims=limit + 1, metric="cosine"))
    assert version in str(ei.value) and str(limit) in str(ei.value)
    assert not es_direct.describe().exists


def test_es_index_options_are_explicit_and_configurable(es_url: str) -> None:
    for opt in ("hnsw", "flat", "bbq_hnsw"):
        s = connect(with_name(es_url, _name()), index_options=opt)
        try:
            info = s.ensure_index(SPEC)
            assert info.extra["index_options"]["type"] == opt
        finally:
            s.drop()
            s.close()
    s = connect(with_name(es_url, _name()))
    try:
        assert s.ensure_index(SPEC).extra["index_options"]["type"] == "int8_hnsw"
        assert s.describe().extra["similarity"] == "dot_product"
    finally:
        s.drop()
        s.close()


def _closed_url(kind: str) -> str:
    port = _free_port()
    return {
        "es": f"es+http://elastic:TOPSECRET@127.0.0.1:{port}/docs?api_key=TOPSECRET2",
        "chroma_http": f"chroma+http://u:TOPSECRET@127.0.0.1:{port}/docs?token=TOPSECRET2",
        "weaviate": f"weaviate://127.0.0.1:{port}/Docs?grpc_port={_free_port()}&api_key=TOPSECRET2",
    }[kind]


@pytest.mark.parametrize("kind", ["es", "chroma_http", "weaviate"])
def test_store_down_is_unavailable_after_bounded_retries(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    url = _closed_url(kind)
    s = connect(url, retry=RetryPolicy(attempts=3, initial=0.2, deadline=10))
    t = time.monotonic()
    with pytest.raises(StoreUnavailableError) as ei:
        s.ensure_index(SPEC)
    took = time.monotonic() - t
    msg = str(ei.value)
    assert 0.3 < took < 20, took  # it did retry, and it gave up in bounded time
    assert s.url in msg and "127.0.0.1" in msg
    assert "TOPSECRET" not in msg and "TOPSECRET" not in s.url
    assert "TOPSECRET" not in caplog.text


@pytest.mark.slow  # waits out retries or slow writes: `make test` only
def test_es_default_retry_policy_is_bounded() -> None:
    s = connect(f"es://127.0.0.1:{_free_port()}/docs")
    t = time.monotonic()
    with pytest.raises(StoreUnavailableError):
        s.count()
    assert time.monotonic() - t < 15


def test_stores_from_existing_client_objects(es_url: str, chroma_http_url: str, weaviate_url: str, vecs: np.ndarray) -> None:
    import chromadb
    import weaviate
    from elasticsearch import Elasticsearch

    from embedrail.connectors._urls import parse_url as p

    eu, cu, wu = p(es_url), p(chroma_http_url), p(weaviate_url)
    es_client = Elasticsearch(f"http://{eu.host}:{eu.port}")
    ch_client = chromadb.HttpClient(host=cu.host, port=cu.port or 8000)
    wv_client = weaviate.connect_to_local(host=wu.host, port=wu.port or 8080, grpc_port=int(wu.param("grpc_port") or 50051))
    try:
        stores = [
            ElasticsearchStore(es_client, index=_name()),
            ChromaStore(ch_client, collection=_name()),
            WeaviateStore(wv_client, collection=_name()),
        ]
        for s in stores:
            try:
                s.ensure_index(SPEC)
                assert s.upsert(_recs(vecs, 30)).written == 30
                s.flush()
                assert s.count() == 30 and s.search(vecs[4], k=1)[0].id == "r4"
                assert str(eu.port if isinstance(s, ElasticsearchStore) else "") in s.url
            finally:
                s.drop()
                s.close()
        assert wv_client.is_connected()  # a client we did not create is not closed by us
    finally:
        from embedrail.connectors.chroma import close_client

        es_client.close()
        wv_client.close()
        close_client(ch_client)


@pytest.mark.slow  # waits out retries or slow writes: `make test` only
def test_es_timeout_is_unavailable_after_bounded_retries() -> None:
    """A server that accepts connections but never answers: timeouts, retries, then a clear error."""
    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                c, _ = silent.accept()
            except OSError:
                return
            held.append(c)

    threading.Thread(target=accept, daemon=True).start()
    try:
        port = silent.getsockname()[1]
        s = ElasticsearchStore(
            f"es://127.0.0.1:{port}/docs", timeout=0.5, retry=RetryPolicy(attempts=3, initial=0.1, deadline=10)
        )
        t = time.monotonic()
        with pytest.raises(StoreUnavailableError, match=f"es://127.0.0.1:{port}/docs"):
            s.count()
        assert 1.0 < time.monotonic() - t < 10
    finally:
        silent.close()
        for c in held:
            c.close()


def test_weaviate_server_side_rejections_are_reported_by_id(weaviate_url: str, vecs: np.ndarray) -> None:
    """Bypass our own validation so the server itself rejects objects: they come back by id."""
    from weaviate.classes.data import DataObject

    from embedrail.connectors._weaviate_schema import object_uuid as _uuid

    s = connect(with_name(weaviate_url, _name()))
    assert isinstance(s, WeaviateStore)
    try:
        s.ensure_index(SPEC)
        assert s.upsert(_recs(vecs, 5)).ok
        physical = s.describe().physical_name
        objs = [(f"g{i}", DataObject(properties={"doc_id": f"g{i}", "text": "", "meta_json": "{}"}, uuid=_uuid(f"g{i}"),
                                     vector=vecs[i].tolist())) for i in range(6)]
        objs[2] = ("short", DataObject(properties={"doc_id": "short", "text": "", "meta_json": "{}"}, uuid=_uuid("short"),
                                       vector=[0.1] * 17))
        res = UpsertResult()
        s._send(objs, lambda b: s._insert(s._col(physical), b), res)  # the write path below our validation
        assert set(res.failed) == {"short"} and res.written == 5, res.failed
        assert s.count() == 10
    finally:
        s.drop()
        s.close()


@pytest.mark.parametrize("kind", ["chroma", "chroma_http"])
def test_chroma_rejected_batch_is_bisected(kind: str, request: pytest.FixtureRequest, tmp_path: Any, vecs: np.ndarray) -> None:
    """Chroma refuses a whole batch for one bad item: the good ones still get written."""
    base = f"chroma://{tmp_path}" if kind == "chroma" else request.getfixturevalue("chroma_http_url")
    s = connect(with_name(base, _name()))
    assert isinstance(s, ChromaStore)
    try:
        s.ensure_index(SPEC)
        target = s._require("upsert")
        batch = [(r, np.asarray(r.vector, dtype=np.float32)) for r in _recs(vecs, 16)]
        bad = Record(id="short", vector=np.ones(17, dtype=np.float32))
        batch[9] = (bad, np.ones(17, dtype=np.float32))  # bypasses our dims check: the server refuses
        res = UpsertResult()
        s._write(target, batch, res)  # the write path below our validation
        assert set(res.failed) == {"short"} and res.written == 15
        assert s.count() == 15
    finally:
        s.drop()
        s.close()


def test_weaviate_connections_cut_mid_write_are_retried(
    weaviate_url: str, vecs: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    """TCP proxies in front of Weaviate's HTTP and gRPC ports cut every live connection mid-write.

    Short outages are absorbed by the client's own gRPC retries or, when those give up, by ours.
    """
    u = parse_url(weaviate_url)
    http_proxy = DropProxy(u.host, u.port or 8080)
    grpc_proxy = DropProxy(u.host, int(u.param("grpc_port") or 50051))
    name = _name()
    s = WeaviateStore(
        f"weaviate://127.0.0.1:{http_proxy.port}/{name}?grpc_port={grpc_proxy.port}", retry=FAST, batch_size=100, concurrency=1
    )
    try:
        s.ensure_index(SPEC)
        stop = threading.Event()

        def cutter() -> None:
            for _ in range(2):  # two short outages during the write
                if stop.wait(0.5):
                    return
                grpc_proxy.drop_next = 1  # the first reconnect fails, too
                grpc_proxy.cut_all()

        t = threading.Thread(target=cutter, daemon=True)
        t.start()
        try:
            res = s.upsert(_recs(vecs, 2000))
        finally:
            stop.set()
            t.join()
        assert res.ok and res.written == 2000, list(res.failed.items())[:3]
        assert grpc_proxy.dropped > 0
        assert s.count() == 2000
        assert "TOPSECRET" not in caplog.text
    finally:
        s.drop()
        s.close()
        http_proxy.close()
        grpc_proxy.close()
