"""Test-session wiring: the real servers every store test runs against.

Each server fixture resolves its base URL in this order:
1. ``EMBEDRAIL_ES_URL`` / ``EMBEDRAIL_WEAVIATE_URL`` / ``EMBEDRAIL_CHROMA_URL`` / ``EMBEDRAIL_PG_URL`` /
   ``EMBEDRAIL_REDIS_URL`` / ``EMBEDRAIL_OPENSEARCH_URL`` in the environment
   (``make test`` sets them after starting the servers; users point them at their own clusters);
2. ``.servers.env`` written by ``make servers``, if those servers answer;
3. otherwise the server is started here, on first use, and stopped at the end of the session.

A server that cannot be provisioned fails the tests that need it, loudly, with the reason — it
never silently skips. When a test fails, the tail of each local server's log is attached.

``make test-fast`` (``EMBEDRAIL_TEST_FAST=1``) runs the tests that need no server and are not marked
slow — the in-memory store, embedded Chroma and Qdrant, the units — and deselects the rest (reported
as deselected, never as passed).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from util import with_name`


def _load_servers_module():
    spec = importlib.util.spec_from_file_location("embedrail_test_servers", ROOT / "scripts" / "servers.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their module through sys.modules
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


servers = _load_servers_module()
_started: list = []
_failed: dict[str, str] = {}


def _health_url(kind: str, url: str) -> str:
    from util import http_base

    if kind in ("pg", "redis"):
        return servers.url_health(kind, url)

    base = http_base(url)
    return {
        "es": f"{base}/_cluster/health",
        "opensearch": f"{base}/_cluster/health",
        "weaviate": f"{base}/v1/.well-known/ready",
        "chroma": f"{base}/api/v2/heartbeat",
        "s3": f"{base}/healthz",
    }[kind]


def _answers(url: str) -> bool:
    if url.startswith(("pg://", "redis://")):
        return servers.health_ok(url)
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status < 300
    except Exception:
        return False


def _server_url(kind: str) -> str:
    name = servers.ENV_NAMES[kind]
    if os.environ.get(name):
        return os.environ[name]
    from_file = servers.read_env().get(name)
    if from_file and _answers(_health_url(kind, from_file)):
        os.environ[name] = from_file
        return from_file
    if kind in _failed:
        pytest.fail(f"{kind} server could not be provisioned: {_failed[kind]}", pytrace=False)
    try:
        (srv,) = servers.start([kind])
    except Exception as e:  # provisioning failed: fail loudly, never skip
        _failed[kind] = str(e)
        pytest.fail(f"{kind} server could not be provisioned: {e}", pytrace=False)
    _started.append(srv)
    os.environ[name] = srv.url
    logs = [p for p in os.environ.get("EMBEDRAIL_SERVER_LOGS", "").split(os.pathsep) if p]
    os.environ["EMBEDRAIL_SERVER_LOGS"] = os.pathsep.join([*logs, srv.log])
    return srv.url


#: what makes a test need a server (or the Airflow metadata DB): its fixtures, or a parameter naming a server
SERVER_FIXTURES = frozenset({"es_url", "opensearch_url", "weaviate_url", "chroma_http_url", "pg_server_url", "pgvector_url",
                             "redis_url", "pg_url", "airflow_home", "metadata_db", "s3_url", "s3_env"})  # fmt: skip
SERVER_PARAMS = frozenset({"es", "opensearch", "chroma_http", "weaviate", "pgvector", "postgresql"})


def pytest_collection_modifyitems(config, items):
    if os.environ.get("EMBEDRAIL_TEST_FAST") != "1":
        return
    keep, drop = [], []
    for item in items:
        params = {str(v) for v in getattr(getattr(item, "callspec", None), "params", {}).values()}
        needs = SERVER_FIXTURES & set(getattr(item, "fixturenames", ())) or params & SERVER_PARAMS or item.get_closest_marker("slow")
        (drop if needs else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_sessionfinish(session, exitstatus):
    while _started:
        servers.stop_server(_started.pop())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and call.when == "call":
        for path in filter(None, os.environ.get("EMBEDRAIL_SERVER_LOGS", "").split(os.pathsep)):
            report.sections.append((f"server log tail: {Path(path).name}", servers.tail(path, 30)))
    return report


@pytest.fixture(scope="session")
def es_url() -> str:
    """Base URL of a real Elasticsearch, e.g. es://127.0.0.1:9200 (append an index with with_name)."""
    return _server_url("es")


