"""Small helpers shared by the test modules."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: ``@pytest.mark.parametrize("ledger_kind", LEDGERS)``: the test runs with its ledger on each (conftest's ledger_url)
LEDGERS = ["sqlite", "postgresql"]


def with_name(base_url: str, name: str) -> str:
    """Insert an index/collection name into a store base URL.

    es://h:p + docs                -> es://h:p/docs
    weaviate://h:p?grpc_port=1 + X  -> weaviate://h:p/X?grpc_port=1
    chroma+http://h:p + docs        -> chroma+http://h:p/docs
    chroma:///abs/dir + docs        -> chroma:///abs/dir?collection=docs
    pgvector://u:p@h:p/db + docs    -> pgvector://u:p@h:p/db?table=docs
    """
    u = urllib.parse.urlsplit(base_url)
    if u.scheme in ("chroma", "pgvector") or (u.scheme == "qdrant" and not u.netloc):
        key = "table" if u.scheme == "pgvector" else "collection"
        q = urllib.parse.parse_qsl(u.query)
        q = [(k, v) for k, v in q if k != key] + [(key, name)]
        return f"{u.scheme}://{u.netloc}{u.path}?{urllib.parse.urlencode(q)}"
    path = u.path.rstrip("/") + "/" + name
    return urllib.parse.urlunsplit((u.scheme, u.netloc, path, u.query, ""))


def http_base(store_url: str) -> str:
    """http://host:port for a store URL (for raw health/admin calls in tests)."""
    u = urllib.parse.urlsplit(store_url)
    scheme = "https" if u.scheme.endswith("+https") else "http"
    return f"{scheme}://{u.hostname}:{u.port}"


@contextmanager
def opened(url: str, **opts: Any) -> Iterator[Any]:
    """A store for the length of a ``with`` block (closed afterwards: tests leak no client)."""
    from embedrail.connectors import connect

    store = connect(url, **opts)
    try:
        yield store
    finally:
        store.close()


def describe(url: str) -> Any:
    """``describe()`` of the store at ``url``, through a store opened and closed for it."""
    with opened(url) as s:
        return s.describe()
