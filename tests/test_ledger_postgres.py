"""The ledger on PostgreSQL under what production does to it: several worker processes syncing the
partitions of one run at once, a process SIGKILLed inside a ledger transaction, two runs of the same job
overlapping (with the source changing between them), and the database connection lost mid-run. Real
processes, a real PostgreSQL server, a real Elasticsearch; each case ends with the store equal to the
source exactly and the ledger equal to the store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url
from test_integration_support import assert_in_step, expected_records, minilm, sentences, write_jsonl
from util import LEDGERS, with_name

from embedrail.errors import LedgerError, RunConflictError
from embedrail.integration.engine import SyncEngine, redact_url
from embedrail.integration.ledger import Ledger

ROOT = Path(__file__).resolve().parent.parent
CT = 24

# One worker process: ``mode`` "run" (a whole run) or "part" (one partition of a prepared run, like an
# Airflow mapped task); ``kill_in_commit`` N: stop (for the parent's SIGKILL) inside the N-th ledger
# commit, after its statements ran and before its COMMIT.
CHILD = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
cfg = json.loads(sys.argv[2])
from embedrail.embed_core import Embedder
from embedrail.integration.engine import SyncEngine
from embedrail.integration.ledger import Ledger

if cfg.get("kill_in_commit") or cfg.get("pause_file"):
    orig, seen = Ledger._tx, [0]
    def _tx(self, fn, integrity=False):
        def fn2(conn):
            out = fn(conn)
            if fn.__qualname__.startswith("Ledger.commit"):
                seen[0] += 1
                if seen[0] == cfg.get("kill_in_commit"):
                    print("IN_COMMIT", flush=True)
                    time.sleep(120)
            return out
        out = orig(self, fn2, integrity)
        if cfg.get("pause_file") and seen[0] == 2:  # after the 2nd commit: wait for the parent's go
            print("PAUSED", flush=True)
            deadline = time.time() + 120
            while not os.path.exists(cfg["pause_file"]) and time.time() < deadline:
                time.sleep(0.05)
            seen[0] += 1
        return out
    Ledger._tx = _tx

emb = Embedder.load("minilm", device="cpu")
print("READY", os.getpid(), flush=True)
t0 = time.time()
from embedrail.errors import RunConflictError
with SyncEngine(cfg["src"], cfg["targets"], ledger=cfg["ledger"], embedder=emb, chunk_tokens=cfg["ct"],
                batch_size=4, queue_depth=1, progress=False) as e:  # one ledger commit per batch of 4 chunks
    try:
        if cfg["mode"] == "run":
            out = e.run().to_dict()
        else:
            out = e.sync_partition(cfg["index"], cfg["count"], cfg["ctx"])
    except RunConflictError as exc:
        out = {"conflict": str(exc)}
print("DONE", json.dumps({"pid": os.getpid(), "start": t0, "end": time.time(), "report": out}), flush=True)
"""


def corpus(n: int, version: int = 0) -> list[dict[str, Any]]:
    docs = []
    for i in range(n):
        if version and i % 7 == 0:
            continue  # deleted in version 1
        text = sentences(f"doc{i}", 4 if not (version and i % 5 == 1) else 2)
        if version and i % 3 == 2:
            text += " Edited in version one."
        docs.append({"id": f"doc{i}", "text": text})
    return docs


def spawn(cfg: dict[str, Any]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT), json.dumps(cfg)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def wait_line(proc: subprocess.Popen, prefix: str) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(prefix):
            return line
    raise AssertionError(f"child ended without {prefix!r}: {proc.stderr.read() if proc.stderr else ''}")


def finish(proc: subprocess.Popen, timeout: float = 240) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    done = [ln for ln in out.splitlines() if ln.startswith("DONE ")]
    assert done, err[-3000:]
    return json.loads(done[-1][5:])


def assert_ledger_is_store(ledger: str, target: str, docs: list[dict[str, Any]]) -> None:
    emb = minilm()
    assert_in_step(target, emb, docs, CT)
    led = Ledger(ledger)
    try:
        key = redact_url(target)
        state = led.target(key)
        assert state is not None and state.pending_generation is None
        assert led.chunk_map(key, state.generation) == expected_records(emb, docs, CT)  # no intents left, nothing stale
    finally:
        led.close()


