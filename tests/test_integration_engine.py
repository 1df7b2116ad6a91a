"""Engine properties (issue 5), each against real stores and the real packaged model."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_integration_support import (
    OtherFingerprint,
    assert_in_step,
    dead_owner,
    expected_records,
    minilm,
    sentences,
    store_records,
    write_jsonl,
)
from util import LEDGERS, describe, opened, with_name

from embedrail.connectors import connect
from embedrail.connectors.base import UpsertResult
from embedrail.errors import DimensionLimitError, IndexMismatchError, InputError, StoreUnavailableError
from embedrail.integration.engine import SyncEngine, redact_url
from embedrail.integration.ledger import Ledger

CT = 24  # chunk tokens: small, so short documents make several chunks


@pytest.fixture(scope="module")
def emb() -> Any:
    return minilm()


@pytest.fixture
def env(tmp_path: Path, unique_name: str, ledger_url: str) -> dict[str, Any]:
    return {
        "src": tmp_path / "docs.jsonl",
        "target": f"chroma://{tmp_path / 'chroma'}?collection={unique_name}",
        "ledger": ledger_url,  # SQLite, or PostgreSQL where a test is parametrised with LEDGERS
        "tmp": tmp_path,
    }


def corpus(n: int = 6, sentences_per_doc: int = 4) -> list[dict[str, Any]]:
    return [{"id": f"doc{i}", "text": sentences(f"doc{i}", sentences_per_doc), "group": i % 2} for i in range(n)]


def run(env: dict[str, Any], emb: Any, docs: list[dict[str, Any]] | None = None, targets: list[Any] | None = None, **kw: Any):
    if docs is not None:
        write_jsonl(env["src"], docs)
    with SyncEngine(str(env["src"]), targets or [env["target"]], ledger=env["ledger"], embedder=emb,
                    chunk_tokens=CT, progress=False, **kw) as e:  # fmt: skip
        return e.run()


# --------------------------------------------------------------------------------------------------
def test_unchanged_rerun_embeds_and_writes_nothing(env: dict[str, Any], emb: Any) -> None:
    docs = corpus()
    r1 = run(env, emb, docs)
    assert r1.ok and r1.embedded == r1.chunks > len(docs)
    assert r1.upserted[redact_url(env["target"])] == r1.chunks
    assert_in_step(env["target"], emb, docs, CT)
    r2 = run(env, emb, docs)
    assert r2.ok and r2.embedded == 0 and r2.unchanged == r1.chunks and r2.chunks == r1.chunks
    assert r2.upserted == {redact_url(env["target"]): 0} and r2.deleted == {redact_url(env["target"]): 0}


@pytest.mark.parametrize("ledger_kind", LEDGERS)
def test_editing_k_documents_reembeds_exactly_their_changed_chunks(env: dict[str, Any], emb: Any) -> None:
    docs = corpus(8)
    run(env, emb, docs)
    before = expected_records(emb, docs, CT)
    # edit the last sentence of two documents, and one document's metadata
    docs[1]["text"] = docs[1]["text"].rsplit("Sentence", 1)[0] + "Sentence 3 was rewritten about trains today."
    docs[4]["text"] = docs[4]["text"] + " One more closing sentence."
    docs[6]["group"] = 99
    after = expected_records(emb, docs, CT)
    changed = {c for c in after if before.get(c) != after[c]}
    assert {c.split("#")[0] for c in changed} == {"doc1", "doc4", "doc6"}
    retagged = {c for c in changed if c.startswith("doc6#")}  # same text, new metadata: not embedded
    r = run(env, emb, docs)
    key = redact_url(env["target"])
    assert r.ok and r.embedded == len(changed - retagged) and r.reused == 0
    assert r.upserted[key] == len(changed - retagged) and r.plan[key]["changed"] + r.plan[key]["new"] == len(changed - retagged)
    assert r.retagged[key] == r.plan[key]["retagged"] == len(retagged) > 0
    assert_in_step(env["target"], emb, docs, CT)  # the records carry doc6's new metadata (and its fingerprint)
    with opened(env["target"]) as s:
        assert s.search(emb.embed_query("Sentence 0 of doc6"), k=1, filter={"group": 99})[0].id.startswith("doc6#")
    assert run(env, emb, docs).embedded == 0


@pytest.mark.parametrize("ledger_kind", LEDGERS)
def test_metadata_only_change_updates_every_store_in_place_without_the_model(
    env: dict[str, Any], emb: Any, es_url: str, weaviate_url: str, unique_name: str
) -> None:
    """A metadata-only edit re-tags the stored records (the vectors are the stored ones, exactly), on a
    native update (Chroma) and on the read-back path (Elasticsearch, Weaviate); a record that vanished from
    a store is written whole on the next run."""
    docs = corpus(4)
    targets = [env["target"], with_name(es_url, unique_name), with_name(weaviate_url, "T" + unique_name[1:])]
    run(env, emb, docs, targets=targets)
    with opened(targets[0]) as s:
        q = emb.embed_query("Sentence 1 of doc2")
        before = [(h.id, round(h.score, 5)) for h in s.search(q, k=4)]
    docs[2]["group"], docs[2]["lang"] = 7, "fr"
    r = run(env, emb, docs, targets=targets)
    n2 = sum(1 for c in expected_records(emb, docs, CT) if c.startswith("doc2#"))
    assert r.ok and r.embedded == 0 and r.unchanged == r.chunks - n2
    for t in targets:
        assert r.retagged[redact_url(t)] == n2 and r.upserted[redact_url(t)] == 0
        assert_in_step(t, emb, docs, CT)
        with opened(t) as s:
            assert {h.id for h in s.search(q, k=20, filter={"lang": "fr"})} == {f"doc2#{i}" for i in range(n2)}
    with opened(targets[0]) as s:
        assert [(h.id, round(h.score, 5)) for h in s.search(q, k=4)] == before
    # a record deleted behind embedrail's back, with the drift repair off: the re-tag fails for it (and the
    # probe reports the drift), the next run writes it whole, with the vector the other targets hold for it
    with opened(targets[1]) as s:
        assert s.delete(["doc2#0"]).ok
    docs[2]["lang"] = "de"
    r = run(env, emb, docs, targets=targets, repair="off")
    es_key = redact_url(targets[1])
    assert not r.ok and r.failed[es_key] == 1 and r.embedded == 0
    assert r.drift[es_key]["found"] and not r.drift[es_key]["repaired"] and r.drift[es_key]["store_count"] == r.chunks - 1
    r = run(env, emb, docs, targets=targets)
    assert r.ok and r.embedded == 0 and r.from_index == 1 and r.upserted[redact_url(targets[1])] == 1
    for t in targets:
        assert_in_step(t, emb, docs, CT)
        with opened(t) as s:
            s.drop()


def test_identical_texts_across_documents_are_embedded_once(env: dict[str, Any], emb: Any) -> None:
    boiler = "This page is part of the handbook. Copyright the authors, licensed under the same terms as the code."
    docs = [{"id": f"d{i}", "text": boiler} for i in range(40)] + corpus(3)
    docs += [{"id": "late", "text": boiler}]  # in a later batch and window than the first occurrence
    r = run(env, emb, docs, batch_size=8)
    unique = {c: None for c in expected_records(emb, docs, CT)}
    assert r.ok and r.upserted[redact_url(env["target"])] == len(unique) == r.chunks
    assert r.embedded == r.chunks - 40 and r.reused == 40
    assert_in_step(env["target"], emb, docs, CT)
    with opened(env["target"]) as s:
        hits = s.search(emb.embed_documents([boiler])[0], k=41)
        assert len(hits) == 41 and {h.id.split("#")[0] for h in hits} == {f"d{i}" for i in range(40)} | {"late"}
        assert max(h.score for h in hits) - min(h.score for h in hits) < 1e-5  # one vector, stored 41 times
    # two new documents of a text the index holds (in a later run): its vector is read back once, reused once
    more = [*docs, {"id": "new", "text": boiler}, {"id": "new2", "text": boiler}]
    dry = run(env, emb, more, dry_run=True)
    assert dry.embedded == 0 and dry.from_index == 1 and dry.reused == 1
    real = run(env, emb, more)
    assert real.ok and (real.embedded, real.from_index, real.reused) == (0, 1, 1)
    assert_in_step(env["target"], emb, more, CT)


@pytest.mark.parametrize("ledger_kind", LEDGERS)
def test_shrinking_document_leaves_no_stale_chunks(env: dict[str, Any], emb: Any) -> None:
    docs = [{"id": "big", "text": sentences("big", 7)}, {"id": "other", "text": sentences("other", 2)}]
    run(env, emb, docs)
    n_before = sum(1 for c in store_records(env["target"]) if c.startswith("big#"))
    assert n_before >= 5
    docs[0]["text"] = sentences("big", 2)
    r = run(env, emb, docs)
    ids = sorted(c for c in store_records(env["target"]) if c.startswith("big#"))
    assert ids == ["big#0", "big#1"]
    assert r.deleted[redact_url(env["target"])] == n_before - 2
    assert_in_step(env["target"], emb, docs, CT)


@pytest.mark.parametrize("ledger_kind", LEDGERS)
def test_snapshot_tombstone_and_no_deletes(env: dict[str, Any], emb: Any) -> None:
    docs = corpus(5)
    run(env, emb, docs)
    # deletes=none keeps a removed document
    r = run(env, emb, docs[1:], deletes="none")
    assert r.deleted[redact_url(env["target"])] == 0 and any(c.startswith("doc0#") for c in store_records(env["target"]))
    # snapshot (the default for files) deletes it
    r = run(env, emb, docs[1:])
    assert r.deleted[redact_url(env["target"])] > 0
    assert_in_step(env["target"], emb, docs[1:], CT)
    # tombstone rows delete in a feed-like run that lists only changes
    feed = [{"id": "doc2", "text": "", "_deleted": True}, {"id": "doc9", "text": sentences("doc9", 2)}]
    r = run(env, emb, feed, deletes="tombstone")
    assert r.ok and r.tombstones == 1
    expect = [d for d in docs[1:] if d["id"] != "doc2"] + [feed[1]]
    assert_in_step(env["target"], emb, expect, CT)


def test_dry_run_writes_nothing(env: dict[str, Any], emb: Any) -> None:
    docs = corpus(4)
    r = run(env, emb, docs, dry_run=True)
    key = redact_url(env["target"])
    assert r.dry_run and r.ok and r.embedded == r.chunks and r.plan[key]["new"] == r.chunks
    assert r.upserted[key] == 0
    assert not describe(env["target"]).exists
    assert Ledger(env["ledger"]).counts(key, "")["chunks"] == 0
    run(env, emb, docs)
    docs[0]["text"] += " Changed."
    before = store_records(env["target"])
    r = run(env, emb, docs[1:], dry_run=True)  # doc0 absent: a snapshot would delete it
    assert r.plan[key]["deleted"] > 0 and r.deleted[key] == 0
    assert store_records(env["target"]) == before


def test_incremental_refuses_other_fingerprint_and_full_mode_rebuilds(env: dict[str, Any], emb: Any) -> None:
    docs = corpus(4)
    run(env, emb, docs)
    old_physical = describe(env["target"]).physical_name
    v2 = OtherFingerprint(emb)
    with pytest.raises(IndexMismatchError, match="--mode full"):
        run(env, emb=v2, docs=docs)
    assert store_records(env["target"]) == expected_records(emb, docs, CT)  # nothing written
    r = run(env, emb=v2, docs=docs, mode="full")
    assert r.ok and r.mode == "full" and r.embedded == r.chunks
    info = describe(env["target"])
    assert info.physical_name != old_physical and info.spec is not None and info.spec.fingerprint == v2.fingerprint
    with opened(env["target"]) as store:  # the old physical collection is gone
        assert old_physical not in [c.name for c in store.client.list_collections()]
    assert_in_step(env["target"], v2, docs, CT)
    assert run(env, emb=v2, docs=docs).embedded == 0  # incremental on the rebuilt index


@pytest.mark.parametrize("ledger_kind", LEDGERS)
def test_interrupted_rebuild_is_dropped_or_finished(env: dict[str, Any], emb: Any) -> None:
    docs = corpus(4)
    run(env, emb, docs)
    key = redact_url(env["target"])
    write_jsonl(env["src"], docs)
    # crash after filling the new generation, before the switch
    e = SyncEngine(str(env["src"]), [env["target"]], ledger=env["ledger"], embedder=emb, chunk_tokens=CT, mode="full",
                   progress=False, run_owner=dead_owner())  # fmt: skip
    ctx = e.prepare()
    e.sync_partition(0, 1, ctx)
    pending = ctx.targets[0].generation
    assert Ledger(env["ledger"]).target(key).pending_generation == pending
    r = run(env, emb, docs)  # the next (incremental) run drops it
    assert any("dropped an interrupted rebuild" in n for n in r.notes) and r.embedded == 0
    with opened(env["target"]) as store:
        assert pending not in [c.name for c in store.client.list_collections()]
    assert Ledger(env["ledger"]).target(key).pending_generation is None
    # crash after the store switched, before the ledger did: the next run finishes the switch
    e = SyncEngine(str(env["src"]), [env["target"]], ledger=env["ledger"], embedder=emb, chunk_tokens=CT, mode="full",
                   progress=False, run_owner=dead_owner())  # fmt: skip
    ctx = e.prepare()
    e.sync_partition(0, 1, ctx)
    t = e.targets.items[0]
    e.targets.store(t).commit_rebuild(e.targets.writer(t, ctx.targets[0]))  # the store switched, the ledger did not
    r = run(env, emb, docs)
    assert any("finished an interrupted rebuild" in n for n in r.notes)
    assert r.embedded == 0 and Ledger(env["ledger"]).target(key).generation == ctx.targets[0].generation
    assert_in_step(env["target"], emb, docs, CT)


@pytest.mark.parametrize("ledger_kind", LEDGERS)
def test_partitioned_api_is_idempotent(env: dict[str, Any], emb: Any, chroma_http_url: str, unique_name: str) -> None:
    docs = corpus(12)
    write_jsonl(env["src"], docs)
    env["target"] = with_name(chroma_http_url, unique_name)  # partitions need a server (an embedded store is refused)
    kw = {"ledger": env["ledger"], "embedder": emb, "chunk_tokens": CT, "progress": False}

    def task(step: Any) -> Any:  # a fresh engine per "task", as in separate Airflow workers
        with SyncEngine(str(env["src"]), [env["target"]], **kw) as e:
            return step(e)

    ctx = json.loads(json.dumps(task(lambda e: e.prepare().to_dict())))  # as an Airflow XCom carries it
    parts = [task(lambda e, i=i: e.sync_partition(i, 3, ctx)) for i in range(3)]
    assert sum(p["documents"] for p in parts) == len(docs) and all(p["documents"] < len(docs) for p in parts)
    retry = task(lambda e: e.sync_partition(1, 3, ctx))  # an Airflow retry of a finished task
    assert retry["embedded"] == 0
    dele = task(lambda e: e.delete_absent(ctx))
    final = task(lambda e: e.finalize(ctx, [*parts, dele]))
    assert final["ok"] and final["embedded"] == final["chunks"] == sum(p["chunks"] for p in parts)
    assert_in_step(env["target"], emb, docs, CT)
    # a second partitioned run after removing a document: nothing embedded, one doc deleted
    write_jsonl(env["src"], docs[1:])
    ctx = task(lambda e: e.prepare())
    parts = [task(lambda e, i=i: e.sync_partition(i, 2, ctx)) for i in range(2)]
    final = task(lambda e: e.finalize(ctx, [*parts, e.delete_absent(ctx)]))
    assert final["embedded"] == 0 and sum(final["deleted"].values()) > 0
    assert_in_step(env["target"], emb, docs[1:], CT)


class Flaky:
    """Failure injection around a real store: the first ``fail_upserts`` upserts raise as if the
    server went away (optionally after ``delay`` seconds); everything else is the real store."""

    def __init__(self, inner: Any, fail_upserts: int = 10**9, delay: float = 0.0) -> None:
        self._inner, self.fail_upserts, self.delay = inner, fail_upserts, delay
        self.url = inner.url
        self.calls: list[tuple[float, float]] = []

    def upsert(self, records: Any) -> UpsertResult:
        start = time.perf_counter()
        if self.delay:
            time.sleep(self.delay)
        if self.fail_upserts > 0:
            self.fail_upserts -= 1
            raise StoreUnavailableError(f"{self.url}: connection refused (injected)")
        res = self._inner.upsert(list(records))
        self.calls.append((start, time.perf_counter()))
        return res

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_one_target_down_others_complete_and_next_run_catches_up(env: dict[str, Any], emb: Any, chroma_http_url: str, unique_name: str) -> None:
    docs = corpus(5)
    good = env["target"]
    down_url = with_name(chroma_http_url, unique_name)
    with opened(down_url) as store:
        r = run(env, emb, docs, targets=[good, Flaky(store)])
    assert not r.ok
    assert r.failed[redact_url(down_url)] > 0 and redact_url(down_url) in r.errors
    assert r.failed[redact_url(good)] == 0 and r.upserted[redact_url(good)] == r.chunks
    assert_in_step(good, emb, docs, CT)
    # next run, the server is back: only the failed target gets the chunks, with the vectors the good target's
    # index holds for them (read back, not embedded again)
    with opened(down_url) as store:  # a store the caller passes in stays open: the caller closes it
        r2 = run(env, emb, docs, targets=[good, store])
    assert r2.ok and r2.embedded == 0 and r2.from_index == r.chunks and r2.upserted[redact_url(good)] == 0
    assert_in_step(down_url, emb, docs, CT)
    assert run(env, emb, docs, targets=[good, down_url]).embedded == 0


@pytest.mark.slow  # waits out retries or slow writes: `make test` only
def test_unreachable_server_fails_only_that_target(env: dict[str, Any], emb: Any) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = f"es://127.0.0.1:{port}/nothing_here"
    docs = corpus(3)
    r = run(env, emb, docs, targets=[env["target"], dead])
    assert not r.ok and redact_url(dead) in r.errors and "127.0.0.1" in r.errors[redact_url(dead)]
    assert r.upserted[redact_url(env["target"])] == r.chunks
    assert_in_step(env["target"], emb, docs, CT)


def test_fan_out_to_three_real_stores_embeds_once(
    env: dict[str, Any], emb: Any, es_url: str, weaviate_url: str, chroma_http_url: str, unique_name: str
) -> None:
    docs = corpus(4)
    targets = [
        with_name(es_url, unique_name),
        with_name(weaviate_url, "T" + unique_name[1:]),
        with_name(chroma_http_url, unique_name),
    ]
    r = run(env, emb, docs, targets=targets)
    assert r.ok and r.embedded == r.chunks  # once, not three times
    for t in targets:
        assert r.upserted[redact_url(t)] == r.chunks
        assert_in_step(t, emb, docs, CT)
    docs[0]["text"] += " An edit."
    del docs[3]
    r = run(env, emb, docs, targets=targets)
    assert r.ok and 0 < r.embedded < r.chunks
    for t in targets:
        assert_in_step(t, emb, docs, CT)
        with opened(t) as s:
            s.drop()


def test_explicit_dims_above_store_limit_fails_before_writing(env: dict[str, Any], emb: Any, es_url: str, unique_name: str) -> None:
    target = with_name(es_url, unique_name)
    with opened(target) as s:
        limit = s.max_dims()
    assert limit is not None
    write_jsonl(env["src"], corpus(2))
    with pytest.raises(DimensionLimitError, match=str(limit)):
        SyncEngine(str(env["src"]), [target], ledger=env["ledger"], dims=limit + 1, progress=False).prepare()
    assert not describe(target).exists


def test_bad_rows_are_reported_skipped_and_never_reach_the_ledger(env: dict[str, Any], emb: Any) -> None:
    good = corpus(3)
    run(env, emb, good)
    lines = [json.dumps(d) for d in good]
    lines[0] = json.dumps({"id": "doc0", "text": ""})  # doc0 turns bad: it must be kept, not deleted
    lines += [json.dumps({"text": "no id"}), "{not json", json.dumps({"id": "doc1", "text": "duplicate"})]
    raw = ("\n".join(lines) + "\n").encode() + b'{"id": "bin", "text": "\xff\xfe"}\n'
    env["src"].write_bytes(raw)
    with SyncEngine(str(env["src"]), [env["target"]], ledger=env["ledger"], embedder=emb, chunk_tokens=CT, progress=False) as e:
        r = e.run()
    assert r.skipped_bad_rows == 5
    locs = {b["location"].rsplit(":", 1)[1]: b["reason"] for b in r.bad_rows}
    assert set(locs) == {"1", "4", "5", "6", "7"} and "UTF-8" in locs["7"] and "duplicate" in locs["6"]
    assert r.embedded == 0 and sum(r.deleted.values()) == 0
    assert_in_step(env["target"], emb, good, CT)  # doc0 keeps its last good version
    ledger_ids = Ledger(env["ledger"]).doc_ids(redact_url(env["target"]), describe(env["target"]).physical_name)
    assert ledger_ids == {"doc0", "doc1", "doc2"}
    with pytest.raises(InputError, match=r"docs.jsonl:1: empty text"):
        SyncEngine(str(env["src"]), [env["target"]], ledger=env["ledger"], embedder=emb, on_bad_row="fail", progress=False).run()


@pytest.mark.parametrize("ledger_kind", LEDGERS)
def test_sql_feed_with_watermark_and_tombstones(env: dict[str, Any], emb: Any) -> None:
    db = env["tmp"] / "src.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE items (id TEXT PRIMARY KEY, body TEXT, lang TEXT, updated_at INTEGER, gone INTEGER DEFAULT 0)")
    con.executemany("INSERT INTO items VALUES (?,?,?,?,0)", [(f"r{i}", sentences(f"r{i}", 2), "en", i) for i in range(6)])
    con.commit()
    src = f"sql+sqlite:///{db}?table=items&watermark=updated_at&text=body&deleted=gone"

    def go() -> Any:
        with SyncEngine(src, [env["target"]], ledger=env["ledger"], embedder=emb, chunk_tokens=CT, progress=False) as e:
            return e.run()

    r = go()
    assert r.ok and r.documents == 6 and r.embedded + r.reused == r.chunks  # tail chunks repeat across rows: embedded once
    again = go()  # only the row at the watermark is read again (>=): unchanged, skipped by its hash
    assert again.documents == 1 and again.embedded == 0 and again.upserted[redact_url(env["target"])] == 0
    con.execute("UPDATE items SET body = ?, updated_at = 10 WHERE id = 'r1'", (sentences("r1-new", 2),))
    con.execute("UPDATE items SET gone = 1, updated_at = 11 WHERE id = 'r2'")
    con.commit()
    r = go()
    assert r.documents == 3 and r.tombstones == 1 and r.deleted[redact_url(env["target"])] > 0
    rows = [{"id": i, "text": b, "lang": lang, "updated_at": u} for i, b, lang, u in con.execute("SELECT id, body, lang, updated_at FROM items WHERE gone = 0")]
    assert_in_step(env["target"], emb, rows, CT)


@pytest.mark.slow  # waits out retries or slow writes: `make test` only
def test_embedding_overlaps_writing_and_memory_stays_bounded(env: dict[str, Any], emb: Any) -> None:
    docs = corpus(16, 3)
    write_jsonl(env["src"], docs)
    store = Flaky(connect(env["target"]), fail_upserts=0, delay=0.4)  # a slow store: 0.4 s per write
    embeds: list[tuple[float, float]] = []
    in_flight = {"now": 0, "max": 0}
    lock = threading.Lock()

    class Timed:
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def embed_documents(self, texts: Any) -> Any:
            start = time.perf_counter()
            out = self._inner.embed_documents(texts)
            embeds.append((start, time.perf_counter()))
            with lock:
                in_flight["now"] += 1
                in_flight["max"] = max(in_flight["max"], in_flight["now"])
            return out

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    orig = store.upsert

    def upsert(records: Any) -> Any:
        res = orig(records)
        with lock:
            in_flight["now"] -= 1
        return res

    store.upsert = upsert  # type: ignore[method-assign]
    with SyncEngine(str(env["src"]), [store], ledger=env["ledger"], embedder=Timed(emb), chunk_tokens=CT,
                    batch_size=4, queue_depth=1, progress=False) as e:  # fmt: skip
        r = e.run()
    store.close()
    assert r.ok and len(embeds) >= 5
    writes = store.calls
    # some embedding of batch N+1 ran while batch N was being written
    overlaps = sum(1 for (ws, we) in writes for (es, ee) in embeds if es < we and ee > ws)
    assert overlaps >= 2, (writes, embeds)
    # bounded: at most queue_depth + 2 embedded batches not yet written (queue, writer, producer)
    assert in_flight["max"] <= 3
    assert_in_step(env["target"], emb, docs, CT)


@pytest.mark.parametrize("ledger_kind", LEDGERS)
def test_interrupted_full_rebuild_is_resumed_by_the_next_full_run(env: dict[str, Any], emb: Any, chroma_http_url: str,
                                                                 unique_name: str) -> None:  # fmt: skip
    docs = corpus(10)
    env["target"] = with_name(chroma_http_url, unique_name)  # partitions need a server (an embedded store is refused)
    run(env, emb, docs)
    old_physical = describe(env["target"]).physical_name
    v2 = OtherFingerprint(emb)
    with SyncEngine(str(env["src"]), [env["target"]], ledger=env["ledger"], embedder=v2, chunk_tokens=CT, mode="full",
                    progress=False, run_owner=dead_owner()) as e:  # fmt: skip
        ctx = e.prepare()
        half = e.sync_partition(0, 2, ctx)  # ... and the process dies here
    assert 0 < half["embedded"] < half["chunks"] + 100
    assert describe(env["target"]).physical_name == old_physical  # readers still see the old index
    r = run(env, emb=v2, docs=docs, mode="full")
    assert any("resuming an interrupted rebuild" in n for n in r.notes)
    assert r.ok and r.embedded == r.chunks - half["chunks"]  # only what the dead run had not written
    assert describe(env["target"]).physical_name == ctx.targets[0].generation
    assert_in_step(env["target"], v2, docs, CT)


@pytest.mark.parametrize("ledger_kind", LEDGERS)
def test_partitions_in_parallel_share_one_ledger(env: dict[str, Any], emb: Any, chroma_http_url: str, unique_name: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    docs = corpus(16, 3)
    write_jsonl(env["src"], docs)
    env["target"] = with_name(chroma_http_url, unique_name)  # partitions need a server (an embedded store is refused)

    def task(step: Any) -> Any:  # own engine, own ledger connection pool: like separate worker processes
        with SyncEngine(str(env["src"]), [env["target"]], ledger=env["ledger"], embedder=emb, chunk_tokens=CT,
                        batch_size=4, progress=False) as e:  # fmt: skip
            return step(e)

    ctx = task(lambda e: e.prepare())
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(lambda i: task(lambda e: e.sync_partition(i, 4, ctx)), range(4)))
    final = task(lambda e: e.finalize(ctx, [*parts, e.delete_absent(ctx)]))
    assert final["ok"] and final["embedded"] == final["chunks"]
    assert_in_step(env["target"], emb, docs, CT)
    key = redact_url(env["target"])
    led = Ledger(env["ledger"])
    assert led.chunk_map(key, led.target(key).generation) == expected_records(emb, docs, CT)


def test_unchanged_run_and_its_dry_run_load_no_model(env: dict[str, Any], emb: Any) -> None:
    loads: list[tuple[str, Any]] = []

    def factory(name: str, dims: Any = None, device: str = "auto") -> Any:
        loads.append((name, dims))
        return emb

    docs = corpus(3)
    write_jsonl(env["src"], docs)
    for dry_run in (False, False, True):
        with SyncEngine(str(env["src"]), [env["target"]], ledger=env["ledger"], embedder_factory=factory,
                        chunk_tokens=CT, dry_run=dry_run, progress=False) as e:  # fmt: skip
            r = e.run()
        assert r.ok and r.model == emb.model_id
    assert loads == [("minilm", None)]  # only the first run needed the model
    assert_in_step(env["target"], emb, docs, CT)
