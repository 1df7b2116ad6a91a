"""``embedrail eval`` (issue 28): retrieval quality on the user's own queries, checked against a brute-force
reference computed here from the vectors the store really holds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_integration_support import minilm, write_jsonl

from embedrail import connect, sync
from embedrail.connectors.base import DEFAULT_ALPHA, DEFAULT_FUSION
from embedrail.errors import ConfigError
from embedrail.integration.cli import main
from embedrail.integration.evaluate import evaluate, load_queries, metrics_of, parse_config, tune

TOPICS = {
    "herons": "Herons wade in shallow marsh water and spear fish with their long sharp bills.",
    "sourdough": "Sourdough bread rises with a wild yeast starter fed on flour and water for days.",
    "glaciers": "Glaciers carve U-shaped valleys as the ice grinds slowly over the bedrock.",
    "compilers": "A compiler parses source code into a syntax tree, then emits machine instructions.",
    "violins": "A violin's sound comes from bowed strings and the resonance of its spruce top.",
    "tides": "Tides rise and fall twice a day, pulled by the gravity of the moon and the sun.",
    "beekeeping": "Beekeepers smoke the hive gently before lifting frames of honeycomb out.",
    "railways": "Steam locomotives pulled the first passenger trains along iron railway tracks.",
    "volcanoes": "Volcanoes erupt when molten magma forces its way up through the earth's crust.",
    "chess": "In chess the knight moves in an L shape and can jump over other pieces.",
    "coffee": "Coffee beans are roasted until their sugars caramelise and the oils come out.",
    "lighthouses": "Lighthouses warned ships off the rocks with a lamp and a rotating lens.",
}
QUERIES = [
    ("q1", "birds that catch fish in marshes", ["herons"]),
    ("q2", "baking bread with a starter", ["sourdough"]),
    ("q3", "ice shaping valleys", {"glaciers": 2, "volcanoes": 1}),
    ("q4", "how source code becomes machine code", ["compilers"]),
    ("q5", "moon gravity and the sea", ["tides", "lighthouses"]),
    ("q6", "a string instrument made of spruce", ["violins"]),
    ("q7", "the game where a knight jumps", ["chess"]),
    ("q8", "roasting beans", ["coffee"]),
]


def corpus(tmp_path: Path) -> Path:
    docs = []
    for name, text in TOPICS.items():
        docs.append({"id": name, "text": text})
        docs.append({"id": f"{name}-more", "text": f"More on {name}: " + text.lower().replace(".", ", said the guide.")})
    return write_jsonl(tmp_path / "docs.jsonl", docs)


def query_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "queries.jsonl", [{"id": i, "query": q, "relevant": r} for i, q, r in QUERIES])


def reference(doc_of: list[str], vectors: np.ndarray, query_vec: np.ndarray) -> list[str]:
    """Documents by their best chunk's cosine similarity to the query, computed here (float64)."""
    m = vectors.astype(np.float64)
    q = query_vec.astype(np.float64)
    sims = (m @ q) / (np.linalg.norm(m, axis=1) * np.linalg.norm(q))
    best: dict[str, float] = {}
    for d, s in zip(doc_of, sims, strict=True):
        best[d] = max(best.get(d, -2.0), float(s))
    return sorted(best, key=lambda d: -best[d])


def ref_metrics(ranked: list[str], relevant: dict[str, float], k: int) -> dict[str, float]:
    """recall@k, MRR@10, nDCG@10 written out again, independently of ``metrics_of``."""
    hits = [d for d in ranked[:k] if d in relevant]
    first = [i for i, d in enumerate(ranked[:10], 1) if d in relevant]
    gains = [relevant.get(d, 0.0) for d in ranked[:10]]
    ideal = sorted(relevant.values(), reverse=True)[:10]
    dcg = sum(g / math.log2(r + 1) for r, g in enumerate(gains, 1))
    idcg = sum(g / math.log2(r + 1) for r, g in enumerate(ideal, 1))
    return {"recall@k": len(hits) / len(relevant), "mrr@10": 1 / first[0] if first else 0.0, "ndcg@10": dcg / idcg}


