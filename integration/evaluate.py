"""Retrieval quality on the user's own index: ``embedrail eval`` (issue 28).

Queries with the documents that answer them, run against one or more targets and search configurations
(kNN; hybrid with a weight and a fusion; with or without a reranker), give recall@k, MRR@10, nDCG@10 and
the latency of each query (p50 / p95), as a table, a JSON object and a PNG chart of quality against latency
and bytes per vector. ``tune()`` sweeps the hybrid weight and says which one does best on these queries.

```python
from embedrail.integration.evaluate import evaluate, load_queries
report = evaluate(["es://localhost:9200/docs"], load_queries("queries.jsonl"), ["knn", "hybrid:0.7"])
print(report.table())
```

Relevance is per **document** (the ``_doc`` a chunk belongs to, the id the source gave): a query's ranking
is its hits' documents in order, each counted once (its best chunk), as ``search(distinct_docs=True)``.

Query files:

- JSONL, one query per line: ``{"query": "...", "relevant": ["doc-1", "doc-7"]}`` (or ``{"doc-1": 2, ...}``
  with graded relevance; ``id`` optional);
- a BEIR folder: ``queries.jsonl`` (``_id``, ``text``) and ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``,
  ``score``; split ``test`` unless told), the queries without a positive judgement left out.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from embedrail.connectors._fusion import FUSIONS
from embedrail.connectors.base import DEFAULT_ALPHA, DEFAULT_FUSION
from embedrail.errors import ConfigError, UnsupportedError
from embedrail.secrets import redact_url

__all__ = ["Config", "EvalReport", "Query", "below", "check_settings", "evaluate", "load_queries", "metrics_of", "parse_config",
           "run_settings", "tune"]

#: the metrics a report carries; ``recall@k`` takes the run's k
METRICS = ("recall@k", "mrr@10", "ndcg@10")
#: with ``reference=``: the share of the reference's k best documents a configuration also ranks in its k best
REF = "reference@k"
#: the hybrid weights ``tune`` tries (0: keywords only, 1: kNN only)
ALPHAS = tuple(round(i / 10, 1) for i in range(11))


@dataclass(frozen=True)
class Query:
    id: str
    text: str
    relevant: dict[str, float]  # document id -> grade (> 0)


@dataclass(frozen=True)
class Config:
    """One way of searching: ``knn``, ``hybrid`` (``alpha`` weighs the vector side, ``fusion`` guarded,
    relative or rrf; the defaults are ``search --hybrid``'s), each with ``rerank`` (the evaluation's reranker rescoring ``candidates`` first-stage hits)."""

    hybrid: bool = False
    alpha: float = DEFAULT_ALPHA
    fusion: str = DEFAULT_FUSION
    rerank: bool = False

    @property
    def name(self) -> str:
        base = f"hybrid:{self.alpha:g}:{self.fusion}" if self.hybrid else "knn"
        return base + ("+rerank" if self.rerank else "")


def parse_config(spec: str | Config) -> Config:
    """``knn``, ``hybrid``, ``hybrid:0.7``, ``hybrid:0.7:rrf`` (or ``:relative``, ``:guarded``), each with an
    optional ``+rerank``."""
    if isinstance(spec, Config):
        return spec
    text = spec.strip().lower()
    rerank = text.endswith("+rerank")
    text = text.removesuffix("+rerank")
    parts = text.split(":")
    if parts == ["knn"]:
        return Config(rerank=rerank)
    if parts[0] != "hybrid" or len(parts) > 3:
        raise ConfigError(f"unknown search configuration {spec!r}: use knn, hybrid, hybrid:ALPHA or hybrid:ALPHA:rrf, "
                          "each with an optional +rerank")  # fmt: skip
    try:
        alpha = float(parts[1]) if len(parts) > 1 else DEFAULT_ALPHA
    except ValueError:
        raise ConfigError(f"{spec!r}: the hybrid weight must be a number from 0 (keywords) to 1 (kNN)") from None
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"{spec!r}: the hybrid weight must be from 0 (keywords) to 1 (kNN)")
    fusion = parts[2] if len(parts) > 2 else DEFAULT_FUSION
    if fusion not in FUSIONS:
        raise ConfigError(f"{spec!r}: fusion must be one of {', '.join(FUSIONS)}")
    return Config(hybrid=True, alpha=alpha, fusion=fusion, rerank=rerank)


# ------------------------------------------------------------------------------------------ queries
def load_queries(path: str | Path, *, split: str = "test") -> list[Query]:
    """Queries from a JSONL file or a BEIR folder (see the module doc); a malformed file is a ``ConfigError``
    that names the line."""
    p = Path(path)
    if p.is_dir():
        return _beir(p, split)
    if not p.is_file():
        raise ConfigError(f"query file not found: {p}")
    out: list[Query] = []
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{p}:{lineno}"
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ConfigError(f"{where}: not a JSON object ({e})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("query"), str) or not obj["query"].strip():
                raise ConfigError(f'{where}: each line needs "query" (text) and "relevant" (document ids)')
            out.append(Query(str(obj.get("id", lineno)), obj["query"], _grades(obj.get("relevant"), where)))
    if not out:
        raise ConfigError(f"{p}: no queries")
    repeated = sorted(i for i, n in Counter(q.id for q in out).items() if n > 1)
    if repeated:
        raise ConfigError(f"{p}: query id(s) {repeated[:5]} appear more than once; give each query its own id")
    return out


def _grades(value: Any, where: str) -> dict[str, float]:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(v, (str, int)) for v in value):
        return {str(v): 1.0 for v in value}
    if isinstance(value, dict) and value and all(isinstance(g, (int, float)) for g in value.values()):
        grades = {str(k): float(g) for k, g in value.items() if g > 0}
        if grades:
            return grades
    raise ConfigError(f'{where}: "relevant" must be a non-empty list of document ids or {{id: grade}} with a grade > 0')


def _beir(folder: Path, split: str) -> list[Query]:
    qfile, qrels = folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"
    if not qfile.is_file() or not qrels.is_file():
        raise ConfigError(f"{folder}: a BEIR folder holds queries.jsonl and qrels/{split}.tsv")
    grades: dict[str, dict[str, float]] = {}
    with qrels.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            cols = line.rstrip("\n").split("\t")
            if lineno == 1 and cols[:1] == ["query-id"]:
                continue
            if len(cols) < 3:
                if line.strip():
                    raise ConfigError(f"{qrels}:{lineno}: want query-id, corpus-id, score (tab-separated)")
                continue
            try:
                score = float(cols[2])
            except ValueError:
                raise ConfigError(f"{qrels}:{lineno}: score {cols[2]!r} is not a number") from None
            if score > 0:
                grades.setdefault(cols[0], {})[cols[1]] = score
    out = []
    with qfile.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                qid, text = str(obj["_id"]), str(obj["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ConfigError(f"{qfile}:{lineno}: want a JSON object with _id and text") from None
            if qid in grades and text.strip():
                out.append(Query(qid, text, grades[qid]))
    if not out:
        raise ConfigError(f"{folder}: no query has a positive judgement in qrels/{split}.tsv")
    return out


# ------------------------------------------------------------------------------------------ metrics
def metrics_of(ranked: Sequence[str], relevant: dict[str, float], k: int) -> dict[str, float]:
    """recall@k, MRR@10 and nDCG@10 (gain: the grade, discount log2(rank + 1), as trec_eval) of one ranking
    of distinct document ids."""
    top_k = ranked[:k]
    recall = sum(1 for d in top_k if d in relevant) / len(relevant)
    rr = next((1.0 / (i + 1) for i, d in enumerate(ranked[:10]) if d in relevant), 0.0)
    dcg = sum(relevant.get(d, 0.0) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(relevant.values(), reverse=True)[:10]))
    return {"recall@k": recall, "mrr@10": rr, "ndcg@10": dcg / ideal if ideal else 0.0}


@dataclass
class Row:
    """One (target, configuration): its mean metrics over the queries and its latency."""

    target: str
    config: str
    queries: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, p95 of one query's search, embedding included
    bytes_per_vector: int | None = None  # what the store's index holds per vector (dims x 4 for float32)
    error: str | None = None  # why this configuration could not run on this target (no hybrid search, ...)
    per_query: dict[str, list[str]] = field(default_factory=dict)  # query id -> ranked document ids


@dataclass
class EvalReport:
    k: int
    rows: list[Row]
    tuned: dict[str, dict[str, Any]] = field(default_factory=dict)  # target -> what tune() chose and its figures

    def to_dict(self, *, per_query: bool = False) -> dict[str, Any]:
        rows = []
        for r in self.rows:
            d = asdict(r)
            d["metrics"] = {_label(m, self.k): round(v, 4) for m, v in r.metrics.items()}
            d["latency_ms"] = {k: round(v, 2) for k, v in r.latency_ms.items()}
            if not per_query:
                d.pop("per_query")
            rows.append(d)
        return {"k": self.k, "rows": rows, "tuned": self.tuned}

    def table(self) -> str:
        shown = [*METRICS, *([REF] if any(REF in r.metrics for r in self.rows) else [])]
        heads = ["target", "config", *(_label(m, self.k) for m in shown), "p50 ms", "p95 ms", "bytes/vector"]
        cells = [[r.target, r.config] + ([f"({r.error})"] if r.error else [
                 *(f"{r.metrics[m]:.4f}" if m in r.metrics else "" for m in shown), f"{r.latency_ms['p50']:.1f}",
                 f"{r.latency_ms['p95']:.1f}", str(r.bytes_per_vector or "")]) for r in self.rows]  # fmt: skip
        widths = [max([len(h)] + [len(c[i]) for c in cells if len(c) == len(heads)]) for i, h in enumerate(heads)]
        out = ["  ".join(h.rjust(w) if i > 1 else h.ljust(w) for i, (h, w) in enumerate(zip(heads, widths, strict=True)))]
        for c in cells:
            out.append("  ".join(v.rjust(w) if i > 1 and len(c) == len(heads) else v.ljust(w)
                                 for i, (v, w) in enumerate(zip(c, widths, strict=False))).rstrip())  # fmt: skip
        for t, tuned in self.tuned.items():
            out.append(f"tuned {t}: {tuned['config']} ({tuned['metric']} {tuned['value']:.4f}; knn {tuned['knn']:.4f}): "
                       f"{tuned['search_flags']}")  # fmt: skip
        return "\n".join(out)

    def chart(self, path: str | Path, *, metric: str = "ndcg@10") -> Path:
        """A PNG: the metric against latency p50 (left) and against bytes per vector (right), a point per
        (target, configuration). Needs matplotlib (``pip install 'embedrail[eval]'``)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise ConfigError("the chart needs matplotlib: pip install 'embedrail[eval]'") from None
        key = _metric_key(metric)
        rows = [r for r in self.rows if not r.error]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        groups: dict[str, list[Row]] = {}  # a colour per target and kind of search (knn, hybrid relative, ...)
        for r in rows:
            cfg = parse_config(r.config)
            kind = (f"hybrid {cfg.fusion}" if cfg.hybrid else "knn") + (" + rerank" if cfg.rerank else "")
            groups.setdefault(f"{kind} @ {_short(r.target)}", []).append(r)  # (a label starting with _ would be hidden)
        for ax, x_of, xlabel in ((axes[0], lambda r: r.latency_ms["p50"], "latency p50 (ms)"),
                                 (axes[1], lambda r: r.bytes_per_vector or 0, "bytes per vector")):  # fmt: skip
            for label, group in groups.items():
                ax.scatter([x_of(r) for r in group], [r.metrics[key] for r in group], label=label, alpha=0.8)
            if len(rows) <= 12:  # a few points: each named; a sweep: the legend says which is which
                for r in rows:
                    ax.annotate(r.config, (x_of(r), r.metrics[key]), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(_label(key, self.k))
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=7, loc="best")
        fig.suptitle(f"{_label(key, self.k)} over {rows[0].queries if rows else 0} queries")
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out


