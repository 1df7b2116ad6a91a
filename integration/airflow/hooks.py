"""Airflow hooks, the provider way: a store or the sync ledger from an Airflow connection, in your own tasks.

```python
from airflow.sdk import task
from embedrail.airflow import VectorStoreHook

@task
def top_hits(query: str) -> list[str]:
    with VectorStoreHook("my_es", index="docs").get_store() as store:   # any store connection
        ...
```

``VectorStoreHook`` takes every connection embedrail maps to a store (``elasticsearch``, ``opensearch``,
``weaviate``, ``qdrant``, ``postgres`` for pgvector, and embedrail's own ``embedrail_chroma`` and
``embedrail_store``); ``LedgerHook`` takes ``embedrail_ledger`` (or ``postgres`` / ``mysql`` / ``sqlite``)
connections. The connection types embedrail adds (Chroma, any store by URL parts, the ledger) are
registered through the ``apache_airflow_provider`` entry point (``embedrail._provider``), with their form
fields, so the Airflow UI offers them. Secrets found are registered with Airflow's log masker.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook

from embedrail.integration.airflow.connections import (
    CONN_PREFIX,
    connection_to_url,
    mask_secrets,
    resolve_ledger,
)
from embedrail.secrets import one_line

__all__ = ["ChromaHook", "LedgerHook", "VectorStoreHook"]

_PROBE_INDEX = "embedrail_connection_test"  # a name to reach the server with when the connection names no index


class VectorStoreHook(BaseHook):
    """A vector store from an Airflow connection: ``get_store()`` (also ``get_conn()``) opens it (close it, or
    use ``with``), ``get_url()`` gives its embedrail URL (credentials included: never log it), and
    ``test_connection()`` reaches the server (the UI's Test button).

    ``index``: the index / collection / table (default: the connection's extra ``index`` / ``collection`` /
    ``table``); ``store_options``: keyword options of the store class (``connect(url, **store_options)``).
    """

    conn_name_attr = "conn_id"
    default_conn_name = "embedrail_store_default"
    conn_type = "embedrail_store"
    hook_name = "Vector store (embedrail)"

    def __init__(self, conn_id: str = default_conn_name, index: str | None = None, **store_options: Any) -> None:
        super().__init__()
        self.conn_id = conn_id.removeprefix(CONN_PREFIX)
        self.index = index
        self.store_options = store_options

    def get_url(self, index: str | None = None, *, fallback_index: str | None = None) -> str:
        url, secrets = connection_to_url(self.get_connection(self.conn_id), index or self.index, fallback_index=fallback_index)
        mask_secrets(secrets)
        return url

    def get_store(self) -> Any:
        """The store (a ``VectorStore``), connected on first use; the caller closes it."""
        from embedrail.connectors import connect

        return connect(self.get_url(), **self.store_options)

    get_conn = get_store

    def test_connection(self) -> tuple[bool, str]:
        """Reach the server (reads only: the index need not exist)."""
        from embedrail.connectors import connect

        try:
            with connect(self.get_url(fallback_index=_PROBE_INDEX), **self.store_options) as store:
                info = store.describe()
                return True, f"{store.url}: reachable; the index {'exists' if info.exists else 'does not exist yet'}"
        except Exception as e:  # noqa: BLE001 - the UI shows the reason
            return False, one_line(f"{type(e).__name__}: {e}")


class ChromaHook(VectorStoreHook):
    """A Chroma server (host, port, token) or an embedded database on the worker's disk (extra ``path``)."""

    default_conn_name = "embedrail_chroma_default"
    conn_type = "embedrail_chroma"
    hook_name = "Chroma (embedrail)"


class LedgerHook(BaseHook):
    """The sync ledger from an Airflow connection: ``get_ledger()`` (also ``get_conn()``) opens a ``Ledger``
    (close it), ``get_url()`` its SQLAlchemy URL, ``test_connection()`` opens it (creating its tables)."""

    conn_name_attr = "conn_id"
    default_conn_name = "embedrail_ledger"
    conn_type = "embedrail_ledger"
    hook_name = "Sync ledger (embedrail)"

    def __init__(self, conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.conn_id = conn_id.removeprefix(CONN_PREFIX)

    def get_url(self) -> str:
        url, _ = resolve_ledger(CONN_PREFIX + self.conn_id)
        return url

    def get_ledger(self) -> Any:
        from embedrail.integration.ledger import Ledger

        return Ledger(self.get_url())

    get_conn = get_ledger

    def test_connection(self) -> tuple[bool, str]:
        try:
            ledger = self.get_ledger()
            try:
                return True, f"{ledger.url}: the ledger (id {ledger.id}) is reachable"
            finally:
                ledger.close()
        except Exception as e:  # noqa: BLE001 - the UI shows the reason
            return False, one_line(f"{type(e).__name__}: {e}")
