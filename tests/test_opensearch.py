"""OpenSearch specifics on the real server (the shared contract is in test_conformance.py): a 2,560-dim
(Qwen3-4B) index, the Lucene engine's dimension limit stated before anything is created, a server that
is down, and a client object the caller owns."""

from __future__ import annotations

import socket
import uuid

import numpy as np
import pytest
from util import with_name

from embedrail.connectors import IndexSpec, Record, RetryPolicy, connect
from embedrail.connectors.opensearch import OpenSearchStore
from embedrail.errors import DimensionLimitError, StoreUnavailableError


def _unit(n: int, d: int) -> np.ndarray:
    v = np.random.default_rng(1).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_2560_dims_work_and_more_than_16000_are_refused_before_creating(opensearch_url: str) -> None:
    with connect(with_name(opensearch_url, f"t_os_{uuid.uuid4().hex[:8]}")) as s:
        assert s.max_dims() == 16000
        s.ensure_index(IndexSpec(dims=2560, metric="dot", fingerprint="qwen3-4b"))
        info = s.describe()
        assert info.spec.dims == 2560 and info.extra["method"]["engine"] == "lucene"
        assert info.extra["method"]["space_type"] == "innerproduct"
        vecs = _unit(40, 2560)
        assert s.upsert([Record(id=f"r{i}", vector=v, text=f"t{i}") for i, v in enumerate(vecs)]).ok
        s.flush()
        hits = s.search(vecs[9], k=3)
        assert hits[0].id == "r9" and abs(hits[0].score - 1.0) < 1e-3  # the inner product, back from OpenSearch's score
        s.drop()
    with connect(with_name(opensearch_url, f"t_os_{uuid.uuid4().hex[:8]}")) as s:
        with pytest.raises(DimensionLimitError, match="at most 16000 dims.*16001"):
            s.ensure_index(IndexSpec(dims=16001, metric="cosine", fingerprint="x"))
        assert not s.describe().exists


def test_a_server_that_is_down_is_store_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with connect(f"opensearch://admin:secret-pw@127.0.0.1:{port}/docs", retry=RetryPolicy(attempts=2, initial=0.01)) as s:
        with pytest.raises(StoreUnavailableError) as ei:
            s.count()
        assert "secret-pw" not in str(ei.value)


def test_a_client_the_caller_owns(opensearch_url: str) -> None:
    from opensearchpy import OpenSearch

    from embedrail.connectors._urls import parse_url

    u = parse_url(opensearch_url)
    client = OpenSearch(hosts=[{"host": u.host, "port": u.port}])
    try:
        s = OpenSearchStore(client, index=f"t_os_{uuid.uuid4().hex[:8]}")
        assert s.url.startswith("opensearch://127.0.0.1:")
        s.ensure_index(IndexSpec(dims=8, metric="l2", fingerprint="a"))
        vecs = _unit(5, 8)
        assert s.upsert([Record(id=f"r{i}", vector=v) for i, v in enumerate(vecs)]).ok
        assert s.search(vecs[2], k=1)[0].id == "r2" and s.count() == 5
        s.drop()
        s.close()
        assert client.ping()  # still open: the caller closes it
    finally:
        client.close()