def _label(metric: str, k: int) -> str:
    return f"recall@{k}" if metric == "recall@k" else f"reference@{k}" if metric == REF else metric


def _metric_key(metric: str) -> str:
    m = metric.lower()
    if m.startswith("recall@"):
        return "recall@k"
    if m.startswith("reference@"):
        return REF
    if m not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}: use recall@k, mrr@10 or ndcg@10")
    return m


def _short(url: str) -> str:
    return url.split("://", 1)[-1][-40:]


# ------------------------------------------------------------------------------------------ running
def evaluate(targets: Iterable[Any], queries: Sequence[Query], configs: Iterable[str | Config] = ("knn",), *, k: int = 10,
             reranker: Any = None, candidates: int | None = None, embedder: Any = None, device: str = "auto",
             per_query: bool = False, reference: Any = None) -> EvalReport:  # fmt: skip
    """Every query against every target (a store URL or ``VectorStore``) under every configuration. The
    query embedder is the one each index records (or ``embedder``, when its fingerprint matches); a
    configuration the target cannot run (hybrid on a store without keyword search) is a row with its
    ``error``. Latency: one query's ``search`` (embedding, store, rerank), after one warm-up query.

    ``reference``: a target holding the same documents with float vectors (what a quantised target is
    compared with): each row then also has ``reference@k``, the share of the reference's k best documents
    (by kNN) that the row ranks in its own k best."""
    from embedrail.integration.search import Searcher

    if isinstance(targets, str):  # one URL, not its characters
        targets = [targets]
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    if not queries:
        raise ConfigError("no queries to evaluate")
    parsed = [parse_config(c) for c in configs]
    if not parsed:
        raise ConfigError("no search configuration to evaluate: give at least knn")
    if any(c.rerank for c in parsed) and reranker is None:
        raise ConfigError("a +rerank configuration needs a reranker (--rerank MODEL)")
    depth = max(k, 10)
    ref_top: dict[str, set[str]] | None = None
    if reference is not None:
        with Searcher(reference, embedder=embedder, device=device) as ref:
            ref_top = {q.id: {str(h.metadata.get("_doc", h.id)) for h in ref.search(q.text, k, distinct_docs=True).hits}
                       for q in queries}  # fmt: skip
    rows = []
    for target in targets:
        with Searcher(target, embedder=embedder, device=device, reranker=reranker) as s:
            info = s.index()
            name = _name(target)
            bytes_per = info.extra.get("bytes_per_vector") or (info.spec.dims * 4 if info.spec else None)
            s.search(queries[0].text, k=1, rerank=False)  # warm-up: the model loads, the connection opens
            if reranker is not None:
                s.reranker()  # loaded before the first reranked query is timed
            for cfg in parsed:
                row = Row(name, cfg.name, bytes_per_vector=bytes_per)
                try:
                    _run(s, row, cfg, queries, depth, k, candidates, ref_top)
                except UnsupportedError as e:
                    row.error = str(e).split(";")[0]
                    row.metrics, row.latency_ms, row.per_query = {}, {}, {}
                if not per_query:
                    row.per_query = {}
                rows.append(row)
    return EvalReport(k, rows)


