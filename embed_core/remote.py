"""Remote backend: an Embedder-compatible client of an OpenAI-compatible ``/v1/embeddings`` server
(SGLang, vLLM, TEI, OpenAI, or ``embedrail serve``).

- Instructions and prefixes are added **client-side** (servers embed what they receive).
- ``dimensions`` is sent only when the server honours it (probed once at start-up); otherwise the
  client truncates and L2-normalises again (Matryoshka models only).
- Requests are batched; 429, 5xx and connection errors are retried with exponential backoff
  (``Retry-After`` is respected); other errors raise :class:`RemoteEmbeddingError` with the
  server's message.
- Against ``embedrail serve`` the client reads the served model's settings from ``/v1/models``,
  so its fingerprint equals the one of the same model loaded locally.
"""

from __future__ import annotations

import base64
import logging
from functools import partial
from typing import Any

import numpy as np

from embedrail.embed_core.base import BaseEmbedder, EmbedStats
from embedrail.embed_core.config import QWEN3_DEFAULT_TASK
from embedrail.embed_core.fingerprint import FINGERPRINT_KEYS
from embedrail.embed_core.http import RETRY_STATUS, request_json
from embedrail.embed_core.mrl import truncate_and_normalize
from embedrail.embed_core.text import approx_count, approx_token_spans, check_texts, split_by_offsets
from embedrail.errors import ConfigError, InputError, ModelError, RemoteEmbeddingError

log = logging.getLogger(__name__)

DEFAULT_REMOTE_MAX_TOKENS = 512
_PROBE_TEXT = "embedrail dimension probe"


def _is_qwen3_embedding(model: str) -> bool:
    return "qwen3-embedding" in model.lower()


def _is_known_mrl(model: str) -> bool:
    """Served models known to be Matryoshka-trained: Qwen3-Embedding, OpenAI text-embedding-3-*."""
    name = model.lower()
    return _is_qwen3_embedding(name) or "text-embedding-3" in name