def sync(src: Path, target: str, ledger: str) -> Any:
    with SyncEngine(str(src), [target], ledger=ledger, embedder=minilm(), chunk_tokens=CT, progress=False) as e:
        return e.run()


def pg_admin(pg_url: str) -> tuple[psycopg.Connection, str]:
    """An autocommit admin connection to the server of ``pg_url`` (on the postgres DB), and its DB name."""
    u = make_url(pg_url)
    conn = psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password, dbname="postgres", autocommit=True)
    return conn, str(u.database)


# ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_worker_processes_sync_the_partitions_of_one_run_at_once(tmp_path: Path, pg_url: str, es_url: str, unique_name: str) -> None:
    docs = corpus(40)
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    target = with_name(es_url, unique_name)
    with SyncEngine(str(src), [target], ledger=pg_url, embedder=minilm(), chunk_tokens=CT, progress=False) as e:
        ctx = e.prepare().to_dict()
    n = 4
    procs = [spawn({"src": str(src), "targets": [target], "ledger": pg_url, "ct": CT, "mode": "part", "index": i,
                    "count": n, "ctx": ctx}) for i in range(n)]  # fmt: skip
    parts = [finish(p) for p in procs]
    assert len({p["pid"] for p in parts}) == n
    assert max(p["start"] for p in parts) < min(p["end"] for p in parts), "the partitions did not run at the same time"
    with SyncEngine(str(src), [target], ledger=pg_url, embedder=minilm(), chunk_tokens=CT, progress=False) as e:
        final = e.finalize(ctx, [*(p["report"] for p in parts), e.delete_absent(ctx)])
    assert final["ok"], final["errors"]
    assert final["embedded"] + final["reused"] == final["chunks"] == sum(p["report"]["chunks"] for p in parts)
    assert_ledger_is_store(pg_url, target, docs)
    assert sync(src, target, pg_url).embedded == 0


@pytest.mark.slow
def test_process_sigkilled_inside_a_ledger_commit_then_rerun_converges(tmp_path: Path, pg_url: str, es_url: str, unique_name: str) -> None:
    docs = corpus(24)
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    target = with_name(es_url, unique_name)
    proc = spawn({"src": str(src), "targets": [target], "ledger": pg_url, "ct": CT, "mode": "run", "kill_in_commit": 3})
    try:
        wait_line(proc, "IN_COMMIT")  # the 3rd commit's rows are written, its transaction is open
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    led = Ledger(pg_url)
    key = redact_url(target)
    state = led.target(key)
    assert state is not None
    before = led.counts(key, state.generation)
    led.close()
    # the server rolled the open transaction back: two batches committed, the third only as intents
    assert 0 < before["chunks"] < len(expected_records(minilm(), docs, CT)) and before["pending_chunks"] > 0, before
    r = sync(src, target, pg_url)
    assert r.ok, r.errors
    assert_ledger_is_store(pg_url, target, docs)