def test_eval_from_the_command_line_equals_a_brute_force_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """As a user runs it: reindex into embedded Chroma, then ``embedrail eval`` with a JSON report, each query's
    ranking and the chart; kNN's figures equal the ones computed here from the stored vectors."""
    import chromadb

    target = f"chroma:///{tmp_path / 'chroma'}?collection=docs"
    assert main(["reindex", "--source", str(corpus(tmp_path)), "--target", target, "--ledger",
                 f"sqlite:///{tmp_path / 'l.sqlite'}"]) == 0  # fmt: skip
    capsys.readouterr()
    out, chart = tmp_path / "eval.json", tmp_path / "eval.png"
    code = main(["eval", "--target", target, "--queries", str(query_file(tmp_path)), "-k", "3", "--config", "knn",
                 "--config", "hybrid:0.5", "--json", "--out", str(out), "--chart", str(chart)])  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert code == 0
    knn, hybrid = printed["rows"]
    assert knn["config"] == "knn" and knn["queries"] == len(QUERIES) and set(knn["metrics"]) == {"recall@3", "mrr@10", "ndcg@10"}
    assert hybrid["config"] == f"hybrid:{DEFAULT_ALPHA:g}:{DEFAULT_FUSION}" and "no keyword search" in hybrid["error"]  # Chroma has none
    assert knn["latency_ms"]["p95"] >= knn["latency_ms"]["p50"] > 0 and knn["bytes_per_vector"] == 384 * 4
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 5000

    with connect(target) as store:  # the collection behind the name (a rebuild switches it)
        physical = store.describe().physical_name
    col = chromadb.PersistentClient(path=str(tmp_path / "chroma")).get_collection(physical)
    got = col.get(include=["embeddings", "metadatas"])
    doc_of = [m["_doc"] for m in got["metadatas"]]
    vectors = np.asarray(got["embeddings"])
    qvecs = minilm().embed_queries([q for _, q, _ in QUERIES])
    per_query = json.loads(out.read_text())["rows"][0]["per_query"]
    want = {"recall@k": 0.0, "mrr@10": 0.0, "ndcg@10": 0.0}
    for (qid, _, rel), qv in zip(QUERIES, qvecs, strict=True):
        ranked = reference(doc_of, vectors, qv)
        assert per_query[qid] == ranked[:10], qid
        grades = {r: 1.0 for r in rel} if isinstance(rel, list) else {k: float(v) for k, v in rel.items()}
        for m, v in ref_metrics(ranked, grades, 3).items():
            want[m] += v / len(QUERIES)
    assert knn["metrics"] == pytest.approx({"recall@3": want["recall@k"], "mrr@10": want["mrr@10"], "ndcg@10": want["ndcg@10"]},
                                           abs=1e-4)  # fmt: skip
    # the table a person reads
    assert main(["eval", "--target", target, "--queries", str(query_file(tmp_path))]) == 0
    table = capsys.readouterr().out
    assert "8 queries, k = 10" in table and "recall@10" in table and "knn" in table


def test_tune_picks_the_best_weight_and_never_loses_to_knn(tmp_path: Path) -> None:
    """On a store with hybrid search: the sweep has kNN and 30 hybrid settings (10 weights, 3 fusions); the choice is the best of them by
    the metric, equal to evaluating that one configuration alone, and at least kNN's."""
    target = "memory://eval-tune/docs"
    rep = sync(str(corpus(tmp_path)), [target], ledger=f"sqlite:///{tmp_path / 'l.sqlite'}", embedder=minilm())
    assert rep.ok
    queries = load_queries(query_file(tmp_path))
    report = tune([target], queries, metric="mrr@10", embedder=minilm())
    assert len(report.rows) == 31 and not any(r.error for r in report.rows)
    chosen = report.tuned[target]
    best = max(r.metrics["mrr@10"] for r in report.rows)
    assert chosen["value"] == pytest.approx(best, abs=1e-4) and chosen["value"] >= chosen["knn"]
    alone = evaluate([target], queries, [chosen["config"]], embedder=minilm()).rows[0]
    assert alone.metrics["mrr@10"] == pytest.approx(chosen["value"], abs=1e-4)
    assert chosen["search_flags"].startswith("--hybrid") or chosen["config"] == "knn"
    assert "tuned memory://eval-tune/docs" in report.table()


