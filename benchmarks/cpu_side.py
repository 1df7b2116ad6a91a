"""Can the CPU side keep a GPU fed? (issue 27; not a test.)

A first run of N short synthetic documents (~40 words, one chunk each) with a *null* embedder (the packaged
model's real tokenizer, vectors that cost nothing: what a GPU fast enough to be free would look like), so the
whole wall time is embedrail's own: reading, hashing, chunking and tokenising, planning, the ledger, the writes.

- **baseline, Chroma raw**: the same ids, texts, metadata and vectors written by ``collection.upsert`` into a
  fresh embedded Chroma collection, nothing else: in batches of ``--batch`` (the pipeline's embedding batch) and
  of 512 (what its writer sends at once when batches queue up: ``batch_size`` x ``queue_depth``);
- **embedrail -> Chroma**: ``SyncEngine(...).run()`` into a fresh embedded Chroma collection (ledger on SQLite);
  reported as documents/s and as a ratio of the baseline's rate (the issue asks >= 0.6x);
- **embedrail -> null store**: the same run into ``memory://`` (a dict): the framework's own ceiling;
- **LangChain** (``--langchain``, run with ``.venv-bench/bin/python``, see ``make bench-peers``): ``index()`` with
  ``SQLRecordManager`` on SQLite and ``cleanup="full"`` into ``langchain_chroma.Chroma``, the same free vectors.

Each measurement runs in a fresh process, so one does not warm the next; the tokenizer uses its own threads
(``TOKENIZERS_PARALLELISM`` unset, as ``embedrail reindex`` leaves it). ``--profile`` prints where the
embedrail -> null store run spends its time (cProfile, cumulative).

    .venv/bin/python benchmarks/cpu_side.py [--docs 10000] [--batch 64] [--dims 384] [--profile]
    .venv-bench/bin/python benchmarks/cpu_side.py --langchain [--docs 10000]
    .venv-bench/bin/python benchmarks/cpu_side.py --docs 1000000 --rows raw,chroma,langchain
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _corpus import write_corpus  # noqa: E402


def raw_chroma(corpus: Path, work: Path, batch: int, dims: int) -> dict[str, Any]:
    import chromadb
    import numpy as np
    from pipeline import _vector

    rows = [json.loads(line) for line in corpus.open()]
    vecs = np.stack([_vector(r["text"], dims) for r in rows])
    client = chromadb.PersistentClient(path=str(work / "raw"))
    col = client.get_or_create_collection("raw", metadata={"hnsw:space": "cosine"})
    t = time.perf_counter()
    for i in range(0, len(rows), batch):
        part = rows[i : i + batch]
        col.upsert(ids=[f"{r['id']}#0" for r in part], embeddings=vecs[i : i + batch], documents=[r["text"] for r in part],
                   metadatas=[{"_doc": r["id"], "_n": 0, "group": r["group"]} for r in part])  # fmt: skip
    return {"seconds": time.perf_counter() - t, "count": col.count()}


def embedrail_run(corpus: Path, work: Path, target: str, batch: int, dims: int, profile: bool) -> dict[str, Any]:
    from pipeline import null_embedder

    from embedrail.integration.engine import SyncEngine

    emb = null_embedder(dims)
    import chromadb  # noqa: F401  (its import is paid once per process, not per document: not timed)

    url = target.replace("DIR", str(work))
    eng = SyncEngine(str(corpus), [url], ledger=f"sqlite:///{work}/ledger.sqlite", embedder=emb, batch_size=batch,
                     progress=False)  # fmt: skip
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t = time.perf_counter()
    with eng:
        rep = eng.run()
    seconds = time.perf_counter() - t
    if prof is not None:
        import pstats

        prof.disable()
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    return {"seconds": seconds, "documents": rep.documents, "ok": rep.ok, "upserted": sum(rep.upserted.values())}


def langchain_run(corpus: Path, work: Path, batch: int, dims: int) -> dict[str, Any]:
    """LangChain ``index()`` as its documentation shows (``SQLRecordManager`` on SQLite, ``cleanup="full"``),
    into ``langchain_chroma.Chroma`` on disk, with the same free vectors; reading the file is timed as for
    embedrail."""
    from langchain_chroma import Chroma
    from langchain_classic.indexes import SQLRecordManager
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.indexing import index
    from pipeline import _vector

    class FreeEmbeddings(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return [_vector(t, dims).tolist() for t in texts]

        def embed_query(self, text: str) -> list[float]:
            return _vector(text, dims).tolist()

    store = Chroma(collection_name="langchain", embedding_function=FreeEmbeddings(), persist_directory=str(work / "lc"),
                   collection_metadata={"hnsw:space": "cosine"})  # fmt: skip
    rm = SQLRecordManager("chroma/lc", db_url=f"sqlite:///{work / 'records.sqlite'}")
    rm.create_schema()
    t = time.perf_counter()
    rows = (json.loads(line) for line in corpus.open())
    docs = (Document(page_content=r["text"], metadata={"source": r["id"], "group": r["group"]}) for r in rows)
    res = index(docs, rm, store, cleanup="full", source_id_key="source")  # its default batch_size (100)
    return {"seconds": time.perf_counter() - t, "ok": True, **{k: int(v) for k, v in res.items()}}


def child(kind: str, corpus: Path, batch: int, dims: int, profile: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        if kind == "raw":
            return raw_chroma(corpus, work, batch, dims)
        if kind == "langchain":
            return langchain_run(corpus, work, batch, dims)
        target = {"chroma": "chroma:///DIR/chroma?collection=docs", "null": "memory://cpu-side/docs"}[kind]
        return embedrail_run(corpus, work, target, batch, dims, profile)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=10000)
    p.add_argument("--batch", type=int, default=64, help="records per write (the pipeline's batch_size)")
    p.add_argument("--dims", type=int, default=384)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--langchain", action="store_true", help="also LangChain index() (needs the bench extra: .venv-bench)")
    p.add_argument("--rows", help="only these rows, comma-separated (of raw,raw512,chroma,null,langchain), e.g. "
                   "raw,chroma,langchain at 1M documents, where each row takes half an hour or more")
    p.add_argument("--child", nargs=2, metavar=("KIND", "CORPUS"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], Path(a.child[1]), a.batch, a.dims, a.profile)))
        return 0
    with tempfile.TemporaryDirectory() as d:
        corpus = Path(d) / "docs.jsonl"
        write_corpus(corpus, a.docs)
        res = {}
        kinds = ["raw", "raw512", "chroma", "null"] + (["langchain"] if a.langchain else [])
        if a.rows:
            kinds = [k for k in a.rows.split(",") if k]
            unknown = set(kinds) - {"raw", "raw512", "chroma", "null", "langchain"}
            if unknown or "raw" not in kinds:
                p.error(f"--rows takes raw (the baseline, always), raw512, chroma, null, langchain; got {a.rows}")
        for kind in kinds:
            batch = 512 if kind == "raw512" else a.batch
            cmd = [sys.executable, __file__, "--child", kind.removesuffix("512"), str(corpus), "--batch", str(batch),
                   "--dims", str(a.dims)]  # fmt: skip
            if a.profile and kind == "null":
                cmd.append("--profile")
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
            res[kind] = json.loads(out.strip().splitlines()[-1])
            print(f"# {kind}: {res[kind]}", file=sys.stderr, flush=True)  # each row as it ends: a long run shows progress
    raw_rate = a.docs / res["raw"]["seconds"]
    raw512 = a.docs / res["raw512"]["seconds"] if "raw512" in res else float("nan")
    print(f"{a.docs} documents, dims {a.dims}, batch {a.batch}")
    print(f"  Chroma raw upsert, batch {a.batch:<5} {res['raw']['seconds']:8.2f} s  {raw_rate:8.0f} docs/s  (baseline)")
    if "raw512" in res:
        print(f"  Chroma raw upsert, batch 512   {res['raw512']['seconds']:8.2f} s  {raw512:8.0f} docs/s")
    for kind, label in (("chroma", "embedrail -> embedded Chroma"), ("null", "embedrail -> null store"),
                        ("langchain", "LangChain index() -> Chroma")):  # fmt: skip
        if kind not in res:
            continue
        r = res[kind]
        rate = a.docs / r["seconds"]
        print(f"  {label:<30} {r['seconds']:8.2f} s  {rate:8.0f} docs/s  {rate / raw_rate:5.2f}x baseline  "
              f"{rate / raw512:5.2f}x raw at 512  ok={r['ok']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