@pytest.mark.slow
def test_a_second_run_on_a_target_being_synced_stops_before_writing(tmp_path: Path, pg_url: str, es_url: str, unique_name: str) -> None:
    """Two runs of one job started at once from two processes (the CLI beside a DAG, or two machines),
    with different views of the source: one holds the target, the other stops with RunConflictError
    before writing anything (overlapping writers of the same chunk ids could leave a stored vector the
    ledger does not describe); the next run makes the store exact."""
    target = with_name(es_url, unique_name)
    v0, v1 = corpus(36), corpus(36, version=1)
    src0, src1 = write_jsonl(tmp_path / "v0.jsonl", v0), write_jsonl(tmp_path / "v1.jsonl", v1)
    sync(src0, target, pg_url)
    v0b = [{**d, "text": d["text"] + " Revised."} if i % 2 else d for i, d in enumerate(v0)]
    src0b = write_jsonl(tmp_path / "v0b.jsonl", v0b)
    go = tmp_path / "go"
    a = spawn({"src": str(src0b), "targets": [target], "ledger": pg_url, "ct": CT, "mode": "run", "pause_file": str(go)})
    wait_line(a, "PAUSED")  # a holds the target and has written part of it
    led = Ledger(pg_url)
    try:
        assert led.lease(redact_url(target)) is not None
        b = spawn({"src": str(src1), "targets": [target], "ledger": pg_url, "ct": CT, "mode": "run"})
        rb = finish(b)
        go.touch()
        ra = finish(a)
        assert ra["report"]["ok"], ra["report"]["errors"]
        assert rb["report"].keys() == {"conflict"} and "is syncing it" in rb["report"]["conflict"], rb
        assert rb["start"] < ra["end"]  # b really came while a was running
        assert led.lease(redact_url(target)) is None  # a's run ended: released
    finally:
        led.close()
    assert_ledger_is_store(pg_url, target, v0b)  # b wrote nothing
    r = sync(src1, target, pg_url)  # the source as it is now
    assert r.ok, r.errors
    assert_ledger_is_store(pg_url, target, v1)


@pytest.mark.slow
def test_connection_loss_mid_run_is_retried_and_an_outage_fails_clearly(tmp_path: Path, pg_url: str, es_url: str, unique_name: str) -> None:
    docs = corpus(30)
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    target = with_name(es_url, unique_name)
    admin, db = pg_admin(pg_url)
    try:
        # 1. the server drops every connection of the ledger, repeatedly, while a run writes
        stop, killed = threading.Event(), [0]

        def kill_backends() -> None:
            while not stop.wait(0.25):
                rows = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                                     (db,)).fetchall()  # fmt: skip
                killed[0] += sum(1 for (ok,) in rows if ok)

        t = threading.Thread(target=kill_backends, daemon=True)
        t.start()
        try:
            r = sync(src, target, pg_url)
        finally:
            stop.set()
            t.join()
        assert killed[0] > 0, "no ledger connection was ever cut: the run was too short"
        assert r.ok, r.errors
        assert_ledger_is_store(pg_url, target, docs)

        # 2. the database goes away for longer than the retries last: a LedgerError that says what to do
        edited = [{**d, "text": d["text"] + " Changed while the ledger was down."} for d in docs]
        write_jsonl(src, edited)
        engine = SyncEngine(str(src), [target], ledger=pg_url, embedder=minilm(), chunk_tokens=CT, progress=False)
        try:
            admin.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db,))
            with pytest.raises(LedgerError, match=r"nothing is lost.*run again") as exc:
                engine.run()
            assert "***" in str(exc.value) or "@" not in str(exc.value)  # the password never in the message
            assert make_url(pg_url).password not in str(exc.value)
        finally:
            admin.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
            engine.close()
        # 3. the database is back: the next run converges
        r = sync(src, target, pg_url)
        assert r.ok, r.errors
        assert_ledger_is_store(pg_url, target, edited)
    finally:
        admin.close()


