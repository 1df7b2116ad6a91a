"""``embedrail serve`` under concurrency (not a test).

The packaged model served on 127.0.0.1 by ``python -m embed_core.serve`` in its own process; the
same texts (stdlib docstrings) embedded two ways:

- baseline "one client, one request": all texts in one ``/v1/embeddings`` request;
- "16 clients, one text each": 16 threads, each posting one text per request until all are done.

Reported: texts/s of each and the ratio (16 clients / one request; target >= 0.8). The server merges
concurrent requests into shared forward passes (``embed_core.serve.Batcher``); ``--no-merge`` starts
it with ``--merge-wait-ms 0 --merge-max 1`` (one request per forward pass, as before merging).

    .venv/bin/python benchmarks/serve_concurrency.py [--texts 1024] [--clients 16]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from embed_throughput import stdlib_docstrings  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=1024)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--no-merge", action="store_true")
    ap.add_argument("--merge-wait-ms", type=float, default=None, help="the server's merge window (default: its own)")
    args = ap.parse_args()

    texts = stdlib_docstrings(args.texts)
    port = free_port()
    cmd = [sys.executable, "-m", "embed_core.serve", "--model", "minilm", "--port", str(port)]
    if args.no_merge:
        cmd += ["--merge-wait-ms", "0", "--merge-max", "1"]
    elif args.merge_wait_ms is not None:
        cmd += ["--merge-wait-ms", str(args.merge_wait_ms)]
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
            t = time.perf_counter()
            client.post("/v1/embeddings", json={"input": texts}).raise_for_status()
            one = len(texts) / (time.perf_counter() - t)

            def post(text: str) -> None:
                client.post("/v1/embeddings", json={"input": text}).raise_for_status()

            t = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(post, texts))
            many = len(texts) / (time.perf_counter() - t)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"{len(texts)} texts, packaged model served by a separate process, {'no merging' if args.no_merge else 'merging on'}")
    print(f"one client, one request:        {one:8.1f} texts/s (baseline)")
    print(f"{args.clients} clients, one text each:     {many:8.1f} texts/s -> {many / one:.2f}x")


if __name__ == "__main__":
    main()
