"""dag.test() end-to-end: a real Airflow (isolated, SQLite metadata DB) drives the reindex DAG against
the real Elasticsearch, Weaviate and Chroma servers; the stores are checked through the connectors."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from test_airflow_env import airflow_home  # noqa: F401 - the session fixture
from util import describe, with_name

pytestmark = pytest.mark.slow

DAG_TEMPLATE = '''
"""Test DAG for tests/test_airflow_e2e.py (config: {cfg_name})."""
import json
import os
from pathlib import Path

from embedrail.airflow import build_reindex_dag, cached_embedder

CFG = json.loads(Path({cfg_path!r}).read_text())
FAULT_FLAG = CFG.pop("fault_flag", None)


class FlakyEmbedder:
    """Injected fault: the 2nd batch this task embeds raises while the flag file exists (once)."""

    def __init__(self, inner):
        self._inner, self._calls = inner, 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def embed_documents(self, texts):
        self._calls += 1
        if self._calls >= 2 and FAULT_FLAG and os.path.exists(FAULT_FLAG):
            os.remove(FAULT_FLAG)
            from embedrail.errors import RemoteEmbeddingError  # a transient failure: Airflow retries the task

            raise RemoteEmbeddingError("injected fault: the embedding server went away in the middle of a partition")
        return self._inner.embed_documents(texts)


def flaky_embedder(name, dims=None, device="auto"):
    return FlakyEmbedder(cached_embedder(name, dims=dims, device=device))


dag = build_reindex_dag(CFG.pop("dag_id"), embedder_factory=flaky_embedder if FAULT_FLAG else None, **CFG)
'''

DOCS = {
    f"doc{i}": text
    for i, text in enumerate(
        [
            "Parse command line arguments with argparse.",
            "Read and write JSON documents.",
            "Compress data with gzip and zlib.",
            "Regular expressions find patterns in text.",
            "Dates and times with the datetime module.",
            "Paths and files with pathlib.",
            "Run child processes with subprocess.",
            "Random numbers and shuffling.",
            "Hash functions such as sha256.",
            "Threads, locks and queues for concurrency.",
        ]
    )
}


def write_corpus(path: Path, docs: dict[str, str]) -> None:
    path.write_text("".join(json.dumps({"id": k, "text": v, "lang": "en"}) + "\n" for k, v in docs.items()))


def make_dag(home: Path, dag_id: str, cfg: dict[str, Any]) -> Any:
    """Write a DAG file into the test DAG folder; returns it parsed (``run`` parses it again per run)."""
    cfg_path = home / f"{dag_id}.json"
    cfg_path.write_text(json.dumps({"dag_id": dag_id, **cfg}))
    dag_file = home / "dags" / f"{dag_id}.py"
    dag_file.write_text(textwrap.dedent(DAG_TEMPLATE.format(cfg_name=cfg_path.name, cfg_path=str(cfg_path))))
    return parse(dag_file)


def parse(dag_file: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"embedrail_test_{dag_file.stem}", dag_file)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.dag.embedrail_test_file = dag_file
    return mod.dag


def xcom(dag_id: str, run_id: str, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as s:
        value = s.execute(select(XComModel.value).where(XComModel.dag_id == dag_id, XComModel.run_id == run_id,
                                                        XComModel.task_id == task_id, XComModel.key == "return_value")
                          ).scalar_one_or_none()  # fmt: skip
    return json.loads(value) if isinstance(value, str) else value


def run(dag: Any, conf: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any] | None]:
    """dag.test() one run on a freshly parsed copy of the DAG (as every Airflow worker does: dag.test()
    runs the tasks in this process, and the trigger params of one run would otherwise stay on the
    task objects for the next); returns (dag run, the report task's XCom)."""
    dag = parse(dag.embedrail_test_file)
    dr = dag.test(run_conf=conf)
    return dr, xcom(dag.dag_id, dr.run_id, "report")


def task_states(dag_id: str, run_id: str) -> list[tuple[str, int, int, str]]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as s:
        rows = s.execute(
            select(
                TaskInstance.task_id, TaskInstance.map_index, TaskInstance.try_number, TaskInstance.state
            ).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
        ).all()
    return sorted((r[0], r[1], r[2], str(r[3])) for r in rows)


def all_xcoms(dag_id: str, run_id: str) -> str:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as s:
        values = s.execute(
            select(XComModel.value).where(XComModel.dag_id == dag_id, XComModel.run_id == run_id)
        ).scalars()
        return json.dumps([v for v in values], default=str)


def asset_events(uri: str) -> list[dict[str, Any]]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as s:
        rows = s.execute(
            select(AssetEvent.extra)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.uri == uri)
        ).scalars()
        return [dict(r or {}) for r in rows]


