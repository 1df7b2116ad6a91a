"""Where the benchmarks find the servers: ``EMBEDRAIL_*_URL`` from the environment first, else the
``.servers.env`` that ``make servers`` writes (one reader for every benchmark)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# store kind -> the variable that holds its server's URL (pgvector's is PostgreSQL's, re-schemed below)
_VARS = {"es": "EMBEDRAIL_ES_URL", "opensearch": "EMBEDRAIL_OPENSEARCH_URL", "weaviate": "EMBEDRAIL_WEAVIATE_URL",
         "chroma_http": "EMBEDRAIL_CHROMA_URL", "qdrant": "EMBEDRAIL_QDRANT_URL", "pgvector": "EMBEDRAIL_PG_URL"}  # fmt: skip


def server_env() -> dict[str, str]:
    """Every ``EMBEDRAIL_*`` variable: the process environment over ``.servers.env``."""
    out = _servers_script().read_env()
    out.update({k: v for k, v in os.environ.items() if k.startswith("EMBEDRAIL_") and v})
    return out


def _servers_script() -> Any:
    """``scripts/servers.py`` (stdlib only), which writes ``.servers.env`` and reads it back."""
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    import servers

    return servers


def free_port() -> int:
    """A free loopback port (``scripts/servers.py``'s ``free_ports``)."""
    return _servers_script().free_ports(1)[0]


def server_url(var: str) -> str | None:
    """One server's URL (``EMBEDRAIL_ES_URL``, ``EMBEDRAIL_PG_URL``, ...) or None when none runs."""
    return server_env().get(var) or None


def store_urls(kinds: tuple[str, ...] = tuple(_VARS)) -> dict[str, str]:
    """Store URLs of the running servers among ``kinds``; pgvector's is the PostgreSQL server's with the
    ``pgvector://`` scheme (postgresql://u:p@h:port/db -> pgvector://u:p@h:port/db)."""
    env, out = server_env(), {}
    for kind in kinds:
        url = env.get(_VARS[kind])
        if url:
            out[kind] = "pgvector://" + url.split("://", 1)[1] if kind == "pgvector" else url
    return out
