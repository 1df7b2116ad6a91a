"""Retrieval quality: kNN vs hybrid (keywords fused with kNN) vs keywords only, per store (issue 12; not a test).

A retrieval set that needs no network, built from the standard library's own docs (``pydoc:?per=member``):
for every public class/function whose docstring has a summary sentence and more text, the **query** is
the summary sentence and the **document** is the member's signature plus the rest of its docstring (the
summary removed, so the query's exact words are not simply copied from the document); the gold answer is
that member. ``--queries name``: the query is the member's name as words instead ("cgi parse header"). All documents are indexed (one chunk each, the packaged MiniLM) into every store that runs,
and each query is answered three ways — ``search`` (kNN), ``hybrid_search`` (alpha 0.5 and 0.7) and
keyword-only (alpha 0), relative-score fusion unless the mode says rrf — reporting MRR@10 and recall@10 (``hit``: the gold member in the top 10).
With ``--rerank MODEL`` also kNN+rerank and hybrid+rerank: ``--candidates`` first-stage hits rescored by the reranker.

    .venv/bin/python benchmarks/retrieval_quality.py [--stores es,opensearch,weaviate,pgvector] [--limit N]

Servers from ``make servers`` (.servers.env) or EMBEDRAIL_*_URL.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _servers import store_urls  # noqa: E402  (benchmarks/ is on sys.path when a benchmark runs)


def with_name(base: str, name: str) -> str:
    if base.startswith("pgvector://"):
        return f"{base}?table={name}"
    b, _, q = base.partition("?")
    return f"{b.rstrip('/')}/{name}" + (f"?{q}" if q else "")


def retrieval_set(limit: int | None, queries: str = "summary") -> list[tuple[str, str, str]]:
    """(member id, query, document text) triples; ``queries``: "summary" (the docstring's first sentence,
    a paraphrase-like question) or "name" (the member's name as words, e.g. "cgi parse header": what a
    user who knows the identifier types)."""
    from embedrail.integration.sources import open_source

    out = []
    for d in open_source("pydoc:?per=member"):
        head, _, body = d.text.partition("\n\n")
        sents = re.split(r"(?<=[.!?])\s+", body.strip())
        if len(sents) >= 2 and len(sents[0]) > 25 and len(" ".join(sents[1:])) > 40:
            query = sents[0] if queries == "summary" else re.sub(r"[._]+", " ", d.id).strip()
            out.append((d.id, query, f"{head}\n\n{' '.join(sents[1:])}"))
    return out[:limit] if limit else out


def scores(ranked: list[list[str]], gold: list[str]) -> tuple[float, float]:
    mrr = hit = 0.0
    for ids, g in zip(ranked, gold, strict=True):
        if g in ids[:10]:
            hit += 1
            mrr += 1.0 / (ids.index(g) + 1)
    return mrr / len(gold), hit / len(gold)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stores", default="es,opensearch,weaviate,pgvector")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--queries", choices=["summary", "name"], default="summary")
    ap.add_argument("--rerank", metavar="MODEL", help="also kNN+rerank and hybrid+rerank with this reranker "
                    "(a Qwen3-Reranker or cross-encoder directory, or a URL; real weights only: a random model ranks randomly)")
    ap.add_argument("--candidates", type=int, default=100, help="first-stage hits the reranker rescores")
    args = ap.parse_args()
    from embedrail.connectors import IndexSpec, Record, connect
    from embedrail.embed_core import Embedder

    triples = retrieval_set(args.limit, args.queries)
    emb = Embedder.load("minilm", device="cpu")
    t = time.perf_counter()
    dvecs = emb.embed_documents([doc for _, _, doc in triples])
    qvecs = emb.embed_queries([q for _, q, _ in triples])
    print(f"{len(triples)} queries ({args.queries}) / documents from the stdlib docs; embedded in {time.perf_counter() - t:.1f}s (MiniLM)")
    # how deep the first stage must go for a reranker to see the answer: exact kNN on the same vectors
    import numpy as np

    order = np.argsort(-(np.asarray(qvecs) @ np.asarray(dvecs).T), axis=1)
    rank_of_gold = (order == np.arange(len(triples))[:, None]).argmax(axis=1)  # document i answers query i
    print("first-stage recall (exact kNN): " + ", ".join(f"@{n} {np.mean(rank_of_gold < n):.3f}" for n in (10, 20, 50, 100)))
    reranker = None
    if args.rerank:
        from embedrail.embed_core import open_reranker

        reranker = open_reranker(args.rerank, device="auto")
        print(f"reranker {reranker.model_id} ({reranker.kind}), {args.candidates} candidates per query")
    spec = IndexSpec(dims=emb.dims, metric="cosine", fingerprint=emb.fingerprint, embedding={"model": emb.model_id})
    urls = store_urls(("es", "opensearch", "weaviate", "pgvector"))
    gold = [mid for mid, _, _ in triples]
    rows = []
    for kind in args.stores.split(","):
        if kind not in urls:
            print(f"{kind}: not running, skipped")
            continue
        store = connect(with_name(urls[kind], f"bench_quality_{uuid.uuid4().hex[:8]}"))
        try:
            store.ensure_index(spec)
            res = store.upsert([Record(id=mid, vector=v, text=doc) for (mid, _, doc), v in zip(triples, dvecs, strict=True)])
            assert res.ok, list(res.failed.items())[:3]
            store.flush()
            for mode, alpha, fusion in (("kNN", None, ""), ("hybrid a=0.5", 0.5, "relative"), ("hybrid a=0.7", 0.7, "relative"),
                                        ("hybrid rrf a=0.7", 0.7, "rrf"), ("keywords", 0.0, "relative")):  # fmt: skip
                t = time.perf_counter()
                ranked = [[h.id for h in (store.search(v, k=10) if alpha is None else
                                          store.hybrid_search(q, v, k=10, alpha=alpha, fusion=fusion))]
                          for (_, q, _), v in zip(triples, qvecs, strict=True)]  # fmt: skip
                ms = 1000 * (time.perf_counter() - t) / len(triples)
                mrr, hit = scores(ranked, gold)
                rows.append((kind, mode, mrr, hit, ms))
            if reranker is not None:
                for mode, alpha in (("kNN+rerank", None), ("hybrid a=0.7+rerank", 0.7)):
                    t, ranked = time.perf_counter(), []
                    for (_, q, _), v in zip(triples, qvecs, strict=True):
                        cands = (store.search(v, k=args.candidates) if alpha is None else
                                 store.hybrid_search(q, v, k=args.candidates, alpha=alpha))  # fmt: skip
                        ranked.append([cands[i].id for i, _ in reranker.rank(q, [h.text for h in cands], top_k=10)])
                    ms = 1000 * (time.perf_counter() - t) / len(triples)
                    mrr, hit = scores(ranked, gold)
                    rows.append((kind, mode, mrr, hit, ms))
        finally:
            store.drop()
            store.close()
    print(f"\n{'store':<12}{'mode':<19}{'MRR@10':>8}{'recall@10':>11}{'vs kNN':>8}{'ms/query':>10}")
    base = {k: m for k, mode, m, _, _ in rows if mode == "kNN"}
    for kind, mode, mrr, hit, ms in rows:
        print(f"{kind:<12}{mode:<19}{mrr:>8.3f}{hit:>11.3f}{mrr / base[kind]:>8.2f}{ms:>10.1f}")


if __name__ == "__main__":
    main()
