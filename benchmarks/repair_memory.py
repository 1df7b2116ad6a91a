"""Memory of a full drift compare (``--repair``, ``status --verify``) as the index grows (not a test).

A target of N chunks: the ledger (SQLite) holds N chunk rows, the "store" is a stand-in that yields the same
N ids in a shuffled order (as a store's scroll does) and answers ``get`` with the stored fingerprint, with
1 % of the records lost. Two ways to compare, each in a fresh process:

- ``sets`` (the baseline: embedrail before 2026-12-05): the ledger's whole chunk map and a set of every
  store id in memory, then the set differences;
- ``stream`` (``integration.drift.diff``): the store's ids sorted in runs spilled to temporary files,
  the ledger read a page at a time in the same order, one merge walk.

Reported: seconds and the process's peak RSS above what it held before the compare (``ru_maxrss``),
fingerprints compared in both.

    .venv/bin/python benchmarks/repair_memory.py [--sizes 100000,1000000]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FP = "a" * 48


def cid(i: int) -> str:
    return f"docs/section-{i:08d}.md#0"


class IdStore:
    """Just what a drift compare asks of a store: its ids (in the store's own order), ``get``, ``flush``."""

    def __init__(self, n: int, lost: set[int]) -> None:
        self.order = [i for i in range(n) if i not in lost]
        random.Random(1).shuffle(self.order)

    def iter_ids(self):
        for i in self.order:
            yield cid(i)

    def get(self, ids):
        return {c: SimpleNamespace(metadata={"_doc": c.rpartition("#")[0], "_fp": FP}) for c in ids}

    def flush(self) -> None:
        pass

    def delete(self, ids):
        raise AssertionError("nothing unknown to delete here")


def rss_now_kib() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * (resource.getpagesize() // 1024)


def child(kind: str, ledger_url: str, n: int) -> None:
    from embedrail.integration import drift
    from embedrail.integration.ledger import Ledger

    ledger = Ledger(ledger_url)
    lost = set(range(0, n, 100))
    store = IdStore(n, lost)
    before = rss_now_kib()
    t = time.perf_counter()
    if kind == "sets":
        recorded = ledger.chunk_map("t", "g0")
        in_store = set(store.iter_ids())
        known = {c for c, fp in recorded.items() if fp is not None}
        missing, unknown = sorted(known - in_store), sorted(in_store - recorded.keys())
        stale = 0
        for page in drift.pages(sorted(known & in_store)):
            got = store.get(page)
            stale += sum(1 for c in page if got[c].metadata.get("_fp") != recorded[c])
        found = (len(missing), len(unknown), stale)
    else:
        d = drift.diff(ledger, store, "t", "g0")  # type: ignore[arg-type]
        found = (d.missing, d.unknown, d.stale)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert found == (len(lost), 0, 0), found
    print(json.dumps({"kind": kind, "n": n, "seconds": seconds, "peak_above_start_mib": (peak - before) / 1024}))


def build_ledger(url: str, n: int) -> None:
    from embedrail.integration.ledger import Ledger

    ledger = Ledger(url)
    step = 50_000
    for lo in range(0, n, step):
        rows = [(cid(i), cid(i).rpartition("#")[0], FP) for i in range(lo, min(n, lo + step))]
        ledger.record_store("t", "g0", held=rows)
    ledger.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child[0], a.child[1], int(a.child[2]))
        return 0
    print("chunks     compare   seconds   peak RSS above start")
    with tempfile.TemporaryDirectory(prefix="embedrail-bench-") as tmp:
        for n in (int(x) for x in a.sizes.split(",")):
            url = f"sqlite:///{tmp}/ledger-{n}.sqlite"
            build_ledger(url, n)
            for kind in ("sets", "stream"):
                out = subprocess.run([sys.executable, __file__, "--child", kind, url, str(n)], capture_output=True, text=True)
                if out.returncode != 0:
                    print(out.stderr[-3000:], file=sys.stderr)
                    return 1
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{n:>10,}  {kind:>7}  {r['seconds']:>8.1f}  {r['peak_above_start_mib']:>8.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