def _name(target: Any) -> str:
    """A target's name in a report (no secrets)."""
    return redact_url(target) if isinstance(target, str) else str(getattr(target, "url", target))


def _run(s: Any, row: Row, cfg: Config, queries: Sequence[Query], depth: int, k: int, candidates: int | None,
         ref_top: dict[str, set[str]] | None = None) -> None:  # fmt: skip
    sums = dict.fromkeys([*METRICS, *([REF] if ref_top is not None else [])], 0.0)
    times = []
    for q in queries:
        t = time.perf_counter()
        res = s.search(q.text, depth, distinct_docs=True, hybrid=cfg.hybrid, alpha=cfg.alpha, fusion=cfg.fusion,
                       rerank=cfg.rerank, candidates=candidates if cfg.rerank else None)  # fmt: skip
        times.append((time.perf_counter() - t) * 1000)
        ranked = [str(h.metadata.get("_doc", h.id)) for h in res.hits]
        row.per_query[q.id] = ranked
        for m, v in metrics_of(ranked, q.relevant, k).items():
            sums[m] += v
        if ref_top is not None:
            want = ref_top[q.id]
            sums[REF] += len(want & set(ranked[:k])) / len(want) if want else 1.0
    row.queries = len(queries)
    row.metrics = {m: v / len(queries) for m, v in sums.items()}
    row.latency_ms = {"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95))}


#: the keys of an evaluation's settings (``build_reindex_dag(evaluate=...)``, YAML ``evaluate:``)
SETTINGS = frozenset({"queries", "configs", "k", "split", "rerank", "candidates", "chart", "min"})


def check_settings(settings: Any, where: str = "evaluate") -> dict[str, Any]:
    """Validated evaluation settings (no file read, no network: a DAG file is parsed with them):
    ``queries`` (required), ``configs`` (default ``["knn"]``), ``k`` (10), ``split`` ("test"), ``rerank``,
    ``candidates``, ``chart`` (a PNG path), ``min`` (``{metric: lowest value}``: a quality gate, every target
    and configuration must reach it)."""
    if not isinstance(settings, dict) or not settings.get("queries"):
        raise ConfigError(f"{where}: a mapping with at least queries: PATH (JSONL or a BEIR folder)")
    unknown = set(settings) - SETTINGS
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {sorted(unknown)}; known: {sorted(SETTINGS)}")
    out = dict(settings)
    configs = out.get("configs") or ["knn"]
    out["configs"] = [parse_config(c).name for c in ([configs] if isinstance(configs, str) else configs)]
    out["k"] = int(out.get("k") or 10)
    if out["k"] < 1:
        raise ConfigError(f"{where}: k must be a positive integer")
    if any(parse_config(c).rerank for c in out["configs"]) and not out.get("rerank"):
        raise ConfigError(f"{where}: a +rerank configuration needs rerank: MODEL")
    gate = out.get("min") or {}
    if not isinstance(gate, dict) or not all(isinstance(v, (int, float)) for v in gate.values()):
        raise ConfigError(f"{where}: min is a mapping of metric -> lowest value, e.g. {{ndcg@10: 0.6}}")
    out["min"] = {_metric_key(m): float(v) for m, v in gate.items()}
    return out


def below(report: EvalReport, gate: dict[str, float]) -> list[str]:
    """What misses the quality gate: ``"target config: metric value < minimum"``, one per miss."""
    return [f"{r.target} {r.config}: {_label(m, report.k)} {r.metrics[m]:.4f} < {v:g}"
            for r in report.rows if not r.error for m, v in gate.items() if r.metrics[m] < v]  # fmt: skip


def run_settings(targets: Iterable[Any], settings: dict[str, Any], **kwargs: Any) -> tuple[EvalReport, list[str]]:
    """One evaluation from checked settings: the report (chart written where asked) and the gate's misses."""
    s = check_settings(settings)
    report = evaluate(targets, load_queries(s["queries"], split=s.get("split") or "test"), s["configs"], k=s["k"],
                      reranker=s.get("rerank"), candidates=s.get("candidates"), **kwargs)  # fmt: skip
    if s.get("chart"):
        report.chart(s["chart"], metric=next(iter(s["min"]), "ndcg@10"))
    return report, below(report, s["min"])


def tune(targets: Iterable[Any], queries: Sequence[Query], *, metric: str = "ndcg@10", k: int = 10,
         fusions: Sequence[str] = FUSIONS, alphas: Sequence[float] = ALPHAS, save: bool = False,
         **kwargs: Any) -> EvalReport:  # fmt: skip
    """Sweep the hybrid weight (and fusion) on each target; ``report.tuned[target]`` is the configuration
    with the best ``metric`` on these queries. kNN (``alpha`` 1) is among the candidates, so the choice is never
    worse than kNN on these queries; a tie goes to the configuration nearer kNN (higher alpha), then to
    relative fusion. ``save``: record each choice on its index (``set_search_defaults``), where ``Searcher``
    and ``embedrail search`` take it for queries that do not say."""
    key = _metric_key(metric)
    targets = [targets] if isinstance(targets, str) else list(targets)
    configs = ["knn"] + [f"hybrid:{a:g}:{f}" for f in fusions for a in alphas if a < 1.0]
    report = evaluate(targets, queries, configs, k=k, **kwargs)
    by_target: dict[str, list[Row]] = {}
    for r in report.rows:
        by_target.setdefault(r.target, []).append(r)
    for target, rows in by_target.items():
        ok = [r for r in rows if not r.error]
        knn = next(r for r in ok if r.config == "knn")

        def rank(r: Row) -> tuple[float, float, int]:
            cfg = parse_config(r.config)
            return (round(r.metrics[key], 10), 1.0 if not cfg.hybrid else cfg.alpha, cfg.fusion == "relative")

        best = max(ok, key=rank)
        cfg = parse_config(best.config)
        flags = "(kNN: no flags)" if not cfg.hybrid else f"--hybrid --alpha {cfg.alpha:g} --fusion {cfg.fusion}"
        report.tuned[target] = {"config": best.config, "metric": _label(key, k), "value": round(best.metrics[key], 4),
                                "knn": round(knn.metrics[key], 4), "alpha": cfg.alpha if cfg.hybrid else 1.0,
                                "fusion": cfg.fusion, "hybrid": cfg.hybrid, "search_flags": flags}  # fmt: skip
    if save:
        for target in targets:
            _save_defaults(target, report.tuned[_name(target)], len(queries))
    return report


def _save_defaults(target: Any, tuned: dict[str, Any], queries: int) -> None:
    from embedrail.connectors import connect

    defaults = {"hybrid": tuned["hybrid"], "alpha": tuned["alpha"], "fusion": tuned["fusion"], "metric": tuned["metric"],
                "value": tuned["value"], "knn": tuned["knn"], "queries": queries,
                "tuned_at": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
    if isinstance(target, str):
        with connect(target) as store:
            store.set_search_defaults(defaults)
    else:
        target.set_search_defaults(defaults)
