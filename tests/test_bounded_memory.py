"""Per-task memory independent of the corpus (issue 27, deliverable 1), on tiny data: the ledger is read per
window of documents, never as a whole-target map, and snapshot deletes merge two sorted streams (the source's
ids, spilled to disk in runs, and the ledger's, read a page at a time) instead of holding two sets.

The small windows and runs here (``INTAKE``, ``SortedIds.RUN`` patched down) make a few dozen documents cross
every boundary that millions cross in production; the memory itself is measured by ``benchmarks/scale.py``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from test_integration_support import assert_in_step, expected_records, minilm, sentences, write_jsonl
from util import LEDGERS

from embedrail.integration.engine import SyncEngine
from embedrail.integration.idsort import SeenIds, SortedIds, absent
from embedrail.integration.ledger import Ledger
from embedrail.integration.pipeline import PartitionRun

ODD_IDS = ["b", "B", "a", "a b", "é", "e", "中文", "😀", "z\nnewline", "Z", "10", "9", "a/b#c", "ß", "İ"]


def test_sorted_ids_spill_to_disk_and_merge_in_str_order() -> None:
    rng = random.Random(3)
    ids = [rng.choice(ODD_IDS) + str(rng.randrange(50)) for _ in range(400)] + ODD_IDS * 2
    with SortedIds(run=17) as s:
        s.update(ids)
        assert s.spilled > 300  # most of them went through temporary files
        assert list(s) == sorted(set(ids)) and list(s) == sorted(set(ids))  # iterable twice
    held = sorted(set(ids) | {"gone1", "gone2", "\u0000first", "\uffffast"})
    with SortedIds(run=5) as s:
        s.update(ids)
        assert list(absent(held, s)) == sorted({"gone1", "gone2", "\u0000first", "\uffffast"})
    assert list(absent([], ["a"])) == [] and list(absent(["a", "b"], [])) == ["a", "b"]


def test_seen_ids_finds_every_repeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SeenIds, "RECENT", 5)  # most ids end in the sorted array, the rest in the recent set
    rng = random.Random(5)
    # ids whose 16-byte digest ends in NUL bytes, which numpy hands back without them
    nul = [i for i in (f"n{k}" for k in range(5000)) if SeenIds._digest(i).endswith(b"\x00")][:3]
    assert nul
    ids = [f"{rng.choice(ODD_IDS)}{rng.randrange(300)}" for _ in range(2000)] + ODD_IDS + nul * 2
    seen, kept, expected = SeenIds(), set(), []
    for i in ids:
        expected.append(i not in kept)
        kept.add(i)
    assert [seen.add(i) for i in ids] == expected and len(seen) == len(kept)
    batched = SeenIds()  # the same, a batch at a time (what a source does), repeats inside a batch included
    assert [x for k in range(0, len(ids), 64) for x in batched.add_many(ids[k : k + 64])] == expected


@pytest.mark.parametrize("ledger_kind", LEDGERS)
def test_the_ledger_streams_its_ids_in_str_order(ledger_url: str) -> None:
    """PostgreSQL sorts text by the database's locale (``a`` < ``B`` < ``b``); the ledger asks for code-point
    order (``COLLATE "C"``), the order of Python's ``sorted`` that the merge needs, on SQLite and PostgreSQL."""
    led = Ledger(ledger_url)
    committed = ODD_IDS[:10]
    led.commit("t", "g", docs_done=[(d, "h", 1) for d in committed], written=[(f"{d}#0", d, "f") for d in committed])
    led.mark_intent("t", "g", [(f"{d}#0", d) for d in ODD_IDS[10:]])  # documents known by an intent only
    led.commit("t", "other", docs_done=[("not-this-generation", "h", 1)])
    got = list(led.iter_doc_ids("t", "g", page=3))
    assert got == sorted(ODD_IDS) and led.doc_ids("t", "g") == set(ODD_IDS)
    led.close()


def corpus(n: int, version: int = 0) -> list[dict[str, Any]]:
    return [{"id": f"{ODD_IDS[i % len(ODD_IDS)]}-{i:04d}", "text": sentences(f"d{i}v{version}", 2, 8)} for i in range(n)]


@pytest.mark.parametrize("ledger_kind", LEDGERS)
def test_windows_and_streaming_deletes_keep_the_store_exact(tmp_path: Path, ledger_url: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(PartitionRun, "INTAKE", 16)
    monkeypatch.setattr(SortedIds, "RUN", 11)
    target = f"memory://bounded-{Path(tmp_path).name}/docs"
    docs = corpus(120)
    src = write_jsonl(tmp_path / "docs.jsonl", docs)

    def engine() -> SyncEngine:
        return SyncEngine(str(src), [target], ledger=ledger_url, embedder=minilm(), chunk_tokens=32)

    with engine() as e:
        rep = e.run()
    assert rep.ok and rep.documents == 120
    # an edit, 40 deletions, 5 new: one process (the ids it saw), as `embedrail reindex` runs it
    docs = [d for i, d in enumerate(docs) if i % 3] + corpus(125)[120:]
    docs[0] = {**docs[0], "text": "An edited document about owls."}
    write_jsonl(src, docs)
    with engine() as e:
        rep = e.run()
    stale = set(expected_records(minilm(), corpus(120), 32)) - set(expected_records(minilm(), docs, 32))
    assert rep.ok and rep.to_dict()["deleted"][target] == len(stale) and rep.documents == 85
    assert_in_step(target, minilm(), docs, 32)
    # the steps in separate processes, as Airflow runs them: the delete step reads the source's ids again
    docs_before, docs = docs, docs[10:]
    write_jsonl(src, docs)
    with engine() as e:
        ctx = e.prepare().to_dict()
        part = e.sync_partition(0, 1, json.loads(json.dumps(ctx)))
    with engine() as e:  # another task: no ids from the partition step
        deleted = e.delete_absent(ctx)
        final = e.finalize(ctx, [part, deleted])
    stale = set(expected_records(minilm(), docs_before, 32)) - set(expected_records(minilm(), docs, 32))
    assert final["ok"] and final["deleted"][target] == len(stale) and len(stale) >= 10
    assert_in_step(target, minilm(), docs, 32)


def test_the_mass_delete_guard_counts_while_it_streams(tmp_path: Path, ledger_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SortedIds, "RUN", 7)
    target = f"memory://guard-{Path(tmp_path).name}/docs"
    docs = corpus(40)
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    with SyncEngine(str(src), [target], ledger=ledger_url, embedder=minilm(), chunk_tokens=32) as e:
        assert e.run().ok
    write_jsonl(src, docs[:10])  # a truncated source: 30 of 40 gone
    with SyncEngine(str(src), [target], ledger=ledger_url, embedder=minilm(), chunk_tokens=32) as e:
        rep = e.run()
    assert not rep.ok and rep.refused_deletes[target] == {"documents": 30, "held": 40, "fraction": 0.75, "max_delete_fraction": 0.5}
    assert_in_step(target, minilm(), docs, 32)  # nothing was deleted
