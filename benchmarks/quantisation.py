"""Quantised indexes chosen by recall (issue 28; not a test).

The same real MiniLM vectors (standard-library docstrings, ``tests/test_connectors_dataset.py``) are written
into each store under each quantised index type it supports; held-out vectors are the queries. Per
configuration: recall@10 against the **exact** float top 10 (brute force in numpy, the baseline), the bytes
per vector its graph holds (what ``describe()`` says), and the query latency p50.

- Elasticsearch: ``hnsw`` (float), ``int8_hnsw`` (the default), ``int4_hnsw``, ``bbq_hnsw``, the quantised ones
  also with ``rescore=3`` (re-ranked by the float vectors, ES >= 8.18);
- pgvector: ``vector`` (float), ``halfvec``, ``bit`` with ``rescore=1`` (Hamming order only) and ``4``.

Qdrant's quantisation is not measured: only its local mode runs here, and it searches exactly.

    .venv/bin/python benchmarks/quantisation.py [--n 20000] [--queries 200] [--stores es,pgvector]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from _servers import store_urls  # noqa: E402  (benchmarks/ is on sys.path when a benchmark runs)
from test_connectors_dataset import dataset  # noqa: E402

from embedrail.connectors import IndexSpec, Record, connect  # noqa: E402

CONFIGS = {
    "es": ["index_options=hnsw", "index_options=int8_hnsw", "index_options=int8_hnsw&rescore=3", "index_options=int4_hnsw",
           "index_options=int4_hnsw&rescore=3", "index_options=bbq_hnsw", "index_options=bbq_hnsw&rescore=3"],
    "pgvector": ["", "quantization=halfvec", "quantization=bit&rescore=1", "quantization=bit&rescore=4"],
}  # fmt: skip


def url_for(base: str, store: str, name: str, params: str) -> str:
    if store == "pgvector":
        return f"{base}?table={name}" + (f"&{params}" if params else "")
    return f"{base.rstrip('/')}/{name}" + (f"?{params}" if params else "")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000, help="vectors written")
    p.add_argument("--queries", type=int, default=200, help="held-out vectors used as queries")
    p.add_argument("--stores", default="es,pgvector")
    a = p.parse_args()
    texts, vecs = dataset(a.n + a.queries)
    docs, dvecs, qvecs = texts[: a.n], vecs[: a.n], vecs[a.n :]
    exact = np.argsort(-(qvecs @ dvecs.T), axis=1)[:, :10]  # the baseline: exact float top 10
    want = [{f"doc{j}#0" for j in row} for row in exact]
    urls = store_urls()
    spec = IndexSpec(dims=dvecs.shape[1], metric="cosine", fingerprint="minilm-quantisation-bench")
    print(f"{a.n} MiniLM vectors ({dvecs.shape[1]} dims), {a.queries} queries; recall@10 against the exact float top 10")
    print(f"{'store':<9} {'configuration':<34} {'recall@10':>9} {'bytes/vector':>12} {'p50 ms':>7}")
    for store in [s for s in a.stores.split(",") if s]:
        if store not in urls:
            print(f"{store}: no server (make servers)")
            continue
        for params in CONFIGS[store]:
            s = connect(url_for(urls[store], store, f"q_{uuid.uuid4().hex[:8]}", params))
            try:
                s.ensure_index(spec)
                for i in range(0, a.n, 2000):
                    recs = [Record(id=f"doc{j}#0", vector=dvecs[j], text=docs[j]) for j in range(i, min(a.n, i + 2000))]
                    assert s.upsert(recs).ok
                s.flush()
                recall, times = [], []
                for q, w in zip(qvecs, want, strict=True):
                    t = time.perf_counter()
                    got = {h.id for h in s.search(q, k=10)}
                    times.append((time.perf_counter() - t) * 1000)
                    recall.append(len(got & w) / 10)
                info = s.describe()
                print(f"{store:<9} {params or 'vector (float)':<34} {statistics.mean(recall):>9.3f} "
                      f"{info.extra.get('bytes_per_vector', ''):>12} {statistics.median(times):>7.1f}", flush=True)  # fmt: skip
            finally:
                s.drop()
                s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
