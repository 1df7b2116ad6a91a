"""`make demo`: index the Python standard library's own documentation into an embedded Chroma
database on disk with the packaged MiniLM model, then run a few searches.

A second run re-uses what is indexed: the ledger says every module is unchanged, so nothing is
embedded (and the model is loaded only for the query embeddings).

    python scripts/demo.py [--max-chars 2000] [--dir .embedrail/demo] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

QUERIES = [
    ("parse command line arguments", "argparse"),
    ("read and write JSON data", "json"),
    ("regular expression pattern matching", "re"),
    ("send an email through an SMTP server", "smtplib"),
    ("compress data with gzip", "gzip"),
]
DEFAULT_MAX_CHARS = 2000  # per module: a cold run stays well under two minutes on 2 CPU cores


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default=str(ROOT / ".embedrail" / "demo"), help="where the Chroma DB and the ledger live")
    p.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS, help="documentation characters per module")
    p.add_argument("--modules", help="comma-separated module names (default: the whole standard library)")
    p.add_argument("-k", type=int, default=3, help="hits per query")
    p.add_argument("--json", action="store_true", help="print one JSON object (report + hits)")
    a = p.parse_args(argv)

    from embedrail.errors import EmbedrailError
    from embedrail.integration.engine import SyncEngine

    demo_dir = Path(a.dir).resolve()
    demo_dir.mkdir(parents=True, exist_ok=True)
    target = f"chroma://{demo_dir / 'chroma'}?collection=pydoc"
    ledger = f"sqlite:///{demo_dir / 'ledger.sqlite'}"
    source = f"pydoc:?max_chars={a.max_chars}" + (f"&modules={a.modules}" if a.modules else "")
    say = (lambda *x: None) if a.json else (lambda *x: print(*x, flush=True))

    started = time.time()
    say(f"embedrail demo: indexing the standard library docs ({source}) into {target}")
    try:
        with SyncEngine(source, [target], ledger=ledger, progress=sys.stderr.isatty() and not a.json) as engine:
            report = engine.run()
            if report.embedded == 0 and report.ok:
                say(f"nothing new to embed: all {report.documents} modules ({report.chunks} chunks) are already indexed "
                    f"and unchanged — re-used ({report.seconds:.1f}s)")  # fmt: skip
            else:
                say(report.summary())
            hits_out = search_all(target, a.k, say, engine.loaded_embedder())
    except EmbedrailError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    total = time.time() - started
    say(f"done in {total:.1f}s")
    if a.json:
        print(json.dumps({"report": report.to_dict(), "searches": hits_out, "seconds": round(total, 2)}))
    return 0 if report.ok else 1


def search_all(target: str, k: int, say, emb=None) -> list[dict]:  # type: ignore[no-untyped-def]
    """Run the demo queries through the query side; show the best chunk of each of the ``k`` best modules."""
    from embedrail.integration.search import Searcher

    out = []
    with Searcher(target, embedder=emb) as searcher:  # the model the index records (reused if just loaded)
        for query, expected in QUERIES:
            hits = searcher.search(query, k, distinct_docs=True).hits
            docs = [h.metadata.get("_doc", h.id) for h in hits]
            say(f"\n> {query}")
            for h, d in zip(hits, docs, strict=True):
                say(f"  {h.score:.3f}  {d:<16} {' '.join(h.text.split())[:90]}")
            out.append({"query": query, "expected": expected, "docs": docs, "found": expected in docs})
    return out


if __name__ == "__main__":
    sys.exit(main())
