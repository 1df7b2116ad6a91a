"""An isolated Airflow for the Airflow tests (+ fast unit tests of the target/connection mapping).

``airflow_home`` (session): AIRFLOW_HOME in a temp dir, no examples, a SQLite metadata DB migrated
once, a DAG folder of its own.
Airflow reads its configuration when first imported, so nothing here imports it at module level.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def _airflow_env(home: Path) -> dict[str, str]:
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__SCHEDULER__STANDALONE_DAG_PROCESSOR": "False",
    }


def subprocess_env() -> dict[str, str]:
    """This process's environment (with the isolated Airflow) + the checkout on PYTHONPATH."""
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory) -> Path:
    """A migrated, isolated Airflow home (set in os.environ for the rest of the session)."""
    if os.environ.get("_EMBEDRAIL_TEST_AIRFLOW_HOME"):
        return Path(os.environ["_EMBEDRAIL_TEST_AIRFLOW_HOME"])
    if "airflow" in sys.modules:
        pytest.fail("airflow was imported before the isolated AIRFLOW_HOME was set up", pytrace=False)
    home = tmp_path_factory.mktemp("airflow_home")
    (home / "dags").mkdir()
    env = _airflow_env(home)
    os.environ.update(env)
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    os.environ["PYTHONPATH"] = pythonpath
    res = subprocess.run(
        [str(VENV_BIN / "airflow"), "db", "migrate"],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, f"airflow db migrate failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import airflow

    # Airflow 3.2.x cannot run dag.test() with current pydantic/svcs (its execution API fails to build);
    # the lock and the dev extra require 3.3, which needs no workaround
    assert tuple(int(x) for x in airflow.__version__.split(".")[:2]) >= (3, 3), airflow.__version__
    os.environ["_EMBEDRAIL_TEST_AIRFLOW_HOME"] = str(home)
    return home


# ------------------------------------------------------------------------------------------------
# Unit tests of the connection -> store URL mapping (no Airflow DB, no servers).
def _conn(conn_type: str, **kw) -> SimpleNamespace:
    extra = kw.pop("extra", {})
    base = {"conn_id": "c", "host": None, "port": None, "schema": None, "login": None, "password": None}
    return SimpleNamespace(conn_type=conn_type, extra_dejson=extra, **{**base, **kw})


def test_elasticsearch_connection_maps_to_es_url(airflow_home):
    from embedrail.integration.airflow import connection_to_url

    url, secrets = connection_to_url(
        _conn("elasticsearch", host="es.internal", port=9243, schema="https", login="elastic", password="p@ss word",
              extra={"api_key": ["id1", "k3y"], "ca_certs": "/etc/ca.pem", "verify_certs": True}),
        "docs",
    )  # fmt: skip
    assert url.startswith("es+https://elastic:p%40ss%20word@es.internal:9243/docs?")
    assert (
        "api_key=aWQxOmszeQ%3D%3D" in url and "ca_certs=%2Fetc%2Fca.pem" in url and "verify_certs=true" in url
    )
    assert "p@ss word" in secrets and "aWQxOmszeQ==" in secrets
    from embedrail.integration.engine import redact_url

    safe = redact_url(url)
    assert "p@ss" not in safe and "elastic" not in safe and "aWQx" not in safe
    # index from the extra, plain http default
    url2, _ = connection_to_url(_conn("elasticsearch", host="localhost", port=9200, extra={"index": "x"}))
    assert url2 == "es://localhost:9200/x"


def test_weaviate_and_chroma_connections_map_to_urls(airflow_home, tmp_path):
    from embedrail.errors import ConfigError
    from embedrail.integration.airflow import connection_to_url

    url, secrets = connection_to_url(
        _conn("weaviate", host="wv", port=8080, extra={"grpc_port": 50052, "api_key": "wvkey"}), "Docs"
    )
    assert url == "weaviate://wv:8080/Docs?grpc_port=50052&api_key=wvkey" and secrets == ["wvkey"]
    url, _ = connection_to_url(_conn("weaviate", host="wv.cloud", extra={"http_secure": True, "grpc_secure": True,
                                                                          "grpc_host": "grpc.wv.cloud", "collection": "C"}))  # fmt: skip
    assert url == "weaviate+https://wv.cloud:443/C?grpc_port=443&grpc_host=grpc.wv.cloud"
    url, secrets = connection_to_url(_conn("generic", host="ch", port=8000, password="tok",
                                           extra={"store": "chroma", "tenant": "t1"}), "col")  # fmt: skip
    assert url == "chroma+http://ch:8000/col?token=tok&tenant=t1" and secrets == ["tok"]
    url, _ = connection_to_url(
        _conn("generic", extra={"store": "chroma", "path": str(tmp_path), "collection": "c"})
    )
    assert url == f"chroma://{tmp_path}?collection=c"
    with pytest.raises(ConfigError, match="names no index"):
        connection_to_url(_conn("elasticsearch", host="h"))
    with pytest.raises(ConfigError, match=r"embedrail_store \(or generic\) one with extra store"):
        connection_to_url(_conn("mysql", host="h"), "x")
    # the postgres provider's connection type: a pgvector table (schema = the database)
    url, secrets = connection_to_url(_conn("postgres", host="pg", port=5433, login="u", password="p@ss", schema="vec",
                                           extra={"sslmode": "require"}), "docs")  # fmt: skip
    assert url == "pgvector://u:p%40ss@pg:5433/vec?sslmode=require&table=docs" and secrets == ["p@ss"]
    from embedrail.connectors import parse_url

    assert parse_url(url).password == "p@ss" and parse_url(url).param("table") == "docs"
    # the opensearch provider's connection type
    url, secrets = connection_to_url(_conn("opensearch", host="os.internal", port=9201, login="admin", password="pw!",
                                           extra={"use_ssl": True, "verify_certs": False}), "docs")  # fmt: skip
    assert url == "opensearch+https://admin:pw%21@os.internal:9201/docs?verify_certs=false" and secrets == ["pw!"]
    # the qdrant provider's connection type, server and embedded
    url, secrets = connection_to_url(_conn("qdrant", host="qd", port=6333, extra={"grpc_port": 6334, "prefer_grpc": True,
                                                                                  "api_key": "qk"}), "docs")  # fmt: skip
    assert url == "qdrant://qd:6333/docs?grpc_port=6334&prefer_grpc=true&api_key=qk" and secrets == ["qk"]
    url, _ = connection_to_url(_conn("qdrant", extra={"path": str(tmp_path), "collection": "c"}))
    assert url == f"qdrant://{tmp_path}?collection=c"


def test_target_specs_and_assets_need_no_network(airflow_home, monkeypatch):
    from embedrail.integration.airflow import TargetSpec, index_asset, resolve_target, with_index

    monkeypatch.setenv("EMBEDRAIL_T_URL", "es://u:pw123@h:9200")
    assert with_index("weaviate://h:8080?grpc_port=1", "Docs") == "weaviate://h:8080/Docs?grpc_port=1"
    assert with_index("chroma:///d/x", "c") == "chroma:///d/x?collection=c"
    spec = TargetSpec.of({"url": "${EMBEDRAIL_T_URL}", "index": "docs"})
    assert index_asset(spec).uri == "es://h:9200/docs"  # credentials never in an Asset URI
    assert index_asset("conn:my_es/docs").uri == "embedrail+conn://my_es/docs"
    assert index_asset({"conn": "my_es", "index": "docs", "asset": "x-team://docs"}).uri == "x-team://docs"
    url, secrets = resolve_target(spec)
    assert url == "es://u:pw123@h:9200/docs" and "pw123" in secrets
    monkeypatch.delenv("EMBEDRAIL_T_URL")
    assert index_asset(spec).uri  # unset at parse time: still an asset, no error


def test_embedder_is_loaded_once_per_process_and_key(airflow_home, monkeypatch):
    import embedrail.integration.airflow.tasks as ia
    from embedrail import embed_core

    loads: list[tuple] = []

    def fake_load(name, dims=None, device="auto", **kw):
        loads.append((name, dims, device))
        return object()

    monkeypatch.setattr(ia, "_EMBEDDERS", {})
    monkeypatch.setattr(embed_core.Embedder, "load", staticmethod(fake_load))
    a = ia.cached_embedder("minilm")
    assert ia.cached_embedder("minilm") is a and ia.cached_embedder("minilm", None, "auto") is a
    b = ia.cached_embedder("minilm", dims=128)
    assert b is not a and ia.cached_embedder("minilm", 128) is b
    assert loads == [("minilm", None, "auto"), ("minilm", 128, "auto")]
    # a remote model (an `embedrail serve` on a GPU node), as the CLI takes it; key from the environment
    import embedrail.embed_core.remote

    remote: list[tuple] = []
    monkeypatch.setattr(embedrail.embed_core.remote, "RemoteEmbedder", lambda *a, **k: remote.append((a, k)) or object())
    monkeypatch.setenv("EMBEDRAIL_EMBED_API_KEY", "k-123")
    r = ia.cached_embedder("http://gpu-node:8000/v1#minilm", dims=256)
    assert ia.cached_embedder("http://gpu-node:8000/v1#minilm", dims=256) is r
    assert remote == [(("http://gpu-node:8000/v1", "minilm"), {"dims": 256, "api_key": "k-123"})]