def test_metrics_by_hand() -> None:
    rel = {"a": 2.0, "b": 1.0}
    m = metrics_of(["x", "a", "y", "b"], rel, 2)
    assert m["recall@k"] == 0.5 and m["mrr@10"] == 0.5
    assert m["ndcg@10"] == pytest.approx((2 / math.log2(3) + 1 / math.log2(5)) / (2 + 1 / math.log2(3)))
    assert metrics_of([], {"a": 1.0}, 10) == {"recall@k": 0.0, "mrr@10": 0.0, "ndcg@10": 0.0}


def test_query_files_and_their_errors(tmp_path: Path) -> None:
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    write_jsonl(beir / "queries.jsonl", [{"_id": "1", "text": "first"}, {"_id": "2", "text": "second"}, {"_id": "3", "text": "x"}])
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\td1\t1\n1\td2\t2\n2\td3\t0\n3\td4\t1\n")
    got = load_queries(beir)
    assert [(q.id, q.relevant) for q in got] == [("1", {"d1": 1.0, "d2": 2.0}), ("3", {"d4": 1.0})]  # 2: no positive judgement
    with pytest.raises(ConfigError, match="qrels/dev.tsv"):
        load_queries(beir, split="dev")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "fine", "relevant": ["a"]}\n{"query": "no relevant"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: .*relevant"):
        load_queries(bad)
    bad.write_text('{"query": "fine", "relevant": ["a"]}\nnot json\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: not a JSON object"):
        load_queries(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_queries(tmp_path / "missing.jsonl")
    bad.write_text('{"id": "a", "query": "one", "relevant": ["x"]}\n{"id": "a", "query": "two", "relevant": ["y"]}\n')
    with pytest.raises(ConfigError, match=r"\['a'\] appear more than once"):
        load_queries(bad)
    assert parse_config("hybrid:0.3:rrf+rerank").name == "hybrid:0.3:rrf+rerank"
    for wrong in ("bm25", "hybrid:1.5", "hybrid:x", "hybrid:0.5:max"):
        with pytest.raises(ConfigError):
            parse_config(wrong)
    with pytest.raises(ConfigError, match="needs a reranker"):
        evaluate(["memory://nowhere/x"], load_queries(query_file(tmp_path)), ["knn+rerank"])



def test_eval_flags_as_the_docs_show_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--tune --metric``, a BEIR folder with ``--split``, ``--rerank`` with ``--candidates`` (a tiny random
    cross-encoder: the reranked rows rank only the first stage's candidates), and the tuned
    ``search --hybrid --alpha --fusion`` flags."""
    from test_embed_fixtures import build_tiny_cross_encoder

    target = "memory://eval-cli/docs"
    assert sync(str(corpus(tmp_path)), [target], ledger=f"sqlite:///{tmp_path / 'l.sqlite'}", embedder=minilm()).ok
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    write_jsonl(beir / "queries.jsonl", [{"_id": i, "text": q} for i, q, _ in QUERIES])
    (beir / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{i}\t{d}\t1\n" for i, _, rel in QUERIES for d in rel))  # fmt: skip
    assert main(["eval", "--target", target, "--queries", str(beir), "--split", "dev", "--tune", "--metric", "mrr@10",
                 "--json"]) == 0  # fmt: skip
    tuned = json.loads(capsys.readouterr().out)["tuned"][target]
    assert tuned["metric"] == "mrr@10" and tuned["value"] >= tuned["knn"]
    if tuned["hybrid"]:
        flags = tuned["search_flags"].split()
        assert flags[:2] == ["--hybrid", "--alpha"] and flags[3] == "--fusion"
    else:
        flags = ["--hybrid", "--alpha", "0.7", "--fusion", "rrf"]
    assert main(["search", "--target", target, *flags, "--json", "-k", "3", "birds that catch fish"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3

    ce = build_tiny_cross_encoder(tmp_path / "ce")
    assert main(["eval", "--target", target, "--queries", str(query_file(tmp_path)), "--rerank", str(ce),
                 "--candidates", "4", "--out", str(tmp_path / "r.json"), "--json"]) == 0  # fmt: skip
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["config"] for r in rows] == ["knn", "knn+rerank"] and not any(r["error"] for r in rows)
    saved = json.loads((tmp_path / "r.json").read_text())["rows"]
    for qid, ranked in saved[1]["per_query"].items():  # reranked: only the first stage's 10 chunks' documents
        assert ranked and set(ranked) <= set(saved[0]["per_query"][qid][:10]), qid  # (candidates: at least the 10 ranked)


def test_tune_save_records_the_choice_and_search_uses_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``eval --tune --save`` writes the best setting into the index's metadata; ``search`` without flags then
    runs it (hybrid at the tuned weight and fusion), flags still win, ``--no-hybrid`` is kNN; ``--save``
    without ``--tune`` is refused."""
    from embedrail.integration.search import Searcher

    target = "memory://eval-save/docs"
    assert sync(str(corpus(tmp_path)), [target], ledger=f"sqlite:///{tmp_path / 'l.sqlite'}", embedder=minilm()).ok
    with Searcher(target, embedder=minilm()) as s:
        assert s.index().search is None and s.settings() == (False, 1.0, DEFAULT_FUSION)  # nothing recorded: kNN
        assert s.settings(alpha=0.4) == (True, 0.4, DEFAULT_FUSION)  # a weight given: hybrid
        assert s.settings(hybrid=True) == (True, DEFAULT_ALPHA, DEFAULT_FUSION)
    assert main(["eval", "--target", target, "--queries", str(query_file(tmp_path)), "--save"]) == 2
    assert "add --tune" in capsys.readouterr().err
    assert main(["eval", "--target", target, "--queries", str(query_file(tmp_path)), "--tune", "--metric", "mrr@10",
                 "--save", "--json"]) == 0  # fmt: skip
    tuned = json.loads(capsys.readouterr().out)["tuned"][target]
    with connect(target) as store:
        recorded = store.describe().search
    assert recorded is not None
    assert {k: recorded[k] for k in ("hybrid", "alpha", "fusion", "value", "knn")} == {k: tuned[k] for k in ("hybrid", "alpha", "fusion", "value", "knn")}
    assert recorded["metric"] == "mrr@10" and recorded["queries"] == len(QUERIES)
    with Searcher(target, embedder=minilm()) as s:
        want = (tuned["hybrid"], tuned["alpha"] if tuned["hybrid"] else 1.0, tuned["fusion"] if tuned["hybrid"] else DEFAULT_FUSION)
        assert s.settings() == want
        assert s.settings(hybrid=False) == (False, 1.0, DEFAULT_FUSION)
        assert s.settings(hybrid=True, alpha=0.2, fusion="rrf") == (True, 0.2, "rrf")
        # the recorded setting is what a plain search runs: the same hits as asking for it
        plain = [h.id for h in s.search("birds that catch fish", k=5).hits]
        asked = [h.id for h in s.search("birds that catch fish", k=5, hybrid=want[0], alpha=want[1], fusion=want[2]).hits]
        assert plain == asked
    assert main(["search", "--target", target, "--no-hybrid", "--json", "-k", "2", "birds"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_evaluation_settings_are_checked_when_the_dag_is_parsed(tmp_path: Path) -> None:
    from embedrail.integration.airflow.config import load_dag_config
    from embedrail.integration.evaluate import check_settings

    ok = check_settings({"queries": "q.jsonl", "configs": "hybrid:0.7", "min": {"nDCG@10": 0.5}})
    assert ok["configs"] == [f"hybrid:0.7:{DEFAULT_FUSION}"] and ok["k"] == 10 and ok["min"] == {"ndcg@10": 0.5}
    for bad, match in (({"configs": ["knn"]}, "queries"), ({"queries": "q", "quries": 1}, "unknown setting"),
                       ({"queries": "q", "configs": ["knn+rerank"]}, "needs rerank"), ({"queries": "q", "min": {"bleu": 1}}, "unknown metric"),
                       ({"queries": "q", "min": 0.5}, "mapping of metric")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            check_settings(bad)
    cfg = tmp_path / "docs.yaml"
    cfg.write_text("source: docs.jsonl\ntargets: [memory://x/docs]\nevaluate:\n  queries: q.jsonl\n  min: {ndcg@10: 0.6}\n")
    assert load_dag_config(cfg)["evaluate"] == {"queries": "q.jsonl", "min": {"ndcg@10": 0.6}}
