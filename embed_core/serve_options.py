"""The options of ``embedrail serve``, declared once (also ``python -m embedrail.embed_core.serve``). Imports no
web framework: the CLI builds its parser with them whether or not the ``serve`` extra is installed."""

from __future__ import annotations

import argparse
import os

from embedrail.embed_core.request_batcher import MAX_INPUTS, MAX_WAIT
from embedrail.embed_core.serve_guard import ServeLimits

__all__ = ["API_KEY_ENV", "add_arguments"]

#: where ``--api-key`` comes from when it is not given (a key on the command line shows in ``ps``)
API_KEY_ENV = "EMBEDRAIL_SERVE_API_KEY"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The server's options, declared once: for ``embedrail serve`` and ``python -m embedrail.embed_core.serve``."""

    def positive(s: str) -> int:
        v = int(s)
        if v < 1:
            raise argparse.ArgumentTypeError(f"must be at least 1: {v}")
        return v

    p.add_argument("--model", default="minilm", help="the embedding model: minilm, a model dir or a hub id (default: minilm)")
    p.add_argument("--dims", type=positive, help="serve Matryoshka-truncated vectors of this size (default: native)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="model precision (default: see reindex --dtype)")
    p.add_argument("--max-tokens", type=positive, help="truncate inputs at this many tokens (default: the model's limit)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for a network: use --api-key)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--reranker", metavar="MODEL", help="also serve this reranker on /v1/rerank (and TEI's /rerank)")
    p.add_argument("--workers", type=positive,
                   help="threads running the model on merged requests (default: one per CPU core up to 4 on CPU, 1 on GPU)")
    p.add_argument("--merge-wait-ms", type=float, default=MAX_WAIT * 1000,
                   help=f"how long a request waits for concurrent ones to share its forward pass (default {MAX_WAIT * 1000:g})")
    p.add_argument("--merge-max", type=positive, default=MAX_INPUTS,
                   help=f"most inputs in one merged model call (1: no merging; default {MAX_INPUTS})")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV) or None,
                   help=f"require Authorization: Bearer KEY on every route but /health and /metrics (default: ${API_KEY_ENV})")
    p.add_argument("--max-batch", type=positive, default=ServeLimits.max_batch,
                   help=f"most inputs (or rerank documents) per request; more: 400 (default {ServeLimits.max_batch})")
    p.add_argument("--max-input-tokens", type=positive,
                   help="most tokens per input; more: 413 (default: no limit; the model truncates at its own)")
    p.add_argument("--max-concurrent-requests", type=positive, default=ServeLimits.max_concurrent_requests,
                   help=f"requests in flight; more: 429 with Retry-After (default {ServeLimits.max_concurrent_requests})")
    p.add_argument("--max-request-bytes", type=positive, default=ServeLimits.max_request_bytes,
                   help=f"largest request body; more: 413 (default {ServeLimits.max_request_bytes})")


