"""Qdrant hybrid search through sparse vectors (issue 28): BM25 term weights written with each record, the
IDF applied by Qdrant (``Modifier.IDF``), checked here against BM25 computed independently; qdrant-client's
embedded local mode (no Qdrant server can be installed here)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from embedrail.connectors import connect
from embedrail.connectors._sparse import Bm25Sparse, terms
from embedrail.connectors.base import IndexSpec, Record
from embedrail.errors import UnsupportedError

TEXTS = {
    "a": "The zorblatt procedure rotates the logs nightly; zorblatt twice.",
    "b": "Call cgi.parse_header to split a Content-Type header into its value and parameters.",
    "c": "An ArgumentParser parses command line arguments.",
    "d": "Logs are rotated by logrotate, not by the application.",
    "e": "the and of",  # stop words only: no sparse vector, still a record
}


def test_terms_split_identifiers_and_drop_stop_words() -> None:
    assert terms("Call cgi.parse_header today") == ["call", "cgi.parse_header", "cgi", "parse", "header", "today"]
    assert terms("An ArgumentParser parses") == ["argumentparser", "argument", "parser", "parses"]
    assert terms("HTTPServer and the Café") == ["httpserver", "http", "server", "café"]
    assert terms("the and of") == []


def bm25_reference(docs: dict[str, str], query: str, k1: float = 1.2, b: float = 0.75, avg_len: float = 128.0) -> dict[str, float]:
    """BM25 with Qdrant's IDF (ln(1 + (N - df + 0.5) / (df + 0.5)), N: the records that have a sparse vector),
    written out again from the terms."""
    bags = {i: Counter(terms(t)) for i, t in docs.items()}
    bags = {i: c for i, c in bags.items() if c}
    n = len(bags)
    out: dict[str, float] = {}
    for i, bag in bags.items():
        length = sum(bag.values())
        score = 0.0
        for t in set(terms(query)):
            tf = bag.get(t, 0)
            if tf:
                df = sum(1 for c in bags.values() if t in c)
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / avg_len))
        if score > 0:
            out[i] = score
    return out


def test_keyword_scores_equal_bm25_and_hybrid_fuses_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vecs = {i: rng.normal(size=8).astype(np.float32) for i in TEXTS}
    with connect(f"qdrant://{tmp_path / 'q'}?collection=docs") as s:
        s.ensure_index(IndexSpec(dims=8))
        assert s.upsert([Record(id=i, vector=vecs[i], text=t, metadata={"n": n}) for n, (i, t) in enumerate(TEXTS.items())]).ok
        for query in ("zorblatt logs", "parse header", "argument parser", "rotated logs"):
            got = {h.id: h.score for h in s.sparse_search(query, k=10)}
            assert got == pytest.approx(bm25_reference(TEXTS, query), rel=1e-5), query
        assert [h.id for h in s.sparse_search("parse header", k=3, filter={"n": 2})] == []
        q = -vecs["b"]  # kNN puts b last; the keywords bring it back
        for fusion in ("relative", "rrf"):
            hyb = [h.id for h in s.hybrid_search("cgi parse_header", q, k=3, fusion=fusion, alpha=0.5)]
            assert "b" in hyb, (fusion, hyb)
            assert s.hybrid_search("cgi parse_header", q, k=5, fusion=fusion, alpha=0.0)[0].id == "b"
            assert [h.id for h in s.hybrid_search("x", q, k=5, fusion=fusion, alpha=1.0)] == [h.id for h in s.search(q, k=5)]
        # the vector read back for reuse is the dense one
        assert s.count() == 5


def test_a_collection_without_sparse_vectors_says_how_to_get_them(tmp_path: Path) -> None:
    with connect(f"qdrant://{tmp_path / 'q'}?collection=plain&sparse=none") as s:
        s.ensure_index(IndexSpec(dims=4))
        assert not s.supports_hybrid
        assert s.upsert([Record(id="x", vector=np.ones(4, dtype=np.float32), text="zorblatt")]).ok
        with pytest.raises(UnsupportedError, match="without sparse vectors.*--mode full"):
            s.hybrid_search("zorblatt", np.ones(4), k=3)
    with connect(f"qdrant://{tmp_path / 'q'}?collection=plain") as s:  # a full rebuild (what --mode full runs) adds them
        new = s.begin_rebuild(IndexSpec(dims=4))
        assert new.upsert([Record(id="x", vector=np.ones(4, dtype=np.float32), text="zorblatt")]).ok
        s.commit_rebuild(new)
        assert [h.id for h in s.hybrid_search("zorblatt", -np.ones(4), k=3, alpha=0.0)] == ["x"]


def test_bm25_document_weights_by_hand() -> None:
    enc = Bm25Sparse(k1=1.2, b=0.75, avg_len=4.0)
    idx, vals = enc.document("zorblatt zorblatt logs")  # 3 terms, tf 2 and 1
    norm = 1.2 * (1 - 0.75 + 0.75 * 3 / 4.0)
    assert sorted(vals) == pytest.approx(sorted([2 * 2.2 / (2 + norm), 1 * 2.2 / (1 + norm)]))
    assert enc.query("logs logs zorblatt")[1] == [1.0, 1.0] and len(idx) == 2


def test_learned_sparse_vectors_from_a_splade_model_end_to_end(tmp_path: Path) -> None:
    """``?sparse_model=`` on a Qdrant target: sync writes each chunk's SPLADE vector (equal to the encoder's
    own output for the chunk text), the collection records the model, ``Searcher`` loads it for hybrid
    search (both fusions, Qdrant's query API for rrf), and a store given another model refuses to write."""
    from test_embed_fixtures import build_tiny_splade

    from embedrail import Searcher
    from embedrail.embed_core.sparse import open_sparse_encoder
    from embedrail.errors import ConfigError
    from embedrail.integration.cli import main

    model = build_tiny_splade(tmp_path / "splade")
    base = f"qdrant://{tmp_path / 'q'}?collection=docs"
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in TEXTS.items()))
    # as the docs show it: embedrail reindex --target "qdrant:///...?collection=docs&sparse_model=MODEL"
    assert main(["reindex", "--source", str(source), "--target", f"{base}&sparse_model={model}",
                 "--ledger", f"sqlite:///{tmp_path / 'ledger.sqlite'}"]) == 0  # fmt: skip
    enc = open_sparse_encoder(str(model), device="cpu")
    with connect(base) as s:
        ident = s.sparse_identity()  # type: ignore[attr-defined]
        assert ident is not None and ident["name"] == "splade" and ident["hash"] == enc.identity["hash"]
        physical = s._current_physical()  # type: ignore[attr-defined]
        points, _ = s.client.scroll(physical, limit=100, with_payload=True, with_vectors=True)  # type: ignore[attr-defined]
        by_text = {p.payload["text"]: p.vector for p in points}
        stored = by_text[TEXTS["b"]]["splade"]
        idx, val = enc.document(TEXTS["b"])
        assert list(stored.indices) == idx and np.allclose(stored.values, val, rtol=1e-5)
        with pytest.raises(ConfigError, match="sparse vectors come from the model"):  # no encoder given: no guessing
            s.sparse_search("logs")  # type: ignore[attr-defined]
    assert main(["search", "--target", base, "--hybrid", "--fusion", "rrf", "rotate the logs"]) == 0
    with Searcher(base, device="cpu") as searcher:  # the recorded model, loaded by the searcher
        for fusion in ("rrf", "relative"):
            hits = searcher.search("rotate the logs", k=3, hybrid=True, fusion=fusion).hits
            assert len(hits) == 3 and {h.metadata["_doc"] for h in hits} <= set(TEXTS)
    other = open_sparse_encoder(str(model), device="cpu", top_k=5)  # other settings: another encoding
    with connect(base, sparse_encoder=other) as s, pytest.raises(ConfigError, match="'top_k': None"):
        s.upsert([Record(id="z", vector=np.ones(384, dtype=np.float32) / np.sqrt(384), text="new")])
    with connect(base) as s:
        assert s.count() == len(TEXTS)  # nothing written by the refused store