def normalize_base_url(base_url: str) -> str:
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"base_url must start with http:// or https://, got {base_url!r}")
    url = base_url.rstrip("/")
    for suffix in ("/embeddings", "/v1"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url


class RemoteEmbedder(BaseEmbedder):
    """Embeds through an OpenAI-compatible HTTP server; same interface as :class:`Embedder`."""

    backend = "remote"

    def __init__(
        self,
        base_url: str,
        model: str,
        dims: int | None = None,
        api_key: str | None = None,
        *,
        query_instruction: str | None = None,
        query_prefix: str | None = None,
        document_prefix: str | None = None,
        matryoshka: bool | None = None,
        revision: str | None = None,
        max_tokens: int | None = None,
        batch_size: int = 64,
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        send_dimensions: bool | None = None,
        encoding_format: str = "float",
        tokenizer: str | None = None,
        headers: dict[str, str] | None = None,
        transport: Any = None,
    ) -> None:
        import httpx

        if not isinstance(model, str) or not model:
            raise ConfigError("model must be the served model's name, e.g. 'Qwen/Qwen3-Embedding-4B'")
        if dims is not None and (not isinstance(dims, int) or dims < 1):
            raise ConfigError(f"dims must be a positive integer, got {dims!r}")
        if query_instruction is not None and query_prefix is not None:
            raise ConfigError("pass either query_instruction or query_prefix, not both")
        if encoding_format not in ("float", "base64"):
            raise ConfigError(f"encoding_format must be 'float' or 'base64', got {encoding_format!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.base_url = normalize_base_url(base_url)
        self.model = model
        self.model_id = model
        self.revision = revision
        self.batch_size = batch_size
        self.max_retries = max(0, int(max_retries))
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.encoding_format = encoding_format
        self.stats = EmbedStats()
        self._api_key_set = api_key is not None
        hdrs = {"Accept": "application/json", **(headers or {})}
        if api_key:
            hdrs["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(timeout=timeout, headers=hdrs, transport=transport)
        try:
            self._setup(dims, query_instruction, query_prefix, document_prefix, matryoshka, max_tokens, send_dimensions)
            self.tokenizer = self._load_tokenizer(tokenizer) if tokenizer else None
        except BaseException:
            self._client.close()
            raise

    # ------------------------------------------------------------------------------------------
    def _setup(
        self,
        dims: int | None,
        query_instruction: str | None,
        query_prefix: str | None,
        document_prefix: str | None,
        matryoshka: bool | None,
        max_tokens: int | None,
        send_dimensions: bool | None,
    ) -> None:
        served = self._served_info()  # embedrail serve describes its model; others give None
        self.server_info = served
        if served:
            self.native_dims = int(served["dims"])
            mrl = bool(served.get("matryoshka")) if matryoshka is None else matryoshka
            self.pooling = str(served.get("pooling", "server"))
            self.max_tokens = int(max_tokens or served.get("max_tokens") or DEFAULT_REMOTE_MAX_TOKENS)
            default_instr = served.get("query_instruction")
            default_qprefix = served.get("query_prefix") or ""
            default_dprefix = served.get("document_prefix") or ""
        else:
            self.native_dims = self._probe_native_dims()
            mrl = _is_known_mrl(self.model) if matryoshka is None else matryoshka
            self.pooling = "server"
            self.max_tokens = int(max_tokens or DEFAULT_REMOTE_MAX_TOKENS)
            default_instr = QWEN3_DEFAULT_TASK if _is_qwen3_embedding(self.model) else None
            default_qprefix = ""
            default_dprefix = ""
        self.matryoshka = mrl
        if query_instruction is not None:
            self.query_instruction, self.query_prefix = query_instruction, ""
        elif query_prefix is not None:
            self.query_instruction, self.query_prefix = None, query_prefix
        else:
            self.query_instruction, self.query_prefix = default_instr, default_qprefix
        self.document_prefix = document_prefix if document_prefix is not None else default_dprefix

        if dims is None or dims == self.native_dims:
            self.dims = self.native_dims
            self.send_dimensions = False
            return
        if dims > self.native_dims:
            raise ModelError(f"dims={dims} is larger than the served model's dimension {self.native_dims}")
        if not mrl:
            raise ModelError(
                f"dims={dims} differs from the served dimension {self.native_dims} and {self.model} is not known to be "
                "Matryoshka-trained; pass matryoshka=True to force client-side truncation"
            )
        self.dims = dims
        self.send_dimensions = self._probe_dimensions() if send_dimensions is None else send_dimensions

    def _served_info(self) -> dict[str, Any] | None:
        try:
            body = self._request("GET", "/v1/models", None, retry_status=RETRY_STATUS - {409})
        except RemoteEmbeddingError as exc:
            if getattr(exc, "status", None) in (404, 405, 501):
                return None
            raise
        for entry in (body or {}).get("data") or []:
            info = entry.get("embedrail") if isinstance(entry, dict) else None
            if isinstance(info, dict) and self.model in {entry.get("id"), info.get("model"), info.get("model_id")}:
                return info
        return None

    def _probe_native_dims(self) -> int:
        vectors = self._post_embeddings([_PROBE_TEXT], None)
        return int(vectors.shape[1])

    def _probe_dimensions(self) -> bool:
        try:
            vectors = self._post_embeddings([_PROBE_TEXT], self.dims, retry=False)
        except RemoteEmbeddingError as exc:
            if getattr(exc, "status", None) in (400, 404, 422, 501):
                log.info("%s does not accept 'dimensions' (%s); truncating client-side", self.base_url, exc)
                return False
            raise
        ok = vectors.shape[1] == self.dims
        if not ok:
            log.info("%s ignored 'dimensions'; truncating client-side", self.base_url)
        return ok

    def _load_tokenizer(self, name: str) -> Any:
        from embedrail.embed_core.loading import load_fast_tokenizer

        return load_fast_tokenizer(name, name)

    # ------------------------------------------------------------------------------------------
    # HTTP
    # ------------------------------------------------------------------------------------------
    def _request(
        self, method: str, path: str, payload: dict[str, Any] | None, *, retry: bool = True,
        retry_status: frozenset[int] = RETRY_STATUS,
    ) -> Any:  # fmt: skip
        return request_json(self._client, method, self.base_url + path, payload, retry_status=retry_status,
                            attempts=(self.max_retries + 1) if retry else 1, backoff=self.backoff,
                            max_backoff=self.max_backoff, on_retry=partial(self.stats.add, http_retries=1))  # fmt: skip

    def _post_embeddings(self, texts: list[str], dimensions: int | None, *, retry: bool = True) -> np.ndarray:
        payload: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": self.encoding_format}
        if dimensions is not None:
            payload["dimensions"] = dimensions
        body = self._request("POST", "/v1/embeddings", payload, retry=retry)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or len(data) != len(texts):
            got = len(data) if isinstance(data, list) else type(data).__name__
            raise RemoteEmbeddingError(f"{self.base_url} returned {got} embeddings for {len(texts)} inputs")
        rows: list[Any] = [None] * len(texts)
        for pos, item in enumerate(data):
            idx = item.get("index", pos) if isinstance(item, dict) else pos
            emb = item.get("embedding") if isinstance(item, dict) else None
            if not isinstance(idx, int) or not 0 <= idx < len(texts) or emb is None:
                raise RemoteEmbeddingError(f"{self.base_url} returned a malformed embedding item at {pos}")
            if isinstance(emb, str):
                emb = np.frombuffer(base64.b64decode(emb), dtype="<f4")
            rows[idx] = np.asarray(emb, dtype=np.float32)
        if any(r is None for r in rows) or len({r.shape for r in rows}) != 1 or rows[0].ndim != 1:
            raise RemoteEmbeddingError(f"{self.base_url} returned embeddings of inconsistent shapes")
        usage = body.get("usage") or {}
        tokens = usage.get("prompt_tokens") or usage.get("total_tokens")
        self.stats.add(batches=1, tokens=tokens if isinstance(tokens, int) else 0)
        return np.stack(rows)

    # ------------------------------------------------------------------------------------------
    # Embedder interface
    # ------------------------------------------------------------------------------------------
    def _embed_unique(self, texts: list[str]) -> np.ndarray:
        if self._client is None:
            raise ModelError("this RemoteEmbedder was closed; create it again")
        out = np.empty((len(texts), self.dims), dtype=np.float32)
        dimensions = self.dims if self.send_dimensions else None
        for start in range(0, len(texts), self.batch_size):
            part = texts[start : start + self.batch_size]
            vectors = self._post_embeddings(part, dimensions)
            if vectors.shape[1] < self.dims:
                raise RemoteEmbeddingError(f"{self.base_url} returned {vectors.shape[1]}-d vectors, expected at least {self.dims}")
            out[start : start + len(part)] = truncate_and_normalize(vectors, self.dims)
        return out

    def fingerprint_components(self) -> dict[str, Any]:
        served = (self.server_info or {}).get("fingerprint_components")
        if isinstance(served, dict):
            comps = {k: served.get(k) for k in FINGERPRINT_KEYS}
            comps["dims"] = self.dims
            comps["document_prefix"] = self.document_prefix
            return comps
        return {
            "model": f"remote:{self.model}",
            "revision": self.revision,
            "content": None,
            "dims": self.dims,
            "pooling": self.pooling,
            "normalize": True,
            "document_prefix": self.document_prefix,
            "document_instruction": None,
            "max_tokens": None,
            "append_eos": None,
            "quantize": None,
        }

    def _info_extra(self) -> dict[str, Any]:
        low = (self.server_info or {}).get("mrl_min_dims")  # what `embedrail serve` says of its model
        return {"base_url": self.base_url, "mrl_min_dims": low if self.matryoshka else None}

    @classmethod
    def from_info(cls, info: dict[str, Any], **overrides: Any) -> RemoteEmbedder:
        """Rebuild a remote embedder from :meth:`embedding_info` (pass ``api_key=`` again)."""
        kwargs: dict[str, Any] = {
            "dims": info.get("dims"),
            "revision": info.get("revision"),
            "document_prefix": info.get("document_prefix"),
            "matryoshka": info.get("matryoshka"),
        }
        if info.get("query_instruction") is not None:
            kwargs["query_instruction"] = info["query_instruction"]
        else:
            kwargs["query_prefix"] = info.get("query_prefix")
        kwargs.update(overrides)
        base_url = kwargs.pop("base_url", info.get("base_url"))
        return cls(base_url, info["model"], **kwargs)

    def count_tokens(self, texts: Any) -> list[int]:
        """Exact with ``tokenizer=`` given, else a conservative estimate (words, long words split)."""
        items = check_texts([texts] if isinstance(texts, str) else texts)
        if self.tokenizer is not None:
            return [len(ids) for ids in self.tokenizer([t.strip() for t in items])["input_ids"]]
        return [approx_count(t) for t in items]

    def split_text(self, text: str, max_tokens: int | None = None, overlap: int = 0) -> list[str]:
        """Like :meth:`Embedder.split_text`. Without a tokenizer (``tokenizer=`` not given) token
        boundaries are approximated by words (long words cut every 4 characters), which
        over-estimates real token counts, so chunks stay within the limit for ordinary text."""
        if not isinstance(text, str):
            raise InputError(f"split_text takes a str, got {type(text).__name__}")
        if not text.strip():
            return []
        if max_tokens is None:
            max_tokens = max(1, self.max_tokens - 2 - (approx_count(self.document_prefix) if self.document_prefix.strip() else 0))
        if self.tokenizer is not None:
            offsets = self.tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).offsets
        else:
            offsets = approx_token_spans(text)
        return split_by_offsets(text, offsets, max_tokens, overlap)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None  # type: ignore[assignment]