@pytest.mark.parametrize("ledger_kind", LEDGERS)
def test_run_leases_one_run_per_target_and_when_a_lease_is_taken_over(ledger_url: str) -> None:
    import socket

    from embedrail.integration.engine import SyncEngine as E

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    led, other = Ledger(ledger_url), Ledger(ledger_url)
    try:
        lease_a = led.acquire(["t1", "t2"], "runA", "process:elsewhere:1", ttl=60)
        with pytest.raises(RunConflictError, match=r"t1: run runA \(process:elsewhere:1"):
            other.acquire(["t1"], "runB", "airflow:dag_b", ttl=60)
        with pytest.raises(RunConflictError):  # all or none: t3 was not leased either
            other.acquire(["t3", "t2"], "runB", "airflow:dag_b", ttl=60)
        assert led.lease("t3") is None
        # a writer of runA renews its lease; once runB took the target over, runA's next commit is refused
        led.mark_intent("t1", "g", [("c1", "d1")], lease=lease_a)
        other.acquire(["t1"], "runB", "process:elsewhere:1", ttl=60, may_take_over=lambda owner: owner == "process:elsewhere:1")
        with pytest.raises(RunConflictError, match="lost its lease to run runB"):
            led.commit("t1", "g", written=[("c1", "d1", "fp")], lease=lease_a)
        assert other.chunk_map("t1", "g") == {"c1": None}  # still an intent: the next run rewrites it
        # takeover rules of the engine: same owner, a dead process of this host, an expired lease
        eng = E.__new__(E)
        eng.run_owner = "airflow:dag_b"
        host = socket.gethostname()
        assert eng._may_take_over("airflow:dag_b") and eng._may_take_over(f"process:{host}:{dead.pid}")
        assert not eng._may_take_over(f"process:{host}:{os.getpid()}") and not eng._may_take_over("process:otherhost:1")
        assert eng._may_take_over(f"process:{host}:{dead.pid}:a1b2c3d4")  # an engine's owner: PID and nonce
        assert not eng._may_take_over(f"process:{host}:{os.getpid()}:a1b2c3d4")  # another engine of this live process
        other.acquire(["t4"], "runC", "airflow:dag_c", ttl=0)  # lapses at once
        led.acquire(["t4"], "runD", "airflow:dag_d", ttl=60)
        assert led.lease("t4")["run_id"] == "runD"
        led.release(["t1", "t2", "t4"], "runA")  # releases only what runA still holds
        assert led.lease("t2") is None and led.lease("t1")["run_id"] == "runB" and led.lease("t4")["run_id"] == "runD"
    finally:
        led.close()
        other.close()


@pytest.mark.parametrize("ledger_kind", LEDGERS)
def test_chunks_are_found_by_their_text_and_an_older_ledger_gains_the_index(ledger_url: str) -> None:
    """``chunks_with_text`` finds committed chunk rows of any document by the text part of their fingerprints
    (intents and other targets or generations never); a ledger made before that index existed gets it when it
    is opened, and the lookup uses it (SQLite's plan)."""
    from sqlalchemy import text

    from embedrail.integration.ledger_schema import _has_index

    led = Ledger(ledger_url)
    try:
        led.commit("t", "g", written=[(f"d{i}#0", f"d{i}", f"{i:032x}" + "m" * 16) for i in range(50)])
        led.commit("t", "g", written=[("dup#0", "dup", f"{7:032x}" + "n" * 16)])  # the same text, other metadata
        led.commit("t", "other-gen", written=[("x#0", "x", f"{5:032x}" + "m" * 16)])
        led.commit("u", "g", written=[("y#0", "y", f"{5:032x}" + "m" * 16)])
        led.mark_intent("t", "g", [("i#0", "i")])
        found = led.chunks_with_text("t", "g", [f"{5:032x}", f"{7:032x}", f"{99:032x}", "short"])
        assert found[f"{5:032x}"] == ["d5#0"] and sorted(found[f"{7:032x}"]) == ["d7#0", "dup#0"] and len(found) == 2
        assert led.chunks_with_text("t", "g", [f"{7:032x}"], per_text=1)[f"{7:032x}"][0] in ("d7#0", "dup#0")
        with led.engine.begin() as conn:  # the ledger as an older embedrail left it
            conn.execute(text("DROP INDEX er_chunks_text"))
        assert not _has_index(led.engine, "er_chunks_text")
    finally:
        led.close()
    again = Ledger(ledger_url)
    try:
        assert _has_index(again.engine, "er_chunks_text")
        assert again.chunks_with_text("t", "g", [f"{5:032x}"]) == {f"{5:032x}": ["d5#0"]}
        if again.engine.dialect.name == "sqlite":
            sql = ("EXPLAIN QUERY PLAN SELECT chunk_id FROM er_chunks WHERE target = 't' AND generation = 'g' "
                   "AND substr(er_chunks.fingerprint, 1, 32) IN ('a', 'b')")  # fmt: skip
            with again.engine.connect() as conn:
                assert "er_chunks_text" in " ".join(str(r) for r in conn.execute(text(sql)))
    finally:
        again.close()
