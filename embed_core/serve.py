"""``embedrail serve``: an OpenAI-compatible embeddings endpoint over a local :class:`Embedder`.

Endpoints
---------
- ``POST /v1/embeddings`` — body ``{"input": str | [str], "model": str, "dimensions": int?,
  "encoding_format": "float" | "base64"}`` plus two embedrail extensions:

  - ``"input_type"``: absent/``null`` embeds the texts verbatim (like any OpenAI-compatible
    server); ``"query"`` adds the model's query instruction (Qwen3: ``Instruct: {task}\\nQuery:``)
    or query prefix; ``"document"`` adds the document prefix.
  - ``"instruction"``: the task for ``"input_type": "query"`` on instruction-style models.

  ``input`` may also be token ids of the served model's tokenizer, as in the OpenAI API: a list of
  ints (one input) or a list of such lists; the model's special tokens are added around them.
  Concurrent requests are merged into shared forward passes run by a few workers (:class:`Batcher`;
  what that buys: ``benchmarks/serve_concurrency.py``, docs/benchmarks.md).

  ``dimensions`` below the served size truncates + renormalises (Matryoshka models only).
- ``GET /v1/models`` — the served model; its ``"embedrail"`` member is the model's
  ``embedding_info()``, which :class:`~embed_core.remote.RemoteEmbedder` reads so that its
  fingerprint matches a local load of the same model.
- ``POST /v1/rerank`` (with a reranker, ``serve(..., reranker=...)`` / ``embedrail serve --reranker M``) —
  the Jina/Cohere/vLLM shape: ``{"model"?, "query", "documents": [str | {"text": str}], "top_n"?,
  "return_documents"?, "instruction"?}`` -> ``{"model", "results": [{"index", "relevance_score",
  "document"?}], "usage": {"total_tokens"}}``, best first. ``POST /rerank`` takes TEI's shape
  (``{"query", "texts", "return_text"?}`` -> ``[{"index", "score", "text"?}]``). Scores are the
  reranker's own (P(yes) for Qwen3-Reranker, the saved activation for cross-encoders).
- ``GET /health`` — ``{"status": "ok", "model": ..., "dims": ..., "reranker": ...}``.
- ``GET /metrics`` — Prometheus metrics (``serve_guard.ServeMetrics``).

Errors are OpenAI-shaped: ``{"error": {"message", "type", "param", "code"}}``.

On a shared network (``serve_guard``): ``api_key`` (Bearer; 401 without it), ``max_batch`` inputs per
request (400), ``max_input_tokens`` per text (413), ``max_request_bytes`` (413),
``max_concurrent_requests`` (429 with ``Retry-After``).

Run it with ``embedrail serve --model minilm --port 8000`` (``add_arguments`` declares its options, once,
for that command and for ``python -m embedrail.embed_core.serve``) or ``serve("minilm", port=8000)``.
"""

import argparse
import base64
import json
import logging
import threading
import time
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from embedrail.embed_core.base import BaseEmbedder
from embedrail.embed_core.mrl import truncate_and_normalize
from embedrail.embed_core.request_batcher import MAX_INPUTS, MAX_WAIT, Batcher, default_workers
from embedrail.embed_core.serve_guard import ServeLimits, ServeMetrics, guard
from embedrail.embed_core.serve_options import API_KEY_ENV, add_arguments
from embedrail.embed_core.text import check_texts
from embedrail.errors import ConfigError, EmbedrailError, InputError, ModelError

log = logging.getLogger(__name__)

try:  # orjson writes numpy rows directly (float32: the shortest text that reads back the same float32)
    import orjson

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)

except ImportError:  # pragma: no cover - the serve extra installs orjson

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, default=lambda a: a.tolist() if isinstance(a, np.ndarray) else str(a)).encode()


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    dimensions: int | None = None
    encoding_format: Literal["float", "base64"] = "float"
    input_type: Literal["query", "document"] | None = None
    instruction: str | None = None
    user: str | None = None


class RerankRequest(BaseModel):
    """The ``/v1/rerank`` body (Jina / Cohere / vLLM); ``instruction`` is an embedrail extension."""

    model_config = ConfigDict(extra="ignore")

    query: str
    documents: list[str | dict[str, Any]]
    model: str | None = None
    top_n: int | None = None
    return_documents: bool = False
    instruction: str | None = None


class TeiRerankRequest(BaseModel):
    """TEI's ``/rerank`` body."""

    model_config = ConfigDict(extra="ignore")

    query: str
    texts: list[str]
    return_text: bool = False
    raw_scores: bool = False
    truncate: bool | None = None
    instruction: str | None = None


class _ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(
        status_code=status, content={"error": {"message": message, "type": kind, "param": param, "code": code}}
    )


