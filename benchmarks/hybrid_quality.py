"""Hybrid search against kNN on three corpora, per store: what the hybrid default is chosen by (issue 28; not a test).

Three retrieval sets the project builds without a network, each synced with ``embedrail.sync`` (packaged MiniLM,
the default chunking) into every store that runs, then measured with ``embedrail.integration.evaluate`` (the
code behind ``embedrail eval``): kNN, and hybrid with relative-score fusion at several weights, with RRF, and
guarded fusion (relative, the keyword side trusted only where it agrees with kNN or matched a rare word).

- ``stdlib`` (API reference): a document per public stdlib class/function (``pydoc:?per=member``) without its
  summary sentence; the query is that sentence (``--max-queries``: 300 of them, evenly spaced) (a paraphrase-like description; retrieval_quality.py's set).
- ``prose`` (bundled prose): the Python Language Reference that ships inside the standard library
  (``pydoc_data.topics``), a document per section with the topic's title as ``title`` metadata; the query is
  the section's heading ("Augmented assignment statements"), which the document itself does not contain.
- ``qa`` (questions): the stdlib documentation as the ``pydoc:?per=member`` source gives it, 48 questions
  written by hand the way a user asks them ("how do I delete a directory and everything in it"), each with
  the members that answer it.

    .venv/bin/python benchmarks/hybrid_quality.py [--corpora stdlib,prose,qa] [--stores es,opensearch,weaviate,pgvector,qdrant]
        [--configs knn,hybrid:0.5:guarded] [--guard 1.0:2.5 ...]   # other guard constants on the same indexes
        [--plain-ts-rank]                                           # pgvector's keyword side without IDF too

Servers from ``make servers`` (.servers.env) or EMBEDRAIL_*_URL; ``qdrant`` is its local (embedded) mode.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _servers import store_urls  # noqa: E402
from retrieval_quality import retrieval_set, with_name  # noqa: E402

CONFIGS = ["knn", *(f"hybrid:{a}:relative" for a in (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)), "hybrid:0.5:rrf", "hybrid:0.7:rrf",
           *(f"hybrid:{a}:guarded" for a in (0.5, 0.6, 0.7))]

QA = [  # (question, the members that answer it)
 ("how do I delete a directory and everything in it", ["shutil.rmtree"]),
 ("create a folder including missing parent folders", ["os.makedirs"]),
 ("read a gzip compressed file", ["gzip.open", "gzip.GzipFile"]),
 ("turn a python object into a JSON string", ["json.dumps"]),
 ("copy a file and keep its timestamps and permissions", ["shutil.copy2"]),
 ("make a temporary directory", ["tempfile.mkdtemp", "tempfile.TemporaryDirectory"]),
 ("replace every match of a regular expression in a string", ["re.sub"]),
 ("run an external command and wait for it to finish", ["subprocess.run", "subprocess.call"]),
 ("count how many times each item occurs in a list", ["collections.Counter"]),
 ("group consecutive items with the same key", ["itertools.groupby"]),
 ("compute a SHA-256 digest of some bytes", ["hashlib.sha256"]),
 ("encode binary data as base64 text", ["base64.b64encode"]),
 ("open a zip archive and list its members", ["zipfile.ZipFile"]),
 ("shuffle a list in place randomly", ["random.shuffle"]),
 ("pause the program for a few seconds", ["time.sleep"]),
 ("open a TCP connection to a host and port", ["socket.create_connection"]),
 ("walk through all files in a directory tree", ["os.walk"]),
 ("find files whose names match a wildcard pattern", ["glob.glob", "fnmatch.fnmatch"]),
 ("remove common leading indentation from a multi-line string", ["textwrap.dedent"]),
 ("substitute $name placeholders in a string", ["string.Template"]),
 ("generate a random unique identifier", ["uuid.uuid4"]),
 ("get the n biggest elements of a collection", ["heapq.nlargest"]),
 ("insert into a sorted list keeping it sorted", ["bisect.insort", "bisect.insort_right"]),
 ("cache the results of an expensive function", ["functools.lru_cache", "functools.cache"]),
 ("get a logger object for my module", ["logging.getLogger"]),
 ("parse command line options and arguments", ["argparse.ArgumentParser"]),
 ("write rows to a CSV file", ["csv.writer"]),
 ("deep copy a nested data structure", ["copy.deepcopy"]),
 ("pretty print a nested dictionary", ["pprint.pprint", "pprint.pformat"]),
 ("serialize python objects to bytes with pickle", ["pickle.dumps"]),
 ("check whether a path points to an existing file", ["genericpath.isfile", "genericpath.exists"]),
 ("read an environment variable with a default", ["os.getenv"]),
 ("apply a function to pairs of items from two iterables", ["itertools.starmap", "builtins.map"]),
 ("split a file path into directory and file name", ["posixpath.split", "ntpath.split"]),
 ("get the current date and time", ["datetime.datetime"]),
 ("measure how long a small piece of code takes to run", ["timeit.timeit", "timeit.Timer"]),
 ("combine several dictionaries into one view", ["collections.ChainMap"]),
 ("a dictionary that supplies a default value for missing keys", ["collections.defaultdict"]),
 ("run a function in a separate thread", ["threading.Thread"]),
 ("compare two sequences and show the differences", ["difflib.unified_diff", "difflib.Differ", "difflib.SequenceMatcher", "difflib.ndiff"]),
 ("escape special characters for HTML", ["html.escape"]),
 ("quote a string for safe use in a shell command", ["shlex.quote"]),
 ("split a shell command line into arguments", ["shlex.split"]),
 ("the fraction of a number as numerator and denominator", ["fractions.Fraction"]),
 ("exact decimal arithmetic for money", ["decimal.Decimal"]),
 ("calculate the mean of a list of numbers", ["statistics.mean"]),
 ("register a function to run when the interpreter exits", ["atexit.register"]),
 ("wait for the first of several threads to signal", ["threading.Event"]),
 ("lock shared data between threads", ["threading.Lock"]),
]


_RULE = re.compile(r"^([*=\-~^])\1{3,}$")


def prose_sections() -> list[tuple[str, str, str, str]]:
    """(id, heading, topic title, body) of every section of the Language Reference topics."""
    import pydoc_data.topics as topics

    out = []
    for key in sorted(topics.topics):
        lines = topics.topics[key].splitlines()
        heads = [i for i in range(len(lines) - 1) if lines[i].strip() and _RULE.match(lines[i + 1].strip())
                 and abs(len(lines[i + 1].strip()) - len(lines[i].strip())) <= 2]  # fmt: skip
        if not heads:
            continue
        title = lines[heads[0]].strip()
        for n, i in enumerate(heads):
            end = heads[n + 1] if n + 1 < len(heads) else len(lines)
            body = "\n".join(lines[i + 2 : end]).strip()
            if len(body) >= 200:
                out.append((f"{key}#{n}", lines[i].strip(), title, body))
    return out


def build(corpus: str, folder: Path) -> tuple[object, list[dict]]:
    """(the source ``sync`` reads, the queries as ``embedrail eval`` reads them)."""
    if corpus == "qa":
        return "pydoc:?per=member", [{"id": f"q{i}", "query": q, "relevant": rel} for i, (q, rel) in enumerate(QA)]
    rows, queries = [], []
    if corpus == "stdlib":
        for mid, query, doc in retrieval_set(None):
            rows.append({"id": mid, "text": doc})
            queries.append({"id": mid, "query": query, "relevant": [mid]})
    else:
        sections = prose_sections()
        twice = {h for h in (s[1] for s in sections) if sum(1 for s in sections if s[1] == h) > 1}
        for sid, heading, title, body in sections:
            rows.append({"id": sid, "text": body, "title": title})
            if heading not in twice and heading != title:  # a topic's own title would be found by its title field
                queries.append({"id": sid, "query": heading, "relevant": [sid]})
    path = folder / f"{corpus}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path), queries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", default="stdlib,prose,qa")
    ap.add_argument("--stores", default="es,opensearch,weaviate,pgvector,qdrant")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--max-queries", type=int, default=300, help="per corpus, an evenly spaced sample (0: all)")
    ap.add_argument("--json", metavar="PATH", help="also write every row here")
    ap.add_argument("--guard", action="append", default=[], metavar="ALPHA:PEAK",
                    help="also run the guarded configurations with these constants (GUARD_ALPHA:GUARD_PEAK; repeatable)")
    ap.add_argument("--plain-ts-rank", action="store_true",
                    help="pgvector: also run every hybrid configuration ranked by plain ts_rank (no IDF; before 2026-12-05)")
    args = ap.parse_args()
    from embedrail import sync
    from embedrail.connectors import _fusion, connect
    from embedrail.connectors.pgvector import PgvectorStore
    from embedrail.integration.evaluate import Query, evaluate

    configs = args.configs.split(",")
    guards = [tuple(float(x) for x in g.split(":")) for g in args.guard]
    urls = store_urls(("es", "opensearch", "weaviate", "pgvector"))
    out: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        urls["qdrant"] = f"qdrant://{folder}/qdrant"
        for corpus in args.corpora.split(","):
            source, qs = build(corpus, folder)
            if args.max_queries and len(qs) > args.max_queries:
                qs = qs[:: -(-len(qs) // args.max_queries)]
            queries = [Query(q["id"], q["query"], dict.fromkeys(q["relevant"], 1.0)) for q in qs]
            tag = uuid.uuid4().hex[:6]
            targets = {kind: (with_name(urls[kind], f"bench_hq_{corpus}_{tag}") if kind != "qdrant" else
                              f"{urls['qdrant']}?collection=hq_{corpus}_{tag}")
                       for kind in args.stores.split(",") if kind in urls}  # fmt: skip
            t = time.perf_counter()
            report = sync(source, list(targets.values()), ledger=f"sqlite:///{folder}/ledger_{corpus}.sqlite")
            report.raise_for_failures()
            print(f"\n== {corpus}: {len(queries)} queries; synced into {', '.join(targets)} in {time.perf_counter() - t:.0f}s")
            try:
                for kind, url in targets.items():
                    rows = evaluate([url], queries, configs, k=10).rows
                    if args.plain_ts_rank and kind == "pgvector":  # the baseline of pgvector's IDF weighting
                        with mock.patch.object(PgvectorStore, "_idf_rank", lambda *a, **kw: None):
                            more = evaluate([url], queries, configs[1:], k=10).rows
                        for r in more:
                            r.config = f"{r.config}@ts_rank"
                        rows += more
                    for alpha, peak in guards:  # the same configurations under other guard constants
                        with mock.patch.object(_fusion, "GUARD_ALPHA", alpha), mock.patch.object(_fusion, "GUARD_PEAK", peak):
                            more = evaluate([url], queries, [c for c in configs if c.endswith(":guarded")], k=10).rows
                        for r in more:
                            r.config = f"{r.config}@{alpha}:{peak}"
                        rows += more
                    base = next(r.metrics["mrr@10"] for r in rows if r.config == "knn")
                    for r in rows:
                        if r.error:
                            continue
                        m = r.metrics
                        out.append({"corpus": corpus, "store": kind, "config": r.config, **{k: round(v, 4) for k, v in m.items()}})
                        print(f"{corpus:<7}{kind:<12}{r.config:<17}MRR@10 {m['mrr@10']:.3f} ({m['mrr@10'] / base:.2f}x kNN)  "
                              f"nDCG@10 {m['ndcg@10']:.3f}  recall@10 {m['recall@k']:.3f}  p50 {r.latency_ms['p50']:.1f} ms", flush=True)  # fmt: skip
            finally:
                for url in targets.values():
                    with connect(url) as store:
                        store.drop()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    # the default must hold on every (corpus, store): the worst ratio to kNN per configuration
    print("\nworst MRR@10 ratio to kNN over every corpus and store, per configuration:")
    knn = {(r["corpus"], r["store"]): r["mrr@10"] for r in out if r["config"] == "knn"}
    for cfg in dict.fromkeys(r["config"] for r in out if r["config"] != "knn"):
        ratios = [r["mrr@10"] / knn[(r["corpus"], r["store"])] for r in out if r["config"] == cfg and knn.get((r["corpus"], r["store"]))]
        if ratios:
            print(f"  {cfg:<17}min {min(ratios):.3f}  mean {sum(ratios) / len(ratios):.3f}")


if __name__ == "__main__":
    main()
