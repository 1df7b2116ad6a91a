"""The DAG folder imports cleanly (the `airflow dags list-import-errors` equivalent) and parsing it
loads no model, opens no network connection and imports no store client or torch."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_airflow_env import airflow_home, subprocess_env  # noqa: F401 - the session fixture

ROOT = Path(__file__).resolve().parent.parent
DAGS = ROOT / "dags"


def test_dag_folder_has_no_import_errors_and_touches_no_model_or_network(airflow_home, monkeypatch):  # noqa: F811
    from airflow.dag_processing.dagbag import DagBag

    import embedrail.integration.airflow.tasks as ia
    from embedrail import embed_core

    calls: list[str] = []

    def no_model(*a, **k):
        calls.append("Embedder.load")
        raise AssertionError("a model was loaded while parsing DAG files")

    def no_connect(self, address):
        calls.append(f"socket.connect {address}")
        raise AssertionError(f"network connection to {address} while parsing DAG files")

    monkeypatch.setattr(embed_core.Embedder, "load", classmethod(lambda cls, *a, **k: no_model()))
    monkeypatch.setattr(ia, "cached_embedder", no_model)
    monkeypatch.setattr(socket.socket, "connect", no_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", no_connect)
    started = time.perf_counter()
    bag = _dagbag(DagBag)
    elapsed = time.perf_counter() - started
    assert bag.import_errors == {}
    assert calls == []
    assert "embedrail_stdlib_demo" in bag.dag_ids
    print(f"parsed {DAGS} in {elapsed:.2f}s: {bag.dag_ids}")

    demo = bag.get_dag("embedrail_stdlib_demo")
    assert {t.task_id for t in demo.tasks} == {"plan", "partitions", "sync_partition", "delete_stale", "report"}
    assert set(demo.params.keys()) >= {"mode", "dims", "dry_run", "partitions"}
    assert demo.params["mode"] == "incremental" and demo.params["dry_run"] is False
    report = demo.get_task("report")
    assert len(report.outlets) == 3  # one Asset per target index
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    assert isinstance(demo.get_task("sync_partition"), MappedOperator)  # dynamic task mapping


def test_parsing_in_a_fresh_process_imports_no_model_or_store_client(airflow_home):  # noqa: F811
    """Structural check, in a clean interpreter: after importing the DAG file, neither torch/transformers
    nor any store client library nor the model code is in sys.modules."""
    probe = f"""
import json, sys, runpy
runpy.run_path({str(DAGS / "embedrail_dags.py")!r})
heavy = ["torch", "transformers", "sentence_transformers", "chromadb", "elasticsearch", "weaviate",
         "embedrail.embed_core.embedder", "embedrail.connectors.elasticsearch", "embedrail.connectors.chroma", "embedrail.connectors.weaviate"]
print(json.dumps([m for m in heavy if m in sys.modules]))
"""
    res = subprocess.run(
        [sys.executable, "-c", probe], env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    loaded = json.loads(res.stdout.strip().splitlines()[-1])
    assert loaded == [], f"parsing the DAG folder imported {loaded}"


def test_bad_config_is_a_clear_import_error(airflow_home, tmp_path, monkeypatch):  # noqa: F811
    from airflow.dag_processing.dagbag import DagBag

    from embedrail.errors import ConfigError
    from embedrail.integration.airflow import build_dags_from_folder

    (tmp_path / "bad.yaml").write_text("source: x.jsonl\ntargets: [es://h:9200/i]\nparitions: 3\n")
    with pytest.raises(ConfigError, match="unknown setting.*paritions"):
        build_dags_from_folder(tmp_path)
    (tmp_path / "bad.yaml").write_text(
        "source: x.jsonl\ntargets: [es://h:9200/i, {conn: my_wv, index: Docs}]\nschedule: {assets: [file:///data/x.jsonl]}\n"
    )
    dags = build_dags_from_folder(tmp_path)
    assert list(dags) == ["embedrail_bad"]
    # the DAG folder file honours EMBEDRAIL_DAG_CONFIGS
    monkeypatch.setenv("EMBEDRAIL_DAG_CONFIGS", str(tmp_path))
    bag = _dagbag(DagBag)
    assert bag.import_errors == {} and bag.dag_ids == ["embedrail_bad"]


def _dagbag(dagbag_cls):
    """A DagBag over dags/ without Airflow's examples (the keyword is gone in Airflow 3.3; the
    session fixture also sets AIRFLOW__CORE__LOAD_EXAMPLES=False)."""
    import inspect

    kwargs: dict = {"dag_folder": str(DAGS)}
    if "include_examples" in inspect.signature(dagbag_cls.__init__).parameters:
        kwargs["include_examples"] = False
    return dagbag_cls(**kwargs)
