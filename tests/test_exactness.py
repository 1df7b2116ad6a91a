"""Exact under everyday drift (issue 24), as a new user meets it: the ``embedrail reindex`` command, on every
store, against real servers, with the packaged model.

| what the user did between two runs                               | what embedrail must do                  |
| ---------------------------------------------------------------- | --------------------------------------- |
| wrote the index URL another way (``localhost``, a parameter)      | embed nothing, keep one ledger key      |
| deleted records from the index by hand                            | restore them                            |
| ran without ``--ledger`` from another directory, after deleting   | refuse, naming ``--adopt`` / ``--mode    |
| documents from the source                                          | full``; ``--adopt`` then deletes them    |
| pointed the run at a truncated source (10 % of the documents)     | refuse the mass delete (exit code 1)    |

and one more that costs users GPU hours rather than exactness: documents renamed or moved in the source take
the vectors their chunks already have in the index (embed nothing).
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from test_integration_support import (
    OtherFingerprint,
    assert_in_step,
    minilm,
    sentences,
    store_records,
    write_jsonl,
)
from util import describe, opened, with_name

from embedrail.connectors.base import Record
from embedrail.errors import (
    ConfigError,
    IndexMismatchError,
    IndexOwnershipError,
    RunConflictError,
    SourceUnavailableError,
    StoreRejectedError,
    SyncError,
)
from embedrail.integration.cli import main
from embedrail.integration.engine import SyncEngine
from embedrail.integration.ledger import Ledger
from embedrail.integration.report import Report
from embedrail.integration.targets import target_key

CT = 32
STORES = ["es", "opensearch", "chroma", "weaviate", "qdrant", "pgvector", "memory"]


def corpus(n: int = 30) -> list[dict[str, Any]]:
    return [{"id": f"doc{i:02d}", "text": sentences(f"doc{i:02d}", 4), "part": i % 3} for i in range(n)]


def urls(kind: str, request: pytest.FixtureRequest, tmp_path: Path, name: str) -> tuple[str, str]:
    """The target URL, and the same index written another way (another host name, or an extra parameter)."""
    if kind == "chroma":
        url = f"chroma://{tmp_path / 'chroma'}?collection={name}"
        return url, url + "&tenant=default_tenant"
    if kind == "qdrant":
        url = f"qdrant://{tmp_path / 'qdrant'}?collection={name}"
        return url, url + "&prefer_grpc=false"
    if kind == "memory":  # the in-memory reference store: the same contract, in this process
        url = f"memory://{name}/docs"
        return url, url + "?label=spelt-another-way"
    base = request.getfixturevalue({"es": "es_url", "opensearch": "opensearch_url", "weaviate": "weaviate_url",
                                    "pgvector": "pgvector_url"}[kind])  # fmt: skip
    index = {"weaviate": "T" + name[1:], "pgvector": name[:40]}.get(kind, name)
    url = with_name(base, index)
    assert "127.0.0.1" in url
    return url, url.replace("127.0.0.1", "localhost")


def reindex(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any] | None, str]:
    """``embedrail reindex ARGS --json``: exit code, the report, stderr."""
    capsys.readouterr()
    rc = main(["reindex", *args, "--chunk-tokens", str(CT), "--json"])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if out.strip() else None), err


@pytest.mark.parametrize("kind", STORES)
def test_the_four_everyday_drifts_on_every_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path, unique_name: str,
                                                 capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.delenv("EMBEDRAIL_LEDGER", raising=False)
    emb = minilm()
    url, other_spelling = urls(kind, request, tmp_path, unique_name)
    key = target_key(url)
    src = tmp_path / "docs.jsonl"
    docs = corpus()
    write_jsonl(src, docs)
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    rc, r, err = reindex(capsys, "--source", str(src), "--target", url, "--ledger", ledger)
    assert rc == 0 and r is not None, err
    chunks = r["chunks"]
    assert r["embedded"] + r["reused"] == chunks > len(docs) and r["upserted"][key] == chunks
    assert r["ledger"] == Ledger(ledger).url

    # 1. the same index, its URL written another way: nothing embedded or written, one ledger key
    rc, r, err = reindex(capsys, "--source", str(src), "--target", other_spelling, "--ledger", ledger)
    assert rc == 0 and r is not None, err
    assert r["embedded"] == 0 and r["upserted"] == {key: 0} and r["deleted"] == {key: 0}, r
    assert any("spelt another way" in n for n in r["notes"])
    led = Ledger(ledger)
    assert led.target(target_key(other_spelling)) is None and led.target(key) is not None
    led.close()

    # 2. records deleted from the index by hand: the next incremental run restores them
    with opened(url) as store:
        gone = sorted(store_records(store))[:3]
        assert store.delete(gone).ok
    rc, r, err = reindex(capsys, "--source", str(src), "--target", url, "--ledger", ledger)
    assert rc == 0 and r is not None, err
    assert r["drift"][key]["found"] and r["drift"][key]["repaired"] and r["drift"][key]["missing"] == 3
    assert r["embedded"] == 3 and r["upserted"][key] == 3
    assert_in_step(url, emb, docs, CT)

    # renamed (moved) documents: their chunks are written under the new ids with the vectors the index holds
    # for the old ones, read back from it; nothing is embedded, the old ids are deleted
    moved = {d["id"]: f"moved/{d['id']}" for d in docs[:3]}
    with opened(url) as store:
        before_move = {c: v for c, (v, _) in store.stored_vectors([c for c in store_records(store) if c.rpartition("#")[0] in moved]).items()}
    docs = [{**d, "id": moved.get(d["id"], d["id"])} for d in docs]
    write_jsonl(src, docs)
    n = len(before_move)
    rc, r, err = reindex(capsys, "--source", str(src), "--target", url, "--ledger", ledger, "--dry-run")
    assert rc == 0 and r is not None and r["embedded"] == 0 and r["from_index"] == n, (err, r)  # the ledger's estimate
    rc, r, err = reindex(capsys, "--source", str(src), "--target", url, "--ledger", ledger)
    assert rc == 0 and r is not None, err
    assert n >= 6 and r["embedded"] == 0 and r["from_index"] == n, r
    assert r["upserted"][key] == n and r["deleted"][key] == n
    assert_in_step(url, emb, docs, CT)
    with opened(url) as store:
        after_move = store.stored_vectors([f"moved/{c}" for c in before_move])
        for c, v in before_move.items():
            np.testing.assert_allclose(after_move[f"moved/{c}"][0], v, atol=1e-6)
        hits = store.search(v, k=8)
        ties = [h.id for h in hits if h.score >= hits[0].score - 1e-4]  # chunk tails repeat; ES scores int8 graphs
        assert f"moved/{c}" in ties, [(h.id, h.score) for h in hits]  # in the index's graph, not only stored

    # 3. another working directory, no --ledger, documents deleted from the source meanwhile: refused (the
    #    ledger there does not know the index), then --adopt keeps the index exact without embedding
    kept = docs[:-4]
    write_jsonl(src, kept)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    held = store_records(url)
    removed = sum(1 for c in held if c.rpartition("#")[0] in {d["id"] for d in docs[-4:]})
    rc, r, err = reindex(capsys, "--source", str(src), "--target", url)
    assert rc == 2 and r is None
    assert "kept by another ledger" in err and "nothing was written" in err, err
    assert "--adopt" in err and "--mode full" in err
    assert store_records(url) == held  # nothing was written
    rc, r, err = reindex(capsys, "--source", str(src), "--target", url, "--adopt")
    assert rc == 0 and r is not None, err
    assert r["ledger"] == f"sqlite:///{elsewhere / '.embedrail' / 'ledger.sqlite'}"
    assert r["embedded"] == 0 and r["upserted"][key] == 0 and r["deleted"][key] == removed > 0
    assert_in_step(url, emb, kept, CT)

    # 4. a truncated source (10 % of the documents): the deletes are refused, the run fails, nothing is lost
    write_jsonl(src, kept[:3])
    before = store_records(url)
    rc, r, err = reindex(capsys, "--source", str(src), "--target", url)
    assert rc == 1 and r is not None and not r["ok"]
    assert r["refused_deletes"][key] == {"documents": len(kept) - 3, "held": len(kept), "fraction": round((len(kept) - 3) / len(kept), 4),
                                         "max_delete_fraction": 0.5}  # fmt: skip
    assert "--allow-mass-delete" in err and r["deleted"][key] == 0
    assert store_records(url) == before
    rc, r, err = reindex(capsys, "--source", str(src), "--target", url, "--allow-mass-delete")
    assert rc == 0 and r is not None and r["ok"], err
    assert_in_step(url, emb, kept[:3], CT)
    with opened(url) as store:
        store.drop()


# ------------------------------------------------------------------------------------------------ identity
def run_sync(src: Path, targets: list[Any], ledger: str, **kw: Any) -> Any:
    with SyncEngine(str(src), targets, ledger=ledger, embedder=minilm(), chunk_tokens=CT, progress=False, **kw) as e:
        return e.run()


def test_a_client_object_finds_the_ledger_rows_of_its_url(tmp_path: Path, es_url: str, unique_name: str) -> None:
    """An index synced by URL, then through a client object the caller made: the stamp maps it to the same
    ledger rows (nothing embedded, no second key)."""
    import elasticsearch

    from embedrail.connectors import ElasticsearchStore

    url = with_name(es_url, unique_name)
    src = write_jsonl(tmp_path / "docs.jsonl", corpus(8))
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    first = run_sync(src, [url], ledger)
    assert first.ok
    u = urlsplit(url)
    client = elasticsearch.Elasticsearch(f"http://{u.hostname}:{u.port}")
    try:
        store = ElasticsearchStore(client, unique_name)
        r = run_sync(src, [store], ledger)
        assert r.ok and r.embedded == 0 and r.upserted == {target_key(url): 0}, r
        assert describe(url).owner == {"ledger": Ledger(ledger).id, "key": target_key(url)}
    finally:
        client.close()


def test_the_python_api_needs_an_explicit_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBEDRAIL_LEDGER", raising=False)
    src = write_jsonl(tmp_path / "docs.jsonl", corpus(2))
    with pytest.raises(ConfigError, match="no ledger: pass ledger="):
        SyncEngine(str(src), [f"chroma://{tmp_path / 'c'}?collection=docs"])
    monkeypatch.setenv("EMBEDRAIL_LEDGER", f"sqlite:///{tmp_path / 'env.sqlite'}")
    with SyncEngine(str(src), [f"chroma://{tmp_path / 'c'}?collection=docs"], embedder=minilm()) as e:
        assert e.ledger.url == f"sqlite:///{tmp_path / 'env.sqlite'}"


def test_an_index_another_ledger_adopted_is_refused_by_the_first(tmp_path: Path, chroma_path_url: str) -> None:
    """Two ledgers on one index never both write it: the one that does not hold the stamp is refused."""
    url = with_name(chroma_path_url, "shared")
    src = write_jsonl(tmp_path / "docs.jsonl", corpus(6))
    a, b = f"sqlite:///{tmp_path / 'a.sqlite'}", f"sqlite:///{tmp_path / 'b.sqlite'}"
    assert run_sync(src, [url], a).ok
    assert run_sync(src, [url], b, adopt=True).embedded == 0
    with pytest.raises(IndexOwnershipError, match="kept by another ledger"):
        run_sync(src, [url], a)
    assert run_sync(src, [url], b).embedded == 0


# ------------------------------------------------------------------------------------------------ repair
def _synced(tmp_path: Path, url: str, n: int) -> tuple[list[dict[str, Any]], Path, str, str, Any]:
    """``corpus(n)`` synced into ``url``: (docs, source file, ledger URL, target key, the model)."""
    docs = corpus(n)
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    assert run_sync(src, [url], ledger).ok
    return docs, src, ledger, target_key(url), minilm()


def test_a_vector_is_taken_from_the_index_only_from_a_record_of_that_text(tmp_path: Path, unique_name: str) -> None:
    """A new document whose chunks repeat texts the index holds under other ids takes their stored vectors; the
    ledger finds those records by the text part of their fingerprints, but the record's own ``_fp``, read with
    its vector, decides: a record rewritten behind the ledger's back (another vector and ``_fp`` under the same
    id) gives nothing, and its text is embedded."""
    url = f"memory://{unique_name}/docs"
    docs, src, ledger, key, emb = _synced(tmp_path, url, 4)
    with opened(url) as store:
        first = sorted(c for c in store_records(store) if c.startswith("doc00#"))
        assert len(first) >= 2
        hit = store.get([first[0]])[first[0]]
        bogus = np.ones(emb.dims, dtype=np.float32) / np.sqrt(emb.dims)
        assert store.upsert([Record(first[0], bogus, hit.text, {**hit.metadata, "_fp": "f" * 48})]).ok
    write_jsonl(src, [*docs, {"id": "copy", "text": docs[0]["text"], "part": 0}])
    r = run_sync(src, [url], ledger, repair="off", drift_sample=0)  # no probe: the ledger still names the rewritten record
    assert r.ok and r.embedded == 1 and r.from_index == len(first) - 1, (r.embedded, r.from_index)
    with opened(url) as store:
        copies = store.stored_vectors([f"copy#{c.rpartition('#')[2]}" for c in first])
        originals = store.stored_vectors(first[1:])
    fresh = np.asarray(emb.embed_documents([hit.text]), dtype=np.float32)[0]
    assert float(copies[f"copy#{first[0].rpartition('#')[2]}"][0] @ fresh) > 0.999  # embedded, not the bogus vector
    for c in first[1:]:
        np.testing.assert_array_equal(copies[f"copy#{c.rpartition('#')[2]}"][0], originals[c][0])


class _ProtocolOnly:
    """A store of the user's own: the ``VectorStore`` protocol and nothing more (no ``stored_vectors``)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "stored_vectors":
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __enter__(self) -> _ProtocolOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.close()


