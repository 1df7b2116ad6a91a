"""The pure planner and the run context: no store, no ledger, no model."""

from __future__ import annotations

import json

import pytest

from embedrail.connectors.base import IndexSpec
from embedrail.errors import ConfigError
from embedrail.integration.context import RunContext, TargetRun, Watermark
from embedrail.integration.documents import Chunk, Document, canonical_json, doc_hash
from embedrail.integration.plan import (
    DocPlan,
    chunk_fingerprint,
    plan_chunks,
    plan_document,
    plan_removal,
    triage,
)

EMB = "fp-model-a"
CONFIG = "fp-model-a|chunk:model:0"


def chunks_of(doc: Document) -> list[Chunk]:
    """A stand-in chunker: one chunk per '|'-separated piece (the planner does not care how chunks are cut)."""
    return [Chunk(f"{doc.id}#{n}", doc.id, n, t) for n, t in enumerate(doc.text.split("|"))]


def planned(doc: Document, emb: str = EMB):
    return plan_chunks(chunks_of(doc), emb, canonical_json(doc.metadata))


def ledger_rows(doc: Document, emb: str = EMB) -> dict[str, str | None]:
    """What the ledger holds for ``doc`` once a target has it."""
    return {pc.chunk.id: pc.fingerprint for pc in planned(doc, emb)}


def test_triage_skips_documents_every_target_holds_before_chunking() -> None:
    doc = Document("a", "one|two|three", {"lang": "en"})
    h = doc_hash(doc, CONFIG)
    t = triage(doc, CONFIG, {"es": (h, 3), "chroma": (h, 3)})
    assert t.need == () and t.known_chunks == 3
    t = triage(doc, CONFIG, {"es": (h, 3), "chroma": None})  # a new target
    assert t.need == ("chroma",) and t.hashes == {"es": h, "chroma": h}
    t = triage(doc, CONFIG, {"es": ("other-hash", 3)})  # text, metadata or configuration changed
    assert t.need == ("es",)
    assert triage(doc, "fp-model-b|chunk:model:0", {"es": (h, 3)}).need == ("es",)  # another embedding
    tomb = triage(Document("a", "", deleted=True), CONFIG, {"es": (h, 3), "chroma": None})
    assert tomb.hashes is None and tomb.need == ("es", "chroma")


def test_triage_hashes_each_target_under_its_own_embedding() -> None:
    """Targets at other dims hold other vectors: a document's hash covers each target's own fingerprint,
    so widening one target re-plans that target only."""
    doc = Document("a", "one|two|three", {"lang": "en"})
    narrow, wide = "fp-at-256|chunk:model:0", "fp-at-1024|chunk:model:0"
    hn, hw = doc_hash(doc, narrow), doc_hash(doc, wide)
    assert hn != hw
    t = triage(doc, {"chroma": narrow, "qdrant": wide}, {"chroma": (hn, 3), "qdrant": (hw, 3)})
    assert t.need == () and t.hashes == {"chroma": hn, "qdrant": hw}
    t = triage(doc, {"chroma": narrow, "qdrant": "fp-at-2048|chunk:model:0"}, {"chroma": (hn, 3), "qdrant": (hw, 3)})
    assert t.need == ("qdrant",)


def test_plan_new_unchanged_changed_and_stale_chunks() -> None:
    v1 = Document("a", "one|two|three", {"lang": "en"})
    assert plan_document("a", planned(v1), {}) == DocPlan("a", new=("a#0", "a#1", "a#2"))
    held = ledger_rows(v1)
    assert plan_document("a", planned(v1), held) == DocPlan("a", unchanged=("a#0", "a#1", "a#2"))
    v2 = Document("a", "one|TWO", {"lang": "en"})  # second chunk edited, third gone
    p = plan_document("a", planned(v2), held)
    assert (p.new, p.changed, p.unchanged, p.stale) == ((), ("a#1",), ("a#0",), ("a#2",))
    assert p.writes == ("a#1",) and p.counts() == {"new": 0, "changed": 1, "retagged": 0, "unchanged": 1, "deleted": 1}
    v3 = Document("a", "one|two|three|four", {"lang": "de"})  # metadata only: the vectors are kept, re-tagged
    p = plan_document("a", planned(v3), held)
    assert p.retagged == ("a#0", "a#1", "a#2") and p.new == ("a#3",) and not p.changed and not p.stale
    assert p.writes == ("a#3",) and p.counts()["retagged"] == 3
    v4 = Document("a", "one|TWO|three", {"lang": "de"})  # text and metadata: that chunk is written whole
    p = plan_document("a", planned(v4), held)
    assert p.changed == ("a#1",) and p.retagged == ("a#0", "a#2")


