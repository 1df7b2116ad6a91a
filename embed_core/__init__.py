"""embed_core: the model side of embedrail.

Loads an embedding model (the packaged all-MiniLM-L6-v2 offline, Qwen3-Embedding and other
sentence-transformers-style models from a directory or the hub, or a remote OpenAI-compatible
server), and turns texts into L2-normalised float32 vectors, fast and reproducibly::

    from embedrail.embed_core import open_embedder
    emb = open_embedder("minilm")            # or a model dir, a hub id, or http://host:8000/v1#model
    vectors = emb.embed_documents(["some text", "more text"])   # (2, 384) float32, unit norm

    from embedrail.embed_core import open_reranker      # the second stage of a search (embed_core.rerank)
    scores = open_reranker("/models/Qwen3-Reranker-0.6B").rerank("a query", ["doc one", "doc two"])

Importing this package touches no network, loads no model and does not import torch (the local
backend does, on first use).
"""

from __future__ import annotations

from typing import Any

from embedrail.embed_core.base import BaseEmbedder, EmbedStats
from embedrail.embed_core.config import (
    DEFAULT_MODEL,
    QWEN3_DEFAULT_TASK,
    QWEN3_QUERY_TEMPLATE,
    EmbedderConfig,
)
from embedrail.embed_core.factory import embedder_from_info, is_remote_model, open_embedder
from embedrail.embed_core.fingerprint import compute_fingerprint
from embedrail.embed_core.spec import MINILM_ID, packaged_minilm_dir

__all__ = [
    "DEFAULT_MODEL",
    "BaseEmbedder",
    "EmbedStats",
    "Embedder",
    "EmbedderConfig",
    "BaseReranker",
    "MINILM_ID",
    "QWEN3_DEFAULT_TASK",
    "QWEN3_QUERY_TEMPLATE",
    "RemoteEmbedder",
    "RemoteReranker",
    "Reranker",
    "compute_fingerprint",
    "embedder_from_info",
    "is_remote_model",
    "open_embedder",
    "open_reranker",
    "packaged_minilm_dir",
    "info_at_dims",
    "truncate_and_normalize",
]

# imported on first use: the local backend pulls in torch and transformers, the remote one httpx
_LAZY = {"Embedder": ".embedder", "RemoteEmbedder": ".remote", "truncate_and_normalize": ".mrl", "info_at_dims": ".mrl",
         "BaseReranker": ".rerank", "Reranker": ".rerank", "open_reranker": ".rerank", "RemoteReranker": ".remote_rerank"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
