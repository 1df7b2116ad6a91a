"""pgvector specifics on the real PostgreSQL server (the shared contract is in test_conformance.py):
dimension limits (halfvec above 2,000 dims, a clear error above 4,000), per-record failures, a server
that is down, a connection the caller owns, the view SQL readers use across a rebuild, and a sync whose
ledger lives in the same database."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from unittest import mock

import numpy as np
import psycopg
import pytest
from test_integration_support import assert_in_step, minilm, sentences, write_jsonl
from util import with_name

from embedrail.connectors import IndexSpec, Record, connect
from embedrail.connectors.pgvector import PgvectorStore
from embedrail.errors import ConfigError, DimensionLimitError, StoreError, StoreUnavailableError
from embedrail.integration.engine import SyncEngine


def _name() -> str:
    return f"t_pgv_{uuid.uuid4().hex[:10]}"


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _conn(url: str) -> psycopg.Connection:
    from embedrail.connectors._urls import parse_url

    u = parse_url(url)
    return psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.path.strip("/"), autocommit=True)


def test_2560_dims_use_halfvec_and_4096_is_refused_with_the_way_out(pgvector_url: str) -> None:
    with connect(with_name(pgvector_url, _name())) as s:
        assert s.max_dims() == 4000
        s.ensure_index(IndexSpec(dims=2560, metric="cosine", fingerprint="qwen3-4b"))
        info = s.describe()
        assert info.extra["vector_type"] == "halfvec" and info.spec.dims == 2560
        vecs = _unit(50, 2560)
        assert s.upsert([Record(id=f"r{i}", vector=v, text=f"t{i}") for i, v in enumerate(vecs)]).ok
        hit = s.search(vecs[7], k=1)[0]
        assert hit.id == "r7" and hit.score > 0.999  # halfvec: 16-bit floats, cosine still ~1
        s.drop()
    with connect(with_name(pgvector_url, _name())) as s:
        with pytest.raises(DimensionLimitError, match=r"at most 4000 dims.*4096 requested.*nothing was written.*lower dims"):
            s.ensure_index(IndexSpec(dims=4096, metric="cosine", fingerprint="qwen3-8b"))
        assert not s.describe().exists


def test_a_record_the_server_refuses_fails_alone(pgvector_url: str) -> None:
    with connect(with_name(pgvector_url, _name())) as s:
        s.ensure_index(IndexSpec(dims=8, metric="l2", fingerprint="x"))
        vecs = _unit(20, 8)
        recs = [Record(id=f"r{i}", vector=v, text=f"text {i}") for i, v in enumerate(vecs)]
        recs[5] = Record(id="r5", vector=vecs[5], text="a NUL \x00 byte")  # PostgreSQL text cannot hold NUL
        res = s.upsert(recs)
        assert set(res.failed) == {"r5"} and res.written == 19 and "0x00" in res.failed["r5"]
        assert s.count() == 19
        s.drop()


def test_a_server_that_is_down_is_store_unavailable(pgvector_url: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    from embedrail.connectors import RetryPolicy

    with connect(f"pgvector://u:secret-pw@127.0.0.1:{port}/db?table=docs", retry=RetryPolicy(attempts=2, initial=0.01)) as s:
        with pytest.raises(StoreUnavailableError) as ei:
            s.count()
        assert "secret-pw" not in str(ei.value)
    with pytest.raises(ConfigError, match="invalid pgvector table name"):
        connect(with_name(pgvector_url, "Bad-Name"))


def test_a_connection_the_caller_owns_and_the_view_sql_readers_use(pgvector_url: str) -> None:
    name = _name()
    conn = _conn(pgvector_url)
    try:
        s = PgvectorStore(conn, table=name)
        s.ensure_index(IndexSpec(dims=8, metric="cosine", fingerprint="a"))
        vecs = _unit(10, 8)
        s.upsert([Record(id=f"old{i}", vector=v) for i, v in enumerate(vecs)])
        assert conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] == 10  # the view
        new = s.begin_rebuild(IndexSpec(dims=8, metric="cosine", fingerprint="b"))
        new.upsert([Record(id=f"new{i}", vector=v) for i, v in enumerate(vecs[:4])])
        assert conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] == 10  # still the old table
        s.commit_rebuild(new)
        assert sorted(r[0] for r in conn.execute(f'SELECT id FROM "{name}"')) == [f"new{i}" for i in range(4)]
        s.drop()
        s.close()
        assert not conn.closed  # the caller's connection stays open
        assert conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is None
    finally:
        conn.close()


def test_sync_into_pgvector_with_the_ledger_in_the_same_database(tmp_path: Path, pgvector_url: str) -> None:
    from embedrail.connectors._urls import parse_url

    u = parse_url(pgvector_url)
    ledger = f"postgresql://{u.username}:{u.password}@{u.host}:{u.port}{u.path}"
    target = with_name(pgvector_url, _name())
    emb = minilm()
    docs = [{"id": f"d{i}", "text": sentences(f"d{i}", 3), "lang": "en" if i % 2 else "de"} for i in range(12)]
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    with SyncEngine(str(src), [target], ledger=ledger, embedder=emb, chunk_tokens=24, progress=False) as e:
        r = e.run()
    assert r.ok and r.embedded + r.reused == r.chunks > len(docs)
    assert_in_step(target, emb, docs, 24)
    docs[3] = {**docs[3], "lang": "fr"}  # metadata only: re-tagged in place
    del docs[5]
    write_jsonl(src, docs)
    with SyncEngine(str(src), [target], ledger=ledger, embedder=emb, chunk_tokens=24, progress=False) as e:
        r = e.run()
    assert r.ok and r.embedded == 0 and sum(r.retagged.values()) > 0 and sum(r.deleted.values()) > 0
    assert_in_step(target, emb, docs, 24)
    with connect(target) as s:
        before = s.describe().physical_name
    with _conn(pgvector_url) as c:  # one database holds both
        tables = {t for (t,) in c.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"er_chunks", "er_docs", "embedrail_aliases"} <= tables
    with SyncEngine(str(src), [target], ledger=ledger, embedder=emb, chunk_tokens=24, mode="full", progress=False) as e:
        r = e.run()  # a full rebuild: loaded into a plain table, HNSW-indexed before the switch
    # the same model: every vector is read back from the table it replaces, none embedded
    assert r.ok and r.embedded == 0 and r.from_index + r.reused == r.chunks
    assert_in_step(target, emb, docs, 24)
    with connect(target) as s:
        assert s.has_vector_index() and s.describe().physical_name != before


def test_the_longest_name_works(pgvector_url: str) -> None:
    name = ("t_" + uuid.uuid4().hex * 2)[:40]  # its physical tables have 63-byte names, PostgreSQL's limit
    with connect(with_name(pgvector_url, name)) as s:
        s.ensure_index(IndexSpec(dims=8, metric="cosine", fingerprint="a"))
        new = s.begin_rebuild(IndexSpec(dims=8, metric="cosine", fingerprint="b"))
        assert len(new.describe().physical_name) == 63
        assert new.upsert([Record(id="a", vector=_unit(1, 8)[0])]).ok
        s.commit_rebuild(new)
        assert s.count() == 1
        s.drop()


def test_a_rebuild_is_loaded_without_its_hnsw_index_and_indexed_before_the_switch(pgvector_url: str) -> None:
    vecs = _unit(300, 16, seed=3)
    recs = [Record(id=f"r{i}", vector=v, text=f"t{i}") for i, v in enumerate(vecs)]
    with connect(with_name(pgvector_url, _name())) as s:
        s.ensure_index(IndexSpec(dims=16, metric="cosine", fingerprint="a"))
        assert s.has_vector_index()  # an index created in place has it from the start
        assert s.upsert(recs[:5]).ok
        new = s.begin_rebuild(IndexSpec(dims=16, metric="cosine", fingerprint="b"))
        physical = new.describe().physical_name
        assert not new.has_vector_index()  # the load goes into a plain table
        assert new.upsert(recs).ok
        assert [h.id for h in new.search(vecs[42], k=3)][0] == "r42"  # searchable (exactly) while loading

        def broken(physical: str, spec: IndexSpec, quantization: str | None) -> str:  # fault: the build fails
            return f"CREATE INDEX ON {s._t(physical)} USING hnsw (no_such_column vector_cosine_ops)"

        with mock.patch.object(PgvectorStore, "_hnsw_sql", side_effect=broken, autospec=False), pytest.raises(StoreError):
            s.commit_rebuild(new)
        assert s.count() == 5 and s.describe().physical_name != physical  # readers still see the old table
        assert not s.has_vector_index(physical)  # the failed build left no half index

        s.commit_rebuild(new)  # the retried commit builds it, then switches
        assert s.describe().physical_name == physical and s.count() == 300
        assert s.has_vector_index()
        s._finish_physical(physical)  # idempotent: a commit retried after a crash finds the index
        with _conn(pgvector_url) as c:
            n = c.execute("SELECT count(*) FROM pg_indexes WHERE tablename = %s AND indexdef LIKE '%%USING hnsw%%'",
                          (physical,)).fetchone()[0]  # fmt: skip
        assert n == 1
        hits = s.search(vecs[7], k=5)
        assert hits[0].id == "r7" and hits[0].score > 0.999
        s.drop()


def test_maintenance_work_mem_is_checked_and_used(pgvector_url: str) -> None:
    with pytest.raises(ConfigError, match="maintenance_work_mem"):
        PgvectorStore(with_name(pgvector_url, _name()), maintenance_work_mem="1GB; DROP TABLE x")
    with connect(with_name(pgvector_url, _name()) + "&maintenance_work_mem=256MB") as s:
        assert s.maintenance_work_mem == "256MB"
        s.ensure_index(IndexSpec(dims=8, metric="l2", fingerprint="a"))
        new = s.begin_rebuild(IndexSpec(dims=8, metric="l2", fingerprint="b"))
        assert new.upsert([Record(id=f"r{i}", vector=v) for i, v in enumerate(_unit(20, 8))]).ok
        s.commit_rebuild(new)
        assert s.has_vector_index() and s.count() == 20
        s.drop()


def test_quantised_tables_and_what_they_keep_against_float(pgvector_url: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """One reindex into a float, a halfvec and a bit table (``?quantization=``); each records its quantisation
    and bytes per vector; the bit table re-ranks its Hamming candidates by the exact distance, so a stored
    vector finds itself first; ``embedrail eval --reference`` says how much of float's top k each keeps."""
    import json
    from urllib.parse import urlsplit

    from embedrail.integration.cli import main

    names = {q: _name() for q in ("float", "halfvec", "bit")}
    urls = {q: with_name(pgvector_url, n) + ("" if q == "float" else f"&quantization={q}") for q, n in names.items()}
    docs = [{"id": f"d{i:02d}", "text": sentences(f"d{i}", 1 + i % 3, 10)} for i in range(40)]
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    args = ["reindex", "--source", str(src), "--ledger", f"sqlite:///{tmp_path / 'l.sqlite'}", "--chunk-tokens", "32"]
    assert main(args + [a for u in urls.values() for a in ("--target", u)]) == 0
    capsys.readouterr()
    for q, url in urls.items():
        with connect(url) as s:
            info = s.describe()
            assert info.extra["quantization"] == (None if q == "float" else q)
            assert info.extra["bytes_per_vector"] == {"float": 384 * 4, "halfvec": 384 * 2, "bit": 384 // 8}[q]
    with connect(urls["float"]) as f, connect(with_name(pgvector_url, names["bit"])) as b:  # reads follow the table
        stored = f.stored_vectors(sorted(f.iter_ids())[:8])  # the float vectors as stored
        assert len(stored) == 8
        with connect(with_name(pgvector_url, names["halfvec"])) as h:  # 16-bit floats are not the vectors written
            assert h.count() == f.count() and h.stored_vectors(list(stored)) == {}
        for cid, (vec, _) in stored.items():  # itself, or a chunk of the same text (the corpus repeats some)
            hit = b.search(vec, k=1)[0]
            assert hit.id == cid or hit.score > 0.9999, (cid, hit.id, hit.score)
    queries = write_jsonl(tmp_path / "q.jsonl", [{"query": sentences(f"d{i}", 1, 10), "relevant": [f"d{i:02d}"]} for i in range(0, 40, 4)])
    assert main(["eval", "--target", urls["float"], "--target", urls["halfvec"], "--target", urls["bit"], "--queries", str(queries),
                 "--reference", urls["float"], "--json"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    rows = {r["target"]: r for r in json.loads(out)["rows"]}
    password = urlsplit(pgvector_url).password
    assert len(rows) == 3 and password and password not in out  # the report names the targets without their secrets
    float_row = next(r for t, r in rows.items() if "quantization" not in t)
    assert float_row["metrics"]["reference@10"] == 1.0 and float_row["bytes_per_vector"] == 1536
    for r in rows.values():
        assert 0.5 <= r["metrics"]["reference@10"] <= 1.0 and abs(r["metrics"]["mrr@10"] - float_row["metrics"]["mrr@10"]) < 0.2, r


def test_learned_sparse_vectors_in_a_sparsevec_column(tmp_path: Path, pgvector_url: str) -> None:
    """A SPLADE model (tiny, random) on a pgvector target: sync writes each chunk's sparse vector into a
    ``sparsevec`` column (equal to the encoder's output), the table records the model, hybrid search's keyword
    side is the inner product with the query's sparse vector (checked against numpy), ``Searcher`` loads the
    recorded model; a store without that encoder refuses; ``?sparse_model=`` on another store is an error."""
    from test_embed_fixtures import build_tiny_splade

    from embedrail import Searcher, sync
    from embedrail.embed_core.sparse import open_sparse_encoder
    from embedrail.integration.targets import connect_target

    model = build_tiny_splade(tmp_path / "splade")
    enc = open_sparse_encoder(str(model), device="cpu", top_k=64)  # a random model activates most terms: keep 64
    url = with_name(pgvector_url, _name())
    docs = [{"id": f"d{i}", "text": sentences(f"doc{i}", 2)} for i in range(12)]
    with connect(url, sparse_encoder=enc) as store:
        assert sync(docs, [store], ledger=f"sqlite:///{tmp_path / 'l.sqlite'}", embedder=minilm()).ok
        ident = store.sparse_identity()  # type: ignore[attr-defined]
        assert ident is not None and ident["hash"] == enc.identity["hash"] and ident["dims"] == enc.vocab_size
        assert store.describe().extra["sparse"] == ident
        physical = store._current_physical()  # type: ignore[attr-defined]
        with _conn(pgvector_url) as c:
            rows = dict(c.execute(f"SELECT text, sparse::text FROM {physical}").fetchall())
        text = docs[3]["text"]
        idx, val = enc.document(text)
        stored = dict(kv.split(":") for kv in rows[text].split("}")[0].lstrip("{").split(","))
        assert sorted(int(i) - 1 for i in stored) == idx
        assert np.allclose([float(stored[str(i + 1)]) for i in idx], val, rtol=1e-5)
        # the keyword side: inner products, computed here from the encoder's own vectors
        query = "a question about " + docs[5]["text"].split()[0]
        qi, qv = enc.query(query)
        qd = dict(zip(qi, qv, strict=True))
        want = {}
        for d in docs:
            di, dv = enc.document(d["text"])
            s = sum(v * qd.get(i, 0.0) for i, v in zip(di, dv, strict=True))
            if s > 0:
                want[d["text"]] = s
        got = store.sparse_search(query, k=20)  # type: ignore[attr-defined]
        assert {h.text: round(h.score, 3) for h in got} == {t: round(s, 3) for t, s in want.items()}
    with connect(url) as bare, pytest.raises(ConfigError, match="sparse vectors come from the model"):
        bare.hybrid_search(query, np.ones(384, dtype=np.float32) / np.sqrt(384), k=3)
    with Searcher(url, device="cpu") as s:  # loads the recorded model (its top_k too)
        hits = s.search(query, k=3, hybrid=True).hits
        assert len(hits) == 3
    with pytest.raises(ConfigError, match="Qdrant and pgvector"):
        connect_target(f"chroma://{tmp_path / 'c'}?collection=x&sparse_model={model}")
    with pytest.raises(ConfigError, match="positive integer"):
        connect_target(f"{url}&sparse_model={model}&sparse_top_k=many")
    with pytest.raises(ConfigError, match="goes with"):
        connect_target(f"{url}&sparse_top_k=64")


def test_sparse_model_on_the_command_line_as_the_docs_show(tmp_path: Path, pgvector_url: str) -> None:
    """docs/search.md: ``embedrail reindex --source docs.jsonl --target "pgvector://...?table=docs&sparse_model=MODEL
    &sparse_top_k=256"`` (64 here: the tiny random model activates most of its vocabulary), then ``embedrail search
    --hybrid`` on the plain URL: the table keeps at most top_k terms per record and records the setting."""
    from test_embed_fixtures import build_tiny_splade

    from embedrail.embed_core.sparse import open_sparse_encoder
    from embedrail.integration.cli import main

    model = build_tiny_splade(tmp_path / "splade")
    url = with_name(pgvector_url, _name())
    write_jsonl(tmp_path / "docs.jsonl", [{"id": f"d{i}", "text": sentences(f"doc{i}", 2)} for i in range(6)])
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    assert main(["reindex", "--source", str(tmp_path / "docs.jsonl"), "--ledger", ledger,
                 "--target", f"{url}&sparse_model={model}&sparse_top_k=64"]) == 0  # fmt: skip
    with connect(url) as store:
        ident = store.sparse_identity()  # type: ignore[attr-defined]
        assert ident["top_k"] == 64 and ident["hash"] == open_sparse_encoder(str(model), device="cpu").identity["hash"]
        physical = store._current_physical()  # type: ignore[attr-defined]
    with _conn(pgvector_url) as c:
        nnz = [r[0] for r in c.execute(f"SELECT array_length(string_to_array(split_part(sparse::text, '}}', 1), ','), 1) FROM {physical}")]
    assert len(nnz) == 6 and max(nnz) == 64
    assert main(["search", "--target", url, "--hybrid", "a question about doc3"]) == 0


def test_keyword_ranking_weighs_a_rare_word_above_a_common_one(pgvector_url: str) -> None:
    """``text_search`` weights each query word by its inverse document frequency, from the statistics
    PostgreSQL keeps for the ``lex`` column (the table is analysed on first use): the one record with the
    rare word comes first, far enough ahead of the records with only the common word for guarded fusion to
    trust it; plain ``ts_rank`` (no IDF) puts them nearly level. The weights are BM25's IDF from ``pg_stats``."""
    import math

    from embedrail.connectors._fusion import GUARD_PEAK

    url = with_name(pgvector_url, _name())
    vecs = _unit(21, 8)
    with connect(url) as s:
        s.ensure_index(IndexSpec(dims=8))
        recs = [Record(id=f"c{i}", vector=vecs[i], text=f"the nightly job rotates the logs of service {i}") for i in range(20)]
        recs.append(Record(id="rare", vector=vecs[20], text="the zorblatt procedure"))
        assert s.upsert(recs).ok
        hits = s.text_search("zorblatt logs", k=5)  # type: ignore[attr-defined]
        assert hits[0].id == "rare" and hits[0].score >= GUARD_PEAK * hits[1].score, hits
        stats = s._term_stats(s._current_physical())  # type: ignore[attr-defined]
        assert stats is not None
        freq, other, n = stats
        assert n == 21 and freq["log"] == pytest.approx(20 / 21, abs=1e-6)
        f = freq.get("zorblatt", other)
        with mock.patch.object(PgvectorStore, "_idf_rank", lambda *a, **kw: None):  # plain ts_rank, as before
            plain = s.text_search("zorblatt logs", k=21)  # type: ignore[attr-defined]
        score = {h.id: h.score for h in plain}
        assert score["rare"] < GUARD_PEAK * score["c0"]  # one matched word each: only the shorter text ahead
        idf = {t: math.log(1 + (1 - q + 0.5 / n) / (q + 0.5 / n)) for t, q in (("zorblatt", f), ("log", freq["log"]))}
        ratio = hits[0].score / hits[1].score
        assert ratio == pytest.approx(idf["zorblatt"] / idf["log"] * score["rare"] / score["c0"], rel=1e-3)
        for odd in ("O'Reilly's \\ back:slash | !& () <-> *", "the and of", ""):  # quotes, operators; stop words only
            assert isinstance(s.text_search(odd, k=3), list)  # type: ignore[attr-defined]
        s.drop()


def test_keyword_search_without_term_statistics_ranks_by_plain_ts_rank(pgvector_url: str) -> None:
    """Where the table cannot be analysed (a read-only replica refuses ANALYZE: fault injected) keyword search
    still answers, ranked by plain ``ts_rank``."""
    from embedrail.errors import StoreRejectedError

    url = with_name(pgvector_url, _name())
    with connect(url) as s:
        s.ensure_index(IndexSpec(dims=8))
        assert s.upsert([Record(id=f"r{i}", vector=v, text=f"rotate the logs {i}") for i, v in enumerate(_unit(3, 8))]).ok
        real = s._sql  # type: ignore[attr-defined]

        def replica(sql: str, *a: object, **kw: object) -> list[tuple]:
            if sql.startswith("ANALYZE"):
                raise StoreRejectedError("cannot execute ANALYZE during recovery")
            return real(sql, *a, **kw)

        with mock.patch.object(s, "_sql", replica):
            hits = s.text_search("logs", k=3)  # type: ignore[attr-defined]
            assert s._term_stats(s._current_physical()) is None  # type: ignore[attr-defined]
        assert {h.id for h in hits} == {"r0", "r1", "r2"}
        s.drop()