def test_a_store_that_cannot_read_vectors_back_gets_a_renamed_document_embedded(tmp_path: Path, unique_name: str) -> None:
    from embedrail.connectors import connect
    from embedrail.connectors.base import VectorStore

    store = _ProtocolOnly(connect(f"memory://{unique_name}/docs"))
    assert isinstance(store, VectorStore) and not hasattr(store, "stored_vectors")
    docs = corpus(4)
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    first = run_sync(src, [store], ledger)
    assert first.ok and first.from_index == 0
    renamed = [{**docs[0], "id": "renamed"}, *docs[1:]]
    write_jsonl(src, renamed)
    r = run_sync(src, [store], ledger)
    assert r.ok and r.from_index == 0 and r.embedded + r.reused == len([c for c in store_records(store) if c.startswith("renamed#")]) > 0
    assert_in_step(store, minilm(), renamed, CT)


def test_a_failed_read_back_embeds_instead(tmp_path: Path, unique_name: str, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """Reading stored vectors back is a shortcut: a store that refuses it (a fault injected here) has the texts
    embedded instead, once warned, and the run succeeds exactly."""
    from embedrail.connectors.memory import MemoryStore
    from embedrail.errors import StoreUnavailableError

    url = f"memory://{unique_name}/docs"
    docs, src, ledger, key, emb = _synced(tmp_path, url, 4)
    calls = []

    def refuse(self: Any, ids: Any) -> Any:
        calls.append(len(ids))
        raise StoreUnavailableError(f"{self.url}: read vectors failed: injected")

    monkeypatch.setattr(MemoryStore, "stored_vectors", refuse)
    renamed = [{**docs[0], "id": "renamed"}, *docs[1:]]
    write_jsonl(src, renamed)
    with caplog.at_level("WARNING", logger="embedrail.sync"):
        r = run_sync(src, [url], ledger)
    n = len([c for c in store_records(url) if c.startswith("renamed#")])
    assert r.ok and r.from_index == 0 and r.embedded + r.reused == n > 0 and len(calls) == 1  # asked once, then not again
    assert any("embedding instead" in m for m in caplog.messages)
    assert_in_step(url, emb, renamed, CT)


def test_repair_rewrites_only_what_drifted(tmp_path: Path, es_url: str, unique_name: str) -> None:
    """``repair=on`` compares every record: a record whose metadata was changed out of band gets its metadata
    back without the model, a record the ledger does not know is deleted, one lost is embedded again; a dry
    run reports the drift and changes nothing; ``repair=off`` only reports it."""
    url = with_name(es_url, unique_name)
    docs, src, ledger, key, emb = _synced(tmp_path, url, 10)
    with opened(url) as store:
        held = store_records(store)
        ids = sorted(held)
        old = held[ids[0]][:32] + "0" * 16  # the record as an older version of its metadata left it: same text
        assert store.update_metadata([(ids[0], {"_doc": ids[0].split("#")[0], "_fp": old, "part": 99})]).ok
        assert store.delete([ids[1]]).ok
        store.upsert([Record("stray#0", emb.embed_documents(["a record nobody asked for"])[0], "stray", {"_doc": "stray"})])
        store.flush()
    dry = run_sync(src, [url], ledger, dry_run=True)
    assert dry.drift[key]["found"] and not dry.drift[key]["repaired"]
    off = run_sync(src, [url], ledger, repair="off")
    assert off.drift[key]["found"] and not off.drift[key]["repaired"] and any("--repair" in n for n in off.notes)
    assert "stray#0" in store_records(url)
    r = run_sync(src, [url], ledger, repair=True)
    d = r.drift[key]
    assert r.ok and d["full"] and d["repaired"] and (d["missing"], d["stale"], d["unknown"]) == (1, 1, 1), d
    assert r.embedded == 1 and r.upserted[key] == 1 and r.retagged[key] == 1  # the stale one kept its stored vector
    assert_in_step(url, emb, docs, CT)
    again = run_sync(src, [url], ledger)
    assert again.embedded == 0 and not again.drift[key]["found"]


def test_repair_walks_the_index_in_pages_not_in_memory(tmp_path: Path, chroma_path_url: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """``--repair`` on an index of any size: the store's ids sorted in runs spilled to files, the ledger read a
    page at a time, the repair applied a page at a time (runs of 4 ids, pages of 3 here, so every stream spills
    and every kind of drift crosses page boundaries); the counts equal a brute-force comparison, the run
    restores exactly the source, and a dry run counts the same drift and changes nothing."""
    from embedrail.integration import drift, idsort

    monkeypatch.setattr(idsort.SortedIds, "RUN", 4)
    monkeypatch.setattr(drift, "_PAGE", 3)
    url = with_name(chroma_path_url, "pages")
    docs, src, ledger, key, emb = _synced(tmp_path, url, 12)
    with opened(url) as store:
        held = store_records(store)
        ids = sorted(held)
        lost, changed = ids[::5], ids[2::7]
        changed = [c for c in changed if c not in lost]
        assert store.delete(lost).ok  # an older version of the metadata on the others: the same text
        assert store.update_metadata([(c, {"_doc": c.split("#")[0], "_fp": held[c][:32] + "0" * 16}) for c in changed]).ok
        strays = [f"stray{i}#0" for i in range(5)]
        vecs = emb.embed_documents([f"stray {i}" for i in range(5)])
        assert store.upsert([Record(c, v, c, {"_doc": c.split("#")[0]}) for c, v in zip(strays, vecs, strict=True)]).ok
        store.flush()
    want = (len(lost), len(changed), len(strays))
    dry = run_sync(src, [url], ledger, repair=True, dry_run=True)
    assert (dry.drift[key]["missing"], dry.drift[key]["stale"], dry.drift[key]["unknown"]) == want
    assert not dry.drift[key]["repaired"] and set(strays) <= set(store_records(url))
    r = run_sync(src, [url], ledger, repair=True)
    d = r.drift[key]
    assert r.ok and d["repaired"] and (d["missing"], d["stale"], d["unknown"]) == want, d
    assert d["store_count"] == len(ids) - len(lost) + len(strays)
    assert r.embedded + r.from_index == len(lost) and r.retagged[key] == len(changed)  # a lost text stored elsewhere: taken from there
    assert_in_step(url, emb, docs, CT)


# ------------------------------------------------------------------------------------------------ honest errors
def test_a_client_library_bug_is_raised_once_with_its_traceback(tmp_path: Path, chroma_path_url: str,
                                                                capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """An exception the store's error table does not know (here a TypeError, as a client upgrade that
    changed a signature gives) is not retried, not reported as "store down": it escapes with its own
    traceback; the CLI prints it once and exits 70."""
    from embedrail.connectors.chroma import ChromaStore

    url = with_name(chroma_path_url, "bugs")
    src = write_jsonl(tmp_path / "docs.jsonl", corpus(3))
    calls = []

    def broken(self: Any, target: Any, batch: Any) -> Any:
        calls.append(len(batch))
        raise TypeError("upsert() got an unexpected keyword argument 'embeddings'")

    monkeypatch.setattr(ChromaStore, "_write_batch", broken)
    with pytest.raises(TypeError, match="unexpected keyword"):
        run_sync(src, [url], f"sqlite:///{tmp_path / 'l1.sqlite'}")
    assert len(calls) == 1  # not retried, not bisected
    capsys.readouterr()
    rc = main(["reindex", "--source", str(src), "--target", url, "--ledger", f"sqlite:///{tmp_path / 'l2.sqlite'}"])
    err = capsys.readouterr().err
    assert rc == 70 and err.count("Traceback (most recent call last)") == 1 and "internal error (a bug" in err
    assert "TypeError: upsert() got an unexpected keyword argument" in err


def test_a_rejected_request_is_not_retried_and_keeps_its_cause(es_url: str, unique_name: str) -> None:
    import elasticsearch

    with opened(with_name(es_url, unique_name)) as store:
        t = time.monotonic()
        with pytest.raises(StoreRejectedError) as ei:
            store._call(lambda: store.client.indices.create(index="Bad Name"), "create index")
        assert time.monotonic() - t < 2 and not ei.value.retryable
        assert isinstance(ei.value.__cause__, elasticsearch.ApiError) and ei.value.__cause__.meta.status == 400


class Status(Exception):
    """A client error carrying an HTTP status, with a message that must not matter."""

    def __init__(self, code: int) -> None:
        super().__init__(f"HTTP {code}: connection refused, UNAVAILABLE")
        self.status_code = code


class Sql(Exception):
    def __init__(self, state: str) -> None:
        self.sqlstate = state


def _rpc(code: Any) -> Exception:
    import grpc

    class Rpc(grpc.RpcError):
        def code(self) -> Any:
            return code

    return Rpc()


def test_store_error_tables() -> None:
    """The declarative tables: statuses, classes, wrapped transport errors; never the message text."""
    import grpc
    import httpx

    from embedrail.connectors._retry import BASE_ERRORS, classify
    from embedrail.connectors.chroma import ChromaStore
    from embedrail.connectors.pgvector import PgvectorStore
    from embedrail.connectors.weaviate import WeaviateStore

    table = BASE_ERRORS.extend(status=(f"{__name__}.Status",))
    assert [classify(Status(c), table) for c in (429, 503, 400, 404, 500)] == ["transient", "transient", "rejected", "rejected", "failed"]
    assert classify(TimeoutError(), table) == "transient" and classify(ConnectionResetError(), table) == "transient"
    assert classify(TypeError("connection refused"), table) == "bug" and classify(KeyError("UNAVAILABLE"), table) == "bug"

    wv = WeaviateStore("weaviate://h:1/X")
    assert wv._classify(_rpc(grpc.StatusCode.UNAVAILABLE)) == "transient"
    assert wv._classify(_rpc(grpc.StatusCode.INVALID_ARGUMENT)) == "rejected"
    assert wv._classify(_rpc(grpc.StatusCode.INTERNAL)) == "failed"
    import weaviate.exceptions as we

    try:  # how the client wraps a dropped gRPC connection into its query error
        try:
            raise _rpc(grpc.StatusCode.UNAVAILABLE)
        except grpc.RpcError as e:
            raise we.WeaviateQueryError(str(e), "GRPC search")  # noqa: B904 - the client's own style
    except we.WeaviateQueryError as wrapped:
        assert wv._classify(wrapped) == "transient"
    assert wv._classify(we.WeaviateQueryError("no such class", "GRPC search")) == "rejected"
    ch = ChromaStore("chroma+http://h:1/abc")
    try:  # chromadb's "Could not connect" ValueError is raised while handling httpx's ConnectError
        try:
            raise httpx.ConnectError("refused")
        except httpx.ConnectError:
            raise ValueError("Could not connect to a Chroma server. Are you sure it is running?")  # noqa: B904
    except ValueError as wrapped:
        assert ch._classify(wrapped) == "transient"
    assert ch._classify(ValueError("Expected ID to be a str")) == "rejected"
    from chromadb.errors import InternalError, InvalidArgumentError, RateLimitError

    assert [ch._classify(e("x")) for e in (RateLimitError, InvalidArgumentError, InternalError)] == ["transient", "rejected", "failed"]
    pg = PgvectorStore("pgvector://u:p@h:1/db?table=t")

    assert [pg._classify(Sql(s)) for s in ("08006", "40001", "57014", "22012", "23505", "42P01", "XX000")] == [
        "transient", "transient", "transient", "rejected", "rejected", "rejected", "failed"]  # fmt: skip


def test_the_ledger_retries_connection_loss_not_integrity_errors(tmp_path: Path) -> None:
    from sqlalchemy.exc import IntegrityError, OperationalError

    led = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    try:
        calls = [0]

        def flaky() -> str:
            calls[0] += 1
            if calls[0] == 1:
                raise OperationalError("INSERT", {}, Exception("server closed the connection unexpectedly"))
            return "ok"

        assert led._retry(flaky) == "ok" and calls[0] == 2
        calls[0] = 0

        def duplicate() -> None:
            calls[0] += 1
            raise IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))

        with pytest.raises(IntegrityError):
            led._retry(duplicate)
        assert calls[0] == 1  # a broken invariant: raised at once, as itself
    finally:
        led.close()


def test_a_sql_source_that_is_down_is_retryable(tmp_path: Path) -> None:
    from embedrail.integration.sources import open_source

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = open_source(f"sql+postgresql+psycopg://u:pw@127.0.0.1:{port}/db?table=items")
    with pytest.raises(SourceUnavailableError) as ei:
        list(src)
    assert ei.value.retryable and "pw" not in str(ei.value)
    src.close()
    db = tmp_path / "s.db"
    sqlite3.connect(db).close()
    bad = open_source(f"sql+sqlite:///{db}?table=missing")
    with pytest.raises(ConfigError):
        list(bad)
    bad.close()


# ------------------------------------------------------------------------------------------------ leases
def test_a_refused_prepare_releases_its_lease(tmp_path: Path, chroma_path_url: str) -> None:
    url = with_name(chroma_path_url, "leases")
    src = write_jsonl(tmp_path / "docs.jsonl", corpus(3))
    ledger = f"sqlite:///{tmp_path / 'l.sqlite'}"
    assert run_sync(src, [url], ledger).ok
    with SyncEngine(str(src), [url], ledger=ledger, embedder=OtherFingerprint(minilm()), progress=False) as e:
        with pytest.raises(IndexMismatchError):
            e.prepare()
    led = Ledger(ledger)
    assert led.lease(target_key(url)) is None  # the next run, from any host, is not held up
    led.close()


def test_two_engines_or_two_threads_on_one_ledger_never_both_hold_a_target(tmp_path: Path, chroma_http_url: str,
                                                                             unique_name: str) -> None:  # fmt: skip
    url = with_name(chroma_http_url, unique_name)
    src = write_jsonl(tmp_path / "docs.jsonl", corpus(3))
    led = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")  # one Ledger object, shared
    try:
        a = SyncEngine(str(src), [url], ledger=led, embedder=minilm(), progress=False)
        b = SyncEngine(str(src), [url], ledger=led, embedder=minilm(), progress=False)
        ctx = a.prepare()
        with pytest.raises(RunConflictError, match="is syncing it"):
            b.prepare()
        a.finalize(ctx, [a.sync_partition(0, 1, ctx), a.delete_absent(ctx)])
        assert b.run().ok  # released: b may go now
        a.close()
        b.close()
        barrier, outcomes = threading.Barrier(2), []

        def go() -> None:
            with SyncEngine(str(src), [url], ledger=led, embedder=minilm(), progress=False) as e:
                barrier.wait()
                try:
                    outcomes.append(e.prepare().run_id)
                except RunConflictError:
                    outcomes.append("conflict")

        threads = [threading.Thread(target=go) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(o == "conflict" for o in outcomes) == [False, True], outcomes
    finally:
        led.close()


# ------------------------------------------------------------------------------------------------ deletes
def test_a_full_rebuild_of_a_truncated_source_is_not_switched_to(tmp_path: Path, chroma_path_url: str) -> None:
    url = with_name(chroma_path_url, "rebuild")
    docs = corpus(10)
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    ledger = f"sqlite:///{tmp_path / 'l.sqlite'}"
    assert run_sync(src, [url], ledger).ok
    live = describe(url).physical_name
    write_jsonl(src, docs[:2])
    r = run_sync(src, [url], ledger, mode="full")
    key = target_key(url)
    assert not r.ok and r.refused_deletes[key]["documents"] == 8 and describe(url).physical_name == live
    assert_in_step(url, minilm(), docs, CT)  # readers still see every document
    r = run_sync(src, [url], ledger, mode="full", allow_mass_delete=True)
    assert r.ok and describe(url).physical_name != live
    assert_in_step(url, minilm(), docs[:2], CT)


def test_the_delete_guard_limit_and_an_empty_source(tmp_path: Path, chroma_path_url: str) -> None:
    url = with_name(chroma_path_url, "guard")
    docs = corpus(10)
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    ledger = f"sqlite:///{tmp_path / 'l.sqlite'}"
    key = target_key(url)
    assert run_sync(src, [url], ledger).ok
    write_jsonl(src, docs[:5])  # exactly half: at the default limit, allowed
    assert run_sync(src, [url], ledger).ok
    write_jsonl(src, docs[:1])  # 4 of 5: refused at 0.5, allowed at 0.9
    assert not run_sync(src, [url], ledger).ok
    assert run_sync(src, [url], ledger, max_delete_fraction=0.9).ok
    write_jsonl(src, [])  # an empty source: refused unless the limit is off (1.0) or the delete allowed
    r = run_sync(src, [url], ledger)
    assert not r.ok and r.refused_deletes[key]["fraction"] == 1.0
    assert run_sync(src, [url], ledger, max_delete_fraction=1.0).ok and store_records(url) == {}


# ------------------------------------------------------------------------------------------------ SQL feeds
def test_a_sql_feed_never_skips_a_late_row_or_one_sharing_the_watermark(tmp_path: Path, chroma_path_url: str) -> None:
    url = with_name(chroma_path_url, "feed")
    db = tmp_path / "src.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE items (id TEXT PRIMARY KEY, text TEXT, updated_at INTEGER)")
    con.executemany("INSERT INTO items VALUES (?, ?, ?)", [(f"r{i}", sentences(f"r{i}", 2), 100 + i) for i in range(4)])
    con.commit()
    ledger = f"sqlite:///{tmp_path / 'l.sqlite'}"
    feed = f"sql+sqlite:///{db}?table=items&watermark=updated_at&watermark_lag=10"

    def rows() -> list[dict[str, Any]]:
        return [{"id": i, "text": t, "updated_at": u} for i, t, u in con.execute("SELECT id, text, updated_at FROM items")]

    assert run_sync(feed, [url], ledger).ok  # the watermark is now 103
    # a row sharing the watermark, committed after the run read it; and a late row whose watermark is older
    con.execute("INSERT INTO items VALUES ('same', ?, 103)", (sentences("same", 2),))
    con.execute("INSERT INTO items VALUES ('late', ?, 95)", (sentences("late", 2),))
    con.execute("INSERT INTO items VALUES ('old', ?, 50)", (sentences("old", 2),))  # older than the look-back
    con.commit()
    r = run_sync(feed, [url], ledger)
    assert r.ok and r.documents == 6 and r.embedded > 0  # 95..103 read: r0-r3 again (unchanged), same, late
    have = {c.rpartition("#")[0] for c in store_records(url)}
    assert {"same", "late"} <= have and "old" not in have
    assert_in_step(url, minilm(), [d for d in rows() if d["id"] != "old"], CT)
    con.close()


# ------------------------------------------------------------------------------------------------ credentials
class _Headers:
    """ASGI wrapper recording the Authorization header of every request the real server gets."""

    def __init__(self, app: Any) -> None:
        self.app, self.seen = app, []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/embeddings"):
            self.seen.append(dict(scope["headers"]).get(b"authorization"))
        await self.app(scope, receive, send)


def test_the_api_key_goes_only_to_a_server_the_user_named(tmp_path: Path, chroma_path_url: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from embedrail.embed_core import Embedder, embedder_from_info
    from embedrail.embed_core.serve import BackgroundServer

    local = Embedder.load("minilm", device="cpu")
    server = BackgroundServer(local)
    rec = server.server.config.app = _Headers(server.app)
    base = server.start()
    try:
        monkeypatch.setenv("EMBEDRAIL_EMBED_API_KEY", "sekrit-key")
        monkeypatch.delenv("EMBEDRAIL_EMBED_BASE_URL", raising=False)
        model = f"{base}/v1#{local.model}"
        url = with_name(chroma_path_url, "remote")
        docs = corpus(3)
        src = write_jsonl(tmp_path / "docs.jsonl", docs)
        ledger = f"sqlite:///{tmp_path / 'l.sqlite'}"
        with SyncEngine(str(src), [url], ledger=ledger, model=model, progress=False) as e:
            assert e.run().ok
        assert rec.seen and set(rec.seen) == {b"Bearer sekrit-key"}  # named by the user: the key goes
        recorded = dict(describe(url).spec.embedding)
        assert recorded["load_name"] == model and recorded["base_url"] == base
        # the next run takes the model from the index's metadata: no key for it
        rec.seen.clear()
        write_jsonl(src, [*docs, {"id": "new", "text": sentences("new", 2)}])
        with SyncEngine(str(src), [url], ledger=ledger, progress=False) as e:
            assert e.run().ok
        assert rec.seen and set(rec.seen) == {None}
        emb = embedder_from_info(recorded)  # the query side, from the same metadata
        emb.embed_queries(["q"])
        emb.close()
        assert rec.seen[-1] is None
        monkeypatch.setenv("EMBEDRAIL_EMBED_BASE_URL", base)  # the user lists the server: the key goes
        emb = embedder_from_info(recorded)
        emb.embed_queries(["q"])
        emb.close()
        assert rec.seen[-1] == b"Bearer sekrit-key"
        # credentials are never part of a model name, so never in index metadata, the ledger or a context
        with pytest.raises(ConfigError, match="EMBEDRAIL_EMBED_API_KEY"):
            SyncEngine(str(src), [url], ledger=ledger, model=f"http://user:sekrit-key@{base[7:]}/v1#{local.model}")
        assert b"sekrit-key" not in (tmp_path / "l.sqlite").read_bytes()
        assert "sekrit-key" not in json.dumps(dict(describe(url).spec.embedding))
    finally:
        server.stop()
        local.close()


# ------------------------------------------------------------------------------------------------ embedded stores
def test_an_embedded_store_takes_one_partition(tmp_path: Path, chroma_path_url: str) -> None:
    from embedrail.integration.airflow import build_reindex_dag

    url = with_name(chroma_path_url, "embedded")
    src = write_jsonl(tmp_path / "docs.jsonl", corpus(3))
    with SyncEngine(str(src), [url, f"qdrant://{tmp_path / 'q'}?collection=docs"], ledger=f"sqlite:///{tmp_path / 'l.sqlite'}",
                    embedder=minilm(), progress=False) as e:  # fmt: skip
        ctx = e.prepare()
        with pytest.raises(ConfigError, match="embedded store"):
            e.sync_partition(0, 2, ctx)
        e.finalize(ctx, [e.sync_partition(0, 1, ctx), e.delete_absent(ctx)])
    for target in (url, f"qdrant://{tmp_path / 'q'}?collection=docs"):
        with pytest.raises(ConfigError, match="embedded store"):
            build_reindex_dag("emb", source=str(src), targets=[target], partitions=2)
    build_reindex_dag("emb_ok", source=str(src), targets=[url], partitions=1)


def test_the_cli_guards_as_the_docs_show_them(tmp_path: Path, chroma_path_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--repair [auto|on|off]``, ``--drift-sample``, ``--max-delete-fraction`` and ``status --verify``,
    written as docs/exactness.md and the README show them."""
    url = with_name(chroma_path_url, "cliguards")
    key = target_key(url)
    docs = corpus(10)
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    common = ("--source", str(src), "--target", url, "--ledger", ledger)
    assert reindex(capsys, *common)[0] == 0
    with opened(url) as store:
        assert store.delete(sorted(store_records(store))[:2]).ok
    capsys.readouterr()
    assert main(["status", "--target", url, "--ledger", ledger, "--verify"]) == 1  # out of sync
    out = capsys.readouterr().out
    assert "OUT OF SYNC" in out and '"missing_in_store": 2' in out
    rc, r, _ = reindex(capsys, *common, "--repair", "off", "--drift-sample", "0")
    assert rc == 0 and r["drift"][key]["found"] and r["drift"][key]["sampled"] == 0 and not r["drift"][key]["repaired"]
    rc, r, _ = reindex(capsys, *common, "--repair")
    assert rc == 0 and r["drift"][key]["full"] and r["drift"][key]["repaired"] and r["embedded"] == 2
    capsys.readouterr()
    assert main(["status", "--target", url, "--ledger", ledger, "--verify", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["in_sync"] and status["owner"] == {"ledger": status["ledger"]["id"], "key": key}
    write_jsonl(src, docs[:2])  # 8 of 10 gone: refused at the default 0.5, allowed at 0.9
    rc, r, err = reindex(capsys, *common)
    assert rc == 1 and "refused to delete 8 of its 10 documents" in err
    with pytest.raises(SyncError, match="--allow-mass-delete"):
        Report.from_dict(r).raise_for_failures()
    rc, r, _ = reindex(capsys, *common, "--max-delete-fraction", "0.9")
    assert rc == 0 and r["ok"] and r["deleted"][key] > 0
    assert_in_step(url, minilm(), docs[:2], CT)