def test_guarded_fusion_trusts_keywords_only_on_agreement_or_a_rare_match() -> None:
    """The three cases of ``guarded`` against ``relative_score`` written out: agreement on the best document
    (the given weight), a peaked keyword side (the given weight), neither (the vector side at GUARD_ALPHA)."""
    from embedrail.connectors._fusion import GUARD_ALPHA, guarded, relative_score
    from embedrail.connectors.base import Hit

    def hits(*pairs: tuple[str, float]) -> list[Hit]:
        return [Hit(id=i, score=s, text="", metadata={"_doc": i.split("#")[0]}) for i, s in pairs]

    dense = hits(("a#0", 0.9), ("b#0", 0.8), ("c#0", 0.7), ("d#0", 0.1))
    agree = hits(("a#1", 5.0), ("c#0", 4.5), ("b#0", 1.0))  # another chunk of a: the same document first
    flat = hits(("c#0", 5.0), ("d#0", 4.5), ("b#0", 4.0))
    peaked = hits(("d#0", 12.0), ("c#0", 3.0))
    for kw, trusted in ((agree, True), (flat, False), (peaked, True)):
        want_w = [0.6, 0.4] if trusted else [GUARD_ALPHA, 1 - GUARD_ALPHA]
        got = [(h.id, round(h.score, 9)) for h in guarded([dense, kw], [0.6, 0.4], 4)]
        want = [(h.id, round(h.score, 9)) for h in relative_score([dense, kw], want_w, 4)]
        assert got == want
    assert [h.id for h in guarded([dense, flat], [0.6, 0.4], 4)][0] == "a#0"  # kNN's best kept
    score = {h.id: h.score for h in guarded([dense, peaked], [0.6, 0.4], 4)}
    assert score["d#0"] == 0.4  # the rare word's match keeps the keyword side's full weight (kNN ranked it last)
