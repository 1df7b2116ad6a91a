"""What partitions and retries cost when every partition is its own task process (issue 11; not a test).

The setting of Airflow's Local/Celery executors: each ``sync_partition`` task is a fresh process that
imports embedrail, loads the model once and syncs its share; the ledger is on PostgreSQL, the store a
real Elasticsearch. On one corpus (the standard library's docs, written to a JSONL file first) it measures

1. a task's fixed cost: a fresh process that imports embedrail and loads the model (no documents);
2. a first full run split into N partitions, N = 1, 2, 4, the N task processes started at once (as an
   executor with parallelism >= N does): wall time, chunks/s, and the share of the summed task time
   spent before the first document (imports + model load);
3. retries: re-running a partition that had finished (an Airflow retry after the task's process died
   just before reporting success), and re-running one killed halfway (SIGKILL after half its chunks
   were in the ledger), each in a fresh process, against the partition's first run (the named baseline).

    .venv/bin/python benchmarks/partition_costs.py [--docs 600] [--partitions 1,2,4]

Needs ``make servers`` (Elasticsearch + PostgreSQL; .servers.env) or EMBEDRAIL_ES_URL / EMBEDRAIL_PG_URL.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _servers import server_url  # noqa: E402  (benchmarks/ is on sys.path when a benchmark runs)

TASK = r"""
import json, sys, time
t0 = time.time()
sys.path.insert(0, sys.argv[1])
cfg = json.loads(sys.argv[2])
from embedrail.embed_core import Embedder
from embedrail.integration.engine import SyncEngine
imported, load = time.time(), [0.0]
if cfg.get("only_load"):
    Embedder.load("minilm", device="cpu")
    print("DONE", json.dumps({"load_s": time.time() - t0}), flush=True)
    sys.exit(0)

def factory(name, dims=None, device="auto"):  # loads only when a document needs the model, as cached_embedder
    s = time.time()
    m = Embedder.load(name, dims=dims, device="cpu")
    load[0] += time.time() - s
    return m

with SyncEngine(cfg["src"], [cfg["target"]], ledger=cfg["ledger"], chunk_tokens=cfg["ct"], progress=False,
                embedder_factory=factory) as e:
    part = e.sync_partition(cfg["index"], cfg["count"], cfg["ctx"])
print("DONE", json.dumps({"load_s": imported - t0 + load[0], "total_s": time.time() - t0, "embedded": part["embedded"],
                          "chunks": part["chunks"], "documents": part["documents"]}), flush=True)