def _inputs(value: Any) -> tuple[list[Any], bool]:
    """(inputs, are they token ids) from an OpenAI ``input``: a string, strings, a list of token
    ids (one input) or a list of such lists."""
    if isinstance(value, str):
        return [value], False
    if value and all(isinstance(x, int) for x in value):
        return [list(value)], True
    if value and all(isinstance(x, list) for x in value):
        return [list(x) for x in value], True
    return list(value), False


def create_app(embedder: BaseEmbedder, *, max_inputs: int | None = None, max_wait: float = MAX_WAIT,
               merge_inputs: int | None = None, reranker: Any = None, workers: int | None = None,
               limits: ServeLimits | None = None, metrics: bool = True) -> Any:  # fmt: skip
    """The ASGI app serving ``embedder`` and, given a ``reranker`` (an ``embed_core.rerank.BaseReranker``),
    the rerank endpoints (see the module docstring for the API), behind ``limits`` (``ServeLimits``: API
    key, sizes, requests in flight; ``max_inputs`` overrides its ``max_batch``) with Prometheus metrics
    on ``/metrics`` (``metrics``). Concurrent requests are merged into shared embedder calls run by
    ``workers`` threads (:class:`Batcher`: ``max_wait`` seconds and ``merge_inputs`` inputs at most;
    default workers: :func:`default_workers`); ``app.state.batcher`` is that batcher; whoever runs the app
    closes it (``serve`` and ``BackgroundServer`` do)."""
    limits = limits or ServeLimits()
    max_inputs = max_inputs or limits.max_batch
    app = FastAPI(title="embedrail embeddings", version="1")
    batcher: Batcher | None = None
    meter = ServeMetrics(lambda: batcher.queued_inputs if batcher is not None else 0) if metrics else None
    batcher = app.state.batcher = Batcher(embedder, max_inputs=merge_inputs or max_inputs, max_wait=max_wait, workers=workers,
                                          on_call=meter.on_call if meter is not None else None)  # fmt: skip
    app.state.metrics, app.state.limits = meter, limits
    created = int(time.time())
    names = {n for n in (embedder.model, embedder.model_id) if n}
    if embedder.model == "minilm":
        names |= {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
    info = embedder.embedding_info()
    rerank_names = {n for n in (getattr(reranker, "model", None), getattr(reranker, "model_id", None)) if n}

    def too_long(texts: list[Any], param: str) -> None:
        """413 for a text over ``max_input_tokens`` (counted only where its UTF-8 size could exceed it)."""
        limit = limits.max_input_tokens
        if limit is None:
            return
        model = reranker if param == "documents" else embedder
        for i, text in enumerate(texts):
            if isinstance(text, str) and len(text.encode()) + 4 > limit and hasattr(model, "count_tokens"):
                n = model.count_tokens([text])[0]
                if n > limit:
                    raise _ApiError(413, f"{param}[{i}] has {n} tokens; at most {limit} per input (--max-input-tokens)",
                                    param, "input_too_long")  # fmt: skip
            elif isinstance(text, list) and len(text) > limit:  # token ids
                raise _ApiError(413, f"{param}[{i}] has {len(text)} tokens; at most {limit} per input (--max-input-tokens)",
                                param, "input_too_long")  # fmt: skip

    def ranked(query: str, texts: list[str], instruction: str | None, top_n: int | None = None) -> tuple[list[tuple[int, float]], int]:
        """``(index, score)`` best first, and the tokens this call ran (counted per thread: calls may overlap)."""
        if reranker is None:
            raise _ApiError(404, "this server has no reranker; start it with --reranker MODEL", None, "not_found")
        if len(texts) > max_inputs:
            raise _ApiError(400, f"at most {max_inputs} documents per request; got {len(texts)}", "documents", "too_many_inputs")
        too_long(texts, "documents")
        try:
            started = time.perf_counter()
            with reranker.stats.tally() as mine:
                order = reranker.rank(query, texts, top_n, instruction=instruction)
            if meter is not None:
                meter.tokens.labels("rerank").inc(mine.tokens)
                meter.model_seconds.labels("rerank").inc(time.perf_counter() - started)
            return order, mine.tokens
        except (InputError, ConfigError) as exc:
            raise _ApiError(400, str(exc), "query", "invalid_value") from exc
        except EmbedrailError as exc:
            raise _ApiError(500, str(exc), None, "model_error") from exc

    @app.exception_handler(_ApiError)
    async def _api_error(_: Request, exc: _ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(400, f"invalid request: {loc}: {first.get('msg', 'bad value')}", loc or None, "invalid_value")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": embedder.model_id, "dims": embedder.dims, "fingerprint": embedder.fingerprint,
                "reranker": reranker.describe() if reranker is not None else None,
                "batches": {"workers": batcher.workers, "calls": batcher.calls, "requests": batcher.requests,
                            "busy_s": round(batcher.busy, 3)}}  # fmt: skip

    @app.get("/metrics")
    def metrics_endpoint() -> Any:
        if meter is None:
            raise _ApiError(404, "this server keeps no metrics", None, "not_found")
        return Response(meter.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        entry = {"id": embedder.model_id, "object": "model", "created": created, "owned_by": "embedrail", "embedrail": info}
        data = [entry]
        if reranker is not None:
            data.append({"id": reranker.model_id, "object": "model", "created": created, "owned_by": "embedrail",
                         "embedrail_reranker": reranker.describe()})  # fmt: skip
        return {"object": "list", "data": data}

    @app.post("/v1/rerank")
    def rerank_v1(req: RerankRequest) -> Any:
        if req.model and rerank_names and req.model not in rerank_names:
            raise _ApiError(404, f"model {req.model!r} is not served here; the reranker is {reranker.model_id!r}",
                            "model", "model_not_found")  # fmt: skip
        texts = []
        for i, doc in enumerate(req.documents):
            text = doc.get("text") if isinstance(doc, dict) else doc
            if not isinstance(text, str):
                raise _ApiError(400, f"documents[{i}] must be a string or {{'text': str}}", "documents", "invalid_value")
            texts.append(text)
        if req.top_n is not None and req.top_n < 1:
            raise _ApiError(400, "top_n must be at least 1", "top_n", "invalid_value")
        order, tokens = ranked(req.query, texts, req.instruction, req.top_n)
        results = []
        for i, score in order:
            item: dict[str, Any] = {"index": i, "relevance_score": score}
            if req.return_documents:
                item["document"] = {"text": texts[i]}
            results.append(item)
        return JSONResponse({"id": f"rerank-{time.time_ns()}", "model": reranker.model_id, "results": results,
                             "usage": {"total_tokens": int(tokens)}})  # fmt: skip

    @app.post("/rerank")
    def rerank_tei(req: TeiRerankRequest) -> Any:
        order, _ = ranked(req.query, list(req.texts), req.instruction)
        return JSONResponse([{"index": i, "score": score, **({"text": req.texts[i]} if req.return_text else {})}
                             for i, score in order])  # fmt: skip

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest) -> Any:
        # On the event loop: checks, then the batcher (whose thread runs the model) is awaited, so a
        # request costs no worker thread while it waits; many single-text requests stay cheap.
        if req.model and req.model not in names:
            raise _ApiError(404, f"model {req.model!r} is not served here; this server serves {embedder.model_id!r}",
                            "model", "model_not_found")  # fmt: skip
        texts, token_ids = _inputs(req.input)
        if token_ids and not hasattr(embedder, "embed_token_ids"):
            raise _ApiError(400, "this server's embedder takes text only, not token ids", "input", "invalid_value")
        if token_ids and req.input_type is not None:
            raise _ApiError(400, "token-id inputs are embedded verbatim: input_type must be absent", "input_type", "invalid_value")
        if not texts:
            raise _ApiError(400, "input must not be empty", "input", "invalid_value")
        if len(texts) > max_inputs:
            raise _ApiError(400, f"at most {max_inputs} inputs per request; got {len(texts)}", "input", "too_many_inputs")
        dims = embedder.dims
        if req.dimensions is not None:
            if not 1 <= req.dimensions <= embedder.dims:
                raise _ApiError(400, f"dimensions must be between 1 and {embedder.dims}", "dimensions", "invalid_value")
            if req.dimensions != embedder.dims and not getattr(embedder, "matryoshka", False):
                raise _ApiError(400, f"{embedder.model_id} is not a Matryoshka model: dimensions must be {embedder.dims}",
                                "dimensions", "invalid_value")  # fmt: skip
            dims = req.dimensions
        if req.instruction is not None and req.input_type != "query":
            raise _ApiError(400, "instruction applies only with input_type='query'", "instruction", "invalid_value")
        try:
            if not token_ids:  # a bad input is refused here, before it can share a call with others
                check_texts(texts, what="queries" if req.input_type == "query" else "texts")
            too_long(texts, "input")
            vectors, tokens = await batcher.embed((req.input_type, req.instruction, token_ids), texts)
        except (InputError, ConfigError) as exc:
            raise _ApiError(400, str(exc), "input", "invalid_value") from exc
        except ModelError as exc:
            raise _ApiError(500, str(exc), None, "model_error") from exc
        except EmbedrailError as exc:
            raise _ApiError(500, str(exc), None, "error") from exc
        if dims != vectors.shape[1]:
            vectors = truncate_and_normalize(vectors, dims)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        b64 = req.encoding_format == "base64"
        data = [{"object": "embedding", "index": i, "embedding": base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") if b64 else row}
                for i, row in enumerate(vectors)]  # fmt: skip
        # serialised here (numpy rows as they are), not walked value by value by FastAPI's encoder
        body = _dumps({"object": "list", "data": data, "model": embedder.model_id,
                       "usage": {"prompt_tokens": int(tokens), "total_tokens": int(tokens)}})  # fmt: skip
        return Response(body, media_type="application/json")

    guarded = guard(app, limits, meter)
    guarded.state = app.state  # what the app's runners read (the batcher)
    return guarded


def serve(
    model: str | BaseEmbedder = "minilm",
    host: str = "127.0.0.1",
    port: int = 8000,
    dims: int | None = None,
    device: str = "auto",
    *,
    log_level: str = "info",
    max_wait: float = MAX_WAIT,
    merge_inputs: int = MAX_INPUTS,
    reranker: Any = None,
    workers: int | None = None,
    limits: ServeLimits | None = None,
    **load_kwargs: Any,
) -> None:
    """Load ``model`` (or take a ready embedder) and serve it until interrupted (blocking).

    This is what the ``embedrail serve`` CLI subcommand calls. ``load_kwargs`` go to
    :meth:`Embedder.load` (e.g. ``max_tokens``, ``query_instruction``, ``document_prefix``).
    ``limits``: the API key and the request limits (``ServeLimits``); without an API key, bind to
    ``0.0.0.0`` only on a trusted network. ``max_wait``
    (seconds) and ``merge_inputs`` bound how long and how far concurrent requests are merged; ``workers``
    threads run the merged calls (default: one per CPU core up to 4 on CPU, one on a GPU).
    ``reranker``: a model name for :func:`embed_core.open_reranker` (on the same ``device``) or a loaded
    reranker; it adds ``/v1/rerank`` and ``/rerank``.
    """
    import uvicorn

    if isinstance(model, BaseEmbedder):
        embedder = model
    else:
        from embedrail.embed_core.embedder import Embedder

        embedder = Embedder.load(model, dims=dims, device=device, **load_kwargs)
    if isinstance(reranker, str):
        from embedrail.embed_core.rerank import open_reranker

        reranker = open_reranker(reranker, device=device)
    app = create_app(embedder, max_wait=max_wait, merge_inputs=merge_inputs, reranker=reranker, workers=workers, limits=limits)
    log.info("serving %s (dims=%d) on http://%s:%d/v1/embeddings%s", embedder.model_id, embedder.dims, host, port,
             "" if limits and limits.api_key else " (no API key: anyone who reaches it may use it)")  # fmt: skip
    if reranker is not None:
        log.info("serving reranker %s on http://%s:%d/v1/rerank (and TEI's /rerank)", reranker.model_id, host, port)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        app.state.batcher.close()
        embedder.close()
        if reranker is not None:
            reranker.close()


class BackgroundServer:
    """Serve an embedder from a background thread (tests, notebooks)::

        with BackgroundServer(embedder) as url:
            remote = Embedder.remote(url, embedder.model)
    """

    def __init__(self, embedder: BaseEmbedder, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 reranker: Any = None, workers: int | None = None, limits: ServeLimits | None = None) -> None:  # fmt: skip
        import uvicorn

        self.embedder = embedder
        self.app = create_app(embedder, reranker=reranker, workers=workers, limits=limits)
        config = uvicorn.Config(self.app, host=host, port=port, log_level=log_level, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="embedrail-serve", daemon=True)
        self.url = ""

    def start(self, timeout: float = 30.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the embedding server did not start")
            time.sleep(0.02)
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.app.state.batcher.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_from_args(a: argparse.Namespace) -> None:
    """``serve`` with the options of ``add_arguments``."""
    limits = ServeLimits(api_key=a.api_key or None, max_batch=a.max_batch, max_input_tokens=a.max_input_tokens,
                         max_concurrent_requests=a.max_concurrent_requests, max_request_bytes=a.max_request_bytes)  # fmt: skip
    kwargs: dict[str, Any] = {"max_tokens": a.max_tokens} if a.max_tokens else {}
    if a.dtype:
        kwargs["dtype"] = a.dtype
    serve(a.model, a.host, a.port, a.dims, a.device, log_level="warning", max_wait=a.merge_wait_ms / 1000,
          merge_inputs=a.merge_max, reranker=a.reranker, workers=a.workers, limits=limits, **kwargs)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m embedrail.embed_core.serve", description="the same server as `embedrail serve`")
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    serve_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    main()


__all__ = ["API_KEY_ENV", "BackgroundServer", "Batcher", "EmbeddingRequest", "RerankRequest", "ServeLimits", "TeiRerankRequest",
           "add_arguments", "create_app", "default_workers", "main", "serve", "serve_from_args"]