def store_texts(url: str) -> dict[str, str]:
    """What a store holds, read back through its connector: {chunk id: text}; count must agree."""
    from embedrail.connectors import connect

    store = connect(url)
    try:
        ids = sorted(store.iter_ids())
        hits = store.get(ids)
        assert store.count() == len(ids), f"{store.url}: count {store.count()} != {len(ids)} ids"
        return {i: hits[i].text for i in ids}
    finally:
        store.close()


def expected(docs: dict[str, str]) -> dict[str, str]:
    return {f"{k}#0": v for k, v in docs.items()}


def report_keys() -> set[str]:
    from embedrail.integration.report import Report

    return set(Report().to_dict())


# ------------------------------------------------------------------------------------------------
def test_dag_keeps_es_weaviate_and_chroma_in_step(airflow_home, es_url, weaviate_url, chroma_http_url,  # noqa: F811
                                                  unique_name, monkeypatch, capfd):  # fmt: skip
    """Connections (provider types + the Chroma convention) as targets; first run indexes everything,
    a second embeds nothing, a dry run writes nothing, an edit re-embeds one document, a deletion
    reaches every store; Asset events per index; no secret in XComs or logs."""
    from urllib.parse import urlsplit

    es, wv, ch = urlsplit(es_url), urlsplit(weaviate_url), urlsplit(chroma_http_url)
    grpc_port = int(dict(p.split("=") for p in wv.query.split("&"))["grpc_port"])
    es_secret, chroma_secret = "ZXNrZXk6czNjcjN0LWVzLTQy", "tok-s3cr3t-chroma-77"
    monkeypatch.setenv("AIRFLOW_CONN_E2E_ES", json.dumps(
        {"conn_type": "elasticsearch", "host": es.hostname, "port": es.port, "schema": "http",
         "extra": {"api_key": es_secret}}))  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_E2E_WEAVIATE", json.dumps(
        {"conn_type": "weaviate", "host": wv.hostname, "port": wv.port, "extra": {"grpc_port": grpc_port}}))  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_E2E_CHROMA", json.dumps(
        {"conn_type": "generic", "host": ch.hostname, "port": ch.port, "password": chroma_secret,
         "extra": {"store": "chroma"}}))  # fmt: skip
    corpus = airflow_home / f"{unique_name}.jsonl"
    docs = dict(DOCS)
    write_corpus(corpus, docs)
    wv_name = "E" + unique_name.replace("_", "")[:40]
    targets = [
        f"conn:e2e_es/{unique_name}",
        {"conn": "e2e_weaviate", "index": wv_name},
        f"conn:e2e_chroma/{unique_name}",
    ]
    urls = [
        with_name(es_url, unique_name),
        with_name(weaviate_url, wv_name),
        with_name(chroma_http_url, unique_name),
    ]
    dag = make_dag(airflow_home, "e2e_" + unique_name[-8:], {
        "source": str(corpus), "targets": targets, "model": "minilm", "partitions": 2, "batch_size": 4,
        "retry_delay": 0, "tags": ["test"]})  # fmt: skip
    from embedrail import embed_core

    loads: list[str] = []
    real_load = embed_core.Embedder.load.__func__

    def counting_load(cls, *a, **k):
        loads.append(str(a[:1]))
        return real_load(cls, *a, **k)

    monkeypatch.setattr(embed_core.Embedder, "load", classmethod(counting_load))

    # 1. first run: everything is embedded once and written to all three stores
    dr, rep = run(dag)
    assert str(dr.state) == "success", task_states(dag.dag_id, dr.run_id)
    assert rep is not None and set(rep) == report_keys()  # the CLI's --json report
    assert rep["ok"] and rep["documents"] == 10 and rep["embedded"] == 10 and rep["partitions"] == 2
    assert rep["read"] == 10  # the two partition tasks read a byte range of the file each: once in total
    keys = sorted(rep["upserted"])
    assert len(keys) == 3 and all(rep["upserted"][k] == 10 for k in keys)
    for url in urls:
        assert store_texts(url) == expected(docs)
    states = task_states(dag.dag_id, dr.run_id)
    assert [s for s in states if s[0] == "sync_partition"] == [
        ("sync_partition", 0, 1, "success"), ("sync_partition", 1, 1, "success")]  # fmt: skip
    uris = [a.uri for a in dag.get_task("report").outlets]
    assert uris[0] == f"embedrail+conn://e2e_es/{unique_name}"
    for uri in uris:
        events = asset_events(uri)
        assert len(events) == 1 and events[0]["upserted"] == 10 and events[0]["target"] in keys, (uri, events)
    leaked = [s for s in (es_secret, chroma_secret) if s in all_xcoms(dag.dag_id, dr.run_id)]
    assert leaked == []

    # 2. unchanged source: nothing embedded, nothing written
    dr, rep = run(dag)
    assert str(dr.state) == "success" and rep is not None
    assert rep["embedded"] == 0 and rep["unchanged"] == 10 and all(v == 0 for v in rep["upserted"].values())

    # 3. edit one document; a dry run plans it and writes nothing (report task skipped: no Asset event)
    docs["doc3"] = "Regular expressions: the re module matches, searches and substitutes patterns."
    write_corpus(corpus, docs)
    dr, rep = run(dag, {"dry_run": True})
    assert str(dr.state) == "success" and rep is not None and rep["dry_run"] is True
    assert all(p["changed"] == 1 and p["unchanged"] == 9 for p in rep["plan"].values())
    assert ("report", -1, 1, "skipped") in task_states(dag.dag_id, dr.run_id)
    assert len(asset_events(uris[0])) == 2  # runs 1 and 2 only
    for url in urls:
        assert store_texts(url)["doc3#0"] == DOCS["doc3"]

    # 4. the real run re-embeds only that document
    dr, rep = run(dag)
    assert str(dr.state) == "success" and rep is not None
    assert rep["embedded"] == 1 and all(v == 1 for v in rep["upserted"].values()), rep
    for url in urls:
        assert store_texts(url) == expected(docs)

    # 5. delete a document from the source: it leaves every store
    del docs["doc5"]
    write_corpus(corpus, docs)
    dr, rep = run(dag)
    assert str(dr.state) == "success" and rep is not None
    assert rep["embedded"] == 0 and all(v == 1 for v in rep["deleted"].values()), rep
    for url in urls:
        held = store_texts(url)
        assert held == expected(docs) and "doc5#0" not in held

    # 17 tasks in 5 runs in this process: the model was loaded at most once (not at all if an earlier
    # test of the session had loaded it already)
    assert len(loads) <= 1, loads

    out, err = capfd.readouterr()
    assert es_secret not in out + err and chroma_secret not in out + err


