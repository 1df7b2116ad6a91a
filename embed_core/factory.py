"""One way to get an embedder from a name, for every caller (the sync engine, Airflow, the CLI, the
query side):

- ``"minilm"``: the packaged offline default (no download);
- a local model directory (absolute, ``~/...`` or ``./...``);
- a Hugging Face hub id (downloaded here, i.e. only because the user named it);
- ``http(s)://host:port/v1#served-model``: a remote OpenAI-compatible server (``embedrail serve``, vLLM,
  TEI, ...). The API key is never part of the name: it comes from ``api_key=`` or the environment
  variable ``EMBEDRAIL_EMBED_API_KEY``.

``embedder_from_info(info)`` loads what an index records (``embedding_info()`` in its metadata).
"""

from __future__ import annotations

import os
from typing import Any

from embedrail.errors import ConfigError, ModelError

from .base import BaseEmbedder
from .config import DEFAULT_MODEL

__all__ = ["API_KEY_ENV", "embedder_from_info", "is_remote_model", "open_embedder", "split_remote_model"]

#: where the remote backend's API key comes from when none is passed
API_KEY_ENV = "EMBEDRAIL_EMBED_API_KEY"


def is_remote_model(name: str) -> bool:
    return isinstance(name, str) and name.startswith(("http://", "https://"))


def split_remote_model(name: str) -> tuple[str, str]:
    """``http://host:8000/v1#Qwen/Qwen3-Embedding-4B`` -> (base URL, served model name)."""
    base, _, served = name.partition("#")
    if not served:
        raise ConfigError(f"a remote model is given as http(s)://host:port/v1#model-name, got {name!r}")
    return base, served


def open_embedder(
    model: str | None = None, *, dims: int | None = None, device: str = "auto", api_key: str | None = None, **kwargs: Any
) -> BaseEmbedder:
    """An embedder for ``model`` (see the module doc; default: the packaged MiniLM) at ``dims``.

    ``device`` applies to local models (``auto``, ``cpu``, ``cuda``, ``cuda:N``); other keywords go to
    ``Embedder.load`` or ``RemoteEmbedder``.
    """
    name = model or DEFAULT_MODEL
    if is_remote_model(name):
        from .remote import RemoteEmbedder

        base, served = split_remote_model(name)
        kwargs.pop("dtype", None)  # the server runs the model at its own precision
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        return RemoteEmbedder(base, served, dims=dims, api_key=key, **kwargs)
    if api_key is not None:
        raise ConfigError("api_key applies to remote models (http(s)://host:port/v1#model-name) only")
    from .embedder import Embedder

    return Embedder.load(name, dims=dims, device=device, **kwargs)


def embedder_from_info(info: dict[str, Any], *, check: bool = True, **overrides: Any) -> BaseEmbedder:
    """Load the embedder an ``embedding_info()`` describes (e.g. read from index metadata).

    With ``check`` the loaded fingerprint must equal the recorded one (else ``ModelError``: the model
    files or settings changed). ``overrides`` go to the loader: ``device`` for a local model, ``model=``
    for a local model directory that moved (a local fingerprint hashes the files, not the path),
    ``api_key``/``base_url`` for a remote one (the key defaults to ``EMBEDRAIL_EMBED_API_KEY``).
    """
    if info.get("backend") == "remote":
        from .remote import RemoteEmbedder

        overrides.pop("device", None)
        overrides.setdefault("api_key", os.environ.get(API_KEY_ENV))
        emb: BaseEmbedder = RemoteEmbedder.from_info(info, **overrides)
    else:
        from .embedder import Embedder

        kwargs: dict[str, Any] = {
            "dims": info.get("dims"),
            "revision": info.get("revision") if info.get("source") == "hub" else None,
            "max_tokens": info.get("max_tokens"),
            "document_prefix": info.get("document_prefix"),
            "pooling": info.get("pooling"),
        }
        if info.get("query_instruction") is not None:
            kwargs["query_instruction"] = info["query_instruction"]
        else:
            kwargs["query_prefix"] = info.get("query_prefix")
        if info.get("dims") != info.get("native_dims"):
            kwargs["matryoshka"] = True
        model = overrides.pop("model", info["model"])
        kwargs.update(overrides)
        emb = Embedder.load(model, **kwargs)
    if check and info.get("fingerprint") and emb.fingerprint != info["fingerprint"]:
        emb.close()
        raise ModelError(
            f"model {info.get('model')!r} reloaded with fingerprint {emb.fingerprint}, but the stored vectors were "
            f"made with {info['fingerprint']} (the model files or settings changed); re-index, or restore the model"
        )
    return emb
