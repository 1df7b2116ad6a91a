"""Every target at its own dimension from one embedding pass (issue 13, item 7).

A Matryoshka model (the tiny random Qwen3: 64 native dims, 32 the smallest) is run once, at the largest
dims a target needs; each target gets the truncation to its own dims, renormalised, and records the
fingerprint of the model loaded at those dims. Real stores: embedded Chroma, Elasticsearch, embedded Qdrant.
"""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_embed_fixtures import tiny_qwen3_dir  # noqa: F401
from test_integration_support import assert_in_step, minilm, sentences, write_jsonl
from util import describe, opened, with_name

from embedrail.embed_core import Embedder
from embedrail.errors import ConfigError, DimensionLimitError, IndexMismatchError, ModelError
from embedrail.integration import Target, sync
from embedrail.integration.chunking import Chunker
from embedrail.integration.cli import main
from embedrail.integration.documents import Document
from embedrail.integration.embedding import ModelResolver, TargetNeed
from embedrail.integration.ledger import Ledger
from embedrail.integration.targets import split_target, target_key

CT = 24


def corpus(n: int = 5) -> list[dict[str, Any]]:
    return [{"id": f"doc{i}", "text": sentences(f"doc{i}", 3), "group": i % 2} for i in range(n)]


def chunks_of(emb: Any, docs: list[dict[str, Any]]) -> dict[str, str]:
    ch = Chunker(emb, CT)
    return {c.id: c.text for d in docs for c in ch.chunk(Document(d["id"], d["text"], {"group": d["group"]}))}


def stored_vectors(url: str, ids: list[str]) -> np.ndarray:
    """The float32 vectors a store really holds, in ``ids`` order (Chroma through its own client; the
    others through the connector's exact read of stored vectors, the one ``update_metadata`` uses)."""
    with opened(url) as store:
        if url.startswith("chroma://"):  # Chroma's own read, from the physical collection the name points at
            info = store.describe()
            col = store.client.get_collection(info.physical_name or info.name, embedding_function=None)
            got = col.get(ids=ids, include=["embeddings"])
            by_id = dict(zip(got["ids"], np.asarray(got["embeddings"], dtype=np.float32), strict=True))
        else:
            by_id = {i: v for i, (v, _) in store.stored_vectors(ids).items()}
    return np.stack([by_id[i] for i in ids])


def test_one_pass_writes_every_target_at_its_own_dims(tmp_path: Path, unique_name: str, es_url: str,
                                                     tiny_qwen3_dir: Path) -> None:  # noqa: F811  # fmt: skip
    model = str(tiny_qwen3_dir)
    ref = {d: Embedder.load(model, dims=d, device="cpu", dtype="float32") for d in (32, 48, 64)}
    docs = corpus()
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    chroma = f"chroma://{tmp_path / 'chroma'}?collection={unique_name}"
    es = with_name(es_url, unique_name)
    qdrant = f"qdrant://{tmp_path / 'qdrant'}?collection={unique_name}"
    urls, dims = [chroma, es, qdrant], [32, 48, 64]
    keys = [target_key(u) for u in urls]
    opts = {"ledger": f"sqlite:///{tmp_path / 'ledger.sqlite'}", "model": model, "dtype": "float32", "chunk_tokens": CT,
            "progress": False}  # fmt: skip

    # the three ways to give a target its dims: URL#dims=N, Target(url, dims=N), the model's native size
    rep = sync(str(src), [f"{chroma}#dims=32", Target(es, dims=48), qdrant], **opts)
    texts = chunks_of(ref[64], docs)
    assert rep.ok and rep.dims == 64 and rep.target_dims == dict(zip(keys, dims, strict=True))
    # each distinct text embedded once for all three targets (the tiny tokenizer repeats some chunk texts)
    assert rep.embedded == len(set(texts.values())) and rep.embedded + rep.reused == len(texts)
    assert rep.upserted == dict.fromkeys(keys, len(texts))
    assert any("embedded once at 64 dims" in n for n in rep.notes)

    ids = sorted(texts)
    for url, d in zip(urls, dims, strict=True):
        info = describe(url)
        # the index records what the model loaded at d records: a query-side load at d matches it
        assert info.spec.dims == d and info.spec.fingerprint == ref[d].fingerprint and info.spec.embedding["dims"] == d
        assert_in_step(url, ref[d], docs, CT)  # every record and ledger row carries the fingerprint at d
        # the stored vectors are the model's at d: cut and renormalised, not only cut
        held = stored_vectors(url, ids)
        assert held.shape == (len(ids), d) and np.allclose(np.linalg.norm(held, axis=1), 1.0, atol=1e-5)
        assert np.allclose(held, ref[d].embed_documents([texts[i] for i in ids]), atol=1e-5), url

    # again, without any dims: each target keeps what its index records, and nothing is embedded
    again = sync(str(src), urls, **opts)
    assert again.ok and again.embedded == 0 and again.upserted == dict.fromkeys(keys, 0)
    assert again.target_dims == rep.target_dims

    # one target asked for other dims: its index holds other vectors -> a clear error, nothing written
    with pytest.raises(IndexMismatchError, match=r"--mode full .* at 40 dims"):
        sync(str(src), [f"{chroma}#dims=40", es, qdrant], **opts)
    assert describe(chroma).spec.dims == 32 and describe(chroma).count == len(ids)

    # a document edited: re-embedded once, each target written its own cut
    docs[0]["text"] += " And one more sentence about rivers."
    write_jsonl(src, docs)
    edit = sync(str(src), urls, **opts)
    new_texts = chunks_of(ref[64], docs)
    changed = {c for c in new_texts if new_texts[c] != texts.get(c)}
    assert edit.ok and edit.embedded + edit.reused == len(changed) and edit.upserted == dict.fromkeys(keys, len(changed))
    for url, d in zip(urls, dims, strict=True):
        assert_in_step(url, ref[d], docs, CT)

    # the way to change one target's dims: a full rebuild (every target is rebuilt; each says its dims)
    full = sync(str(src), [f"{chroma}#dims=40", Target(es, dims=48), qdrant], mode="full", **opts)
    assert full.ok and full.target_dims == dict(zip(keys, [40, 48, 64], strict=True))
    # the widest target keeps its dims: its old index holds the model's vectors, so every target's new index is
    # written from them (cut to 40 and 48), and nothing is embedded
    assert full.embedded == 0 and full.from_index == len(set(new_texts.values())) and full.upserted == dict.fromkeys(keys, len(new_texts))
    at40 = Embedder.load(model, dims=40, device="cpu", dtype="float32")
    assert describe(chroma).spec.fingerprint == at40.fingerprint
    assert_in_step(chroma, at40, docs, CT)
    assert np.allclose(stored_vectors(chroma, ids), at40.embed_documents([new_texts[i] for i in ids]), atol=1e-5)


