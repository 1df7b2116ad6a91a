"""Incremental-sync benchmark (issue 5; not a test).

A few thousand real documents (the standard library's docs, one per public class/function:
``pydoc:?per=member``) into Chroma embedded (and Elasticsearch when EMBEDRAIL_ES_URL is set or
``make servers`` is running), in one process with one loaded model:

1. full first run, 2. unchanged re-run, 3. a run with 1% of the documents edited, 4. a run with the
metadata of 10% of the documents changed (re-tagged in place: nothing embedded), 5. a run adding copies
of 5% of the documents under new ids, each copy twice (the copies' texts are new to the run's vector
cache only once: embedded once, reused for the second copy), 6. a run with 10% of the documents renamed
(moved: new ids, the same texts), whose chunks take the vectors the index holds, and its baseline in the
same run: the same documents moved back with that reuse turned off (every moved chunk embedded again),
7. a full rebuild with the same model (``mode="full"``: what another index type or quantisation takes), whose
new indexes take their vectors from the old ones, and its baseline: the same rebuild with that reuse off; then the embedder alone on the same chunks (same batch size) for the throughput ratio.

Targets: re-run <= 2% of the first run, 1% run <= 5%, first-run throughput >= 0.9x embedder alone.

    .venv/bin/python benchmarks/incremental.py [--limit N] [--max-chars 1000] [--no-es]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _servers import server_url  # noqa: E402  (benchmarks/ is on sys.path when a benchmark runs)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def es_base() -> str | None:
    return server_url("EMBEDRAIL_ES_URL")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=None, help="documents (default: all, about 2,500)")
    p.add_argument("--max-chars", type=int, default=1000, help="characters per document")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-es", action="store_true")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()

    from embedrail.embed_core import Embedder
    from embedrail.integration.chunking import Chunker
    from embedrail.integration.documents import Document
    from embedrail.integration.engine import SyncEngine
    from embedrail.integration.sources import open_source

    spec = f"pydoc:?per=member&max_chars={a.max_chars}" + (f"&limit={a.limit}" if a.limit else "")
    docs = list(open_source(spec))
    rows = [{"id": d.id, "text": d.text, **d.metadata} for d in docs]
    tmp = Path(tempfile.mkdtemp(prefix="embedrail-bench-"))
    src = tmp / "docs.jsonl"

    def write(rows: list[dict]) -> None:
        with src.open("w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")

    write(rows)
    targets = [f"chroma://{tmp / 'chroma'}?collection=bench"]
    es = None if a.no_es else es_base()
    if es:
        targets.append(es.rstrip("/") + f"/bench_{os.getpid()}")
    t0 = time.perf_counter()
    emb = Embedder.load("minilm")
    load_s = time.perf_counter() - t0
    print(f"{len(docs)} documents, targets: {', '.join(targets)}; model loaded in {load_s:.1f}s", flush=True)

    # the embedder alone on the same chunks, same batch size (before and after the runs: the machine's
    # load drifts, so the ratio uses the mean of both)
    chunker = Chunker(emb)
    texts = [c.text for d in docs for c in chunker.chunk(Document(d.id, d.text, d.metadata))]

    def embed_alone() -> float:
        t = time.perf_counter()
        for i in range(0, len(texts), a.batch_size):
            emb.embed_documents(texts[i : i + a.batch_size])
        return time.perf_counter() - t

    alone_before = embed_alone()
    print(f"{'embedder':>10}: {alone_before:8.2f}s  chunks={len(texts)} (alone, before)", flush=True)

    def run(label: str, **kw: str) -> dict:
        t = time.perf_counter()
        with SyncEngine(str(src), targets, ledger=f"sqlite:///{tmp / 'ledger.sqlite'}", embedder=emb,
                        batch_size=a.batch_size, progress=False, **kw) as e:  # fmt: skip
            r = e.run()
        secs = time.perf_counter() - t
        print(f"{label:>10}: {secs:8.2f}s  documents={r.documents} chunks={r.chunks} embedded={r.embedded} "
              f"reused={r.reused} from_index={r.from_index} upserted={sum(r.upserted.values())} retagged={sum(r.retagged.values())} "
              f"deleted={sum(r.deleted.values())} ok={r.ok}", flush=True)  # fmt: skip
        print(f"{'':>12}embed {r.embed_seconds:.2f}s of {r.seconds:.2f}s", flush=True)
        return {"seconds": secs, **r.to_dict()}

    first = run("first")
    again = run("unchanged")
    edited = [dict(r) for r in rows]
    step = 100
    for r in edited[::step]:
        r["text"] += " (edited for the benchmark)"
    write(edited)
    one_pct = run("1% edited")
    retag = [dict(r) for r in edited]
    for r in retag[::10]:
        r["bench_tag"] = "retagged"
    write(retag)
    meta_run = run("10% meta")
    copies = [{**r, "id": f"{r['id']}~copy{k}", "text": r["text"] + " (mirrored)"} for r in retag[::20] for k in (1, 2)]
    write(retag + copies)
    dup_run = run("copies")
    before_move = retag + copies
    write([{**r, "id": f"moved/{r['id']}"} if i % 10 == 0 else r for i, r in enumerate(before_move)])
    move_run = run("10% moved")
    from embedrail.integration import pipeline

    reuse = pipeline.PartitionRun._from_index
    pipeline.PartitionRun._from_index = lambda self, todo: {}  # the baseline: no vector taken from the index
    write(before_move)
    back_run = run("moved back, no reuse")
    full_base = run("full, no reuse", mode="full")
    pipeline.PartitionRun._from_index = reuse
    full_run = run("full rebuild", mode="full")
    alone_after = embed_alone()
    print(f"{'embedder':>10}: {alone_after:8.2f}s  (alone, after)", flush=True)
    alone = (alone_before + alone_after) / 2

    res = {
        "documents": len(docs),
        "chunks": len(texts),
        "targets": targets,
        "first_s": round(first["seconds"], 2),
        "unchanged_s": round(again["seconds"], 3),
        "one_percent_s": round(one_pct["seconds"], 3),
        "unchanged_ratio": round(again["seconds"] / first["seconds"], 4),
        "one_percent_ratio": round(one_pct["seconds"] / first["seconds"], 4),
        "one_percent_embedded": one_pct["embedded"],
        "metadata_10pct_s": round(meta_run["seconds"], 3),
        "metadata_10pct_embedded": meta_run["embedded"],
        "metadata_10pct_retagged": meta_run["retagged"],
        "copies_docs": len(copies),
        "copies_embedded": dup_run["embedded"],
        "copies_reused": dup_run["reused"],
        "first_run_reused": first["reused"],
        "moved_s": round(move_run["seconds"], 3),
        "moved_embedded": move_run["embedded"],
        "moved_from_index": move_run["from_index"],
        "moved_upserted": sum(move_run["upserted"].values()),
        "moved_back_no_reuse_s": round(back_run["seconds"], 3),
        "moved_back_no_reuse_embedded": back_run["embedded"],
        "full_s": round(full_run["seconds"], 2),
        "full_embedded": full_run["embedded"],
        "full_from_index": full_run["from_index"],
        "full_no_reuse_s": round(full_base["seconds"], 2),
        "full_no_reuse_embedded": full_base["embedded"],
        "embedder_alone_s": round(alone, 2),
        "embedder_alone_before_after_s": [round(alone_before, 2), round(alone_after, 2)],
        "embedder_chunks_per_s": round(len(texts) / alone, 1),
        "e2e_chunks_per_s": round(first["chunks"] / first["seconds"], 1),
        "e2e_vs_embedder": round((first["chunks"] / first["seconds"]) / (len(texts) / alone), 3),
        "model_load_s": round(load_s, 1),
    }
    print(
        f"\nunchanged re-run: {res['unchanged_ratio'] * 100:.2f}% of the first run (target <= 2%)\n"
        f"1% edited run:    {res['one_percent_ratio'] * 100:.2f}% of the first run (target <= 5%), "
        f"embedded {res['one_percent_embedded']} chunks\n"
        f"10% metadata:     {res['metadata_10pct_s']:.2f}s, embedded {res['metadata_10pct_embedded']}, re-tagged "
        f"{res['metadata_10pct_retagged']} records per target\n"
        f"copies:           {res['copies_docs']} new documents (each text twice): embedded {res['copies_embedded']}, "
        f"reused {res['copies_reused']}; first run reused {res['first_run_reused']} (identical texts in the corpus)\n"
        f"10% moved:        {res['moved_s']:.2f}s, embedded {res['moved_embedded']}, taken from the index "
        f"{res['moved_from_index']}; moved back without reuse: {res['moved_back_no_reuse_s']:.2f}s, embedded "
        f"{res['moved_back_no_reuse_embedded']} ({res['moved_back_no_reuse_s'] / res['moved_s']:.2f}x the time)\n"
        f"full rebuild:     {res['full_s']:.2f}s, embedded {res['full_embedded']}, taken from the old index "
        f"{res['full_from_index']}; without reuse: {res['full_no_reuse_s']:.2f}s, embedded {res['full_no_reuse_embedded']} "
        f"({res['full_no_reuse_s'] / res['full_s']:.2f}x the time)\n"
        f"throughput:       {res['e2e_chunks_per_s']} chunks/s end-to-end vs {res['embedder_chunks_per_s']} "
        f"embedder alone = {res['e2e_vs_embedder']:.2f}x (target >= 0.9x)"
    )
    if a.json:
        print(json.dumps(res))
    if es:
        from embedrail.connectors import connect

        connect(targets[1]).drop()
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
