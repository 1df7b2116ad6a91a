"""The remote backend against `embed_core.serve` over real HTTP (uvicorn on 127.0.0.1, free port).

Fault injection (a 429, a 503, a server that rejects `dimensions` or is not embedrail) wraps the
real HTTP transport; the server and the model are real.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_embed_fixtures import tiny_qwen3_dir  # noqa: F401

from embedrail.embed_core import QWEN3_DEFAULT_TASK, Embedder
from embedrail.embed_core.device import available_cpus
from embedrail.embed_core.remote import RemoteEmbedder
from embedrail.embed_core.serve import BackgroundServer
from embedrail.errors import InputError, ModelError, RemoteEmbeddingError

DOCS = ["The quick brown fox", "lazy dog.", "Embeddings map text to vectors.", "lazy dog."]


@pytest.fixture(scope="module")
def qwen_local(tiny_qwen3_dir: Path) -> Embedder:  # noqa: F811
    return Embedder.load(str(tiny_qwen3_dir), device="cpu")


@pytest.fixture(scope="module")
def qwen_url(qwen_local: Embedder) -> Iterator[str]:
    with BackgroundServer(qwen_local) as url:
        yield url


@pytest.fixture(scope="module")
def minilm_local() -> Embedder:
    return Embedder.load("minilm", device="cpu")


@pytest.fixture(scope="module")
def minilm_url(minilm_local: Embedder) -> Iterator[str]:
    with BackgroundServer(minilm_local) as url:
        yield url


class FaultTransport(httpx.BaseTransport):
    """Real HTTP, with a hook that may answer a request itself (the injected fault)."""

    def __init__(self, hook: Callable[[httpx.Request, int], httpx.Response | None]) -> None:
        self.inner = httpx.HTTPTransport()
        self.hook = hook
        self.calls = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        fault = self.hook(request, self.calls)
        return fault if fault is not None else self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_round_trip_equals_local(minilm_local: Embedder, minilm_url: str) -> None:
    remote = Embedder.remote(minilm_url, "minilm")
    try:
        assert (remote.dims, remote.native_dims, remote.metric) == (384, 384, "cosine")
        assert remote.fingerprint == minilm_local.fingerprint  # same model, same stored vectors
        got = remote.embed_documents(DOCS)
        assert np.allclose(got, minilm_local.embed_documents(DOCS), atol=1e-6)
        assert np.allclose(remote.embed_queries(["a query"]), minilm_local.embed_queries(["a query"]), atol=1e-6)
        assert remote.stats.duplicates == 1 and remote.stats.tokens > 0
        info = json.loads(json.dumps(remote.embedding_info()))
        assert info["backend"] == "remote" and info["base_url"] == minilm_url
        again = Embedder.from_info(info)  # dispatches to the remote backend
        assert again.fingerprint == remote.fingerprint
        again.close()
        with pytest.raises(ModelError, match="matryoshka"):
            Embedder.remote(minilm_url, "minilm", dims=64)
        with pytest.raises(InputError, match=r"texts\[1\]"):
            remote.embed_documents(["ok", ""])
        assert remote.split_text("one two three four five six", max_tokens=3) == ["one two three", "four five six"]
    finally:
        remote.close()


def test_qwen3_round_trip_with_dimensions_and_instructions(
    qwen_local: Embedder, qwen_url: str, tiny_qwen3_dir: Path  # noqa: F811
) -> None:
    remote = Embedder.remote(qwen_url + "/v1", str(tiny_qwen3_dir), dims=32, encoding_format="base64")
    local32 = Embedder.load(str(tiny_qwen3_dir), dims=32, device="cpu")
    try:
        assert remote.send_dimensions is True and remote.dims == 32 and remote.native_dims == 64
        assert remote.fingerprint == local32.fingerprint
        assert np.allclose(remote.embed_documents(DOCS), local32.embed_documents(DOCS), atol=1e-6)
        assert remote.query_instruction == QWEN3_DEFAULT_TASK
        assert np.allclose(remote.embed_queries(["what is it"]), local32.embed_queries(["what is it"]), atol=1e-6)
        custom = remote.embed_queries(["what is it"], instruction="Find code")
        assert np.allclose(custom, local32.embed_queries(["what is it"], instruction="Find code"), atol=1e-6)
    finally:
        remote.close()


def test_serve_api(qwen_local: Embedder, qwen_url: str) -> None:
    with httpx.Client(base_url=qwen_url) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["dims"] == 64
        models = client.get("/v1/models").json()
        assert models["data"][0]["embedrail"]["fingerprint"] == qwen_local.fingerprint
        # the documented extension: input_type + instruction
        body = client.post(
            "/v1/embeddings", json={"input": "what is it", "input_type": "query", "instruction": "Find code"}
        ).json()
        vec = np.asarray(body["data"][0]["embedding"], dtype=np.float32)
        assert np.allclose(vec, qwen_local.embed_queries(["what is it"], instruction="Find code")[0], atol=1e-6)
        assert body["usage"]["prompt_tokens"] > 0 and body["object"] == "list"
        body = client.post(
            "/v1/embeddings", json={"input": ["lazy dog."], "dimensions": 32, "encoding_format": "base64"}
        ).json()
        vec = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
        full = qwen_local.embed_raw(["lazy dog."])[0]
        assert vec.shape == (32,) and np.allclose(vec, full[:32] / np.linalg.norm(full[:32]), atol=1e-6)
        for payload, code in [
            ({"input": []}, 400),
            ({"input": ["ok", "  "]}, 400),
            ({"input": "x", "dimensions": 65}, 400),
            ({"input": "x", "model": "someone/else"}, 404),
            ({"input": "x", "instruction": "y"}, 400),
            ({"input": 3}, 400),
        ]:
            resp = client.post("/v1/embeddings", json=payload)
            assert resp.status_code == code, payload
            assert resp.json()["error"]["message"]


def test_retries_429_then_succeeds(qwen_local: Embedder, qwen_url: str, tiny_qwen3_dir: Path) -> None:  # noqa: F811
    state = {"faults": 0}

    def hook(request: httpx.Request, _: int) -> httpx.Response | None:
        if request.url.path == "/v1/embeddings" and b"flaky" in request.content and state["faults"] < 2:
            state["faults"] += 1
            status = 429 if state["faults"] == 1 else 503
            return httpx.Response(status, json={"error": {"message": "slow down"}}, headers={"Retry-After": "0"})
        return None

    remote = Embedder.remote(qwen_url, str(tiny_qwen3_dir), transport=FaultTransport(hook), backoff=0.01)
    try:
        got = remote.embed_documents(["flaky text", "lazy dog."])
        assert state["faults"] == 2 and remote.stats.http_retries == 2
        assert np.allclose(got, qwen_local.embed_documents(["flaky text", "lazy dog."]), atol=1e-6)
    finally:
        remote.close()


def test_gives_up_with_clear_errors(qwen_url: str, tiny_qwen3_dir: Path) -> None:  # noqa: F811
    def always_503(request: httpx.Request, _: int) -> httpx.Response | None:
        if request.url.path == "/v1/embeddings" and b"doomed" in request.content:
            return httpx.Response(503, json={"error": {"message": "overloaded"}})
        return None

    remote = Embedder.remote(qwen_url, str(tiny_qwen3_dir), transport=FaultTransport(always_503), max_retries=2, backoff=0.01)
    try:
        with pytest.raises(RemoteEmbeddingError, match=r"after 3 attempt\(s\): HTTP 503: overloaded"):
            remote.embed_documents(["doomed"])
    finally:
        remote.close()
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RemoteEmbeddingError, match="ConnectError"):
        Embedder.remote(f"http://127.0.0.1:{port}", "any", max_retries=1, backoff=0.01)
    with pytest.raises(RemoteEmbeddingError, match="404.*not served"):
        Embedder.remote(qwen_url, "someone/else", max_retries=0)


def test_generic_server_without_dimensions_support(
    qwen_local: Embedder, qwen_url: str, tiny_qwen3_dir: Path  # noqa: F811
) -> None:
    """A plain OpenAI-compatible server: no embedrail model info, `dimensions` rejected with 400.
    The client formats instructions itself and truncates + renormalises client-side."""

    def plain_server(request: httpx.Request, _: int) -> httpx.Response | None:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": str(tiny_qwen3_dir), "object": "model"}]})
        if request.url.path == "/v1/embeddings" and b'"dimensions"' in request.content:
            return httpx.Response(400, json={"error": {"message": "unknown field: dimensions"}})
        return None

    remote = RemoteEmbedder(
        qwen_url, str(tiny_qwen3_dir), dims=32, matryoshka=True, query_instruction=QWEN3_DEFAULT_TASK,
        transport=FaultTransport(plain_server),
    )  # fmt: skip
    local32 = Embedder.load(str(tiny_qwen3_dir), dims=32, device="cpu")
    try:
        assert remote.server_info is None and remote.send_dimensions is False and remote.native_dims == 64
        assert np.allclose(remote.embed_documents(DOCS), local32.embed_documents(DOCS), atol=1e-6)
        assert np.allclose(remote.embed_queries(["what is it"]), local32.embed_queries(["what is it"]), atol=1e-6)
        assert remote.fingerprint != local32.fingerprint  # unknown server: no claim to equal local vectors
        with pytest.raises(ModelError, match="matryoshka=True"):
            RemoteEmbedder(qwen_url, str(tiny_qwen3_dir), dims=32, transport=FaultTransport(plain_server))
    finally:
        remote.close()


def test_serve_merges_concurrent_requests_and_returns_each_its_own_rows(minilm_local: Embedder) -> None:
    """16 clients at once: their requests share embedder calls, and each gets its own vectors, in
    its own order; a bad request in a merged call fails alone."""
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"request {i}: the quick brown fox number {i} jumps" for i in range(48)]
    expected = minilm_local.embed_raw(texts)
    server = BackgroundServer(minilm_local)
    batcher = server.app.state.batcher
    batcher.max_wait = 0.05  # a generous window, so that merging does not depend on the machine's speed
    with server as url, httpx.Client(base_url=url, timeout=60) as client:

        def call(i: int) -> httpx.Response:
            body = {"input": ["   "] if i == 5 else texts[3 * i : 3 * i + 3]}
            return client.post("/v1/embeddings", json=body)

        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(call, range(16)))
            calls = batcher.calls
            bad = list(pool.map(lambda _: client.post("/v1/embeddings", json={"input": [[1, 10**9]]}), range(4)))
            assert all(r.status_code == 400 and "vocabulary" in r.text for r in bad)
            again = list(pool.map(call, [0, 1]))  # the batcher keeps serving after failed calls
        for i, r in enumerate(responses):
            if i == 5:
                assert r.status_code == 400 and "empty" in r.json()["error"]["message"]
                continue
            assert r.status_code == 200, r.text
            got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
            assert [d["index"] for d in r.json()["data"]] == [0, 1, 2]
            assert np.abs(got - expected[3 * i : 3 * i + 3]).max() <= 1e-5
            assert r.json()["usage"]["prompt_tokens"] > 0
        assert batcher.requests >= 15 and calls < 15  # merged: fewer embedder calls than requests
        assert [r.status_code for r in again] == [200, 200]
        health = client.get("/health").json()["batches"]
        assert health["calls"] == batcher.calls and health["requests"] == batcher.requests
        # the rows are written as float32 text: exactly the server's float32 values after parsing
        one = client.post("/v1/embeddings", json={"input": texts[0]}).json()["data"][0]["embedding"]
        assert np.array_equal(np.asarray(one, dtype=np.float32), expected[0])


def test_serve_workers_cut_requests_and_count_usage_exactly(minilm_local: Embedder) -> None:
    """Two workers: a large request is cut into a piece per worker and comes back whole and in order;
    the usage of concurrent requests (counted per worker while the other counts too) adds up to
    exactly the tokens the model ran; close() waits for a call in flight."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"text {i}: " + "many words " * (i % 9) for i in range(40)]
    expected = minilm_local.embed_raw(texts)
    server = BackgroundServer(minilm_local, workers=2)
    batcher = server.app.state.batcher
    assert batcher.workers == 2 and batcher.threads == max(1, available_cpus() // 2)  # the cores shared out
    with server as url, httpx.Client(base_url=url, timeout=60) as client:
        calls, tokens = batcher.calls, minilm_local.stats.tokens
        body = client.post("/v1/embeddings", json={"input": texts}).json()
        got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
        assert [d["index"] for d in body["data"]] == list(range(40))
        assert np.abs(got - expected).max() <= 1e-5
        assert batcher.calls - calls == 2  # one piece per worker; pieces of one request never merge
        assert body["usage"]["prompt_tokens"] == minilm_local.stats.tokens - tokens

        tokens = minilm_local.stats.tokens
        with ThreadPoolExecutor(12) as pool:
            usage = list(pool.map(lambda i: client.post("/v1/embeddings", json={"input": texts[i : i + 5]}).json()["usage"],
                                  range(30)))  # fmt: skip
        assert sum(u["prompt_tokens"] for u in usage) == minilm_local.stats.tokens - tokens
        with pytest.raises(InputError, match="no inputs"):
            batcher.submit((None, None, False), [])  # refused, not queued as a request that never ends

    # the embedder is thread-safe and close() waits for calls in flight
    other = Embedder.load("minilm", device="cpu")
    results: list[object] = []
    started = threading.Event()

    def long_call() -> None:
        started.set()
        results.append(other.embed_raw([f"{k} {t}" for k in range(8) for t in texts]))  # several forward passes

    t = threading.Thread(target=long_call)
    t.start()
    started.wait()
    time.sleep(0.05)
    other.close()
    t.join()
    assert len(results) == 1 and getattr(results[0], "shape", None) == (320, 384)
    with pytest.raises(ModelError, match="closed"):
        other.embed_raw(["after close"])


def test_serve_takes_token_ids(minilm_local: Embedder, minilm_url: str) -> None:
    """OpenAI-style token-id inputs: the same vectors as the texts they encode."""
    texts = ["token ids in", "a second, longer input with punctuation!"]
    ids = [minilm_local.tokenizer.encode(t, add_special_tokens=False) for t in texts]
    expected = minilm_local.embed_raw(texts)
    with httpx.Client(base_url=minilm_url, timeout=60) as client:
        many = client.post("/v1/embeddings", json={"input": ids}).json()
        one = client.post("/v1/embeddings", json={"input": ids[0]}).json()
        bad = client.post("/v1/embeddings", json={"input": [[1, 2, 10**9]]})
    got = np.array([d["embedding"] for d in many["data"]], dtype=np.float32)
    assert np.abs(got - expected).max() <= 1e-5
    assert np.abs(np.array(one["data"][0]["embedding"]) - expected[0]).max() <= 1e-5
    assert bad.status_code == 400 and "vocabulary" in bad.json()["error"]["message"]

