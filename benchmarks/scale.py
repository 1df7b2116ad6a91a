"""Per-task memory and time as the corpus grows (issue 27; not a test).

Synthetic documents (~40 words each) synced by a *null* embedder (the packaged model's tokenizer, so
chunking is real, and vectors that cost nothing: the framework's own cost is what is measured) into a server
store, the ledger on SQLite or PostgreSQL. Per corpus size, each step in a fresh process, as an Airflow task
runs it: the first run, an unchanged re-run, and a run after 1 % of the documents were edited and 1 % deleted.
Reported per step: seconds, documents/s, the process's peak RSS (``ru_maxrss``), and the ledger's size.
The baseline is the smallest size of the same run: unchanged seconds per document and peak RSS at each size
as a ratio of the first size. With ``--baseline DIR`` (an older embedrail installed there, e.g.
``pip install --no-deps --target DIR <checkout>``) the unchanged and edit steps also run with that code, on the
same index and ledger, right after the current code's (its edit step edits another 1 % and deletes another 1 %).

    .venv/bin/python benchmarks/scale.py [--sizes 10000,100000] [--store es|pgvector] [--ledger sqlite|pg] [--dims 64]
                                         [--baseline DIR] [--partitions 4]

With ``--partitions P`` each step runs as Airflow runs it: a plan task (prepare, and the split of the source
into P shares), P partition tasks started at once (each reads only its share), then the deletes and report
task; a step's seconds are the whole of it, its peak RSS the largest of its tasks', and ``read_per_task``
counts the documents each partition task read (together: the source once).

With ``--langchain`` (run with ``.venv-bench/bin/python``; ``make bench-peers`` builds it, needs ``--store es``) the
same three steps also run through LangChain's ``index()`` as its documentation shows it, ``cleanup="full"``, with
``SQLRecordManager`` on PostgreSQL (a database of its own) into ``langchain_elasticsearch.ElasticsearchStore`` (an
index of its own), the same free vectors, each step in a fresh process; a size whose LangChain step runs past
``--langchain-limit`` seconds (an hour) is not carried on to larger sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _corpus import write_corpus  # noqa: E402
from _servers import server_url  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
STEPS = ("first", "unchanged", "baseline_unchanged", "edited_deleted", "baseline_edited_deleted")
def step(source: str, target: str, ledger: str, dims: int) -> dict[str, Any]:
    """One sync in this process (the child): its report, seconds and peak RSS."""
    # embedrail first: benchmarks/pipeline.py puts the checkout on sys.path, which would shadow a --baseline
    from embedrail.integration.engine import SyncEngine
    from pipeline import null_embedder  # isort: skip

    t0 = time.perf_counter()
    # the model is loaded when a document needs it (never in an unchanged run), as in production: its load is
    # the largest transient of a task, and would hide what the rest of the task holds
    with SyncEngine(source, [target], ledger=ledger, embedder_factory=lambda *a, **k: null_embedder(dims), batch_size=256,
                    progress=False) as engine:  # fmt: skip
        rep = engine.run().to_dict()
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(rss, 1), "documents": rep["documents"],
            "embedded": rep["embedded"], "deleted": sum(rep["deleted"].values()), "ok": rep["ok"],
            "refused": rep["refused_deletes"]}  # fmt: skip


def langchain_step(source: str, es_url: str, index_name: str, records_url: str, dims: int) -> dict[str, Any]:
    """LangChain ``index()`` over the JSONL file, in this process (the child): seconds, peak RSS, its counts."""
    from elasticsearch import Elasticsearch
    from langchain_classic.indexes import SQLRecordManager
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.indexing import index
    from langchain_elasticsearch import ElasticsearchStore
    from pipeline import _vector

    class FreeEmbeddings(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return [_vector(t, dims).tolist() for t in texts]

        def embed_query(self, text: str) -> list[float]:
            return _vector(text, dims).tolist()

    t0 = time.perf_counter()
    # a client of our own: langchain's es_url= path calls GET /, absent on the test server's minimal distribution
    store = ElasticsearchStore(index_name=index_name, client=Elasticsearch(es_url), embedding=FreeEmbeddings())
    rm = SQLRecordManager(f"elasticsearch/{index_name}", db_url=records_url.replace("postgresql://", "postgresql+psycopg://", 1))
    rm.create_schema()
    with open(source, encoding="utf-8") as f:
        rows = (json.loads(line) for line in f)
        docs = (Document(page_content=r["text"], metadata={"source": r["id"], "group": r["group"]}) for r in rows)
        res = index(docs, rm, store, cleanup="full", source_id_key="source")  # its default batch_size (100)
    seconds = time.perf_counter() - t0
    store.client.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(rss, 1), **{k: int(v) for k, v in res.items()}}


def engine_for(source: str, target: str, ledger: str, dims: int) -> Any:
    from embedrail.integration.engine import SyncEngine
    from pipeline import null_embedder  # isort: skip

    return SyncEngine(source, [target], ledger=ledger, embedder_factory=lambda *a, **k: null_embedder(dims), batch_size=256,
                      progress=False)  # fmt: skip


def task(role: str, source: str, target: str, ledger: str, dims: int, extra: list[str]) -> dict[str, Any]:
    """One task of a run split into partitions, in this process, as Airflow runs it: ``plan`` (prepare and split,
    written to a file), ``part`` (one partition's share), ``finish`` (snapshot deletes and the report)."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    with engine_for(source, target, ledger, dims) as engine:
        if role == "plan":
            ctx = engine.prepare().to_dict()
            Path(extra[0]).write_text(json.dumps({"ctx": ctx, "shares": engine.split(ctx, int(extra[1]))}))
        elif role == "part":
            plan = json.loads(Path(extra[0]).read_text())
            i = int(extra[1])
            part = engine.sync_partition(i, len(plan["shares"]), plan["ctx"], plan["shares"][i])
            Path(f"{extra[0]}.part{i}").write_text(json.dumps(part))
            out = {"read": part["read"], "documents": part["documents"]}
        else:
            plan = json.loads(Path(extra[0]).read_text())
            parts = [json.loads(Path(f"{extra[0]}.part{i}").read_text()) for i in range(len(plan["shares"]))]
            rep = engine.finalize(plan["ctx"], [*parts, engine.delete_absent(plan["ctx"])])
            out = {"documents": rep["documents"], "read": rep["read"], "embedded": rep["embedded"],
                   "deleted": sum(rep["deleted"].values()), "ok": rep["ok"], "refused": rep["refused_deletes"]}  # fmt: skip
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": round(time.perf_counter() - t0, 2), "peak_rss_mib": round(rss, 1), **out}


def run_partitioned(source: str, target: str, ledger: str, dims: int, count: int) -> dict[str, Any]:
    """A run as ``count`` partition tasks started at once (plan first, deletes and report after)."""
    with tempfile.TemporaryDirectory() as d:
        plan_file = str(Path(d) / "plan.json")
        t0 = time.perf_counter()
        plan = run_child("plan", source, target, ledger, str(dims), plan_file, str(count))
        t1 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, __file__, "--child", "part", source, target, ledger, str(dims), plan_file,
                                   str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(count)]  # fmt: skip
        parts = []
        for pr in procs:
            out, err = pr.communicate()
            if pr.returncode != 0:
                raise SystemExit(err[-3000:])
            parts.append(json.loads(out.strip().splitlines()[-1]))
        t2 = time.perf_counter()
        fin = run_child("finish", source, target, ledger, str(dims), plan_file)
        t3 = time.perf_counter()
    return {"seconds": round(t3 - t0, 2), "plan_s": round(t1 - t0, 2), "partitions_s": round(t2 - t1, 2),
            "finish_s": round(t3 - t2, 2), "peak_rss_mib": max(p["peak_rss_mib"] for p in [plan, *parts, fin]),
            "read_per_task": [p["read"] for p in parts], **{k: fin[k] for k in ("documents", "read", "embedded", "deleted",
                                                                                 "ok", "refused")}}  # fmt: skip


