"""What ``embedrail serve`` needs on a shared network, in front of its endpoints: a Bearer API key, limits on
request size and on requests in flight, and Prometheus metrics.

- **Authentication** (``api_key``, ``--api-key`` / ``EMBEDRAIL_SERVE_API_KEY``): every route but ``/health``
  and ``/metrics`` needs ``Authorization: Bearer KEY`` (compared in constant time); otherwise 401 with an
  OpenAI-style error body and ``WWW-Authenticate: Bearer``.
- **Request size** (``max_request_bytes``): a body over the limit is refused with 413, by its
  ``Content-Length`` before it is read; a chunked body (no length) is read here up to the limit and
  refused as soon as it passes it. The per-request input count and per-text token limits are checked by
  the endpoints (``ServeLimits``).
- **In flight** (``max_concurrent_requests``): beyond it, 429 with ``Retry-After: 1`` (the remote client
  waits that long and tries again).
- **Metrics** (``GET /metrics``, Prometheus text format, ``prometheus-client``): requests by route and
  status, request seconds, requests in flight, inputs queued in the batcher, inputs per model call,
  tokens, model seconds, errors by code.

A plain ASGI layer (no per-request Python beyond a few comparisons), so it also answers requests for
routes that do not exist and bodies FastAPI would otherwise read whole.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["OPEN_PATHS", "ServeLimits", "ServeMetrics", "guard"]

#: routes that answer without the API key: liveness and the scrape endpoint carry no data
OPEN_PATHS = frozenset({"/health", "/metrics"})
_ROUTES = ("/v1/embeddings", "/v1/rerank", "/rerank", "/v1/models", "/health", "/metrics")


@dataclass(frozen=True)
class ServeLimits:
    """The limits of one server (see the module doc). ``None``: no limit."""

    api_key: str | None = None
    max_batch: int = 4096  # inputs (or rerank documents) per request
    max_input_tokens: int | None = None  # tokens per input text (the model still truncates at its own limit)
    max_concurrent_requests: int = 512
    max_request_bytes: int = 32 << 20

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_concurrent_requests", "max_request_bytes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_input_tokens is not None and self.max_input_tokens < 1:
            raise ValueError("max_input_tokens must be at least 1")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty")


class ServeMetrics:
    """The server's Prometheus metrics, in a registry of their own (several apps may share a process)."""

    def __init__(self, queued: Callable[[], float]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("embedrail_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.seconds = Histogram("embedrail_request_seconds", "Seconds from request to response", ["route"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))  # fmt: skip
        self.in_flight = Gauge("embedrail_requests_in_flight", "Requests being answered", registry=r)
        self.queued = Gauge("embedrail_queued_inputs", "Inputs queued or being embedded in the batcher", registry=r)
        self.queued.set_function(queued)
        self.batch = Histogram("embedrail_batch_inputs", "Inputs per model call (merged requests)", registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096))  # fmt: skip
        self.tokens = Counter("embedrail_tokens", "Tokens the model ran", ["kind"], registry=r)
        self.model_seconds = Counter("embedrail_model_seconds", "Seconds in model calls, summed over workers", ["kind"], registry=r)
        self.errors = Counter("embedrail_errors", "Error responses by code", ["code"], registry=r)

    def on_call(self, inputs: int, tokens: int, seconds: float) -> None:
        """An embedder call of the batcher."""
        self.batch.observe(inputs)
        self.tokens.labels("embed").inc(tokens)
        self.model_seconds.labels("embed").inc(seconds)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def _error_body(status: int, message: str, code: str) -> bytes:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


async def _read_capped(receive: Any, limit: int) -> bytes | None:
    """A body sent without ``Content-Length`` (chunked), read whole if it is at most ``limit`` bytes (None:
    over it; reading stops there). A client that disconnects gives what it sent."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that gives ``body`` as one message, then what ``receive`` gives (a disconnect)."""
    sent = False

    async def replayed() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def guard(app: Any, limits: ServeLimits, metrics: ServeMetrics | None) -> Any:
    """``app`` behind the API key, the body and in-flight limits, counted in ``metrics``."""
    key = limits.api_key.encode() if limits.api_key else None
    state = {"in_flight": 0}

    async def respond(send: Any, status: int, message: str, code: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
        body = _error_body(status, message, code)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in _ROUTES else "other"
        started = time.perf_counter()
        status = [500]

        async def counted_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        headers = dict(scope.get("headers") or ())
        try:
            if key is not None and path not in OPEN_PATHS:
                auth = headers.get(b"authorization", b"")
                if not (auth[:7].lower() == b"bearer " and hmac.compare_digest(auth[7:].strip(), key)):
                    await respond(counted_send, 401, "missing or wrong API key: send Authorization: Bearer <key>",
                                  "invalid_api_key", [(b"www-authenticate", b"Bearer")])  # fmt: skip
                    return
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > limits.max_request_bytes:
                await respond(counted_send, 413, f"the request body is {int(length)} bytes; at most {limits.max_request_bytes} "
                                                 "(--max-request-bytes)", "request_too_large")  # fmt: skip
                return
            if path not in OPEN_PATHS and state["in_flight"] >= limits.max_concurrent_requests:
                await respond(counted_send, 429, f"more than {limits.max_concurrent_requests} requests in flight "
                                                 "(--max-concurrent-requests): retry shortly", "too_many_requests",
                              [(b"retry-after", b"1")])  # fmt: skip
                return
            if length is None and scope.get("method") in _BODY_METHODS:
                body = await _read_capped(receive, limits.max_request_bytes)
                if body is None:
                    await respond(counted_send, 413, f"the request body is over {limits.max_request_bytes} bytes "
                                                     "(--max-request-bytes)", "request_too_large")  # fmt: skip
                    return
                receive = _replay(body, receive)
            state["in_flight"] += 1
            if metrics is not None:
                metrics.in_flight.inc()
            try:
                await app(scope, receive, counted_send)
            finally:
                state["in_flight"] -= 1
                if metrics is not None:
                    metrics.in_flight.dec()
        finally:
            if metrics is not None:
                metrics.requests.labels(route, str(status[0])).inc()
                metrics.seconds.labels(route).observe(time.perf_counter() - started)
                if status[0] >= 400:
                    metrics.errors.labels(str(status[0])).inc()

    return asgi