def test_partition_fails_once_and_retry_leaves_stores_in_step(airflow_home, es_url, weaviate_url,  # noqa: F811
                                                              chroma_http_url, unique_name):  # fmt: skip
    """A mapped partition task dies mid-way on its first try (after writing part of its share); Airflow
    retries it; the stores end exactly in step with the source, and a re-run has nothing to do."""
    corpus = airflow_home / f"{unique_name}.jsonl"
    write_corpus(corpus, DOCS)
    flag = airflow_home / f"{unique_name}.fault"
    flag.write_text("fail once")
    wv_name = "R" + unique_name.replace("_", "")[:40]
    urls = [
        with_name(es_url, unique_name),
        with_name(weaviate_url, wv_name),
        with_name(chroma_http_url, unique_name),  # partitions need a server: an embedded store is refused
    ]
    dag = make_dag(airflow_home, "retry_" + unique_name[-8:], {
        "source": str(corpus), "targets": urls, "model": "minilm", "partitions": 2, "batch_size": 2,
        "retries": 2, "retry_delay": 0, "fault_flag": str(flag)})  # fmt: skip

    dr, rep = run(dag)
    states = task_states(dag.dag_id, dr.run_id)
    assert str(dr.state) == "success", states
    assert not flag.exists(), "the fault was not injected"
    parts = [s for s in states if s[0] == "sync_partition"]
    assert sorted(s[2] for s in parts) == [1, 2], f"exactly one partition should have needed a retry: {parts}"
    assert all(s[3] == "success" for s in parts)
    assert rep is not None and rep["ok"] and rep["documents"] == 10
    # the failed try wrote (and committed) its first batch before dying: the retry did the rest only
    assert rep["embedded"] < 10 and all(v == rep["embedded"] for v in rep["upserted"].values()), rep
    for url in urls:
        assert store_texts(url) == expected(DOCS)

    dr, rep = run(dag)
    assert str(dr.state) == "success" and rep is not None
    assert rep["embedded"] == 0 and rep["unchanged"] == 10

    # full rebuild from the trigger params: every task is a separate engine (as on separate workers),
    # so the partitions reopen the rebuild index that `plan` began; the alias switches in `report`. The same
    # model: each partition reads the vectors back from the indexes being replaced, and embeds nothing
    before = [describe(u).physical_name for u in urls]
    dr, rep = run(dag, {"mode": "full"})
    assert str(dr.state) == "success", task_states(dag.dag_id, dr.run_id)
    assert rep is not None and rep["ok"] and rep["mode"] == "full" and rep["embedded"] == 0 and rep["from_index"] == 10, rep
    after = [describe(u).physical_name for u in urls]
    assert all(a != b for a, b in zip(after, before, strict=True)), (before, after)
    for url in urls:
        assert store_texts(url) == expected(DOCS)