def run_child(*args: str, pythonpath: str | None = None) -> dict[str, Any]:
    env = dict(os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {}))
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def ledger_size(ledger: str) -> float:
    if ledger.startswith("sqlite:///"):
        p = Path(ledger[len("sqlite:///") :])
        return round(sum(f.stat().st_size for f in p.parent.glob(p.name + "*")) / 2**20, 1)
    from sqlalchemy import create_engine, text

    from embedrail.integration.ledger import ledger_url

    eng = create_engine(ledger_url(ledger))
    with eng.connect() as c:
        size = c.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
    eng.dispose()
    return round(size / 2**20, 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--store", default="es", choices=["es", "pgvector"])
    p.add_argument("--ledger", default="sqlite", choices=["sqlite", "pg"])
    p.add_argument("--dims", type=int, default=64)
    p.add_argument("--baseline", help="a folder holding another embedrail (pip install --target) to compare with")
    p.add_argument("--partitions", type=int, default=1, help="run each step as this many partition tasks at once")
    p.add_argument("--langchain", action="store_true", help="also LangChain index() with SQLRecordManager on PostgreSQL")
    p.add_argument("--langchain-limit", type=float, default=3600, help="seconds after which larger sizes skip LangChain")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        if a.child[0] == "langchain":
            _, src, es, idx, rm, dims = a.child
            print(json.dumps(langchain_step(src, es, idx, rm, int(dims))))
        elif a.child[0] in ("plan", "part", "finish"):
            role, src, tgt, led, dims, *extra = a.child
            print(json.dumps(task(role, src, tgt, led, int(dims), extra)))
        else:
            print(json.dumps(step(a.child[0], a.child[1], a.child[2], int(a.child[3]))))
        return 0
    if a.langchain and a.store != "es":
        raise SystemExit("--langchain measures LangChain's ElasticsearchStore: use --store es")
    if a.partitions > 1 and a.baseline:
        raise SystemExit("--baseline compares one-process runs: leave --partitions at 1")

    def sync(src: Path, target: str, ledger: str) -> dict[str, Any]:
        if a.partitions > 1:
            return run_partitioned(str(src), target, ledger, a.dims, a.partitions)
        return run_child(str(src), target, ledger, str(a.dims))

    from sqlalchemy import create_engine, text

    base = server_url("EMBEDRAIL_ES_URL" if a.store == "es" else "EMBEDRAIL_PG_URL")
    pg = server_url("EMBEDRAIL_PG_URL")
    if not base or ((a.ledger == "pg" or a.langchain) and not pg):
        raise SystemExit("start the servers first: make servers")

    def new_database(name: str) -> str:
        assert pg is not None
        admin = create_engine(pg.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return pg.rsplit("/", 1)[0] + f"/{name}"

    results = []
    langchain_on = a.langchain
    for n in [int(x) for x in a.sizes.split(",")]:
        tmp = Path(tempfile.mkdtemp(prefix="embedrail-scale-"))
        name = f"scale{n}_{os.getpid()}"
        target = f"{base}/{name}" if a.store == "es" else base.replace("postgresql", "pgvector", 1).split("?")[0] + f"?table={name}"
        if a.ledger == "pg":
            ledger = new_database(name)
        else:
            ledger = f"sqlite:///{tmp / 'ledger.sqlite'}"
        src = tmp / "docs.jsonl"
        write_corpus(src, n)
        row: dict[str, Any] = {"documents": n, "partitions": a.partitions}
        row["first"] = sync(src, target, ledger)
        row["unchanged"] = sync(src, target, ledger)
        if a.baseline:
            row["baseline_unchanged"] = run_child(str(src), target, ledger, str(a.dims), pythonpath=a.baseline)
        write_corpus(src, n - n // 100, edit=1, seed=1)  # 1 % edited, the last 1 % deleted
        row["edited_deleted"] = sync(src, target, ledger)
        if a.baseline:
            write_corpus(src, n - 2 * (n // 100), edit=1, seed=2)  # another 1 % edited, another 1 % deleted
            row["baseline_edited_deleted"] = run_child(str(src), target, ledger, str(a.dims), pythonpath=a.baseline)
        row["ledger_mib"] = ledger_size(ledger)
        if langchain_on:
            lc_name, es_http = f"lc_{name}", "http://" + base.split("://", 1)[1].split("/")[0]
            records = new_database(lc_name)
            lc = {}
            write_corpus(src, n)
            lc["first"] = run_child("langchain", str(src), es_http, lc_name, records, str(a.dims))
            lc["unchanged"] = run_child("langchain", str(src), es_http, lc_name, records, str(a.dims))
            write_corpus(src, n - n // 100, edit=1, seed=1)
            lc["edited_deleted"] = run_child("langchain", str(src), es_http, lc_name, records, str(a.dims))
            lc["records_mib"] = ledger_size(records)
            row["langchain"] = lc
            langchain_on = max(v["seconds"] for v in lc.values() if isinstance(v, dict)) < a.langchain_limit
        results.append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    first = results[0]
    for r in results:
        per_doc = r["unchanged"]["seconds"] / r["documents"]
        r["unchanged_s_per_doc_vs_first"] = round(per_doc / (first["unchanged"]["seconds"] / first["documents"]), 2)
        for k in STEPS:
            if k in r:
                r[f"{k}_rss_vs_first"] = round(r[k]["peak_rss_mib"] / first[k]["peak_rss_mib"], 2)
    print(f"{'docs':>9} {'step':<24} {'seconds':>8} {'docs/s':>8} {'peak RSS MiB':>13} {'RSS vs first size':>18}")
    for r in results:
        for k in [k for k in STEPS if k in r]:
            s = r[k]
            print(f"{r['documents']:>9} {k:<24} {s['seconds']:>8} {round(r['documents'] / s['seconds']):>8} "
                  f"{s['peak_rss_mib']:>13} {r[f'{k}_rss_vs_first']:>18}")  # fmt: skip
        print(f"{'':>9} ledger {r['ledger_mib']} MiB; unchanged s/doc vs first size {r['unchanged_s_per_doc_vs_first']}")
        for k, s in r.get("langchain", {}).items():
            if isinstance(s, dict):
                print(f"{r['documents']:>9} {'LangChain ' + k:<24} {s['seconds']:>8} {round(r['documents'] / s['seconds']):>8} "
                      f"{s['peak_rss_mib']:>13} {'':>18}  (embedrail: {r[k]['seconds']} s)")  # fmt: skip
        if "langchain" in r:
            print(f"{'':>9} LangChain's record manager {r['langchain']['records_mib']} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
