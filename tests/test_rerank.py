"""Rerankers (embed_core.rerank, embed_core.remote_rerank) and two-stage search (integration.search).

- Qwen3-Reranker: a tiny random ``Qwen3ForCausalLM`` against an independent implementation of the model
  card's code (full LM logits, the card's tokenizer call and truncation), one pair at a time; our batched
  packed and padded paths must equal it.
- Cross-encoders: a tiny random BERT sequence classifier against sentence-transformers'
  ``CrossEncoder.predict`` on the same directory.
- Remote: ``embedrail serve``'s ``/v1/rerank`` and TEI-shaped ``/rerank`` over real HTTP equal local.
- Two-stage search on a real store (embedded Chroma): candidates, order, scores, stages, CLI.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_embed_fixtures import build_tiny_cross_encoder, build_tiny_qwen3_reranker
from test_integration_support import cached_load, write_jsonl

from embedrail.embed_core import Embedder, open_reranker
from embedrail.embed_core.remote_rerank import RemoteReranker, split_rerank_url
from embedrail.embed_core.rerank import (
    QWEN3_RERANK_INSTRUCTION,
    QWEN3_RERANK_PREFIX,
    QWEN3_RERANK_SUFFIX,
    BaseReranker,
)
from embedrail.embed_core.serve import BackgroundServer
from embedrail.errors import ConfigError, InputError, ModelError, RemoteEmbeddingError

QUERY = "what is it"
DOCS = ["a fox", "The quick brown fox jumps over the lazy dog.", "def parse(argv): return argv",
        "Embeddings map text to vectors; similar texts map to nearby vectors. " * 3, "x"]  # fmt: skip
LONG = "The quick brown fox jumps over the lazy dog. " * 80  # far beyond the tiny models' limits


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen3_reranker(tmp_path_factory.mktemp("tiny-qwen3-reranker"))


@pytest.fixture(scope="module")
def ce_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-cross-encoder"))


@pytest.fixture(scope="module")
def qwen(qwen_dir: Path) -> BaseReranker:
    return open_reranker(str(qwen_dir), device="cpu")


def official_qwen3_scores(model_dir: Path, query: str, docs: list[str], instruction: str | None = None,
                          max_length: int = 512) -> np.ndarray:  # fmt: skip
    """The Qwen3-Reranker model card's code, one pair per call (no padding, so nothing depends on how
    a batch is padded): format, tokenize with truncation, prefix + ids + suffix, the full LM logits at the
    last position, log_softmax over [no, yes], exp."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    prefix = tok.encode(QWEN3_RERANK_PREFIX, add_special_tokens=False)
    suffix = tok.encode(QWEN3_RERANK_SUFFIX, add_special_tokens=False)
    out = []
    for doc in docs:
        text = f"<Instruct>: {instruction or QWEN3_RERANK_INSTRUCTION}\n<Query>: {query}\n<Document>: {doc}"
        enc = tok([text], padding=False, truncation="longest_first", return_attention_mask=False,
                  max_length=max_length - len(prefix) - len(suffix))  # fmt: skip
        ids = torch.tensor([prefix + enc["input_ids"][0] + suffix])
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1, :]
        pair = torch.stack([logits[:, no], logits[:, yes]], dim=1).log_softmax(dim=1)
        out.append(float(pair[0, 1].exp()))
    return np.array(out, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Qwen3-Reranker
# ---------------------------------------------------------------------------------------------
def test_qwen3_reranker_equals_the_model_card_formula(qwen: BaseReranker, qwen_dir: Path) -> None:
    docs = [*DOCS, LONG]
    ref = official_qwen3_scores(qwen_dir, QUERY, docs)
    assert ref.std() > 0.05  # the tiny model's scores spread: the comparison can tell documents apart
    batch = qwen.rerank(QUERY, docs)
    assert batch.dtype == np.float32 and batch.shape == (len(docs),)
    assert np.abs(batch - ref).max() <= 1e-4
    single = np.array([qwen.rerank(QUERY, [d])[0] for d in docs])
    assert np.abs(batch - single).max() <= 1e-5  # batch == single: padding and packing change nothing
    assert qwen.kind == "qwen3" and qwen.instruction == QWEN3_RERANK_INSTRUCTION and qwen.max_tokens == 512
    assert qwen.stats.truncated >= 2  # LONG was cut (twice: batch and single)


def test_qwen3_padded_path_and_instruction(qwen: BaseReranker, qwen_dir: Path) -> None:
    padded = open_reranker(str(qwen_dir), device="cpu", packed=False)
    try:
        assert getattr(padded, "_packed", None) is None and getattr(qwen, "_packed", None) is not None
        assert np.abs(padded.rerank(QUERY, DOCS) - qwen.rerank(QUERY, DOCS)).max() <= 1e-5
    finally:
        padded.close()
    task = "Given a code question, find the function that answers it"
    ours = qwen.rerank(QUERY, DOCS, instruction=task)
    assert np.abs(ours - official_qwen3_scores(qwen_dir, QUERY, DOCS, instruction=task)).max() <= 1e-4
    assert np.abs(ours - qwen.rerank(QUERY, DOCS)).max() > 1e-4  # the instruction is part of the prompt


def test_qwen3_long_inputs_truncated_as_the_model_card_does(qwen_dir: Path) -> None:
    short = open_reranker(str(qwen_dir), device="cpu", max_tokens=128)
    try:
        got = short.rerank(QUERY, [LONG, "a fox"])
        assert np.abs(got - official_qwen3_scores(qwen_dir, QUERY, [LONG, "a fox"], max_length=128)).max() <= 1e-4
        assert short.stats.truncated == 1
    finally:
        short.close()
    with pytest.raises(ConfigError, match="exceeds"):
        open_reranker(str(qwen_dir), device="cpu", max_tokens=100_000)


def test_rerank_input_errors(qwen: BaseReranker) -> None:
    assert qwen.rerank(QUERY, []).shape == (0,)
    with pytest.raises(InputError, match="query is empty"):
        qwen.rerank("  ", DOCS)
    with pytest.raises(InputError, match="list of strings"):
        qwen.rerank(QUERY, "one string")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"texts\[1\] is a int"):
        qwen.rerank(QUERY, ["ok", 3])  # type: ignore[list-item]
    with pytest.raises(InputError, match="not valid Unicode"):
        qwen.rerank(QUERY, ["ok", "bad \udcff bytes"])
    ranked = qwen.rank(QUERY, DOCS, top_k=2)
    scores = qwen.rerank(QUERY, DOCS)
    assert [i for i, _ in ranked] == list(np.argsort(-scores, kind="stable")[:2])


