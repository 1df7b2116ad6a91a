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


def test_a_bad_config_fails_its_own_dag_only(airflow_home, tmp_path, monkeypatch):  # noqa: F811
    """A config with a typo no longer takes the other DAGs of the folder down: its DAG is a paused one whose
    task fails with the error; the folder's other DAGs load; ``load_dag_config`` still raises it."""
    from airflow.dag_processing.dagbag import DagBag

    from embedrail.airflow import build_dags_from_folder, load_dag_config
    from embedrail.errors import ConfigError

    (tmp_path / "bad.yaml").write_text("dag_id: typo_dag\nsource: x.jsonl\ntargets: [es://h:9200/i]\nparitions: 3\n")
    (tmp_path / "good.yaml").write_text(
        "source: x.jsonl\ntargets: [es://h:9200/i, {conn: my_wv, index: Docs}]\nschedule: {assets: [file:///data/x.jsonl]}\n"
    )
    (tmp_path / "broken.yml").write_text("source: [unclosed\n")
    with pytest.raises(ConfigError, match="unknown setting.*paritions"):
        load_dag_config(tmp_path / "bad.yaml")
    with pytest.warns(UserWarning, match="paritions"):
        dags = build_dags_from_folder(tmp_path)
    assert sorted(dags) == ["embedrail_broken", "embedrail_good", "typo_dag"]
    assert "config-error" in dags["typo_dag"].tags and "paritions" in dags["typo_dag"].description
    assert [t.task_id for t in dags["typo_dag"].tasks] == ["config_error"] and "config-error" not in dags["embedrail_good"].tags
    # the DAG folder file honours EMBEDRAIL_DAG_CONFIGS; the good DAG loads beside the broken ones
    monkeypatch.setenv("EMBEDRAIL_DAG_CONFIGS", str(tmp_path))
    bag = _dagbag(DagBag)
    assert bag.import_errors == {} and sorted(bag.dag_ids) == ["embedrail_broken", "embedrail_good", "typo_dag"]
    assert len(bag.get_dag("embedrail_good").tasks) == 5


def test_the_provider_registers_the_hooks_and_connection_types(airflow_home):  # noqa: F811
    """Through Airflow's own providers manager, as the UI's connection form reads it."""
    from airflow.providers_manager import ProvidersManager

    pm = ProvidersManager()
    assert "embedrail" in pm.providers
    hooks = pm.hooks
    for ctype, cls in (("embedrail_chroma", "ChromaHook"), ("embedrail_store", "VectorStoreHook"), ("embedrail_ledger", "LedgerHook")):
        info = hooks[ctype]
        assert info is not None and info.hook_class_name == f"embedrail.integration.airflow.hooks.{cls}" and info.connection_testable
    widgets = pm.connection_form_widgets
    assert {"extra__embedrail_chroma__path", "extra__embedrail_store__store", "extra__embedrail_ledger__sqlalchemy_scheme"} <= set(widgets)
    assert widgets["extra__embedrail_store__api_key"].is_sensitive
    assert pm.field_behaviours["embedrail_chroma"]["relabeling"]["password"] == "Token"


def _dagbag(dagbag_cls):
    """A DagBag over dags/ without Airflow's examples (the keyword is gone in Airflow 3.3; the
    session fixture also sets AIRFLOW__CORE__LOAD_EXAMPLES=False)."""
    import inspect

    kwargs: dict = {"dag_folder": str(DAGS)}
    if "include_examples" in inspect.signature(dagbag_cls.__init__).parameters:
        kwargs["include_examples"] = False
    return dagbag_cls(**kwargs)
