"""JSON over HTTP with retries, for every remote model client (the remote embedder, the remote reranker).

429, 5xx (``RETRY_STATUS``) and connection errors are retried with exponential backoff and jitter,
honouring ``Retry-After``; any other error status raises :class:`RemoteEmbeddingError` at once with the
server's own message and ``.status`` set.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

from embedrail.errors import RemoteEmbeddingError

__all__ = ["RETRY_STATUS", "error_message", "request_json"]

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


def request_json(client: Any, method: str, url: str, payload: Any, *, attempts: int, backoff: float,
                 max_backoff: float, retry_status: frozenset[int] = RETRY_STATUS,
                 on_retry: Callable[[], None] | None = None) -> Any:  # fmt: skip
    """``method url`` with a JSON ``payload`` on an ``httpx.Client``; the decoded JSON answer."""
    import httpx

    last, status = "", None
    for attempt in range(attempts):
        wait = min(max_backoff, backoff * (2**attempt)) * (0.5 + random.random() / 2)
        try:
            resp = client.request(method, url, json=payload)
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            last = f"{type(exc).__name__}: {exc}"
            status = None
        else:
            status = resp.status_code
            if status < 400:
                try:
                    return resp.json()
                except ValueError as exc:
                    raise RemoteEmbeddingError(f"{url} answered {status} with non-JSON content") from exc
            last = f"HTTP {status}: {error_message(resp)}"
            if status not in retry_status:
                err = RemoteEmbeddingError(f"{method} {url} failed with {last}")
                err.status = status  # type: ignore[attr-defined]
                raise err
            retry_after = resp.headers.get("retry-after")
            if retry_after:
                try:
                    wait = min(max_backoff, max(0.0, float(retry_after)))
                except ValueError:
                    pass
        if attempt + 1 < attempts:
            if on_retry is not None:
                on_retry()
            log.warning("%s %s: %s; retry %d/%d in %.1fs", method, url, last, attempt + 1, attempts - 1, wait)
            time.sleep(wait)
    err = RemoteEmbeddingError(
        f"{method} {url} failed after {attempts} attempt(s): {last}; check that the server is up and reachable"
    )
    err.status = status  # type: ignore[attr-defined]
    raise err


def error_message(resp: Any) -> str:
    """The server's error message from an OpenAI-, TEI- or FastAPI-shaped error body (or its text)."""
    try:
        body = resp.json()
    except ValueError:
        return (resp.text or "")[:300]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:500]
        if isinstance(err, str):
            return err[:500]
        if body.get("detail"):
            return str(body["detail"])[:500]
        if body.get("message"):
            return str(body["message"])[:500]
    return str(body)[:300]