def test_not_a_reranker_is_a_clear_error(tmp_path: Path) -> None:
    from test_embed_fixtures import build_tiny_qwen3

    embedding_model = build_tiny_qwen3(tmp_path / "embedding")  # a Qwen3Model: no LM head, no classifier
    with pytest.raises(ModelError, match="not a reranker"):
        open_reranker(str(embedding_model), device="cpu")
    with pytest.raises(ModelError, match="does not exist"):
        open_reranker("./no/such/reranker", device="cpu")


# ---------------------------------------------------------------------------------------------
# cross-encoders
# ---------------------------------------------------------------------------------------------
def test_cross_encoder_equals_sentence_transformers(ce_dir: Path) -> None:
    from sentence_transformers import CrossEncoder

    docs = [*DOCS, LONG]  # LONG is truncated longest_first at the model's 128 tokens by both
    ref = CrossEncoder(str(ce_dir), device="cpu").predict([(QUERY, d) for d in docs])
    assert np.asarray(ref).std() > 0.05
    exact = open_reranker(str(ce_dir), device="cpu", dtype="float32")
    padded = open_reranker(str(ce_dir), device="cpu", dtype="float32", packed=False)
    default = open_reranker(str(ce_dir), device="cpu")  # bf16 matrix products where the CPU has them
    try:
        assert exact.kind == "cross-encoder" and exact.max_tokens == 128 and getattr(exact, "_packed", None) is not None
        assert np.abs(exact.rerank(QUERY, docs) - ref).max() <= 1e-5
        assert np.abs(padded.rerank(QUERY, docs) - ref).max() <= 1e-5
        assert np.abs(default.rerank(QUERY, docs) - ref).max() <= 2e-2
        assert exact.stats.truncated == 1
        single = np.array([exact.rerank(QUERY, [d])[0] for d in docs])
        assert np.abs(single - ref).max() <= 1e-5
    finally:
        for r in (exact, padded, default):
            r.close()
    with pytest.raises(ModelError, match="closed"):
        exact.rerank(QUERY, DOCS)