"""


THREADS = 0



def spawn(cfg: dict) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    if THREADS:
        env["OMP_NUM_THREADS"] = str(THREADS)  # torch's intra-op threads per task process
    return subprocess.Popen([sys.executable, "-c", TASK, str(ROOT), json.dumps(cfg)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def result(p: subprocess.Popen) -> dict:
    out, err = p.communicate(timeout=1800)
    lines = [ln for ln in out.splitlines() if ln.startswith("DONE ")]
    if p.returncode != 0 or not lines:
        raise SystemExit(f"task failed:\n{err[-3000:]}")
    return json.loads(lines[-1][5:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=600)
    ap.add_argument("--partitions", default="1,2,4")
    ap.add_argument("--chunk-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS per task process (0: torch's default, all cores)")
    args = ap.parse_args()
    global THREADS
    THREADS = args.threads
    es, pg = server_url("EMBEDRAIL_ES_URL"), server_url("EMBEDRAIL_PG_URL")
    if not (es and pg):
        sys.exit("needs Elasticsearch and PostgreSQL: run `make servers` first")
    from ledger_concurrency import fresh_pg_db

    from embedrail.embed_core import Embedder
    from embedrail.integration.engine import SyncEngine
    from embedrail.integration.ledger import Ledger
    from embedrail.integration.sources import open_source

    tmp = Path(tempfile.mkdtemp(prefix="embedrail-bench-"))
    atexit.register(shutil.rmtree, tmp, True)
    src = tmp / "docs.jsonl"
    with src.open("w") as f:
        for i, d in enumerate(open_source("pydoc:?per=member")):
            if i >= args.docs:
                break
            f.write(json.dumps({"id": d.id, "text": d.text}) + "\n")
    emb = Embedder.load("minilm", device="cpu")
    loads = [result(spawn({"only_load": True}))["load_s"] for _ in range(3)]
    print(f"corpus: {args.docs} documents (pydoc per member), chunk_tokens={args.chunk_tokens}, {os.cpu_count()} CPUs, "
          f"torch threads per task: {THREADS or 'default'}")
    print(f"1. a task's fixed cost (fresh process: imports + model load): {min(loads):.2f} s (min of 3; {', '.join(f'{x:.2f}' for x in loads)})")

    def new_run(n: int) -> tuple[str, str, dict]:
        target = f"{es.rstrip('/')}/bench_parts_{uuid.uuid4().hex[:8]}"
        ledger = fresh_pg_db(pg)
        with SyncEngine(str(src), [target], ledger=ledger, embedder=emb, chunk_tokens=args.chunk_tokens, progress=False) as e:
            ctx = e.prepare().to_dict()
        return target, ledger, ctx

    def cfg(target: str, ledger: str, ctx: dict, i: int, n: int) -> dict:
        return {"src": str(src), "target": target, "ledger": ledger, "ct": args.chunk_tokens, "index": i, "count": n, "ctx": ctx}

    print("2. first run split into N partition tasks started at once")
    print(f"{'N':>3}{'wall s':>9}{'chunks/s':>10}{'vs N=1':>8}{'fixed share':>13}")
    base = None
    for n in [int(x) for x in args.partitions.split(",")]:
        target, ledger, ctx = new_run(n)
        t0 = time.time()
        procs = [spawn(cfg(target, ledger, ctx, i, n)) for i in range(n)]
        res = [result(p) for p in procs]
        wall = time.time() - t0
        chunks = sum(r["chunks"] for r in res)
        rate = chunks / wall
        base = base or rate
        fixed = sum(r["load_s"] for r in res) / sum(r["total_s"] for r in res)
        print(f"{n:>3}{wall:>9.2f}{rate:>10.1f}{rate / base:>8.2f}{fixed:>13.1%}")

    print("3. retries of one partition (fresh process each), against its first run")
    target, ledger, ctx = new_run(2)
    first = result(spawn(cfg(target, ledger, ctx, 0, 2)))
    again = result(spawn(cfg(target, ledger, ctx, 0, 2)))
    # partition 1: killed once half of its chunks are in the ledger, then retried
    led = Ledger(ledger)
    key = ctx["targets"][0]["key"]
    gen = ctx["targets"][0]["generation"]
    p = spawn(cfg(target, ledger, ctx, 1, 2))
    want = first["chunks"] // 2
    while p.poll() is None and led.counts(key, gen)["chunks"] - first["chunks"] < want:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    done_before = led.counts(key, gen)["chunks"] - first["chunks"]
    led.close()
    retry = result(spawn(cfg(target, ledger, ctx, 1, 2)))
    print(f"   first run of partition 0: {first['total_s']:.2f} s ({first['chunks']} chunks, {first['embedded']} embedded)")
    print(f"   retry of the finished partition 0: {again['total_s']:.2f} s = {again['total_s'] / first['total_s']:.2f}x, "
          f"{again['embedded']} embedded, {again['load_s']:.2f} s of it start-up (imports; no model needed)")  # fmt: skip
    print(f"   retry of partition 1 killed with {done_before} of its chunks committed: {retry['total_s']:.2f} s = "
          f"{retry['total_s'] / first['total_s']:.2f}x of partition 0's first run, {retry['embedded']} embedded of {retry['chunks']}")  # fmt: skip


if __name__ == "__main__":
    main()