@pytest.fixture(scope="session")
def s3_url() -> str:
    """A real S3-compatible object store (SeaweedFS), ``http://ACCESS_KEY:SECRET@127.0.0.1:PORT``."""
    return _server_url("s3")


@pytest.fixture
def s3_env(s3_url, monkeypatch) -> dict[str, str]:
    """The store's credentials and endpoint where every AWS client looks (the environment), as a user sets them."""
    from urllib.parse import urlsplit

    u = urlsplit(s3_url)
    env = {"AWS_ACCESS_KEY_ID": u.username or "", "AWS_SECRET_ACCESS_KEY": u.password or "",
           "AWS_ENDPOINT_URL": f"http://{u.hostname}:{u.port}", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture(scope="session")
def opensearch_url() -> str:
    """Base URL of a real OpenSearch with the k-NN plugin, e.g. opensearch://127.0.0.1:9200."""
    return _server_url("opensearch")


@pytest.fixture(scope="session")
def weaviate_url() -> str:
    """Base URL of a real Weaviate, e.g. weaviate://127.0.0.1:8080?grpc_port=50051."""
    return _server_url("weaviate")


@pytest.fixture(scope="session")
def chroma_http_url() -> str:
    """Base URL of a real Chroma server, e.g. chroma+http://127.0.0.1:8000."""
    return _server_url("chroma")


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """A real PostgreSQL server (user allowed to create databases), e.g. postgresql://u:pw@127.0.0.1:5432/postgres."""
    return _server_url("pg")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A real Redis server, e.g. redis://127.0.0.1:6379/0."""
    return _server_url("redis")


def pg_database(server_url: str, name: str) -> str:
    """Create a fresh database ``name`` on the server; returns its SQLAlchemy (psycopg 3) URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(server_url)
    with psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.database or "postgres",
                         autocommit=True) as conn:  # fmt: skip
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return u.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)


@pytest.fixture
def pg_url(pg_server_url, unique_name) -> str:
    """A fresh, empty PostgreSQL database for this test (SQLAlchemy URL, psycopg 3 driver)."""
    return pg_database(pg_server_url, unique_name)


@pytest.fixture(scope="session")
def pgvector_url(pg_server_url) -> str:
    """Base URL of a real PostgreSQL + pgvector database, e.g. pgvector://u:pw@127.0.0.1:5432/db (append
    a table with with_name)."""
    from sqlalchemy.engine import make_url

    u = make_url(pg_database(pg_server_url, f"embedrail_pgvector_{uuid.uuid4().hex[:8]}"))
    return f"pgvector://{u.username}:{u.password}@{u.host}:{u.port}/{u.database}"


@pytest.fixture
def ledger_kind() -> str:
    """Where ``ledger_url`` lives: SQLite unless a test says ``@pytest.mark.parametrize("ledger_kind", LEDGERS)``."""
    return "sqlite"


@pytest.fixture
def ledger_url(request, ledger_kind, tmp_path, unique_name) -> str:
    """A fresh ledger for this test: a SQLite file, or a new database on the PostgreSQL server."""
    if ledger_kind == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    assert ledger_kind == "postgresql", ledger_kind
    return pg_database(request.getfixturevalue("pg_server_url"), unique_name)


@pytest.fixture
def chroma_path_url(tmp_path) -> str:
    """Base URL of an embedded (on-disk) Chroma database in a fresh temp dir."""
    return f"chroma://{tmp_path / 'chroma'}"


@pytest.fixture
def unique_name(request) -> str:
    """A fresh lowercase index/collection name for this test (valid in ES, Chroma and Weaviate)."""
    base = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:30]
    return f"t_{base}_{uuid.uuid4().hex[:8]}"