def test_cross_encoder_saved_activation(ce_dir: Path, tmp_path: Path) -> None:
    import torch
    from sentence_transformers import CrossEncoder

    d = tmp_path / "saved"  # as sentence-transformers saves a CrossEncoder with its own activation
    CrossEncoder(str(ce_dir), device="cpu", activation_fn=torch.nn.Identity()).save(str(d))
    ref = CrossEncoder(str(d), device="cpu").predict([(QUERY, x) for x in DOCS])
    with open_reranker(str(d), device="cpu", dtype="float32") as rr:
        got = rr.rerank(QUERY, DOCS)
    assert np.abs(got - ref).max() <= 1e-4 and (got < 0).any()  # raw logits: not squashed into (0, 1)


# ---------------------------------------------------------------------------------------------
# remote
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(qwen: BaseReranker) -> Iterator[str]:
    with BackgroundServer(Embedder.load("minilm", device="cpu"), reranker=qwen) as url:
        yield url


def test_remote_rerank_equals_local(served: str, qwen: BaseReranker) -> None:
    local = qwen.rerank(QUERY, DOCS)
    with RemoteReranker(f"{served}/v1#{qwen.model_id}", batch_size=2) as v1:  # three requests
        assert np.abs(v1.rerank(QUERY, DOCS) - local).max() <= 1e-6 and v1.stats.batches == 3
        task = "Given a code question, find the function that answers it"
        assert np.abs(v1.rerank(QUERY, DOCS, instruction=task) - qwen.rerank(QUERY, DOCS, instruction=task)).max() <= 1e-6
    with open_reranker(f"{served}/rerank") as tei:  # TEI's shape
        assert tei.kind == "remote" and np.abs(tei.rerank(QUERY, DOCS) - local).max() <= 1e-6
    body = httpx.post(f"{served}/v1/rerank", json={"query": QUERY, "documents": [{"text": d} for d in DOCS], "top_n": 2,
                                                    "return_documents": True}).json()  # fmt: skip
    best = list(np.argsort(-local, kind="stable")[:2])
    assert [r["index"] for r in body["results"]] == best and body["results"][0]["document"]["text"] == DOCS[best[0]]
    assert body["usage"]["total_tokens"] > 0
    bad = httpx.post(f"{served}/v1/rerank", json={"query": "", "documents": ["x"]})
    assert bad.status_code == 400 and "query is empty" in bad.json()["error"]["message"]
    other = httpx.post(f"{served}/v1/rerank", json={"model": "someone/else", "query": "q", "documents": ["x"]})
    assert other.status_code == 404


def test_remote_rerank_errors_and_retries(served: str) -> None:
    with BackgroundServer(Embedder.load("minilm", device="cpu")) as plain, RemoteReranker(f"{plain}/v1#m", max_retries=0) as rr:
        with pytest.raises(RemoteEmbeddingError, match="no reranker"):
            rr.rerank(QUERY, DOCS)
    with pytest.raises(ConfigError, match="name the served model"):
        RemoteReranker("http://127.0.0.1:9/v1")
    assert split_rerank_url("https://h/v1/rerank#m") == ("https://h/v1/rerank", "v1", "m")
    assert split_rerank_url("http://h:8080/rerank") == ("http://h:8080/rerank", "tei", None)
    calls = {"n": 0}

    class Flaky(httpx.BaseTransport):  # the injected fault: one 503 before the real server answers
        def __init__(self) -> None:
            self.inner = httpx.HTTPTransport()

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            calls["n"] += 1
            if calls["n"] == 1:
                return httpx.Response(503, json={"error": "warming up"})
            return self.inner.handle_request(request)

        def close(self) -> None:
            self.inner.close()

    with RemoteReranker(f"{served}/rerank", transport=Flaky(), backoff=0.01) as rr:
        assert rr.rerank(QUERY, DOCS).shape == (len(DOCS),) and rr.stats.http_retries == 1


# ---------------------------------------------------------------------------------------------
# two-stage search on a real store
# ---------------------------------------------------------------------------------------------
class KeywordReranker(BaseReranker):
    """A reranker whose order is known: the share of query words a text contains (a stand-in with a
    predictable answer; the model-backed rerankers are tested above)."""

    backend, kind, model, model_id, max_tokens = "local", "keyword", "keyword", "keyword", 512

    def __init__(self) -> None:
        from embedrail.embed_core import EmbedStats

        self.stats = EmbedStats()

    def _score(self, query: str, texts: list[str], instruction: str | None) -> np.ndarray:
        words = set(query.lower().split())
        return np.array([len(words & set(t.lower().replace(".", " ").split())) / len(words) for t in texts], dtype=np.float32)


