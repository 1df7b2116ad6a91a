"""Shared helpers for the integration/CLI/demo tests (no tests here).

The model is real (the packaged MiniLM) and loaded once per test session; stores are real.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from embedrail.connectors import connect
from embedrail.embed_core import Embedder
from embedrail.integration.chunking import Chunker
from embedrail.integration.documents import Document, canonical_json, sha256

_load_lock = threading.Lock()
_real_load = Embedder.load.__func__  # type: ignore[attr-defined]
_cache: dict[str, Any] = {}


@lru_cache(maxsize=1)
def minilm() -> Embedder:
    return cached_load(Embedder, "minilm")


def cached_load(cls: Any, model: str = "minilm", **kwargs: Any) -> Any:
    """``Embedder.load`` memoised per (model, options): tests load each model once per session."""
    key = json.dumps([model, sorted((k, str(v)) for k, v in kwargs.items() if k != "device")])
    with _load_lock:
        if key not in _cache:
            emb = _real_load(cls, model, **kwargs)
            emb.close = lambda: None  # shared by the whole session: the code under test must not close it
            _cache[key] = emb
        return _cache[key]


class OtherFingerprint:
    """The same model presented as another embedding configuration (e.g. a new model version):
    every attribute is the real embedder's, only the fingerprint differs."""

    def __init__(self, inner: Any, tag: str = "v2") -> None:
        self._inner = inner
        self.fingerprint = f"{inner.fingerprint}-{tag}"

    def embedding_info(self) -> dict[str, Any]:
        info = dict(self._inner.embedding_info())
        info["fingerprint"] = self.fingerprint
        return info

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def dead_owner() -> str:
    """The lease owner a crashed run leaves behind: a process of this machine that is gone (a run of this
    owner is taken over at once; ``SyncEngine(run_owner=dead_owner())`` stands for a process that dies)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return f"process:{socket.gethostname()}:{proc.pid}:crashed"


def write_jsonl(path: Path, docs: Iterable[dict[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    return path


def sentences(doc: str, n: int, words: int = 14) -> str:
    """n distinct sentences for document ``doc`` (about ``words`` tokens each)."""
    topics = ["rivers", "mountains", "databases", "compilers", "gardens", "trains", "music", "weather"]
    out = []
    for i in range(n):
        t = topics[(len(doc) + i) % len(topics)]
        out.append(f"Sentence {i} of {doc} talks about {t} and the number {i * 7 + len(doc)} in some detail.")
    return " ".join(out)


def expected_records(embedder: Any, docs: Sequence[dict[str, Any]], chunk_tokens: int | None) -> dict[str, str]:
    """chunk id -> fingerprint the target must hold for these source rows."""
    ch = Chunker(embedder, chunk_tokens)
    out = {}
    for row in docs:
        if row.get("_deleted"):
            continue
        meta = {k: v for k, v in row.items() if k not in ("id", "text", "_deleted")}
        doc = Document(str(row["id"]), row["text"], meta)
        for c in ch.chunk(doc):
            # the text part (what the vector depends on), then the metadata part
            out[c.id] = sha256(c.text, embedder.fingerprint)[:32] + sha256(canonical_json(meta))[:16]
    return out


def store_records(url_or_store: Any) -> dict[str, str | None]:
    """chunk id -> ``_fp`` metadata of every record the store really holds."""
    store = connect(url_or_store) if isinstance(url_or_store, str) else url_or_store
    try:
        ids = sorted(store.iter_ids())
        out: dict[str, str | None] = {}
        for i in range(0, len(ids), 200):
            got = store.get(ids[i : i + 200])
            for cid in ids[i : i + 200]:
                out[cid] = got[cid].metadata.get("_fp") if cid in got else None
        return out
    finally:
        if isinstance(url_or_store, str):
            store.close()


def assert_in_step(target: Any, embedder: Any, docs: Sequence[dict[str, Any]], chunk_tokens: int | None) -> None:
    want = expected_records(embedder, docs, chunk_tokens)
    have = store_records(target)
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    stale = sorted(c for c in set(want) & set(have) if want[c] != have[c])
    assert not (missing or extra or stale), f"missing={missing[:5]} extra={extra[:5]} stale={stale[:5]}"


def test_support_module_has_no_tests() -> None:
    """(keeps pytest from warning about an empty module)"""
