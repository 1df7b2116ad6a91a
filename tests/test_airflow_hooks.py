"""The hooks and connection types of embedrail's Airflow provider, against real servers: a store or the
ledger from an Airflow connection (defined the way deployments do: ``AIRFLOW_CONN_*`` environment
variables), in a user's own code."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_airflow_env import airflow_home  # noqa: F401 - the session fixture
from util import http_base

from embedrail.errors import ConfigError


def _conn(conn_type: str, **kw) -> SimpleNamespace:
    extra = kw.pop("extra", {})
    base = {"conn_id": "c", "host": None, "port": None, "schema": None, "login": None, "password": None}
    return SimpleNamespace(conn_type=conn_type, extra_dejson=extra, **{**base, **kw})


def test_embedrail_connection_types_map_to_urls(airflow_home, tmp_path):  # noqa: F811
    from embedrail.airflow import TargetSpec, connection_to_url

    url, _ = connection_to_url(_conn("embedrail_chroma", extra={"extra__embedrail_chroma__path": str(tmp_path), "collection": "docs"}))
    assert url == f"chroma://{tmp_path}?collection=docs"  # a form field stored with its prefix is read too
    url, secrets = connection_to_url(_conn("embedrail_chroma", host="ch", port=8001, password="tok"), "docs")
    assert url == "chroma+http://ch:8001/docs?token=tok" and secrets == ["tok"]
    url, secrets = connection_to_url(_conn("embedrail_store", host="es", port=9201, extra={"store": "es", "index": "docs", "api_key": "k1"}))
    assert url == "es://es:9201/docs?api_key=k1" and secrets == ["k1"]
    with pytest.raises(ConfigError, match="extra store"):
        connection_to_url(_conn("embedrail_store", host="h"), "docs")
    assert TargetSpec.of("my_es/docs") == TargetSpec("conn:my_es/docs")  # a bare connection id
    assert TargetSpec.of("${ES_URL}/docs").target == "${ES_URL}/docs" and TargetSpec.of("es://h:1/d").target == "es://h:1/d"


def test_hooks_give_a_store_and_the_ledger_from_a_connection(airflow_home, tmp_path, monkeypatch, chroma_http_url,  # noqa: F811
                                                            unique_name):  # fmt: skip
    from embedrail.airflow import ChromaHook, LedgerHook, ReindexJob, VectorStoreHook, resolve_ledger
    from embedrail.connectors.base import IndexSpec, Record

    base = http_base(chroma_http_url).split("://", 1)[1]
    host, port = base.split(":")
    monkeypatch.setenv("AIRFLOW_CONN_MY_CHROMA", json.dumps({"conn_type": "embedrail_chroma", "host": host, "port": int(port)}))
    monkeypatch.setenv("AIRFLOW_CONN_MY_LEDGER", json.dumps({"conn_type": "embedrail_ledger", "extra": {"path": str(tmp_path / "l.sqlite")}}))
    monkeypatch.setenv("AIRFLOW_CONN_NOWHERE", json.dumps({"conn_type": "embedrail_chroma", "host": "127.0.0.1", "port": 9}))
    hook = ChromaHook("my_chroma", index=unique_name)
    assert isinstance(hook, VectorStoreHook) and hook.get_url() == f"chroma+http://{host}:{port}/{unique_name}"
    ok, message = hook.test_connection()
    assert ok and "does not exist yet" in message, message
    with hook.get_store() as store:  # what a user's own task does with it
        store.ensure_index(IndexSpec(dims=3))
        assert store.upsert([Record("a", [1.0, 0.0, 0.0], "text")]).ok and store.count() == 1
    assert VectorStoreHook("my_chroma").test_connection()[0]  # no index named: the server is reached all the same
    ok, message = VectorStoreHook("nowhere", index="docs", retry=None).test_connection()
    assert not ok and "StoreUnavailableError" in message
    ledger = LedgerHook("my_ledger")
    assert ledger.get_url() == f"sqlite:///{tmp_path / 'l.sqlite'}" == resolve_ledger("my_ledger")[0]
    ok, message = ledger.test_connection()
    assert ok and "is reachable" in message and Path(tmp_path / "l.sqlite").exists()
    job = ReindexJob(source="x.jsonl", targets=["my_chroma/docs", f"chroma://{tmp_path}?collection=c"])
    assert [t.target for t in job.targets] == ["conn:my_chroma/docs", f"chroma://{tmp_path}?collection=c"]
