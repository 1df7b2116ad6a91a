"""The ledger under concurrent partitions (issue 11; not a test): what 1, 2, 4 and 8 worker processes
writing one run's partitions at once cost the ledger, on PostgreSQL and, as the named baseline, on SQLite.

Each worker process does what a partition task does to the ledger for every batch it writes, with the
store and the model taken out (so only the ledger is measured): ``mark_intent`` for a batch of chunk ids
(the crash-safety intent), then ``commit`` of the same chunks with fingerprints and their documents done
(``--batch`` chunks, ``--docs-per-batch`` documents), ``--batches`` times, on its own documents (one
partition each), all holding the same run lease. Reported per backend and worker count: commits/s of all
workers together, chunk rows/s, the latency of one intent+commit pair (p50/p95/max, milliseconds), the
transactions retried (deadlocks, serialization failures, SQLite busy) and, on PostgreSQL, the lock waits
seen in ``pg_stat_activity`` while the workers ran. Ratios are against SQLite at the same worker count.

    .venv/bin/python benchmarks/ledger_concurrency.py [--workers 1,2,4,8] [--batches 40] [--batch 64]

PostgreSQL: ``$EMBEDRAIL_PG_URL`` (``make servers`` writes it to .servers.env), a user that may create
databases; each measurement gets a fresh database.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _servers import server_url  # noqa: E402  (benchmarks/ is on sys.path when a benchmark runs)


def pg_server() -> str | None:
    return server_url("EMBEDRAIL_PG_URL")


def fresh_pg_db(server: str) -> str:
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(server)
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.database or "postgres",
                         autocommit=True) as c:  # fmt: skip
        c.execute(f'CREATE DATABASE "{name}"')
    return u.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)


def worker(url: str, wid: int, batches: int, batch: int, docs_per_batch: int, run_id: str, start: mp.Event, out: mp.Queue) -> None:
    from embedrail.integration.ledger import Lease, Ledger

    led = Ledger(url)
    lease = Lease(run_id, 900)  # the run's lease, as every partition of a run writes under it
    retries = [0]
    orig = led._retry

    def counting(fn, attempts=8, integrity=False):  # count the retried transactions
        def once():
            try:
                return fn()
            except Exception:
                retries[0] += 1
                raise

        return orig(once, attempts, integrity)

    led._retry = counting  # type: ignore[method-assign]
    target, gen = "bench-target", "gen1"
    per_doc = batch // docs_per_batch
    lat: list[float] = []
    start.wait()
    t0 = time.perf_counter()
    for b in range(batches):
        docs = [f"w{wid}-b{b}-d{d}" for d in range(docs_per_batch)]
        chunks = [(f"{doc}#{i}", doc) for doc in docs for i in range(per_doc)]
        s = time.perf_counter()
        led.mark_intent(target, gen, chunks, lease=lease)
        led.commit(target, gen, written=[(c, d, uuid.uuid4().hex[:48]) for c, d in chunks],
                   docs_done=[(d, uuid.uuid4().hex, per_doc) for d in docs], lease=lease)  # fmt: skip
        lat.append(time.perf_counter() - s)
    out.put({"wid": wid, "seconds": time.perf_counter() - t0, "lat": lat, "retries": retries[0]})
    led.close()


def lock_waits(url: str, stop: threading.Event, seen: list[int]) -> None:
    """Sample pg_stat_activity: how many backends of the database wait on a lock (max and samples)."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    with psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.database, autocommit=True) as c:
        while not stop.wait(0.01):
            n = c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'", (u.database,)).fetchone()[0]
            seen.append(int(n))


def measure(url: str, workers: int, batches: int, batch: int, docs_per_batch: int) -> dict:
    from embedrail.integration.ledger import Ledger

    led = Ledger(url)  # create the tables and the lease before the clock starts
    run_id = uuid.uuid4().hex[:12]
    led.acquire(["bench-target"], run_id, "bench", 900)
    led.close()
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(url, w, batches, batch, docs_per_batch, run_id, start, out)) for w in range(workers)]
    for p in procs:
        p.start()
    time.sleep(2.0)  # every worker imported and connected
    stop, waits = threading.Event(), []
    sampler = None
    if url.startswith("postgresql"):
        sampler = threading.Thread(target=lock_waits, args=(url, stop, waits), daemon=True)
        sampler.start()
    t0 = time.perf_counter()
    start.set()
    res = [out.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - t0
    stop.set()
    if sampler:
        sampler.join()
    for p in procs:
        p.join()
    lat = sorted(x for r in res for x in r["lat"])
    commits = workers * batches
    return {
        "workers": workers, "wall_s": round(wall, 3), "commits_per_s": round(commits / wall, 1),
        "chunks_per_s": round(commits * batch / wall, 0),
        "lat_ms_p50": round(1000 * statistics.median(lat), 1), "lat_ms_p95": round(1000 * lat[int(0.95 * (len(lat) - 1))], 1),
        "lat_ms_max": round(1000 * lat[-1], 1), "retried_tx": sum(r["retries"] for r in res),
        "lock_waiting_max": max(waits) if waits else None,
        "lock_waiting_share": round(sum(1 for w in waits if w) / len(waits), 3) if waits else None,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2,4,8")
    ap.add_argument("--batches", type=int, default=40, help="batches per worker")
    ap.add_argument("--batch", type=int, default=64, help="chunks per batch (the engine's default batch_size)")
    ap.add_argument("--docs-per-batch", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    server = pg_server()
    if not server:
        sys.exit("no PostgreSQL: run `make servers` (or set EMBEDRAIL_PG_URL)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(x) for x in args.workers.split(",")]:
            sqlite = measure(f"sqlite:///{Path(tmp) / f'l{n}.sqlite'}", n, args.batches, args.batch, args.docs_per_batch)
            pg = measure(fresh_pg_db(server), n, args.batches, args.batch, args.docs_per_batch)
            rows.append({"backend": "sqlite", **sqlite})
            rows.append({"backend": "postgresql", **pg, "commits_vs_sqlite": round(pg["commits_per_s"] / sqlite["commits_per_s"], 2)})
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"ledger: {args.batches} batches x {args.batch} chunks ({args.docs_per_batch} docs) per worker; one intent+commit pair per batch")
    print(f"{'backend':<11}{'workers':>8}{'commits/s':>11}{'chunks/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'retried':>9}{'lock-wait':>11}{'vs sqlite':>11}")
    for r in rows:
        lw = "" if r["lock_waiting_max"] is None else f"{r['lock_waiting_share']:.0%}/{r['lock_waiting_max']}"
        print(f"{r['backend']:<11}{r['workers']:>8}{r['commits_per_s']:>11}{r['chunks_per_s']:>10.0f}{r['lat_ms_p50']:>9}"
              f"{r['lat_ms_p95']:>9}{r['lat_ms_max']:>9}{r['retried_tx']:>9}{lw:>11}{r.get('commits_vs_sqlite', ''):>11}")  # fmt: skip
    print("lock-wait: share of 10 ms samples with a backend waiting on a lock / most backends waiting at once")


if __name__ == "__main__":
    main()