def test_a_model_that_is_not_matryoshka_gets_one_size_for_every_target(tmp_path: Path, unique_name: str) -> None:
    """MiniLM has one size (384): a target asking for 256 is refused before anything is written."""
    a = f"chroma://{tmp_path / 'chroma'}?collection={unique_name}_a"
    b = f"chroma://{tmp_path / 'chroma'}?collection={unique_name}_b"
    src = write_jsonl(tmp_path / "docs.jsonl", corpus(2))
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    with pytest.raises(ModelError, match=r"_b \(asked for\) needs 256 dims .* not known to be Matryoshka.* give every target 384"):
        sync(str(src), [a, f"{b}#dims=256"], ledger=ledger, embedder=minilm(), progress=False)
    assert not describe(a).exists and not describe(b).exists
    with closing(Ledger(ledger)) as led:
        assert led.target(target_key(a)) is None and led.target(target_key(b)) is None


def test_choose_per_target_dims(tmp_path: Path, tiny_qwen3_dir: Path) -> None:  # noqa: F811
    """The resolver without stores: own dims, the run's default, a store's limit, recorded dims."""
    qwen = Embedder.load(str(tiny_qwen3_dir), device="cpu", dtype="float32")
    with closing(Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")) as ledger:
        r = ModelResolver(ledger, embedder=qwen)
        none: Any = lambda key: None  # noqa: E731 - nothing recorded
        c = r.choose(None, [TargetNeed("a", 32, None), TargetNeed("b", None, 40), TargetNeed("c", None, None)], incremental=True,
                     recorded=none)  # fmt: skip
        assert c.spec.dims == 64 and {k: s.dims for k, s in c.specs.items()} == {"a": 32, "b": 40, "c": 64}
        assert c.specs["a"].fingerprint == qwen.embedding_info_at(32)["fingerprint"] and c.specs["c"].fingerprint == qwen.fingerprint
        assert c.specs["b"].embedding["dims"] == 40 and any("b: dims 64 lowered to 40" in n for n in c.notes)
        # incremental: a target keeps the dims its index records; explicit dims win over it
        rec = {"a": {"model": qwen.model, "dims": 48}}
        c = r.choose(None, [TargetNeed("a", None, None), TargetNeed("b", 32, None)], incremental=True, recorded=rec.get)
        assert {k: s.dims for k, s in c.specs.items()} == {"a": 48, "b": 32}
        c = r.choose(None, [TargetNeed("a", None, None)], incremental=False, recorded=rec.get)  # full: the model's size
        assert c.specs["a"].dims == 64
        with pytest.raises(DimensionLimitError, match="b accepts at most 40 dimensions but dims 48"):
            r.choose(None, [TargetNeed("a", 32, None), TargetNeed("b", 48, 40)], incremental=True, recorded=none)
        with pytest.raises(ModelError, match="smallest Matryoshka dimension 32"):
            r.choose(None, [TargetNeed("a", 16, None)], incremental=True, recorded=none)
        # a loaded model (no embedder given): loaded once, at the widest target's dims
        r2 = ModelResolver(ledger, device="cpu", dtype="float32")
        c = r2.choose(str(tiny_qwen3_dir), [TargetNeed("a", 32, None), TargetNeed("b", 48, None)], incremental=True, recorded=none)
        assert c.load_dims == 48 and c.spec.dims == 48 and c.info.fingerprint == Embedder.load(str(tiny_qwen3_dir), dims=48,
                                                                                               device="cpu").fingerprint  # fmt: skip
        r2.close()


def test_target_dims_in_urls_yaml_and_airflow_specs(tmp_path: Path) -> None:
    assert split_target("es://h:9200/docs#dims=1024") == ("es://h:9200/docs", 1024)
    assert split_target("chroma:///d?collection=c") == ("chroma:///d?collection=c", None)
    assert Target.of({"url": "es://h:9200/docs", "dims": "256"}) == Target("es://h:9200/docs", 256)
    for bad in ("es://h:9200/docs#dims=0", "es://h:9200/docs#dims=x", "es://h:9200/docs#size=3", "es://h:9200/docs#"):
        with pytest.raises(ConfigError, match="dims"):
            Target.of(bad)
    with pytest.raises(ConfigError, match="dims given twice"):
        Target.of({"url": "es://h/d#dims=8", "dims": 16})
    from embedrail.integration.airflow.config import load_dag_config
    from embedrail.integration.airflow.connections import TargetSpec
    from embedrail.integration.airflow.tasks import ReindexJob

    assert TargetSpec.of("conn:my_es/docs#dims=1024") == TargetSpec("conn:my_es/docs", dims=1024)
    cfg = tmp_path / "dims.yaml"
    cfg.write_text(json.dumps({"source": "docs.jsonl", "dims": 256, "targets": [
        {"url": f"chroma://{tmp_path}/c?collection=small", "dims": 128}, f"chroma://{tmp_path}/c?collection=big#dims=1024",
        {"url": f"chroma://{tmp_path}/c?collection=default"}]}))  # fmt: skip
    loaded = load_dag_config(cfg)
    specs = [TargetSpec.of(t) for t in loaded["targets"]]
    assert [s.dims for s in specs] == [128, 1024, None] and loaded["options"].dims == 256
    src = write_jsonl(tmp_path / "docs.jsonl", corpus(1))
    engine, _ = ReindexJob(str(src), specs, f"sqlite:///{tmp_path / 'l.sqlite'}", loaded["options"]).engine()
    with engine:
        assert [t.dims for t in engine.targets] == [128, 1024, None] and all("#" not in t.key for t in engine.targets)


def test_cli_target_dims(capsys: pytest.CaptureFixture[str], tmp_path: Path, unique_name: str,
                         tiny_qwen3_dir: Path) -> None:  # noqa: F811  # fmt: skip
    src = write_jsonl(tmp_path / "docs.jsonl", corpus(3))
    small = f"chroma://{tmp_path / 'chroma'}?collection={unique_name}_s"
    big = f"chroma://{tmp_path / 'chroma'}?collection={unique_name}_b"
    args = ["reindex", "--source", str(src), "--target", f"{small}#dims=32", "--target", big, "--model", str(tiny_qwen3_dir),
            "--chunk-tokens", str(CT), "--ledger", f"sqlite:///{tmp_path / 'l.sqlite'}"]  # fmt: skip
    assert main([*args, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["dims"] == 64 and rep["target_dims"] == {target_key(small): 32, target_key(big): 64}
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"{target_key(small)} (32 dims): upserted 0" in out and f"{target_key(big)} (64 dims)" in out
    assert describe(small).spec.dims == 32 and describe(big).spec.dims == 64


def test_a_stale_model_description_is_forgotten_not_kept(tmp_path: Path, tiny_qwen3_dir: Path) -> None:  # noqa: F811
    """The ledger caches the model's native description; when the model on disk no longer matches it
    (here: a cached fingerprint of another version), the run stops with a clear error and the next one
    describes the model anew, also when the run loaded it at a narrower size than native."""
    from dataclasses import asdict, replace

    from embedrail.integration.context import RunContext

    model = str(tiny_qwen3_dir)
    with closing(Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")) as ledger:
        r = ModelResolver(ledger, device="cpu", dtype="float32")
        native = r.info(model)
        ledger.set_meta(r._cache_key(model), asdict(replace(native, fingerprint="old-version", embedding={
            **native.embedding, "fingerprint_components": {**native.embedding["fingerprint_components"], "revision": "old"}})))  # fmt: skip
        needs = [TargetNeed("a", 48, None)]
        stale = r.choose(model, needs, incremental=True, recorded=lambda key: None)
        ctx = RunContext(mode="incremental", dry_run=False, deletes="snapshot", model=model, load_dims=stale.load_dims,
                         model_id=stale.info.model_id, spec=stale.spec, chunk_tokens=None, chunk_overlap=0)  # fmt: skip
        with pytest.raises(ModelError, match="changed since the last run"):
            r.for_run(ctx)
        fresh = r.choose(model, needs, incremental=True, recorded=lambda key: None)
        assert fresh.load_dims == 48 and fresh.spec.fingerprint == Embedder.load(model, dims=48, device="cpu").fingerprint
        ctx = replace(ctx, spec=fresh.spec)
        assert r.for_run(ctx).fingerprint == fresh.spec.fingerprint
        r.close()