def test_rows_of_the_older_one_part_fingerprint_are_written_again() -> None:
    """Ledgers written before the text/metadata split hold 32-character fingerprints: such a chunk of a
    document that changed is planned as changed (written whole, once), never as re-tagged."""
    doc = Document("a", "one|two", {"lang": "en"})
    old = {pc.chunk.id: pc.fingerprint[:32] for pc in planned(doc)}
    p = plan_document("a", planned(Document("a", "one|two", {"lang": "de"})), old)
    assert p.changed == ("a#0", "a#1") and not p.retagged


def test_an_intent_row_is_written_again() -> None:
    """A NULL fingerprint is an intent: the write may have reached the store before a crash."""
    doc = Document("a", "one|two")
    held = {**ledger_rows(doc), "a#1": None}
    p = plan_document("a", planned(doc), held)
    assert p.unchanged == ("a#0",) and p.changed == ("a#1",)


def test_targets_are_planned_against_their_own_rows() -> None:
    doc = Document("a", "one|two")
    behind = ledger_rows(Document("a", "one"))
    plans = {key: plan_document("a", planned(doc), held) for key, held in {"es": ledger_rows(doc), "chroma": behind, "new": {}}.items()}
    assert plans["es"].writes == () and plans["chroma"].writes == ("a#1",) and plans["new"].writes == ("a#0", "a#1")
    other_model = plan_document("a", planned(doc, "fp-model-b"), ledger_rows(doc))
    assert other_model.changed == ("a#0", "a#1")  # a chunk's fingerprint includes the embedding's


def test_removal_plans_every_held_chunk_as_stale() -> None:
    assert plan_removal("a", {"a#0": "x", "a#1": None}) == DocPlan("a", stale=("a#0", "a#1"), removed=True)
    assert plan_removal("a", {}).stale == ()


def test_chunk_fingerprint_depends_on_text_embedding_and_metadata() -> None:
    base = chunk_fingerprint("t", EMB, "{}")
    assert len(base) == 48 and base == chunk_fingerprint("t", EMB, "{}")
    assert base[:32] == chunk_fingerprint("t", EMB, '{"a":1}')[:32]  # the text part ignores metadata
    assert len({base, chunk_fingerprint("u", EMB, "{}"), chunk_fingerprint("t", "other", "{}"), chunk_fingerprint("t", EMB, '{"a":1}')}) == 4


def test_run_context_round_trips_through_json() -> None:
    spec = IndexSpec(dims=384, metric="cosine", fingerprint="abc", embedding={"model": "m", "dims": 384})
    ctx = RunContext(mode="full", dry_run=False, deletes="snapshot", model="minilm", load_dims=None, model_id="m", spec=spec,
                     chunk_tokens=64, chunk_overlap=8, notes=["n"],
                     targets=[TargetRun(0, "es://h:9200/docs", "docs__v1", rebuild=True), TargetRun(1, "chroma:///x?collection=c", error="down"),
                              TargetRun(2, "qdrant:///q?collection=c", spec=IndexSpec(dims=128, fingerprint="def", embedding={"dims": 128}))],
                     watermark=Watermark("sql|q|updated", None))  # fmt: skip
    again = RunContext.from_dict(json.loads(json.dumps(ctx.to_dict())))
    assert again == ctx and again.doc_config() == ctx.doc_config() and again.dims == 384
    assert [again.spec_of(t).dims for t in again.targets] == [384, 384, 128]
    assert again.doc_config(again.targets[2]) != again.doc_config(again.targets[0]) == again.doc_config()
    assert RunContext.of(ctx.to_dict()) == ctx and RunContext.of(ctx) is ctx
    with pytest.raises(ConfigError, match="another embedrail version"):
        RunContext.from_dict({**ctx.to_dict(), "version": 1})
