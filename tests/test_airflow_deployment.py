"""A real Airflow deployment, as production runs it: the metadata DB on PostgreSQL, ``airflow scheduler``,
``airflow dag-processor`` and ``airflow api-server`` as separate processes, tasks run by executor workers
(LocalExecutor with parallelism 4; CeleryExecutor with a Redis broker and two workers, one serving a
``gpu`` queue), the shipped ``dags/embedrail_dags.py`` reading a YAML config, the ledger on PostgreSQL.
Runs are triggered with ``airflow dags trigger`` and checked in the metadata DB, the stores, the ledger
and the task logs the deployment writes. Few tests, each a whole deployment: they cost minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from conftest import pg_database, servers
from sqlalchemy.engine import make_url
from test_airflow_user_dags import documented_dag_file
from test_integration_support import assert_in_step, expected_records, minilm, sentences, write_jsonl
from util import with_name

from embedrail.integration.engine import redact_url
from embedrail.integration.ledger import Ledger

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
AIRFLOW = str(Path(sys.executable).parent / "airflow")
CT = 32
DAG_ID = "embedrail_deploy"

# TaskInstance.hostname comes from [core] hostname_callable: each worker names itself from its env, so
# the test can tell which worker ran which task (they all run on this one machine).
HOSTNAME_MODULE = 'import os\n\n\ndef hostname():\n    return os.environ.get("EMBEDRAIL_TEST_WORKER", "scheduler")\n'


class Deployment:
    """One Airflow deployment under ``home``: processes started with ``start``, stopped by ``stop``."""

    def __init__(self, home: Path, metadata_url: str, executor: str, extra_env: dict[str, str]) -> None:
        self.home, self.metadata_url = home, metadata_url
        port = servers.free_port()
        (home / "configs").mkdir(parents=True)
        (home / "pylib").mkdir()
        (home / "dags").mkdir()  # the shipped DAG file, and a user's own DAG file exactly as docs/airflow.md shows it
        shutil.copy(ROOT / "dags" / "embedrail_dags.py", home / "dags" / "embedrail_dags.py")
        (home / "dags" / "my_reindex.py").write_text(documented_dag_file(), encoding="utf-8")
        (home / "pylib" / "embedrail_test_hostname.py").write_text(HOSTNAME_MODULE)
        async_url = make_url(metadata_url).set(drivername="postgresql+psycopg_async").render_as_string(hide_password=False)
        inherited = {k: v for k, v in os.environ.items()  # not the dag.test() tests' isolated Airflow settings
                     if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "_EMBEDRAIL_TEST_AIRFLOW")) and k != "AIRFLOW_HOME"}  # fmt: skip
        self.env = {
            **inherited,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
            # Airflow 3 also opens an async engine; left alone it derives postgresql+asyncpg (not installed)
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": async_url,
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "EMBEDRAIL_DAG_CONFIGS": str(home / "configs"),
            "AIRFLOW__CORE__EXECUTOR": executor,
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "embedrail_test_hostname.hostname",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex * 2,
            "AIRFLOW__API__SECRET_KEY": uuid.uuid4().hex,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(home / "pylib")]),
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
            **extra_env,
        }
        self.api = f"http://127.0.0.1:{port}"
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str, worker: str | None = None) -> None:
        env = dict(self.env, EMBEDRAIL_TEST_WORKER=worker) if worker else self.env
        log = open(self.home / f"{name}.log", "ab")  # noqa: SIM115 - the child's
        self.procs[name] = subprocess.Popen([AIRFLOW, *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.home)  # fmt: skip
        log.close()

    def kill(self, name: str) -> None:
        """SIGKILL a process and everything it started (a machine lost)."""
        p = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)

    def stop(self) -> None:
        for p in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        end = time.time() + 30
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, end - time.time()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
        self.procs.clear()

    def airflow(self, *args: str) -> str:
        r = subprocess.run([AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=180, cwd=self.home)
        assert r.returncode == 0, f"airflow {' '.join(args)}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        return r.stdout

    def sql(self, query: str, *params: Any) -> list[tuple]:
        u = make_url(self.metadata_url)
        with psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.database) as c:
            cur = c.execute(query, params)
            return cur.fetchall() if cur.description else []

    def wait(self, what: str, cond: Any, timeout: float) -> Any:
        end = time.time() + timeout
        while time.time() < end:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            assert not dead, f"{dead} exited: {self.tail(dead[0])}"
            v = cond()
            if v:
                return v
            time.sleep(1)
        raise AssertionError(f"timed out waiting for {what}; scheduler log:\n{self.tail('scheduler')}")

    def tail(self, name: str, n: int = 40) -> str:
        return servers.tail(str(self.home / f"{name}.log"), n)

    def up(self, *workers: tuple[str, ...]) -> None:
        for name in ("scheduler", "dag-processor", "api-server"):
            self.start(name, name)
        for w in workers:
            self.start(w[0], *w[1:], worker=w[0])
        self.wait("the API server", lambda: servers.http_ok(f"{self.api}/api/v2/monitor/health"), 120)
        for dag_id in (DAG_ID, "docs_reindex"):
            self.wait(f"the DAG {dag_id} to be parsed", lambda d=dag_id: self.sql("SELECT 1 FROM dag WHERE dag_id = %s AND NOT is_paused", d), 120)

    def trigger(self, run_id: str, conf: dict[str, Any] | None = None, dag_id: str = DAG_ID) -> str:
        self.airflow("dags", "trigger", dag_id, "--run-id", run_id, *(["--conf", json.dumps(conf)] if conf else []))
        return run_id

    def wait_run(self, run_id: str, timeout: float = 420, dag_id: str = DAG_ID) -> str:
        def done() -> str | None:
            rows = self.sql("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", dag_id, run_id)
            return rows[0][0] if rows and rows[0][0] in ("success", "failed") else None

        return self.wait(f"run {run_id}", done, timeout)

    def tis(self, run_id: str, dag_id: str = DAG_ID) -> list[dict[str, Any]]:
        cols = ["task_id", "map_index", "state", "pid", "hostname", "queue", "try_number", "start_date", "end_date"]
        rows = self.sql(f"SELECT {', '.join(cols)} FROM task_instance WHERE dag_id = %s AND run_id = %s ORDER BY task_id, map_index",
                        dag_id, run_id)  # fmt: skip
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def report(self, run_id: str, dag_id: str = DAG_ID, task_id: str = "report") -> Any:
        rows = self.sql("SELECT value FROM xcom WHERE dag_id = %s AND run_id = %s AND task_id = %s AND key = 'return_value'",
                        dag_id, run_id, task_id)  # fmt: skip
        assert rows, f"no report XCom for {run_id}"
        v = rows[0][0]
        return json.loads(v) if isinstance(v, str) else v

    def everything_written(self) -> str:
        """Every task log, process log and XCom the deployment wrote (for the secrets check)."""
        parts = [p.read_text(errors="replace") for p in self.home.rglob("*.log")]
        parts += [str(v) for (v,) in self.sql("SELECT value::text FROM xcom")]
        parts += [str(r) for r in self.sql("SELECT rendered_fields::text FROM rendered_task_instance_fields")]
        return "\n".join(parts)


@pytest.fixture(scope="module")
def metadata_db(pg_server_url: str, tmp_path_factory) -> str:
    """A migrated Airflow metadata database on the PostgreSQL server (shared by this module's deployments)."""
    url = pg_database(pg_server_url, f"airflow_{uuid.uuid4().hex[:8]}")
    home = tmp_path_factory.mktemp("airflow_migrate")
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url,
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": make_url(url).set(drivername="postgresql+psycopg_async").render_as_string(hide_password=False),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}  # fmt: skip
    r = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"airflow db migrate on PostgreSQL failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return url


@contextlib.contextmanager
def deployment(tmp_path: Path, metadata_db: str, executor: str, **extra_env: str) -> Iterator[Deployment]:
    d = Deployment(tmp_path / "airflow", metadata_db, executor, extra_env)
    try:
        yield d
    finally:
        d.stop()
        d.sql("DELETE FROM dag_run WHERE dag_id IN (%s, 'docs_reindex')", DAG_ID)  # the next deployment starts with no runs


def write_config(d: Deployment, src: Path, targets: list[dict[str, Any]], **cfg: Any) -> None:
    (d.home / "configs" / "deploy.yaml").write_text(yaml.safe_dump({
        "dag_id": DAG_ID, "source": str(src), "model": "minilm", "chunk_tokens": CT, "batch_size": 8, "targets": targets,
        "ledger": "conn:embedrail_ledger", "schedule": None, "retry_delay": 2, **cfg,
    }))  # fmt: skip


def ledger_connection(ledger_url: str) -> str:
    """An Airflow ``postgres`` connection (JSON form of AIRFLOW_CONN_*) for the ledger database."""
    u = make_url(ledger_url)
    return json.dumps({"conn_type": "postgres", "host": u.host, "port": u.port, "login": u.username,
                       "password": u.password, "schema": u.database})  # fmt: skip


def corpus(n: int, sentences_per_doc: int = 6) -> list[dict[str, Any]]:
    return [{"id": f"doc{i}", "text": sentences(f"doc{i}", sentences_per_doc), "topic": i % 3} for i in range(n)]


def assert_exact(targets: list[str], ledger_url: str, docs: list[dict[str, Any]]) -> None:
    emb = minilm()
    want = expected_records(emb, docs, CT)
    led = Ledger(ledger_url)
    try:
        for t in targets:
            assert_in_step(t, emb, docs, CT)
            state = led.target(redact_url(t))
            assert state is not None and led.chunk_map(redact_url(t), state.generation) == want
            assert led.lease(redact_url(t)) is None  # every run released its lease
    finally:
        led.close()


def overlap(tis: list[dict[str, Any]]) -> bool:
    return max(t["start_date"] for t in tis) < min(t["end_date"] for t in tis)


# ----------------------------------------------------------------------------------------------------
def test_local_executor_deployment_on_postgresql(tmp_path: Path, metadata_db: str, pg_server_url: str, es_url: str,
                                                 chroma_http_url: str, unique_name: str) -> None:  # fmt: skip
    ledger = pg_database(pg_server_url, f"{unique_name}_ledger")
    chroma_token = f"tok-{uuid.uuid4().hex}"
    ch = urllib.request.urlparse(chroma_http_url.replace("chroma+http", "http"))
    chroma_conn = json.dumps({"conn_type": "generic", "host": ch.hostname, "port": ch.port, "password": chroma_token,
                              "extra": {"store": "chroma"}})  # fmt: skip
    docs = corpus(60)
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    targets = [with_name(es_url, unique_name), with_name(chroma_http_url, unique_name)]
    # the user's DAG (docs/airflow.md) names its collection "docs": a database of its own on the shared server
    # keeps it apart from every other test's "docs" (the ownership guard would rightly refuse to share it)
    import chromadb
    from chromadb.config import Settings

    chromadb.AdminClient(Settings(chroma_api_impl="chromadb.api.fastapi.FastAPI", chroma_server_host=ch.hostname,
                                  chroma_server_http_port=ch.port)).create_database(unique_name)  # fmt: skip
    user_chroma = json.dumps({"conn_type": "embedrail_chroma", "host": ch.hostname, "port": ch.port, "password": chroma_token,
                              "extra": {"database": unique_name}})  # fmt: skip
    with deployment(tmp_path, metadata_db, "LocalExecutor", AIRFLOW_CONN_EMBEDRAIL_LEDGER=ledger_connection(ledger),
                    AIRFLOW_CONN_DEPLOY_CHROMA=chroma_conn, AIRFLOW_CONN_MY_CHROMA=user_chroma, DOCS_JSONL=str(src)) as d:  # fmt: skip
        write_config(d, src, [{"url": es_url, "index": unique_name}, {"conn": "deploy_chroma", "index": unique_name}],
                     partitions=3, retries=1)  # fmt: skip
        d.up()
        assert d.wait_run(d.trigger("first")) == "success", d.tis("first")
        parts = [t for t in d.tis("first") if t["task_id"] == "sync_partition"]
        assert len(parts) == 3 and all(t["state"] == "success" for t in parts)
        assert len({t["pid"] for t in parts}) == 3, parts  # three worker processes ...
        assert overlap(parts), parts  # ... at the same time
        rep = d.report("first")
        assert rep["ok"] and rep["embedded"] + rep["reused"] == rep["chunks"] == len(expected_records(minilm(), docs, CT))
        assert_exact(targets, ledger, docs)
        # two more runs triggered at once: Airflow runs the second after the first (max_active_runs=1);
        # neither embeds anything
        d.trigger("second")
        d.trigger("third")
        assert d.wait_run("second") == "success" and d.wait_run("third") == "success"
        runs = dict(((r, (s, e)) for r, s, e in d.sql("SELECT run_id, start_date, end_date FROM dag_run WHERE dag_id = %s", DAG_ID)))
        assert runs["second"][1] <= runs["third"][0] or runs["third"][1] <= runs["second"][0], runs
        assert d.report("second")["embedded"] == 0 and d.report("third")["embedded"] == 0
        assert_exact(targets, ledger, docs)
        # the user's own DAG file (docs/airflow.md) under the same scheduler: green, its index exact
        assert d.wait_run(d.trigger("user", dag_id="docs_reindex"), dag_id="docs_reindex") == "success", d.tis("user", "docs_reindex")
        user = d.report("user", dag_id="docs_reindex")
        assert user["ok"] and d.report("user", dag_id="docs_reindex", task_id="records_in_the_index") == user["chunks"]
        # no secret in any task log, process log, XCom or rendered field the deployment wrote
        written = d.everything_written()
        assert "sync_partition" in written  # the task logs are there
        pg_password = make_url(ledger).password
        assert pg_password and pg_password not in written and chroma_token not in written
    led = Ledger(ledger)
    try:
        with led.engine.connect() as c:
            dump = "\n".join(str(r) for t in ("er_targets", "er_meta", "er_leases") for r in c.exec_driver_sql(f"SELECT * FROM {t}"))
        assert pg_password not in dump and chroma_token not in dump
    finally:
        led.close()


def test_celery_executor_gpu_queue_and_a_worker_killed_mid_partition(tmp_path: Path, metadata_db: str, pg_server_url: str,
                                                                     redis_url: str, es_url: str, unique_name: str) -> None:  # fmt: skip
    ledger = pg_database(pg_server_url, f"{unique_name}_ledger")
    result_db = make_url(metadata_db).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    docs = corpus(120)
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    target = with_name(es_url, unique_name)
    with deployment(tmp_path, metadata_db, "CeleryExecutor", AIRFLOW_CONN_EMBEDRAIL_LEDGER=ledger_connection(ledger),
                    AIRFLOW__CELERY__BROKER_URL=redis_url, AIRFLOW__CELERY__RESULT_BACKEND=f"db+{result_db}",
                    AIRFLOW__CELERY__WORKER_CONCURRENCY="2") as d:  # fmt: skip
        write_config(d, src, [{"url": es_url, "index": unique_name}], partitions=2, retries=3, queue="gpu")
        d.up(("cpu-worker", "celery", "worker", "--queues", "default", "--concurrency", "2", "--celery-hostname", "cpu@%h"),
             ("gpu-worker", "celery", "worker", "--queues", "gpu", "--concurrency", "2", "--celery-hostname", "gpu@%h"))  # fmt: skip
        d.trigger("celery")
        led = Ledger(ledger)
        try:  # wait until a partition task has written part of its share, then lose the GPU worker
            key = redact_url(target)

            def writing() -> bool:
                st = led.target(key)
                return bool(st and led.counts(key, st.generation)["chunks"] > 0)

            d.wait("a partition task writing", writing, 300)
        finally:
            led.close()
        running = [t for t in d.tis("celery") if t["task_id"] == "sync_partition" and t["state"] == "running"]
        assert running, d.tis("celery")
        d.kill("gpu-worker")
        # a replacement GPU worker comes up (as an orchestrator restarts a lost node)
        d.start("gpu-worker-2", "celery", "worker", "--queues", "gpu", "--concurrency", "2", "--celery-hostname", "gpu2@%h",
                worker="gpu-worker-2")  # fmt: skip
        assert d.wait_run("celery", timeout=600) == "success", d.tis("celery")
        tis = d.tis("celery")
        parts = [t for t in tis if t["task_id"] == "sync_partition"]
        others = [t for t in tis if t["task_id"] != "sync_partition"]
        assert all(t["queue"] == "gpu" and t["hostname"] in ("gpu-worker", "gpu-worker-2") for t in parts), parts
        assert all(t["queue"] == "default" and t["hostname"] == "cpu-worker" for t in others), others
        retried = [t for t in parts if t["try_number"] > 1]
        assert retried and all(t["hostname"] == "gpu-worker-2" for t in retried), parts  # retried on the new worker
        rep = d.report("celery")
        assert rep["ok"], rep["errors"]
        written = d.everything_written()  # the Celery workers' task logs included
        assert "sync_partition" in written and make_url(ledger).password not in written
    assert_exact([target], ledger, docs)
