"""``embedrail serve``: an OpenAI-compatible embeddings endpoint over a local :class:`Embedder`.

Endpoints
---------
- ``POST /v1/embeddings`` — body ``{"input": str | [str], "model": str, "dimensions": int?,
  "encoding_format": "float" | "base64"}`` plus two embedrail extensions:

  - ``"input_type"``: absent/``null`` embeds the texts verbatim (like any OpenAI-compatible
    server); ``"query"`` adds the model's query instruction (Qwen3: ``Instruct: {task}\\nQuery:``)
    or query prefix; ``"document"`` adds the document prefix.
  - ``"instruction"``: the task for ``"input_type": "query"`` on instruction-style models.

  ``dimensions`` below the served size truncates + renormalises (Matryoshka models only).
- ``GET /v1/models`` — the served model; its ``"embedrail"`` member is the model's
  ``embedding_info()``, which :class:`~embed_core.remote.RemoteEmbedder` reads so that its
  fingerprint matches a local load of the same model.
- ``GET /health`` — ``{"status": "ok", "model": ..., "dims": ...}``.

Errors are OpenAI-shaped: ``{"error": {"message", "type", "param", "code"}}``.

Run it with ``serve("minilm", port=8000)`` (the ``embedrail serve`` CLI subcommand calls exactly
this) or ``python -m embed_core.serve --model minilm --port 8000``.
"""

import argparse
import base64
import logging
import threading
import time
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from embedrail.errors import ConfigError, EmbedrailError, InputError, ModelError

from .base import BaseEmbedder
from .pooling import truncate_and_normalize

log = logging.getLogger(__name__)

#: Most inputs one request may carry.
MAX_INPUTS = 4096


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: str | list[str]
    model: str | None = None
    dimensions: int | None = None
    encoding_format: Literal["float", "base64"] = "float"
    input_type: Literal["query", "document"] | None = None
    instruction: str | None = None
    user: str | None = None


class _ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(
        status_code=status, content={"error": {"message": message, "type": kind, "param": param, "code": code}}
    )


def create_app(embedder: BaseEmbedder, *, max_inputs: int = MAX_INPUTS) -> FastAPI:
    """A FastAPI app serving ``embedder`` (see the module docstring for the API)."""
    app = FastAPI(title="embedrail embeddings", version="1")
    lock = threading.Lock()  # one forward pass at a time; keeps usage counts per request exact
    created = int(time.time())
    names = {n for n in (embedder.model, embedder.model_id) if n}
    if embedder.model == "minilm":
        names |= {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
    info = embedder.embedding_info()

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
        return {"status": "ok", "model": embedder.model_id, "dims": embedder.dims, "fingerprint": embedder.fingerprint}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        entry = {"id": embedder.model_id, "object": "model", "created": created, "owned_by": "embedrail", "embedrail": info}
        return {"object": "list", "data": [entry]}

    @app.post("/v1/embeddings")
    def embeddings(req: EmbeddingRequest) -> Any:
        if req.model and req.model not in names:
            raise _ApiError(404, f"model {req.model!r} is not served here; this server serves {embedder.model_id!r}",
                            "model", "model_not_found")  # fmt: skip
        texts = [req.input] if isinstance(req.input, str) else req.input
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
        with lock:
            before = embedder.stats.tokens
            try:
                if req.input_type == "query":
                    vectors = embedder.embed_queries(texts, instruction=req.instruction)
                elif req.input_type == "document":
                    vectors = embedder.embed_documents(texts)
                else:
                    vectors = embedder.embed_raw(texts)
            except (InputError, ConfigError) as exc:
                raise _ApiError(400, str(exc), "input", "invalid_value") from exc
            except ModelError as exc:
                raise _ApiError(500, str(exc), None, "model_error") from exc
            except EmbedrailError as exc:
                raise _ApiError(500, str(exc), None, "error") from exc
            tokens = embedder.stats.tokens - before
        if dims != vectors.shape[1]:
            vectors = truncate_and_normalize(vectors, dims)
        data = []
        for i, row in enumerate(vectors):
            value: Any = (
                base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
                if req.encoding_format == "base64"
                else row.tolist()
            )
            data.append({"object": "embedding", "index": i, "embedding": value})
        return {
            "object": "list",
            "data": data,
            "model": embedder.model_id,
            "usage": {"prompt_tokens": int(tokens), "total_tokens": int(tokens)},
        }

    return app


def serve(
    model: str | BaseEmbedder = "minilm",
    host: str = "127.0.0.1",
    port: int = 8000,
    dims: int | None = None,
    device: str = "auto",
    *,
    log_level: str = "info",
    **load_kwargs: Any,
) -> None:
    """Load ``model`` (or take a ready embedder) and serve it until interrupted (blocking).

    This is what the ``embedrail serve`` CLI subcommand calls. ``load_kwargs`` go to
    :meth:`Embedder.load` (e.g. ``max_tokens``, ``query_instruction``, ``document_prefix``).
    Bind to ``0.0.0.0`` only on a trusted network: there is no authentication.
    """
    import uvicorn

    if isinstance(model, BaseEmbedder):
        embedder = model
    else:
        from .embedder import Embedder

        embedder = Embedder.load(model, dims=dims, device=device, **load_kwargs)
    app = create_app(embedder)
    log.info("serving %s (dims=%d) on http://%s:%d/v1/embeddings", embedder.model_id, embedder.dims, host, port)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        embedder.close()


class BackgroundServer:
    """Serve an embedder from a background thread (tests, notebooks)::

        with BackgroundServer(embedder) as url:
            remote = Embedder.remote(url, embedder.model)
    """

    def __init__(self, embedder: BaseEmbedder, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        import uvicorn

        self.embedder = embedder
        config = uvicorn.Config(create_app(embedder), host=host, port=port, log_level=log_level, lifespan="off")
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

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m embed_core.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dims", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-tokens", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    kwargs = {"max_tokens": args.max_tokens} if args.max_tokens else {}
    serve(args.model, args.host, args.port, args.dims, args.device, **kwargs)


if __name__ == "__main__":
    main()


__all__ = ["BackgroundServer", "EmbeddingRequest", "create_app", "main", "serve"]