def test_target_down_fails_the_run_but_not_the_others(airflow_home, chroma_path_url, unique_name, tmp_path):  # noqa: F811
    """One target unreachable: the healthy one is written, the report (XCom) names the failed one, the
    report task fails (no Asset event), and the DAG run is failed so alerting sees it."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    corpus = tmp_path / "c.jsonl"
    write_corpus(corpus, dict(list(DOCS.items())[:3]))
    good = with_name(chroma_path_url, unique_name)
    dead = f"chroma+http://127.0.0.1:{dead_port}/{unique_name}"
    dag = make_dag(airflow_home, "down_" + unique_name[-8:], {
        "source": str(corpus), "targets": [good, dead], "model": "minilm", "partitions": 1, "retries": 0})  # fmt: skip
    dr, rep = run(dag)
    states = task_states(dag.dag_id, dr.run_id)
    assert str(dr.state) == "failed" and ("report", -1, 1, "failed") in states, states
    assert rep is not None and rep["ok"] is False
    dead_key = next(k for k in rep["upserted"] if str(dead_port) in k)
    assert dead_key in rep["errors"] and rep["upserted"][dead_key] == 0
    assert store_texts(good) == expected(dict(list(DOCS.items())[:3]))
    assert asset_events(dag.get_task("report").outlets[0].uri) == []

    # a user error (dims other than the index holds, incremental mode) fails `plan` at once: no retries
    dag = make_dag(airflow_home, "dims_" + unique_name[-8:], {
        "source": str(corpus), "targets": [good], "model": "minilm", "retries": 3, "retry_delay": 0})  # fmt: skip
    dr, rep = run(dag, {"dims": 128})
    states = task_states(dag.dag_id, dr.run_id)
    assert str(dr.state) == "failed" and ("plan", -1, 1, "failed") in states, states
    assert rep is None


def test_trigger_params_repair_allow_mass_delete_and_adopt(airflow_home, chroma_path_url, unique_name, tmp_path):  # noqa: F811
    """The exactness guards from the trigger form: a truncated source fails ``report`` (its deletes refused,
    nothing lost) and ``repair: off`` leaves the drift reported; ``allow_mass_delete`` lets the deletes
    through while the default repair restores the lost records; a DAG on another ledger is refused at
    ``plan`` (no retries) until ``adopt``."""
    from embedrail.connectors import connect

    corpus = tmp_path / "c.jsonl"
    write_corpus(corpus, DOCS)
    url = with_name(chroma_path_url, unique_name)
    dag = make_dag(airflow_home, "guard_" + unique_name[-8:], {
        "source": str(corpus), "targets": [url], "model": "minilm", "retries": 0})  # fmt: skip
    dr, rep = run(dag)
    assert str(dr.state) == "success" and rep is not None and rep["ok"]
    kept = dict(list(DOCS.items())[:2])
    write_corpus(corpus, kept)
    with connect(url) as store:  # records of kept documents lost behind embedrail's back
        assert store.delete(["doc0#0"]).ok
    dr, rep = run(dag, {"repair": "off"})
    states = task_states(dag.dag_id, dr.run_id)
    assert str(dr.state) == "failed" and ("report", -1, 1, "failed") in states, states
    key = next(iter(rep["upserted"]))
    assert rep["refused_deletes"][key]["documents"] == 8 and rep["deleted"][key] == 0
    assert rep["drift"][key]["found"] and not rep["drift"][key]["repaired"]
    assert len(store_texts(url)) == 9  # nothing deleted by the refused run
    dr, rep = run(dag, {"allow_mass_delete": True})
    assert str(dr.state) == "success" and rep["ok"] and rep["drift"][key]["repaired"], rep
    assert store_texts(url) == expected(kept)

    other = make_dag(airflow_home, "adopt_" + unique_name[-8:], {
        "source": str(corpus), "targets": [url], "model": "minilm", "retries": 2, "retry_delay": 0,
        "ledger": f"sqlite:///{tmp_path / 'other-ledger.sqlite'}"})  # fmt: skip
    dr, rep = run(other)
    states = task_states(other.dag_id, dr.run_id)
    assert str(dr.state) == "failed" and ("plan", -1, 1, "failed") in states, states  # refused, not retried
    dr, rep = run(other, {"adopt": True})
    assert str(dr.state) == "success" and rep["ok"] and rep["embedded"] == 0, rep
    assert store_texts(url) == expected(kept)


def test_shipped_demo_config_runs_against_the_local_stores(airflow_home, es_url, weaviate_url, chroma_http_url,  # noqa: F811
                                                            unique_name, monkeypatch):  # fmt: skip
    """dags/configs/stdlib_demo.yaml as shipped (store URLs from EMBEDRAIL_*_URL), with the pydoc source
    cut to three modules and fresh index names so the run stays small."""
    import yaml

    monkeypatch.setenv("EMBEDRAIL_ES_URL", es_url)
    monkeypatch.setenv("EMBEDRAIL_WEAVIATE_URL", weaviate_url)
    monkeypatch.setenv("EMBEDRAIL_CHROMA_URL", chroma_http_url)
    root = Path(__file__).resolve().parent.parent
    cfg = yaml.safe_load((root / "dags" / "configs" / "stdlib_demo.yaml").read_text())
    cfg["dag_id"] = "demo_" + unique_name[-8:]
    cfg["source"] = "pydoc:?modules=argparse,json,gzip&max_chars=400"
    for t in cfg["targets"]:
        t["index"] = ("D" if "WEAVIATE" in t["url"] else "d_") + unique_name.replace("_", "")[-20:]
    configs = airflow_home / f"configs_{unique_name[-8:]}"
    configs.mkdir()
    (configs / "demo.yaml").write_text(yaml.safe_dump(cfg))
    dag_file = airflow_home / "dags" / f"{cfg['dag_id']}.py"
    dag_file.write_text(
        "from embedrail.airflow import build_dags_from_folder\n"
        f"globals().update(build_dags_from_folder({str(configs)!r}))\n"
        f"dag = globals()[{cfg['dag_id']!r}]\n"
    )
    dag = parse(dag_file)
    assert dag.params["partitions"] == 2
    assert "@daily" in repr(dag.timetable) or "0 0 * * *" in repr(dag.timetable)  # 3.3 expands presets
    dr, rep = run(dag)
    assert str(dr.state) == "success", task_states(dag.dag_id, dr.run_id)
    assert rep is not None and rep["ok"] and rep["documents"] == 3 and len(rep["upserted"]) == 3, rep
    urls = [
        with_name(b, t["index"])
        for b, t in zip((es_url, weaviate_url, chroma_http_url), cfg["targets"], strict=True)
    ]
    for url in urls:
        assert {i.split("#")[0] for i in store_texts(url)} == {"argparse", "json", "gzip"}


OPERATOR_DAG = '''
"""Test DAG for tests/test_airflow_e2e.py: the reindex as one operator inside a user's own DAG."""
import json
from pathlib import Path

