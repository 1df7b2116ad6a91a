"""What the sync pipeline costs outside the model (not a test).

1. **Overhead of a first run**: the same documents synced into embedded Chroma (+ Elasticsearch when
   ``make servers`` runs or EMBEDRAIL_ES_URL is set) with the packaged model; the share of the wall
   time spent outside the forward pass = 1 - embedder seconds / run seconds (target <= 10 %).
2. **Null embedder**: the same run with an embedder that returns precomputed 1,024-dim vectors at
   no cost (the rate a GPU running Qwen3-Embedding-0.6B produces is ~1,000 chunks/s), so the whole
   wall time is the pipeline: reading, hashing, chunking (the real tokenizer), planning, ledger,
   store writes. Reported in chunks/s against the named baseline "store writes alone": the same
   records written by ``store.upsert`` in batches of the same size, nothing else — each store on its
   own, and all of them at once (one thread per store, as the pipeline writes them).

The store clients (chromadb, elasticsearch) are imported before the timed runs and their import time
is printed apart: it is paid once per process (see benchmarks/cold_start.py), not per document.

    .venv/bin/python benchmarks/pipeline.py [--limit 3000] [--no-es] [--dims 1024]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from incremental import es_base  # noqa: E402


def null_embedder(dims: int) -> Any:
    """The packaged model's tokenizer (chunking stays real) with vectors that cost nothing: each
    text's vector is drawn once from a seed of its hash, before the timed run."""
    from embedrail.embed_core import Embedder

    class NullEmbedder(Embedder):
        table: dict[str, np.ndarray] = {}

        def _embed_unique(self, texts: list[str]) -> np.ndarray:
            return np.stack([v if (v := self.table.get(t)) is not None else _vector(t, dims) for t in texts])

        def fingerprint_components(self) -> dict[str, Any]:
            return {**super().fingerprint_components(), "null": dims}

    emb = NullEmbedder.load("minilm", device="cpu")
    emb.native_dims = emb.dims = dims
    return emb


def _vector(text: str, dims: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    v = np.random.default_rng(seed).standard_normal(dims).astype(np.float32)
    return v / np.linalg.norm(v)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=3000, help="documents (stdlib members)")
    p.add_argument("--max-chars", type=int, default=1000)
    p.add_argument("--dims", type=int, default=1024, help="null embedder's vector size")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-es", action="store_true")
    p.add_argument("--skip-model", action="store_true", help="only the null-embedder part")
    a = p.parse_args()

    from embedrail.connectors import connect
    from embedrail.connectors.base import IndexSpec, Record
    from embedrail.embed_core import Embedder
    from embedrail.integration.chunking import Chunker
    from embedrail.integration.documents import Document
    from embedrail.integration.engine import SyncEngine
    from embedrail.integration.sources import open_source

    spec = f"pydoc:?per=member&max_chars={a.max_chars}&limit={a.limit}"
    docs = list(open_source(spec))
    tmp = Path(tempfile.mkdtemp(prefix="embedrail-pipe-"))
    src = tmp / "docs.jsonl"
    with src.open("w") as f:
        for d in docs:
            f.write(json.dumps({"id": d.id, "text": d.text, **d.metadata}) + "\n")
    es = None if a.no_es else es_base()
    run_no = 0

    def targets() -> list[str]:
        out = [f"chroma://{tmp / f'chroma{run_no}'}?collection=bench"]
        if es:
            out.append(es.rstrip("/") + f"/pipe_{os.getpid()}_{run_no}")
        return out

    def sync(emb: Embedder) -> tuple[float, Any, list[str]]:
        nonlocal run_no
        run_no += 1
        tg = targets()
        t = time.perf_counter()
        with SyncEngine(str(src), tg, ledger=f"sqlite:///{tmp / f'ledger{run_no}.sqlite'}", embedder=emb,
                        batch_size=a.batch_size, progress=False) as e:  # fmt: skip
            r = e.run()
        return time.perf_counter() - t, r, tg

    def drop(tg: list[str]) -> None:
        for url in tg[1:]:
            with connect(url) as s:
                s.drop()

    t = time.perf_counter()
    import chromadb  # noqa: F401

    if es:
        import elasticsearch  # noqa: F401
    print(f"{len(docs)} documents; targets: chroma embedded{' + elasticsearch' if es else ''}; "
          f"client imports {time.perf_counter() - t:.2f}s (once per process, not in the figures below)", flush=True)  # fmt: skip
    if not a.skip_model:
        emb = Embedder.load("minilm")
        secs, r, tg = sync(emb)
        outside = 1 - r.embed_seconds / secs
        print(f"packaged model: first run {secs:.2f}s, {r.chunks} chunks, forward pass {r.embed_seconds:.2f}s; "
              f"outside the model {outside:.1%} (target <= 10%)", flush=True)  # fmt: skip
        drop(tg)

    null = null_embedder(a.dims)
    chunker = Chunker(null)
    chunks = [c for d in docs for c in chunker.chunk(Document(d.id, d.text, d.metadata))]
    null.table = {c.text: _vector(c.text, a.dims) for c in chunks}
    secs, r, tg = sync(null)
    rate = r.chunks / secs
    print(f"null embedder ({a.dims} dims): first run {secs:.2f}s, {r.chunks} chunks -> {rate:,.0f} chunks/s "
          f"into {len(tg)} targets (target >= 1,000)", flush=True)  # fmt: skip
    drop(tg)

    # baseline: the same records written by store.upsert alone, same batch size, same targets
    run_no += 1
    spec_ = IndexSpec(dims=a.dims, metric="cosine", fingerprint="null")
    records = [Record(c.id, null.table[c.text], c.text, {"doc_id": c.doc_id}) for c in chunks]
    tg = targets()

    def write_all(url: str) -> float:
        with connect(url) as s:
            s.ensure_index(spec_)
            t = time.perf_counter()
            for i in range(0, len(records), a.batch_size):
                s.upsert(records[i : i + a.batch_size]).raise_on_failure()
            s.flush()
            return time.perf_counter() - t

    for url in tg:
        one = write_all(url)
        print(f"store writes alone, {url.split(':')[0]}: {one:.2f}s -> {len(records) / one:,.0f} chunks/s", flush=True)
    drop(tg)
    run_no += 1
    tg = targets()
    from concurrent.futures import ThreadPoolExecutor

    t = time.perf_counter()
    with ThreadPoolExecutor(len(tg)) as pool:
        list(pool.map(write_all, tg))
    base = time.perf_counter() - t
    print(f"store writes alone, all {len(tg)} at once: {base:.2f}s -> {len(records) / base:,.0f} chunks/s; "
          f"pipeline with the null embedder / writes alone = {base / secs:.2f}x", flush=True)  # fmt: skip
    drop(tg)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
