"""What the exactness guards cost (issue 24; not a test).

One corpus (the standard library's docs, one document per public member: ``pydoc:?per=member``) synced
into Chroma embedded and, when a server is up (``make servers``), Elasticsearch; the packaged model,
loaded once. Then, on the unchanged corpus, alternating runs of

- ``off``: ``repair="off", drift_sample=0`` (the store's count only; the baseline: what an unchanged run
  cost before the probe),
- ``auto``: the default (count + 100 records read back and compared),
- ``on``: ``repair="on"`` (every id and fingerprint compared),

and a run after 1 % of each store's records were deleted behind embedrail's back (``auto`` repairs it:
those chunks embedded again). Reported: median seconds per kind, and each as a ratio of ``off``.

    .venv/bin/python benchmarks/drift_probe.py [--limit N] [--rounds 5] [--no-es]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _servers import server_url  # noqa: E402  (benchmarks/ is on sys.path when a benchmark runs)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=None, help="documents (default: all, about 2,500)")
    p.add_argument("--max-chars", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5, help="runs of each kind, alternating")
    p.add_argument("--no-es", action="store_true")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()

    from embedrail.connectors import connect
    from embedrail.embed_core import Embedder
    from embedrail.integration.engine import SyncEngine
    from embedrail.integration.sources import open_source

    spec = f"pydoc:?per=member&max_chars={a.max_chars}" + (f"&limit={a.limit}" if a.limit else "")
    rows = [{"id": d.id, "text": d.text, **d.metadata} for d in open_source(spec)]
    tmp = Path(tempfile.mkdtemp(prefix="embedrail-bench-"))
    src = tmp / "docs.jsonl"
    with src.open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    targets = [f"chroma://{tmp / 'chroma'}?collection=bench"]
    es = None if a.no_es else server_url("EMBEDRAIL_ES_URL")
    if es:
        targets.append(f"{es.rstrip('/')}/bench_drift_{os.getpid()}")
    emb = Embedder.load("minilm")
    ledger = f"sqlite:///{tmp / 'ledger.sqlite'}"

    def run(**kw: object) -> tuple[float, object]:
        t = time.perf_counter()
        with SyncEngine(str(src), targets, ledger=ledger, embedder=emb, progress=False, **kw) as e:
            r = e.run()
        return time.perf_counter() - t, r

    try:
        first, r = run()
        assert r.ok, r.errors
        kinds = {"off": {"repair": "off", "drift_sample": 0}, "auto": {}, "on": {"repair": "on"}}
        times: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(a.rounds):
            for k, kw in kinds.items():
                secs, r = run(**kw)
                assert r.ok and r.embedded == 0, (k, r.errors)
                times[k].append(secs)
        lost = 0
        for t in targets:
            with connect(t) as store:
                ids = sorted(store.iter_ids())
                gone = ids[::100]  # 1 %
                store.delete(gone)
                lost = max(lost, len(gone))
        repair_secs, r = run()
        assert r.ok and all(d["repaired"] for d in r.drift.values()), r.drift
        med = {k: statistics.median(v) for k, v in times.items()}
        out = {
            "documents": len(rows), "chunks": r.chunks, "targets": [t.split("?")[0].split("://")[0] for t in targets],
            "first_run_s": round(first, 2), "unchanged_s": {k: round(v, 3) for k, v in med.items()},
            "ratio_vs_off": {k: round(v / med["off"], 2) for k, v in med.items()},
            "repair_after_1pct_lost": {"records_lost_per_target": lost, "seconds": round(repair_secs, 2),
                                       "embedded": r.embedded, "ratio_vs_off": round(repair_secs / med["off"], 2)},
        }  # fmt: skip
        if a.json:
            print(json.dumps(out))
        else:
            print(f"{out['documents']} documents, {out['chunks']} chunks -> {', '.join(out['targets'])}; first run {first:.1f}s")
            for k in kinds:
                print(f"  unchanged run, repair={k:4s}: {med[k]:.3f}s median of {a.rounds} ({med[k] / med['off']:.2f}x off)")
            print(f"  after {lost} records lost per target: {repair_secs:.2f}s, embedded {r.embedded} "
                  f"({repair_secs / med['off']:.2f}x an unchanged run)")  # fmt: skip
    finally:
        if es:
            for t in targets[1:]:
                with connect(t) as store:
                    store.drop()
        emb.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
