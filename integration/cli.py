"""The ``embedrail`` command line: ``reindex``, ``search``, ``status``, ``serve``.

User errors (``EmbedrailError``) become one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from embedrail.errors import ConfigError, EmbedrailError, SyncError

__all__ = ["build_parser", "main"]

log = logging.getLogger("embedrail.cli")


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="embedrail",
        description="Keep vector stores (Elasticsearch, Chroma, Weaviate) in step with source data.",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("reindex", help="sync a source into one or more targets (incremental by default)")
    r.add_argument("--source", required=True, help="file.jsonl, file.csv, a directory, pydoc:, sql+URL?query=...")
    r.add_argument("--target", action="append", required=True, metavar="URL",
                   help="es://host:9200/index, chroma:///abs/path?collection=name, chroma+http://host:8000/name, "
                        "weaviate://host:8080/Name?grpc_port=50051 (repeatable)")  # fmt: skip
    r.add_argument("--model", help="embedding model (default: what the target records, else the packaged minilm)")
    r.add_argument("--dims", type=_positive_int, help="output dimension (default: recorded, else native, capped by the stores)")
    r.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    r.add_argument("--ledger", help="SQLAlchemy URL of the sync ledger (default: sqlite:///.embedrail/ledger.sqlite)")
    r.add_argument("--mode", choices=("incremental", "full"), default="incremental")
    r.add_argument("--deletes", choices=("auto", "snapshot", "tombstone", "none"), default="auto",
                   help="snapshot: delete what the source no longer has; tombstone: rows marked deleted; "
                        "auto: snapshot, or tombstone for a watermark feed")  # fmt: skip
    r.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    r.add_argument("--json", action="store_true", help="print the report as one JSON object")
    r.add_argument("--on-bad-row", choices=("skip", "fail"), default="skip")
    r.add_argument("--id-field", help="source field holding the document id (default: id)")
    r.add_argument("--text-field", help="source field holding the text (default: text)")
    r.add_argument("--deleted-field", help="source field marking a tombstone (default: _deleted)")
    r.add_argument("--chunk-tokens", type=_positive_int, help="chunk size in tokens (default: the model's limit)")
    r.add_argument("--chunk-overlap", type=int, default=0, help="tokens shared by consecutive chunks")
    r.add_argument("--batch-size", type=_positive_int, default=64, help="chunks per embedding batch")
    r.add_argument("--allow-empty-source", action="store_true", help="let an empty snapshot delete everything")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on a terminal)")  # fmt: skip

    s = sub.add_parser("search", help="query a target with the model its index records")
    s.add_argument("--target", required=True, metavar="URL")
    s.add_argument("--model", help="query model (default: the one the index records)")
    s.add_argument("--dims", type=_positive_int)
    s.add_argument("--device", default="auto")
    s.add_argument("-k", type=_positive_int, default=10, help="number of hits")
    s.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE", help="metadata equality filter (repeatable)")
    s.add_argument("--instruction", help="query instruction (instruction-aware models such as Qwen3)")
    s.add_argument("--json", action="store_true", help="print the hits as a JSON list")
    s.add_argument("query", nargs="+", help="query text")

    st = sub.add_parser("status", help="counts, fingerprint, drift between ledger and store")
    st.add_argument("--target", required=True, metavar="URL")
    st.add_argument("--ledger")
    st.add_argument("--verify", action="store_true", help="compare every id and fingerprint in the store with the ledger")
    st.add_argument("--json", action="store_true")

    sv = sub.add_parser("serve", help="serve an OpenAI-compatible /v1/embeddings endpoint")
    sv.add_argument("--model", default="minilm")
    sv.add_argument("--dims", type=_positive_int)
    sv.add_argument("--device", default="auto")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    return p


# ------------------------------------------------------------------------------------------------
def cmd_reindex(a: argparse.Namespace) -> int:
    from .engine import SyncEngine

    source_options = {"id_field": a.id_field, "text_field": a.text_field, "deleted_field": a.deleted_field}
    with SyncEngine(
        a.source,
        a.target,
        model=a.model,
        dims=a.dims,
        ledger=a.ledger,
        device=a.device,
        mode=a.mode,
        deletes=a.deletes,
        dry_run=a.dry_run,
        chunk_tokens=a.chunk_tokens,
        chunk_overlap=a.chunk_overlap,
        batch_size=a.batch_size,
        on_bad_row=a.on_bad_row,
        source_options={k: v for k, v in source_options.items() if v is not None},
        allow_empty_source=a.allow_empty_source,
        progress=a.progress if a.progress is not None else (sys.stderr.isatty() and not a.json),
    ) as engine:
        report = engine.run()
    if a.json:
        print(json.dumps(report.to_dict(), sort_keys=False))
    else:
        print(report.summary())
    if not report.ok:
        failed = ", ".join(f"{t} ({report.errors.get(t, str(report.failed.get(t, 0)) + ' failures')})" for t in report.failed_targets())
        print(f"embedrail: sync incomplete for {failed}; re-run to catch up", file=sys.stderr)
        return SyncError.exit_code
    return 0


def _connect(url: str) -> Any:
    from connectors import connect

    return connect(url)


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
    store = _connect(a.target)
    info = store.describe()
    if not info.exists:
        raise ConfigError(f"{store.url}: no such index; create it with `embedrail reindex --target {store.url} ...`")
    from embed_core import Embedder

    recorded = dict(info.spec.embedding) if info.spec is not None else {}
    if a.model is None and recorded.get("model"):
        if recorded.get("backend") == "remote":
            overrides: dict[str, Any] = {"api_key": os.environ.get("EMBEDRAIL_EMBED_API_KEY")}
        else:
            overrides = {"device": a.device}
        emb = Embedder.from_info(recorded, **overrides)
    else:
        dims = a.dims or (info.spec.dims if info.spec is not None else None)
        emb = Embedder.load(a.model or "minilm", dims=dims, device=a.device)
    if info.spec is not None and emb.dims != info.spec.dims:
        raise ConfigError(f"the model gives {emb.dims} dims but {store.url} holds {info.spec.dims}; pass --dims {info.spec.dims}")
    query = " ".join(a.query)
    vec = emb.embed_queries([query], instruction=a.instruction)[0]
    hits = store.search(vec, k=a.k, filter=_parse_filters(a.filter))
    if a.json:
        print(json.dumps([{"id": h.id, "score": h.score, "text": h.text, "metadata": h.metadata} for h in hits]))
    else:
        for i, h in enumerate(hits, 1):
            doc = h.metadata.get("_doc", h.id)
            snippet = " ".join(h.text.split())[:160]
            print(f"{i:2d}. {h.score:.3f}  {doc}  [{h.id}]\n      {snippet}")
        if not hits:
            print("no hits")
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    from .engine import redact_url
    from .ledger import Ledger

    store = _connect(a.target)
    key = redact_url(a.target)
    ledger = Ledger(a.ledger)
    info = store.describe()
    state = ledger.target(key)
    gen = state.generation if state else ""
    counts = ledger.counts(key, gen) if state else {"documents": 0, "chunks": 0, "pending_chunks": 0}
    out: dict[str, Any] = {
        "target": key,
        "exists": info.exists,
        "physical_name": info.physical_name,
        "store_count": info.count,
        "ledger": {"url": ledger.url, "generation": gen, **counts},
        "index_fingerprint": info.spec.fingerprint if info.spec else None,
        "ledger_fingerprint": state.fingerprint if state else None,
        "model": (info.spec.embedding.get("model") if info.spec else None),
        "dims": info.spec.dims if info.spec else None,
        "pending_rebuild": state.pending_generation if state else None,
    }
    drift: dict[str, Any] = {"count": (info.count or 0) - counts["chunks"]}
    in_sync = drift["count"] == 0 and out["index_fingerprint"] in (None, out["ledger_fingerprint"]) and not counts["pending_chunks"]
    if a.verify and info.exists:
        ledger_map = ledger.chunk_map(key, gen)
        store_ids = set(store.iter_ids())
        known = {c for c, fp in ledger_map.items() if fp is not None}
        missing = sorted(known - store_ids)
        unknown = sorted(store_ids - set(ledger_map))
        stale = []
        ids = sorted(known & store_ids)
        for i in range(0, len(ids), 256):
            part = ids[i : i + 256]
            got = store.get(part)
            stale.extend(c for c in part if c in got and got[c].metadata.get("_fp") != ledger_map[c])
        drift.update(missing_in_store=len(missing), unknown_in_store=len(unknown), stale_fingerprints=len(stale),
                     examples=(missing + unknown + stale)[:10])  # fmt: skip
        in_sync = in_sync and not (missing or unknown or stale)
    out["drift"] = drift
    out["in_sync"] = in_sync
    if a.json:
        print(json.dumps(out))
    else:
        print(f"{key}: {'exists' if info.exists else 'missing'}" + (f" ({info.physical_name})" if info.physical_name else ""))
        print(f"  store: {info.count} records; model {out['model']}, {out['dims']} dims, fingerprint {out['index_fingerprint']}")
        print(f"  ledger: {counts['documents']} documents, {counts['chunks']} chunks" + (f", {counts['pending_chunks']} in flight" if counts["pending_chunks"] else "") + f" ({ledger.url})")
        if out["pending_rebuild"]:
            print(f"  pending rebuild: {out['pending_rebuild']} (finished or dropped by the next reindex)")
        print(f"  drift: {json.dumps(drift)} -> {'in sync' if in_sync else 'OUT OF SYNC: run embedrail reindex'}")
    ledger.close()
    return 0 if in_sync or not a.verify else 1


def cmd_serve(a: argparse.Namespace) -> int:
    try:
        from embed_core.serve import serve
    except ImportError as e:
        raise ConfigError(f"the embedding server is not available ({e}); install embedrail[serve]") from None
    serve(a.model, host=a.host, port=a.port, dims=a.dims, device=a.device)
    return 0


COMMANDS = {"reindex": cmd_reindex, "search": cmd_search, "status": cmd_status, "serve": cmd_serve}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    level = logging.WARNING if a.verbose == 0 else logging.INFO if a.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
