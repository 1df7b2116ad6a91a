"""A reranker behind HTTP: the ``/v1/rerank`` API (Jina, Cohere, vLLM, ``embedrail serve --reranker``) or
Text Embeddings Inference's ``/rerank``.

The URL says which:

- ``http(s)://host:port/v1#served-model`` (or ``…/v1/rerank#model``): ``POST /v1/rerank`` with
  ``{"model", "query", "documents", "top_n"}``; the answer's ``results[].index`` / ``relevance_score``.
- ``http(s)://host:port/rerank`` (TEI): ``POST /rerank`` with ``{"query", "texts", "raw_scores": false}``;
  the answer is a list of ``{"index", "score"}``.

Documents are sent in requests of at most ``batch_size`` (TEI's default client limit is 32), every score is
requested (``top_n`` = all), and the scores come back in input order. Retries as the remote embedder
(:mod:`embed_core.http`). ``instruction`` is sent as an extension member, which ``embedrail serve`` honours
(a Qwen3-Reranker's task) and other servers ignore.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from embedrail.embed_core.base import EmbedStats
from embedrail.embed_core.http import request_json
from embedrail.embed_core.rerank import BaseReranker
from embedrail.errors import ConfigError, ModelError, RemoteEmbeddingError

__all__ = ["RemoteReranker", "split_rerank_url"]


def split_rerank_url(url: str) -> tuple[str, str, str | None]:
    """``(endpoint URL, api "v1"|"tei", served model or None)`` of a remote reranker URL."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"a remote reranker is an http(s) URL, got {url!r}")
    base, _, model = url.partition("#")
    base = base.rstrip("/")
    if base.endswith("/v1/rerank"):
        return base, "v1", model or None
    if base.endswith("/rerank"):
        return base, "tei", model or None
    if base.endswith("/v1"):
        return base + "/rerank", "v1", model or None
    return base + "/v1/rerank", "v1", model or None


class RemoteReranker(BaseReranker):
    backend = "remote"
    kind = "remote"

    def __init__(self, url: str, *, model: str | None = None, api_key: str | None = None, batch_size: int = 32,
                 max_tokens: int = 512, instruction: str | None = None, timeout: float = 60.0, max_retries: int = 5,
                 backoff: float = 0.5, max_backoff: float = 30.0, headers: dict[str, str] | None = None,
                 transport: Any = None) -> None:  # fmt: skip
        import httpx

        self.endpoint, self.api, served = split_rerank_url(url)
        self.model = self.model_id = model or served or ""
        if self.api == "v1" and not self.model:
            raise ConfigError(f"{url}: name the served model, e.g. {url.partition('#')[0]}#BAAI/bge-reranker-v2-m3")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size, self.max_tokens, self.instruction = batch_size, max_tokens, instruction
        self.max_retries, self.backoff, self.max_backoff = max(0, int(max_retries)), float(backoff), float(max_backoff)
        self.stats = EmbedStats()
        hdrs = {"Accept": "application/json", **(headers or {})}
        if api_key:
            hdrs["Authorization"] = f"Bearer {api_key}"
        self._client: Any = httpx.Client(timeout=timeout, headers=hdrs, transport=transport)

    def _post(self, payload: dict[str, Any]) -> Any:
        if self._client is None:
            raise ModelError("this RemoteReranker was closed; create it again")

        return request_json(self._client, "POST", self.endpoint, payload, attempts=self.max_retries + 1,
                            backoff=self.backoff, max_backoff=self.max_backoff, on_retry=partial(self.stats.add, http_retries=1))  # fmt: skip

    def _score(self, query: str, texts: list[str], instruction: str | None) -> np.ndarray:
        out = np.empty(len(texts), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            part = texts[start : start + self.batch_size]
            out[start : start + len(part)] = self._score_part(query, part, instruction or self.instruction)
        return out

    def _score_part(self, query: str, texts: Sequence[str], instruction: str | None) -> np.ndarray:
        if self.api == "tei":
            payload: dict[str, Any] = {"query": query, "texts": list(texts), "raw_scores": False, "truncate": True}
        else:
            payload = {"model": self.model, "query": query, "documents": list(texts), "top_n": len(texts),
                       "return_documents": False}  # fmt: skip
        if instruction is not None:
            payload["instruction"] = instruction
        body = self._post(payload)
        items = body if self.api == "tei" else (body.get("results") if isinstance(body, dict) else None)
        if not isinstance(items, list):
            raise RemoteEmbeddingError(f"{self.endpoint} answered without a list of scores")
        scores = np.full(len(texts), np.nan, dtype=np.float32)
        for item in items:
            idx = item.get("index") if isinstance(item, dict) else None
            value = (item.get("score") if self.api == "tei" else item.get("relevance_score")) if isinstance(item, dict) else None
            if not isinstance(idx, int) or not 0 <= idx < len(texts) or not isinstance(value, (int, float)):
                raise RemoteEmbeddingError(f"{self.endpoint} returned a malformed rerank result: {str(item)[:200]}")
            scores[idx] = value
        if np.isnan(scores).any():
            raise RemoteEmbeddingError(f"{self.endpoint} scored {int((~np.isnan(scores)).sum())} of {len(texts)} documents")
        usage = body.get("usage") if isinstance(body, dict) else None
        tokens = (usage or {}).get("total_tokens") if isinstance(usage, dict) else None
        self.stats.add(batches=1, tokens=tokens if isinstance(tokens, int) else 0)
        return scores

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "endpoint": self.endpoint, "api": self.api}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
