"""Store URLs and the scheme registry that ``connect()`` dispatches through.

A store URL is ``<store>[+<transport>]://[user:password@]host[:port]/<name>[?params]`` (embedded stores
use a path instead of a host: ``chroma:///abs/dir?collection=name``). Adding a store is one module
(its ``VectorStore`` class) and one :func:`register_store` call in ``connectors/__init__.py``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from embedrail.errors import ConfigError
from embedrail.secrets import is_secret_key, redact_text

__all__ = ["StoreKind", "StoreURL", "parse_url", "redact_url", "register_store", "registered_stores", "store_class"]


@dataclass(frozen=True, slots=True)
class StoreKind:
    """One registered store: its canonical scheme, aliases, transports and implementing class."""

    name: str  # canonical scheme, e.g. "es"
    target: str  # "module:Class" implementing VectorStore, imported on first use
    aliases: tuple[str, ...] = ()  # other schemes accepted, e.g. ("elasticsearch",)
    transports: tuple[str, ...] = ("http", "https")  # allowed "+transport" suffixes
    default_transport: str = "http"  # when the URL has no "+transport"
    examples: tuple[str, ...] = ()  # shown in error messages
    #: a URL without a host opens the store inside this process, on local files (embedded Chroma, Qdrant
    #: local mode): one process at a time may write it
    embedded_without_host: bool = False


_REGISTRY: dict[str, StoreKind] = {}  # every scheme and alias -> its kind


def register_store(kind: StoreKind) -> None:
    """Make ``connect()`` and ``parse_url()`` understand a store's schemes."""
    for scheme in (kind.name, *kind.aliases):
        other = _REGISTRY.get(scheme)
        if other is not None and other.name != kind.name:
            raise ConfigError(f"store scheme {scheme!r} is already registered for {other.name!r}")
        _REGISTRY[scheme] = kind


def registered_stores() -> list[StoreKind]:
    """Each registered store once, in registration order."""
    return list({k.name: k for k in _REGISTRY.values()}.values())


def is_embedded(u: StoreURL) -> bool:
    """Whether the store ``u`` names runs inside this process on local files (one writing process at a time)."""
    kind = _REGISTRY.get(u.store)
    return kind is not None and kind.embedded_without_host and not u.host


def store_class(kind: str) -> type:
    """The ``VectorStore`` class registered for a store name or alias (its module is imported now)."""
    k = _REGISTRY.get(kind)
    if k is None:
        raise ConfigError(f"unknown store {kind!r}; known: {', '.join(s.name for s in registered_stores())}")
    module, _, cls = k.target.partition(":")
    return getattr(importlib.import_module(module), cls)


def _examples() -> str:
    return ", ".join(e for k in registered_stores() for e in k.examples)


@dataclass(slots=True)
class StoreURL:
    """A parsed connector URL. ``safe`` is the credential-free form for messages, logs and ledger keys."""

    raw_scheme: str  # e.g. "es+https"
    store: str  # canonical store name: "es" | "chroma" | "weaviate" | ...
    transport: str  # "http" | "https" | "file"
    host: str = ""
    port: int | None = None
    path: str = ""  # the part after the host (index/collection name, or an embedded store's directory)
    username: str | None = None
    password: str | None = None
    params: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str | None:
        n = self.path.strip("/")
        return n or None

    @property
    def safe(self) -> str:
        return redact_url(self)

    @property
    def secrets(self) -> list[str]:
        """The credentials this URL carries (for scrubbing messages)."""
        out = [self.password] if self.password else []
        return out + [v for k, v in self.params.items() if is_secret_key(k) and v]

    def param(self, key: str, default: str | None = None) -> str | None:
        return self.params.get(key, default)


def parse_url(url: str) -> StoreURL:
    """Parse a store URL of any registered store (``es://``, ``chroma:///path``, ``weaviate://``, ...)."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"not a store URL: {redact_text(str(url))!r}; expected e.g. {_examples()}")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    base, _, transport = scheme.partition("+")
    kind = _REGISTRY.get(base)
    if kind is None:
        schemes = ", ".join(f"{k.name}://" for k in registered_stores())
        raise ConfigError(f"unknown store scheme {scheme!r} in {redact_text(url)!r}; use one of {schemes} (e.g. {_examples()})")
    transport = transport or kind.default_transport
    if transport not in kind.transports:
        allowed = ", ".join(f"{base}+{t}://" for t in kind.transports if t != "file")
        raise ConfigError(f"unknown transport {transport!r} in {redact_text(url)!r}; use {allowed}")
    try:
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"bad port in {redact_text(url)!r}: {e}") from None
    return StoreURL(
        raw_scheme=scheme,
        store=kind.name,
        transport=transport,
        host=parts.hostname or "",
        port=port,
        path=unquote(parts.path),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        params={k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()},
    )


def redact_url(u: StoreURL) -> str:
    """The URL without user info and with secret query parameters removed (the format is stable: it is
    the key under which the sync ledger remembers a target)."""
    if u.transport == "file":
        base = f"{u.raw_scheme}://{quote(u.path)}"
    else:
        host = f"[{u.host}]" if ":" in u.host else u.host
        port = f":{u.port}" if u.port else ""
        base = f"{u.raw_scheme}://{host}{port}{quote(u.path)}"
    keep = [(k, v) for k, v in u.params.items() if not is_secret_key(k)]
    if keep:
        base += "?" + "&".join(f"{k}={quote(v, safe='/')}" for k, v in keep)
    return base


def flag(value: Any, default: bool = False) -> bool:
    """A boolean URL parameter (``1/true/yes/on``)."""
    if value is None:
        return default
    return str(value).strip().lower() in ("1", "true", "yes", "on")
