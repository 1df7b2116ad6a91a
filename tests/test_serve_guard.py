"""``embedrail serve`` on a shared network: the API key, the request limits, back-pressure and Prometheus
metrics, over real HTTP (uvicorn on 127.0.0.1) with the packaged model, through raw HTTP, the OpenAI SDK
and embedrail's own remote client."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import numpy as np
import pytest
from test_integration_support import minilm

from embedrail.embed_core.serve import BackgroundServer, ServeLimits


def _metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_api_key_limits_back_pressure_and_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    import openai

    from embedrail import open_embedder

    emb = minilm()
    limits = ServeLimits(api_key="s3cret-key", max_batch=8, max_input_tokens=64, max_concurrent_requests=1,
                         max_request_bytes=20_000)  # fmt: skip
    gate = threading.Event()
    gate.set()
    real_raw = emb.embed_raw

    def gated(texts: Any, *a: Any, **k: Any) -> Any:  # injected: a model call that takes as long as the test says
        gate.wait(30)
        return real_raw(texts, *a, **k)

    monkeypatch.setattr(emb, "embed_raw", gated)
    sent: dict[int, int] = {}
    with BackgroundServer(emb, limits=limits) as url, httpx.Client(base_url=url, timeout=60) as http:

        def post(body: Any, key: str | None = "s3cret-key") -> httpx.Response:
            r = http.post("/v1/embeddings", json=body, headers={"Authorization": f"Bearer {key}"} if key else {})
            sent[r.status_code] = sent.get(r.status_code, 0) + 1
            return r

        r = post({"input": "hello"}, key=None)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
        assert post({"input": "hello"}, key="wrong").status_code == 401
        assert http.get("/v1/models").status_code == 401 and http.get("/health").status_code == 200  # /health needs no key
        r = post({"input": ["a", "b"]})
        assert r.status_code == 200 and len(r.json()["data"]) == 2
        sdk = openai.OpenAI(base_url=url + "/v1", api_key="s3cret-key", max_retries=0)
        got = sdk.embeddings.create(model=emb.model, input=["first text", "second text"])
        assert len(got.data) == 2 and np.allclose(got.data[0].embedding, emb.embed_raw(["first text"])[0], atol=1e-5)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).embeddings.create(model=emb.model, input="x")
        r = post({"input": [f"text {i}" for i in range(9)]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_inputs" and "at most 8" in r.json()["error"]["message"]
        r = post({"input": ["short", " ".join(["word"] * 100)]})
        assert r.status_code == 413 and r.json()["error"]["code"] == "input_too_long" and "input[1] has" in r.json()["error"]["message"]
        r = post({"input": ["x" * 25_000]})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        # a chunked body (no Content-Length) is capped as it is read; one under the limit goes through

        def chunked(body: bytes) -> Any:
            yield from (body[i : i + 1000] for i in range(0, len(body), 1000))

        big = json.dumps({"input": ["x" * 25_000]}).encode()
        r = http.post("/v1/embeddings", content=chunked(big), headers={"Authorization": "Bearer s3cret-key"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large" and "content-length" not in r.request.headers
        small = json.dumps({"input": ["chunked text"]}).encode()
        r = http.post("/v1/embeddings", content=chunked(small), headers={"Authorization": "Bearer s3cret-key",
                                                                          "Content-Type": "application/json"})  # fmt: skip
        assert r.status_code == 200 and np.allclose(r.json()["data"][0]["embedding"], emb.embed_raw(["chunked text"])[0], atol=1e-5)
        sent[413] = sent.get(413, 0) + 1
        sent[200] = sent.get(200, 0) + 1

        # back-pressure: one request in flight (its model call held), the next is refused with Retry-After
        gate.clear()
        first = threading.Thread(target=post, args=({"input": "held"},))
        first.start()
        deadline = time.monotonic() + 10
        while _metrics(url).get(("embedrail_requests_in_flight", ()), 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        r = post({"input": "too many"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "too_many_requests"
        # embedrail's remote client honours Retry-After: it waits, tries again, and gets its vectors
        threading.Timer(0.3, gate.set).start()
        monkeypatch.setenv("EMBEDRAIL_EMBED_API_KEY", "s3cret-key")
        remote = open_embedder(f"{url}/v1#{emb.model}")
        try:
            vec = remote.embed_documents(["retried"])
            assert vec.shape == (1, emb.dims) and remote.stats.http_retries >= 1  # it met the 429 and came back
        finally:
            remote.close()
        first.join(30)
        assert sent[200] >= 2 and sent[429] == 1

    # the metrics (read before the server stopped) match what was sent; checked through a fresh server
    with BackgroundServer(emb, limits=ServeLimits(api_key="k")) as url, httpx.Client(base_url=url) as http:
        for _ in range(3):
            assert http.post("/v1/embeddings", json={"input": ["one", "two"]}, headers={"Authorization": "Bearer k"}).status_code == 200
        assert http.post("/v1/embeddings", json={"input": "x"}).status_code == 401
        m = _metrics(url)
        assert m[("embedrail_requests_total", (("route", "/v1/embeddings"), ("status", "200")))] == 3
        assert m[("embedrail_requests_total", (("route", "/v1/embeddings"), ("status", "401")))] == 1
        assert m[("embedrail_errors_total", (("code", "401"),))] == 1
        assert m[("embedrail_batch_inputs_count", ())] >= 1 and m[("embedrail_batch_inputs_sum", ())] == 6
        assert m[("embedrail_tokens_total", (("kind", "embed"),))] > 0 and m[("embedrail_model_seconds_total", (("kind", "embed"),))] > 0
        assert m[("embedrail_request_seconds_count", (("route", "/v1/embeddings"),))] == 4


def test_reindex_pushes_its_metrics_to_a_pushgateway(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """``embedrail reindex --pushgateway URL``: the Pushgateway protocol (PUT /metrics/job/<job>, Prometheus
    text) received by an HTTP endpoint on loopback; the pushed figures are the report's."""
    import json
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from prometheus_client.parser import text_string_to_metric_families
    from test_integration_support import sentences, write_jsonl

    from embedrail.integration.cli import main

    pushes: list[tuple[str, str, bytes]] = []

    class Gateway(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
            pushes.append((self.command, self.path, self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        src = write_jsonl(tmp_path / "docs.jsonl", [{"id": f"d{i}", "text": sentences(f"d{i}", 3)} for i in range(4)])
        target = f"chroma://{tmp_path / 'c'}?collection=pushed"
        rc = main(["reindex", "--source", str(src), "--target", target, "--ledger", f"sqlite:///{tmp_path / 'l.sqlite'}",
                   "--json", "--pushgateway", f"http://127.0.0.1:{server.server_port}"])  # fmt: skip
        report = json.loads(capsys.readouterr().out)
    finally:
        server.shutdown()
        server.server_close()
    assert rc == 0 and len(pushes) == 1 and pushes[0][:2] == ("PUT", "/metrics/job/embedrail_reindex")
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in text_string_to_metric_families(pushes[0][2].decode()) for s in f.samples}  # fmt: skip
    assert got[("embedrail_run_documents", ())] == 4 and got[("embedrail_run_embedded", ())] == report["embedded"] > 0
    assert got[("embedrail_run_upserted", (("target", target),))] == report["chunks"]
    assert got[("embedrail_run_ok", ())] == 1 and ("embedrail_run_last_success_unixtime", ()) in got
