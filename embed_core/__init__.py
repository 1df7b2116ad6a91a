"""embed_core: the model side of embedrail.

Loads an embedding model (the packaged all-MiniLM-L6-v2 offline, Qwen3-Embedding and other
sentence-transformers-style models from a directory or the hub, or a remote OpenAI-compatible
server), and turns texts into L2-normalised float32 vectors, fast and reproducibly::

    from embed_core import open_embedder
    emb = open_embedder("minilm")            # or a model dir, a hub id, or http://host:8000/v1#model
    vectors = emb.embed_documents(["some text", "more text"])   # (2, 384) float32, unit norm

Importing this package touches no network and loads no model.
"""

from __future__ import annotations

from .base import BaseEmbedder, EmbedStats
from .config import DEFAULT_MODEL, QWEN3_DEFAULT_TASK, QWEN3_QUERY_TEMPLATE, EmbedderConfig
from .embedder import Embedder
from .factory import embedder_from_info, is_remote_model, open_embedder
from .fingerprint import compute_fingerprint
from .pooling import truncate_and_normalize
from .spec import MINILM_ID, packaged_minilm_dir

__all__ = [
    "DEFAULT_MODEL",
    "BaseEmbedder",
    "EmbedStats",
    "Embedder",
    "EmbedderConfig",
    "MINILM_ID",
    "QWEN3_DEFAULT_TASK",
    "QWEN3_QUERY_TEMPLATE",
    "RemoteEmbedder",
    "compute_fingerprint",
    "embedder_from_info",
    "is_remote_model",
    "open_embedder",
    "packaged_minilm_dir",
    "truncate_and_normalize",
]


def __getattr__(name: str) -> object:  # lazy: the remote backend imports httpx
    if name == "RemoteEmbedder":
        from .remote import RemoteEmbedder

        return RemoteEmbedder
    raise AttributeError(f"module 'embed_core' has no attribute {name!r}")
