"""``embedrail serve`` under concurrency (not a test).

The packaged model served on 127.0.0.1 by ``python -m embed_core.serve`` in its own process; the
same texts (stdlib docstrings) embedded two ways:

- baseline "one client, one request": all texts in one ``/v1/embeddings`` request;
- "16 clients, one text each": 16 threads, each posting one text per request until all are done.

Reported: texts/s of each and the ratio (16 clients / one request; target >= 0.8), the CPU seconds the
server process and the client threads spent, and how many merged forward passes the server ran. The
server merges concurrent requests into shared forward passes (``embed_core.request_batcher.Batcher``);
``--no-merge`` starts it with ``--merge-wait-ms 0 --merge-max 1`` (one request per forward pass);
``--workers 1`` runs every call on one worker that uses all cores (the design before the workers).

The clients run on the same machine as the server, so their own CPU time is taken from the model's
(on 2 cores it decides the ratio): ``--client httpx`` (default) posts with one shared ``httpx.Client``,
``--client stdlib`` with one keep-alive ``http.client`` connection per thread (about a third of
httpx's CPU per request), closer to clients that run elsewhere.

``--model-only``: no server and no clients — the model alone, in this process, on one core (what each
worker of the default server has): one call of all the texts vs calls of 6, 8, 16 and 32 texts (16
clients over 2 workers give calls of about 6-8). It shows what a small merged call costs by itself.

    .venv/bin/python benchmarks/serve_concurrency.py [--texts 1024] [--clients 16] [--client stdlib]
    .venv/bin/python benchmarks/serve_concurrency.py --model-only
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _servers import free_port  # noqa: E402
from embed_throughput import stdlib_docstrings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=1024)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--no-merge", action="store_true")
    ap.add_argument("--merge-wait-ms", type=float, default=None, help="the server's merge window (default: its own)")
    ap.add_argument("--client", choices=["httpx", "stdlib"], default="httpx", help="what the client threads post with")
    ap.add_argument("--workers", type=int, default=None, help="the server's --workers (default: its own, one per core up to 4)")
    ap.add_argument("--model-only", action="store_true", help="the model alone: one large call vs small calls")
    args = ap.parse_args()

    texts = stdlib_docstrings(args.texts)
    if args.model_only:
        return model_only(texts)
    port = free_port()
    cmd = [sys.executable, "-m", "embedrail.embed_core.serve", "--model", "minilm", "--port", str(port)]
    if args.no_merge:
        cmd += ["--merge-wait-ms", "0", "--merge-max", "1"]
    elif args.merge_wait_ms is not None:
        cmd += ["--merge-wait-ms", str(args.merge_wait_ms)]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=300) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    client.get("/health").raise_for_status()
                    break
                except httpx.HTTPError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("the server did not start: " + server.stderr.read().decode()[-2000:]) from None
                    time.sleep(0.2)
            client.post("/v1/embeddings", json={"input": texts[:64]}).raise_for_status()  # warm up
            h0, srv_one, t = client.get("/health").json()["batches"], _proc_cpu(server.pid), time.perf_counter()
            client.post("/v1/embeddings", json={"input": texts}).raise_for_status()
            one = len(texts) / (time.perf_counter() - t)
            srv_one = _proc_cpu(server.pid) - srv_one
            busy_one = client.get("/health").json()["batches"]["busy_s"] - h0["busy_s"]

            local = threading.local()

            def post_stdlib(text: str) -> None:
                conn = getattr(local, "conn", None)
                if conn is None:
                    conn = local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                conn.request("POST", "/v1/embeddings", json.dumps({"input": text}), {"Content-Type": "application/json"})
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")
                json.loads(body)

            def post_httpx(text: str) -> None:
                client.post("/v1/embeddings", json={"input": text}).raise_for_status().json()

            before = client.get("/health").json().get("batches") or {}
            cpu0, srv0, t = _cpu(), _proc_cpu(server.pid), time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(post_stdlib if args.client == "stdlib" else post_httpx, texts))
            many = len(texts) / (time.perf_counter() - t)
            client_cpu, server_cpu = _cpu() - cpu0, _proc_cpu(server.pid) - srv0
            after = client.get("/health").json().get("batches") or {}
    finally:
        server.terminate()
        server.wait(timeout=30)
    calls = after.get("calls", 0) - before.get("calls", 0)
    print(f"{len(texts)} texts, packaged model served by a separate process, {'no merging' if args.no_merge else 'merging on'}, "
          f"{after.get('workers', '?')} worker(s), "
          f"{os.cpu_count()} CPUs shared by server and clients")  # fmt: skip
    print(f"one client, one request:        {one:8.1f} texts/s (baseline; server CPU {srv_one:.1f} s, model busy {busy_one:.1f} s)")
    print(f"{args.clients} clients, one text each:     {many:8.1f} texts/s -> {many / one:.2f}x "
          f"({calls} forward passes, {len(texts) / max(calls, 1):.1f} texts each; CPU: server {server_cpu:.1f} s, "
          f"{args.client} clients {client_cpu:.1f} s; model busy {after.get('busy_s', 0) - before.get('busy_s', 0):.1f} s)")  # fmt: skip


def model_only(texts: list[str]) -> None:
    from embedrail.embed_core import open_embedder

    with open_embedder("minilm") as emb:
        emb.set_thread_budget(1)  # one worker's share of the default server on 2 cores
        emb.embed_raw(texts[:64])  # warm up
        t = time.perf_counter()
        emb.embed_raw(texts)
        one = len(texts) / (time.perf_counter() - t)
        print(f"the model alone, one thread, {len(texts)} texts")
        print(f"one call of {len(texts)}:  {one:8.1f} texts/s (baseline)")
        for n in (6, 8, 16, 32):
            t = time.perf_counter()
            for i in range(0, len(texts), n):
                emb.embed_raw(texts[i : i + n])
            rate = len(texts) / (time.perf_counter() - t)
            print(f"calls of {n:>4}:  {rate:8.1f} texts/s -> {rate / one:.2f}x")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _proc_cpu(pid: int) -> float:
    """CPU seconds of another process (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


if __name__ == "__main__":
    main()