@pytest.fixture(scope="module")
def chroma_index(tmp_path_factory: pytest.TempPathFactory) -> str:
    from embedrail.integration.engine import SyncEngine

    tmp = tmp_path_factory.mktemp("two-stage")
    docs = [{"id": f"d{i}", "text": t, "kind": "even" if i % 2 == 0 else "odd"} for i, t in enumerate([
        "Rivers carry water from mountains to the sea.", "A compiler translates source code into machine code.",
        "Knead the dough and bake the bread in a hot oven.", "The zebra quagga grazes near the river.",
        "Salmon swim upstream to spawn in cold rivers.", "Sourdough bread rises slowly overnight.",
        "Linkers combine object files into an executable.", "Mountains are shaped by glaciers over time."])]  # fmt: skip
    target = f"chroma://{tmp / 'chroma'}?collection=two_stage"
    with SyncEngine(str(write_jsonl(tmp / "docs.jsonl", docs)), [target], ledger=f"sqlite:///{tmp / 'l.sqlite'}",
                    embedder=cached_load(Embedder, "minilm", device="cpu"), progress=False) as engine:  # fmt: skip
        assert engine.run().embedded == 8
    return target


def test_two_stage_search_reranks_the_candidates(chroma_index: str) -> None:
    from embedrail.integration.search import Searcher

    query = "zebra quagga"
    with Searcher(chroma_index, embedder=cached_load(Embedder, "minilm", device="cpu")) as plain:
        knn = plain.search(query, k=8)
    assert knn.stages == ["embed", "knn"] and knn.reranker is None and knn.first_stage is None
    rr = KeywordReranker()
    with Searcher(chroma_index, embedder=cached_load(Embedder, "minilm", device="cpu"), reranker=rr) as s:
        res = s.search(query, k=2, candidates=8)
        assert res.stages == ["embed", "knn", "rerank"] and set(res.timings) >= {"embed", "knn", "rerank"}
        assert res.reranker == "keyword" and [h.id for h in res.first_stage or []] == [h.id for h in knn.hits]
        assert res.hits[0].id == "d3#0" and res.hits[0].score == 1.0 and len(res.hits) == 2  # the only text with both words
        assert res.to_dict()["candidates"] == 8
        few = s.search(query, k=1, candidates=2)  # the reranker sees only the first stage's 2 best
        assert [h.id for h in few.first_stage or []] == [h.id for h in knn.hits[:2]] and len(few.hits) == 1
        filtered = s.search(query, k=3, filter={"kind": "even"})
        assert all(h.metadata["kind"] == "even" for h in filtered.hits) and "d3#0" not in [h.id for h in filtered.hits]
        assert s.search(query, k=2, rerank=False).stages == ["embed", "knn"]
    with Searcher(chroma_index, embedder=cached_load(Embedder, "minilm", device="cpu")) as s2:
        with pytest.raises(ConfigError, match="two-stage"):
            s2.search(query, k=2, candidates=10)


def test_two_stage_search_with_a_model_reranker_and_the_cli(chroma_index: str, ce_dir: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from embedrail.integration.cli import main
    from embedrail.integration.search import Searcher

    monkeypatch.setattr(Embedder, "load", classmethod(cached_load))
    with Searcher(chroma_index, reranker=str(ce_dir), device="cpu") as s:
        res = s.search("bread", k=3, candidates=6)
        rr = s.reranker()
        want = rr.rerank("bread", [h.text for h in res.first_stage or []])
        assert [h.score for h in res.hits] == pytest.approx(sorted(want.tolist(), reverse=True)[:3], abs=1e-6)
    code = main(["search", "--target", chroma_index, "--rerank", str(ce_dir), "--candidates", "6", "-k", "3", "--json", "bread"])
    hits = json.loads(capsys.readouterr().out)
    assert code == 0 and [h["id"] for h in hits] == [h.id for h in res.hits]
    code = main(["search", "--target", chroma_index, "--rerank", str(ce_dir), "-k", "2", "bread"])
    out = capsys.readouterr().out
    assert code == 0 and "rerank" in out and "reranked 8 candidates" in out  # default candidates: max(100, k), 8 exist
    code = main(["search", "--target", chroma_index, "--candidates", "5", "bread"])
    err = capsys.readouterr().err
    assert code == 2 and "--rerank" in err and "Traceback" not in err
