"""The ``embedrail`` command line: ``reindex``, ``search``, ``eval``, ``status``, ``serve``.

User errors (``EmbedrailError``) become one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from embedrail.connectors.base import DEFAULT_ALPHA, DEFAULT_FUSION
from embedrail.errors import ConfigError, EmbedrailError, SyncError
from embedrail.integration.ledger import default_ledger_url
from embedrail.integration.options import SyncOptions, positive_int

__all__ = ["INTERNAL_ERROR", "build_parser", "main"]

#: the exit code of a bug (EX_SOFTWARE): an exception that is not an ``EmbedrailError``
INTERNAL_ERROR = 70

log = logging.getLogger("embedrail.cli")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="embedrail",
        description="Keep vector stores (Elasticsearch, OpenSearch, Chroma, Weaviate, Qdrant, pgvector) in step with source data.",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("reindex", help="sync a source into one or more targets (incremental by default)")
    r.add_argument("--source", required=True, help="file.jsonl, file.csv, a directory or bucket (s3://bucket/prefix, gs://, az://, file://; "
                   "?glob=**/*.pdf&exclude=...), pydoc:, sql+URL?query=...")
    r.add_argument("--target", action="append", required=True, metavar="URL",
                   help="es://host:9200/index, chroma:///abs/path?collection=name, chroma+http://host:8000/name, "
                        "weaviate://host:8080/Name?grpc_port=50051, qdrant://, pgvector://, opensearch:// (repeatable; "
                        "URL#dims=N gives one target its own dims: a Matryoshka model is run once, at the largest)")  # fmt: skip
    r.add_argument("--ledger", help="SQLAlchemy URL of the sync ledger (default: $EMBEDRAIL_LEDGER, else "
                                    ".embedrail/ledger.sqlite under the working directory; the report names it)")  # fmt: skip
    # --model, --dims, --mode, --deletes, --dry-run, --chunk-tokens, --adopt, --repair, --max-delete-fraction, ...
    SyncOptions.add_arguments(r)
    r.add_argument("--id-field", help="source field holding the document id (default: id)")
    r.add_argument("--text-field", help="source field holding the text (default: text)")
    r.add_argument("--deleted-field", help="source field marking a tombstone (default: _deleted)")
    r.add_argument("--json", action="store_true", help="print the report as one JSON object")
    r.add_argument("--pushgateway", metavar="URL", default=os.environ.get("EMBEDRAIL_PUSHGATEWAY") or None,
                   help="push the run's metrics to this Prometheus Pushgateway when it ends (default: $EMBEDRAIL_PUSHGATEWAY)")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on a terminal)")  # fmt: skip

    s = sub.add_parser("search", help="query a target with the model its index records")
    s.add_argument("--target", required=True, metavar="URL")
    s.add_argument("--model", help="query model (default: the one the index records)")
    s.add_argument("--dims", type=positive_int)
    s.add_argument("--device", default="auto")
    s.add_argument("-k", type=positive_int, default=10, help="number of hits")
    s.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE", help="metadata equality filter (repeatable)")
    s.add_argument("--instruction", help="query instruction (instruction-aware models such as Qwen3)")
    s.add_argument("--hybrid", action=argparse.BooleanOptionalAction, default=None,
                   help="keyword search on the text fused with kNN (Elasticsearch, OpenSearch, Weaviate, pgvector, Qdrant); "
                        "default: what `eval --tune --save` recorded on the index, else kNN")  # fmt: skip
    s.add_argument("--alpha", type=float, help=f"hybrid: weight of the vector side, 0 (keywords) to 1 (kNN); default: the "
                                               f"index's tuned one, else {DEFAULT_ALPHA}")  # fmt: skip
    s.add_argument("--fusion", choices=["relative", "rrf", "guarded"],
                   help="hybrid: relative (min-max normalised scores, weighted), rrf (weighted reciprocal rank) or guarded "
                        "(relative, the keyword side at full weight only where both sides agree on the best document); default: "
                        f"the index's tuned one, else {DEFAULT_FUSION}")  # fmt: skip
    s.add_argument("--rerank", metavar="MODEL",
                   help="rerank the candidates: a Qwen3-Reranker or cross-encoder directory, a hub id, or a URL "
                        "(http://host/v1#model for /v1/rerank, http://host/rerank for TEI)")  # fmt: skip
    s.add_argument("--candidates", type=positive_int, help="first-stage hits the reranker rescores (default: max(100, k))")
    s.add_argument("--rerank-instruction", help="the task of an instruction-aware reranker (Qwen3-Reranker)")
    s.add_argument("--json", action="store_true", help="print the hits as a JSON list")
    s.add_argument("query", nargs="+", help="query text")

    ev = sub.add_parser("eval", help="retrieval quality on your own queries: recall@k, MRR@10, nDCG@10, latency")
    ev.add_argument("--target", action="append", required=True, metavar="URL", help="a target to evaluate (repeatable)")
    ev.add_argument("--queries", required=True, metavar="PATH",
                    help='JSONL of {"query": ..., "relevant": [doc ids]} (or {id: grade}), or a BEIR folder')
    ev.add_argument("--split", default="test", help="BEIR folder: the qrels split (default: test)")
    ev.add_argument("--config", action="append", metavar="CONFIG",
                    help="knn, hybrid, hybrid:ALPHA, hybrid:ALPHA:rrf, each with an optional +rerank (repeatable; "
                         "default: knn)")  # fmt: skip
    ev.add_argument("-k", type=positive_int, default=10, help="the k of recall@k (default: 10)")
    ev.add_argument("--rerank", metavar="MODEL", help="the reranker of the +rerank configurations")
    ev.add_argument("--candidates", type=positive_int,
                    help="first-stage hits the reranker rescores (default: max(100, k); at least the max(k, 10) ranked)")
    ev.add_argument("--tune", action="store_true",
                    help="sweep the hybrid weight (0 to 1) and fusion on each target; report the best by --metric")
    ev.add_argument("--save", action="store_true",
                    help="with --tune: record each target's best setting on its index as its search defaults "
                         "(embedrail search and Searcher use them when a query does not say)")  # fmt: skip
    ev.add_argument("--metric", default="ndcg@10", help="what --tune maximises and the chart shows: ndcg@10, mrr@10, recall@k")
    ev.add_argument("--reference", metavar="URL",
                    help="a target with the same documents in float vectors: each row also says how much of its kNN top k it keeps "
                         "(what a quantised index loses)")  # fmt: skip
    ev.add_argument("--device", default="auto")
    ev.add_argument("--chart", metavar="PNG", help="write a chart of quality against latency and bytes per vector")
    ev.add_argument("--out", metavar="JSON", help="write the report, with each query's ranking, to this file")
    ev.add_argument("--json", action="store_true", help="print the report as one JSON object")

    st = sub.add_parser("status", help="counts, fingerprint, drift between ledger and store")
    st.add_argument("--target", required=True, metavar="URL")
    st.add_argument("--ledger", help="the sync ledger (default: as for reindex)")
    st.add_argument("--verify", action="store_true", help="compare every id and fingerprint in the store with the ledger")
    st.add_argument("--json", action="store_true")

    sv = sub.add_parser("serve", help="serve an OpenAI-compatible /v1/embeddings endpoint (and /v1/rerank, /metrics)")
    from embedrail.embed_core.serve_options import add_arguments as add_serve_arguments

    add_serve_arguments(sv)
    return p


# ------------------------------------------------------------------------------------------------
def cmd_reindex(a: argparse.Namespace) -> int:
    from embedrail.integration.engine import SyncEngine

    fields = {"id_field": a.id_field, "text_field": a.text_field, "deleted_field": a.deleted_field}
    options = SyncOptions.from_args(a, source_options={k: v for k, v in fields.items() if v is not None})
    progress = a.progress if a.progress is not None else (sys.stderr.isatty() and not a.json)
    with SyncEngine(a.source, a.target, options=options, ledger=a.ledger or default_ledger_url(), progress=progress) as engine:
        report = engine.run()
    print(json.dumps(report.to_dict()) if a.json else report.summary())
    if a.pushgateway:
        from embedrail.integration.metrics import push_report

        try:
            push_report(report, a.pushgateway)
        except OSError as e:  # the run is done: a metrics gateway that is down does not fail it
            print(f"embedrail: could not push the run's metrics to {a.pushgateway}: {e}", file=sys.stderr)
    if not report.ok:
        print(f"embedrail: {report.failure_message()}", file=sys.stderr)
        return SyncError.exit_code
    return 0


def _parse_filters(items: Sequence[str]) -> dict[str, Any] | None:
    if not items:
        return None
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--filter takes KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def cmd_search(a: argparse.Namespace) -> int:
    from embedrail.integration.search import Searcher

    if (a.candidates or a.rerank_instruction) and not a.rerank:
        raise ConfigError("--candidates and --rerank-instruction apply to two-stage search: add --rerank MODEL")
    with Searcher(a.target, model=a.model, dims=a.dims, device=a.device, reranker=a.rerank) as searcher:
        result = searcher.search(" ".join(a.query), a.k, filter=_parse_filters(a.filter), instruction=a.instruction,
                                 hybrid=a.hybrid, alpha=a.alpha, fusion=a.fusion, candidates=a.candidates,
                                 rerank_instruction=a.rerank_instruction)  # fmt: skip
    if a.json:
        print(json.dumps(result.to_dict()["hits"]))
        return 0
    for i, h in enumerate(result.hits, 1):
        snippet = " ".join(h.text.split())[:160]
        print(f"{i:2d}. {h.score:.3f}  {h.metadata.get('_doc', h.id)}  [{h.id}]\n      {snippet}")
    if not result.hits:
        print("no hits")
    ran = ", ".join(f"{st} {result.timings[st]:.3f}s" for st in result.stages if st in result.timings)
    extra = f"; reranked {len(result.first_stage or [])} candidates with {result.reranker}" if result.reranker else ""
    print(f"({ran}{extra})")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from embedrail.integration.evaluate import evaluate, load_queries, parse_config, tune

    queries = load_queries(a.queries, split=a.split)
    configs = [parse_config(c) for c in (a.config or ["knn"])]
    if a.rerank and not any(c.rerank for c in configs):  # a reranker given: each configuration with and without it
        configs += [dataclasses.replace(c, rerank=True) for c in configs]
    if a.candidates and not a.rerank:
        raise ConfigError("--candidates applies to reranking: add --rerank MODEL")
    if a.save and not a.tune:
        raise ConfigError("--save records what --tune chose: add --tune")
    opts = {"k": a.k, "reranker": a.rerank, "candidates": a.candidates, "device": a.device, "per_query": bool(a.out),
            "reference": a.reference}
    if a.tune:
        report = tune(a.target, queries, metric=a.metric, save=a.save, **opts)
        if a.config:
            report.rows += evaluate(a.target, queries, configs, **opts).rows
    else:
        report = evaluate(a.target, queries, configs, **opts)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(report.to_dict(per_query=True), f, indent=1)
    if a.chart:
        report.chart(a.chart, metric=a.metric)
    if a.json:
        print(json.dumps(report.to_dict()))
    else:
        print(f"{len(queries)} queries, k = {a.k}")
        print(report.table())
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    from embedrail.connectors import connect
    from embedrail.integration.ledger import Ledger
    from embedrail.integration.targets import target_key

    with connect(a.target) as store, contextlib.closing(Ledger(a.ledger or default_ledger_url())) as ledger:
        out = _status(store, ledger, target_key(a.target), verify=a.verify)
        ledger_url = ledger.url
    if a.json:
        print(json.dumps(out))
    else:
        counts, drift = out["ledger"], out["drift"]
        print(f"{out['target']}: {'exists' if out['exists'] else 'missing'}" + (f" ({out['physical_name']})" if out["physical_name"] else ""))
        print(f"  store: {out['store_count']} records; model {out['model']}, {out['dims']} dims, fingerprint {out['index_fingerprint']}")
        print(f"  ledger: {counts['documents']} documents, {counts['chunks']} chunks"
              + (f", {counts['pending_chunks']} in flight" if counts["pending_chunks"] else "") + f" ({ledger_url})")  # fmt: skip
        if out["pending_rebuild"]:
            print(f"  pending rebuild: {out['pending_rebuild']} (finished or dropped by the next reindex)")
        print(f"  drift: {json.dumps(drift)} -> {'in sync' if out['in_sync'] else 'OUT OF SYNC: run embedrail reindex'}")
    return 0 if out["in_sync"] or not a.verify else 1


def _status(store: Any, ledger: Any, key: str, *, verify: bool) -> dict[str, Any]:
    """Counts and fingerprints of the store and the ledger, and (``verify``) every id compared."""
    from embedrail.integration import drift

    info = store.describe()
    key = drift.ledger_key(ledger, key, info)
    state = ledger.target(key)
    gen = state.generation if state else ""
    counts = ledger.counts(key, gen) if state else {"documents": 0, "chunks": 0, "pending_chunks": 0}
    owner = info.owner
    out: dict[str, Any] = {
        "target": key,
        "exists": info.exists,
        "physical_name": info.physical_name,
        "store_count": info.count,
        "ledger": {"url": ledger.url, "id": ledger.id, "generation": gen, **counts},
        "owner": owner,
        "index_fingerprint": info.spec.fingerprint if info.spec else None,
        "ledger_fingerprint": state.fingerprint if state else None,
        "model": (info.spec.embedding.get("model") if info.spec else None),
        "dims": info.spec.dims if info.spec else None,
        "pending_rebuild": state.pending_generation if state else None,
    }
    drift_out: dict[str, Any] = {"count": (info.count or 0) - counts["chunks"]}
    in_sync = drift_out["count"] == 0 and out["index_fingerprint"] in (None, out["ledger_fingerprint"]) and not counts["pending_chunks"]
    if owner is not None and owner.get("ledger") != ledger.id:
        drift_out["owner"] = f"kept by another ledger ({owner.get('ledger')})"
        in_sync = False
    if verify and info.exists:
        found = drift.diff(ledger, store, key, gen)
        drift_out.update(missing_in_store=found.missing, unknown_in_store=found.unknown, stale_fingerprints=found.stale,
                         examples=found.examples)  # fmt: skip
        in_sync = in_sync and not found.found
    out["drift"], out["in_sync"] = drift_out, in_sync
    return out


def cmd_serve(a: argparse.Namespace) -> int:
    try:
        from embedrail.embed_core.serve import serve_from_args
    except ImportError as e:
        raise ConfigError(f"the embedding server is not available ({e}); install embedrail[serve]") from None
    serve_from_args(a)
    return 0


COMMANDS = {"reindex": cmd_reindex, "search": cmd_search, "eval": cmd_eval, "status": cmd_status, "serve": cmd_serve}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    level = logging.WARNING if a.verbose == 0 else logging.INFO if a.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if a.command == "serve":  # one worker per core already: the tokenizer's own threads would only compete
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return COMMANDS[a.command](a)
    except EmbedrailError as e:
        msg = str(e).strip().splitlines()
        print(f"embedrail: error: {msg[0] if msg else type(e).__name__}", file=sys.stderr)
        return int(getattr(e, "exit_code", 2) or 2)
    except KeyboardInterrupt:
        print("embedrail: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception:  # not an error a user can cause or fix: a bug, reported once, with its traceback
        traceback.print_exc()
        print("embedrail: internal error (a bug, not retried): please report it with the traceback above; nothing the "
              "stores acknowledged is lost", file=sys.stderr)  # fmt: skip
        return INTERNAL_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