from airflow.sdk import DAG, Param, task, timezone

from embedrail.airflow import EmbedrailReindexOperator

CFG = json.loads(Path({cfg_path!r}).read_text())

with DAG(CFG["dag_id"], schedule=None, start_date=timezone.datetime(2024, 1, 1), catchup=False,
         params={{"mode": Param("incremental"), "dry_run": Param(False)}}, default_args={{"retries": 3, "retry_delay": 0}}) as dag:
    reindex = EmbedrailReindexOperator(task_id="reindex", source=CFG["source"], targets=CFG["targets"], model="minilm",
                                       dims=CFG.get("dims"), mode="{{{{ params.mode }}}}", dry_run="{{{{ params.dry_run }}}}")

    @task
    def after(report: dict) -> int:
        return report["upserted"][next(iter(report["upserted"]))]

    after(reindex.output)
'''


def test_operator_runs_a_reindex_inside_a_users_own_dag(airflow_home, chroma_path_url, unique_name, tmp_path):  # noqa: F811
    """EmbedrailReindexOperator in a DAG that is not built by the factory: templated options from params,
    the report as XCom for downstream tasks, a full rebuild on demand, a user error failing at once."""
    corpus = tmp_path / "c.jsonl"
    docs = dict(list(DOCS.items())[:4])
    write_corpus(corpus, docs)
    url = with_name(chroma_path_url, unique_name)

    def user_dag(dag_id: str, **cfg: Any) -> Any:
        cfg_path = airflow_home / f"{dag_id}.json"
        cfg_path.write_text(json.dumps({"dag_id": dag_id, "source": str(corpus), "targets": [url], **cfg}))
        dag_file = airflow_home / "dags" / f"{dag_id}.py"
        dag_file.write_text(textwrap.dedent(OPERATOR_DAG.format(cfg_path=str(cfg_path))))
        return parse(dag_file)

    def report_of(dag: Any, dr: Any) -> dict[str, Any]:
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as s:
            value = s.execute(select(XComModel.value).where(XComModel.dag_id == dag.dag_id, XComModel.run_id == dr.run_id,
                                                            XComModel.task_id == "reindex")).scalar_one()  # fmt: skip
        return json.loads(value) if isinstance(value, str) else value

    dag = user_dag("op_" + unique_name[-8:])
    dr = parse(dag.embedrail_test_file).test()
    assert str(dr.state) == "success", task_states(dag.dag_id, dr.run_id)
    rep = report_of(dag, dr)
    assert rep["ok"] and rep["embedded"] == 4 and set(rep) == report_keys()
    assert ("after", -1, 1, "success") in task_states(dag.dag_id, dr.run_id)
    assert store_texts(url) == expected(docs)
    dr = parse(dag.embedrail_test_file).test(run_conf={"dry_run": True})
    assert str(dr.state) == "success" and report_of(dag, dr)["dry_run"] is True
    before = describe(url).physical_name
    dr = parse(dag.embedrail_test_file).test(run_conf={"mode": "full"})
    rep = report_of(dag, dr)
    assert str(dr.state) == "success" and rep["mode"] == "full" and rep["embedded"] == 0 and rep["from_index"] == 4
    assert describe(url).physical_name != before
    assert store_texts(url) == expected(docs)
    # a user error (the index holds 384-d vectors): the task fails once, without its 3 retries
    bad = user_dag("opbad_" + unique_name[-8:], dims=128)
    dr = parse(bad.embedrail_test_file).test()
    assert str(dr.state) == "failed" and ("reindex", -1, 1, "failed") in task_states(bad.dag_id, dr.run_id)


def test_evaluate_task_after_a_run_and_its_quality_gate(airflow_home, chroma_path_url, unique_name, tmp_path):  # noqa: F811
    """``evaluate:`` in a DAG config: after a successful run an ``evaluate`` task measures the targets on the
    given queries (its XCom: the eval report; the chart written); a ``min`` the index misses fails that task
    only, the run's report stays a success."""
    corpus, queries = tmp_path / "c.jsonl", tmp_path / "q.jsonl"
    write_corpus(corpus, DOCS)
    queries.write_text("".join(json.dumps({"query": q, "relevant": [d]}) + "\n" for q, d in [
        ("command line arguments", "doc0"), ("gzip compression", "doc2"), ("sha256 hashing", "doc8"),
        ("locks and queues", "doc9")]))  # fmt: skip
    url = with_name(chroma_path_url, unique_name)
    settings = {"queries": str(queries), "configs": ["knn"], "k": 3, "chart": str(tmp_path / "eval.png"), "min": {"mrr@10": 0.5}}
    dag = make_dag(airflow_home, "eval_" + unique_name[-8:], {"source": str(corpus), "targets": [url], "model": "minilm",
                                                               "retries": 0, "evaluate": settings})  # fmt: skip
    dr, rep = run(dag)
    assert str(dr.state) == "success" and rep is not None and rep["ok"]
    got = xcom(dag.dag_id, dr.run_id, "evaluate")
    (row,) = got["rows"]
    assert row["config"] == "knn" and row["queries"] == 4 and row["metrics"]["mrr@10"] >= 0.5 and row["target"] == url
    assert (tmp_path / "eval.png").read_bytes()[:4] == b"\x89PNG"
    gate = make_dag(airflow_home, "gate_" + unique_name[-8:], {"source": str(corpus), "targets": [url], "model": "minilm",
                                                                "retries": 0, "evaluate": {**settings, "min": {"ndcg@10": 1.01}}})  # fmt: skip
    dr, rep = run(gate)
    states = {t: s for t, _, _, s in task_states(gate.dag_id, dr.run_id)}
    assert str(dr.state) == "failed" and states["report"] == "success" and states["evaluate"] == "failed", states
    assert rep is not None and rep["ok"] and xcom(gate.dag_id, dr.run_id, "evaluate")["rows"][0]["queries"] == 4
