"""One way to get an embedder from a name, for every caller (the sync engine, Airflow, the CLI, the
query side):

- ``"minilm"``: the packaged offline default (no download);
- a local model directory (absolute, ``~/...`` or ``./...``);
- a Hugging Face hub id (downloaded here, i.e. only because the user named it);
- ``http(s)://host:port/v1#served-model``: a remote OpenAI-compatible server (``embedrail serve``, vLLM,
  TEI, ...). The API key is never part of the name (a name with ``user:pass@`` or a key parameter is
  refused: names are recorded in index metadata, the ledger and run contexts): it comes from
  ``api_key=`` or the environment variable ``EMBEDRAIL_EMBED_API_KEY``.

``embedder_from_info(info)`` loads what an index records (``embedding_info()`` in its metadata).

Where the API key goes: ``EMBEDRAIL_EMBED_API_KEY`` is sent only to a server the user named — a model
URL given to ``open_embedder`` by the caller (``--model``), or a base URL listed in
``EMBEDRAIL_EMBED_BASE_URL`` (comma-separated) — never to one that was read from an index's metadata
(``embedder_from_info``, or ``open_embedder(..., trusted=False)``): whoever may write an index's metadata
must not be able to collect the key.
"""

from __future__ import annotations

import os
from typing import Any

from embedrail.embed_core.base import BaseEmbedder
from embedrail.embed_core.config import DEFAULT_MODEL
from embedrail.errors import ConfigError, ModelError

__all__ = ["API_KEY_ENV", "BASE_URL_ENV", "check_model_name", "embedder_from_info", "env_api_key", "is_remote_model",
           "open_embedder", "split_remote_model"]

#: where the remote backend's API key comes from when none is passed
API_KEY_ENV = "EMBEDRAIL_EMBED_API_KEY"
#: base URLs (comma-separated) the key may also be sent to when the model was read from an index
BASE_URL_ENV = "EMBEDRAIL_EMBED_BASE_URL"
_SECRET_PARAMS = ("api_key", "apikey", "key", "token", "access_token", "password")


def is_remote_model(name: str) -> bool:
    return isinstance(name, str) and name.startswith(("http://", "https://"))


def check_model_name(name: str) -> str:
    """``name`` if it carries no credentials; a remote model URL with ``user:pass@`` or a key parameter is
    refused (the name is recorded in index metadata, the ledger and run contexts)."""
    if is_remote_model(name):
        from urllib.parse import parse_qsl, urlsplit

        u = urlsplit(name.partition("#")[0])
        if u.username or u.password or any(k.lower() in _SECRET_PARAMS for k, _ in parse_qsl(u.query, keep_blank_values=True)):
            raise ConfigError(f"the model URL {u.scheme}://{u.hostname}{f':{u.port}' if u.port else ''}{u.path} carries "
                              f"credentials: model names are recorded in index metadata and the ledger, so give the key "
                              f"as {API_KEY_ENV} (sent as a Bearer token), not in the URL")  # fmt: skip
    return name


def split_remote_model(name: str) -> tuple[str, str]:
    """``http://host:8000/v1#Qwen/Qwen3-Embedding-4B`` -> (base URL, served model name)."""
    base, _, served = check_model_name(name).partition("#")
    if not served:
        raise ConfigError(f"a remote model is given as http(s)://host:port/v1#model-name, got {name!r}")
    return base, served


def env_api_key(base_url: str, *, trusted: bool) -> str | None:
    """``EMBEDRAIL_EMBED_API_KEY`` for a request to ``base_url``: when the user named that server
    (``trusted``), or it is listed in ``EMBEDRAIL_EMBED_BASE_URL``; else None."""
    key = os.environ.get(API_KEY_ENV)
    if not key or trusted:
        return key
    from embedrail.embed_core.remote import normalize_base_url

    allowed = {normalize_base_url(u.strip()) for u in os.environ.get(BASE_URL_ENV, "").split(",") if u.strip()}
    return key if normalize_base_url(base_url) in allowed else None


def open_embedder(
    model: str | None = None, *, dims: int | None = None, device: str = "auto", api_key: str | None = None,
    trusted: bool = True, **kwargs: Any,
) -> BaseEmbedder:
    """An embedder for ``model`` (see the module doc; default: the packaged MiniLM) at ``dims``.

    ``device`` applies to local models (``auto``, ``cpu``, ``cuda``, ``cuda:N``); other keywords go to
    ``Embedder.load`` or ``RemoteEmbedder``. ``trusted=False``: the name was read from an index's metadata,
    so ``EMBEDRAIL_EMBED_API_KEY`` goes to its server only if ``EMBEDRAIL_EMBED_BASE_URL`` lists it.
    """
    name = model or DEFAULT_MODEL
    if is_remote_model(name):
        from embedrail.embed_core.remote import RemoteEmbedder

        base, served = split_remote_model(name)
        kwargs.pop("dtype", None)  # the server runs the model at its own precision
        key = api_key if api_key is not None else env_api_key(base, trusted=trusted)
        return RemoteEmbedder(base, served, dims=dims, api_key=key, **kwargs)
    if api_key is not None:
        raise ConfigError("api_key applies to remote models (http(s)://host:port/v1#model-name) only")
    from embedrail.embed_core.embedder import Embedder

    return Embedder.load(name, dims=dims, device=device, **kwargs)


def embedder_from_info(info: dict[str, Any], *, check: bool = True, **overrides: Any) -> BaseEmbedder:
    """Load the embedder an ``embedding_info()`` describes (e.g. read from index metadata).

    With ``check`` the loaded fingerprint must equal the recorded one (else ``ModelError``: the model
    files or settings changed). ``overrides`` go to the loader: ``device`` for a local model, ``model=``
    for a local model directory that moved (a local fingerprint hashes the files, not the path),
    ``api_key``/``base_url`` for a remote one. The recorded base URL came from the index, so
    ``EMBEDRAIL_EMBED_API_KEY`` is sent to it only if ``EMBEDRAIL_EMBED_BASE_URL`` lists it (or to a
    ``base_url`` the caller gives).
    """
    if info.get("backend") == "remote":
        from embedrail.embed_core.remote import RemoteEmbedder

        overrides.pop("device", None)
        base = overrides.get("base_url")
        overrides.setdefault("api_key", env_api_key(base or info.get("base_url") or "", trusted=base is not None))
        emb: BaseEmbedder = RemoteEmbedder.from_info(info, **overrides)
    else:
        from embedrail.embed_core.embedder import Embedder

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
