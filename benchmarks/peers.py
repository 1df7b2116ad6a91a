"""embedrail vs LangChain ``index()`` vs LlamaIndex ``IngestionPipeline``, side by side (issue 10; not a test).

One corpus, one model, one store, in one process, each tool written as its documentation shows:

- **embedrail**: ``SyncEngine`` over a JSONL snapshot (ledger on SQLite), the packaged MiniLM as
  embed_core runs it (its default precision on this CPU);
- **LangChain**: ``langchain_core.indexing.index`` with ``SQLRecordManager`` (SQLite) and
  ``cleanup="full"``, ``langchain_chroma.Chroma``, the same model through sentence-transformers (the
  code of ``langchain_huggingface.HuggingFaceEmbeddings``, whose package cannot be installed next to
  huggingface-hub 2.x);
- **LlamaIndex**: ``IngestionPipeline`` with ``SentenceSplitter``, ``HuggingFaceEmbedding``, a
  ``SimpleDocumentStore`` persisted between runs and ``DocstoreStrategy.UPSERTS_AND_DELETE``, into
  ``ChromaVectorStore``.

All three write into embedded Chroma on disk; each model is loaded once before its runs (load time is
not counted). Corpus: short passages cut from the standard library's docs (one per public member,
``pydoc:?per=member``), no network. Jobs: the first run; an unchanged re-run; 1 % of the passages edited
and 1 % deleted; 1 % with only their metadata changed. After each job the collection is counted: it must
hold exactly the source's passages (the correctness column; embedrail cuts a passage longer than the
model's 256 tokens into two chunks where the peers' embedders truncate it, so its count is its chunks).

    make bench-peers                              # installs the `bench` extra into .venv-bench, runs this
    .venv-bench/bin/python benchmarks/peers.py [--limit 3000] [--max-chars 600] [--only embedrail,langchain]

Prints seconds per job and tool, and each peer's time divided by embedrail's (the speed-up).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

Row = dict[str, Any]
JOBS = ("first run", "unchanged re-run", "1% edited + 1% deleted", "1% metadata only")


def corpus(limit: int, max_chars: int) -> list[Row]:
    from embedrail.integration.sources import open_source

    docs = open_source(f"pydoc:?per=member&max_chars={max_chars}&limit={limit}")
    return [{"id": d.id, "text": d.text, "module": d.metadata.get("module", ""), "rev": 0} for d in docs if d.text.strip()]


def jobs(rows: list[Row]) -> list[tuple[str, list[Row]]]:
    """The four source states, in order."""
    edited = [dict(r) for r in rows]
    step = 100
    for r in edited[::step]:
        r["text"] += " (edited for the benchmark)"
    deleted = {r["id"] for r in edited[step // 2 :: step]}
    edited = [r for r in edited if r["id"] not in deleted]
    retagged = [dict(r) for r in edited]
    for r in retagged[step // 4 :: step]:
        r["rev"] = 1
    return list(zip(JOBS, [rows, rows, edited, retagged], strict=True))


# ------------------------------------------------------------------------------------------------ tools
class Embedrail:
    name = "embedrail"

    def __init__(self, tmp: Path) -> None:
        from embedrail.embed_core import Embedder

        self.tmp, self.emb = tmp, Embedder.load("minilm")
        self.target = f"chroma://{tmp / 'chroma'}?collection=bench"

    def run(self, rows: list[Row]) -> dict[str, Any]:
        from embedrail.integration.engine import SyncEngine

        src = self.tmp / "docs.jsonl"
        with src.open("w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        with SyncEngine(str(src), [self.target], ledger=f"sqlite:///{self.tmp / 'ledger.sqlite'}", embedder=self.emb,
                        progress=False) as e:  # fmt: skip
            rep = e.run()
        if not rep.ok:
            raise RuntimeError(rep.summary())
        # a passage longer than the model's 256 tokens is two chunks here (the peers truncate it)
        return {"embedded": rep.embedded, "expected": rep.chunks}

    def count(self) -> int:
        from embedrail.connectors import connect

        with connect(self.target) as s:
            return s.count()


class LangChain:
    name = "langchain"

    def __init__(self, tmp: Path) -> None:
        from langchain_chroma import Chroma
        from langchain_classic.indexes import SQLRecordManager
        from langchain_core.embeddings import Embeddings
        from sentence_transformers import SentenceTransformer

        from embedrail.embed_core import packaged_minilm_dir

        class STEmbeddings(Embeddings):
            """What ``langchain_huggingface.HuggingFaceEmbeddings`` does (encode, normalised)."""

            def __init__(self, path: str) -> None:
                self.model = SentenceTransformer(path, device="cpu")
                self.calls = 0

            def embed_documents(self, texts: list[str]) -> list[list[float]]:
                self.calls += len(texts)
                return self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True).tolist()

            def embed_query(self, text: str) -> list[float]:
                return self.embed_documents([text])[0]

        self.tmp = tmp
        self.emb = STEmbeddings(str(packaged_minilm_dir()))
        self.store = Chroma(collection_name="bench", embedding_function=self.emb, persist_directory=str(tmp / "chroma"),
                            collection_metadata={"hnsw:space": "cosine"})  # fmt: skip
        self.rm = SQLRecordManager("chroma/bench", db_url=f"sqlite:///{tmp / 'records.sqlite'}")
        self.rm.create_schema()

    def run(self, rows: list[Row]) -> dict[str, Any]:
        from langchain_core.documents import Document
        from langchain_core.indexing import index

        docs = [Document(page_content=r["text"], metadata={"source": r["id"], "module": r["module"], "rev": r["rev"]}) for r in rows]
        before = self.emb.calls
        res = index(docs, self.rm, self.store, cleanup="full", source_id_key="source")
        return {"embedded": self.emb.calls - before, **{k: int(v) for k, v in res.items()}}

    def count(self) -> int:
        return self.store._collection.count()


class LlamaIndex:
    name = "llamaindex"

    def __init__(self, tmp: Path) -> None:
        import chromadb
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding

        from embedrail.embed_core import packaged_minilm_dir

        self.tmp = tmp
        self.embed_model = HuggingFaceEmbedding(model_name=str(packaged_minilm_dir()), device="cpu")
        self.client = chromadb.PersistentClient(str(tmp / "chroma"))
        self.col = self.client.get_or_create_collection("bench", metadata={"hnsw:space": "cosine"})
        self.state = tmp / "pipeline"

    def run(self, rows: list[Row]) -> dict[str, Any]:
        from llama_index.core import Document
        from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline
        from llama_index.core.node_parser import SentenceSplitter
        from llama_index.core.storage.docstore import SimpleDocumentStore
        from llama_index.vector_stores.chroma import ChromaVectorStore

        pipeline = IngestionPipeline(
            transformations=[SentenceSplitter(), self.embed_model],
            vector_store=ChromaVectorStore(chroma_collection=self.col),
            docstore=SimpleDocumentStore(),
            docstore_strategy=DocstoreStrategy.UPSERTS_AND_DELETE,
        )
        if self.state.exists():
            pipeline.load(str(self.state))
        docs = [Document(text=r["text"], id_=r["id"], metadata={"module": r["module"], "rev": r["rev"]}) for r in rows]
        nodes = pipeline.run(documents=docs)
        pipeline.persist(str(self.state))
        return {"embedded": len(nodes)}

    def count(self) -> int:
        return self.col.count()


TOOLS: dict[str, Callable[[Path], Any]] = {"embedrail": Embedrail, "langchain": LangChain, "llamaindex": LlamaIndex}


def measure(tool_cls: Callable[[Path], Any], states: list[tuple[str, list[Row]]]) -> dict[str, dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="embedrail-peers-"))
    try:
        tool = tool_cls(tmp)
        out: dict[str, dict[str, Any]] = {}
        for job, rows in states:
            gc.collect()
            t = time.perf_counter()
            info = tool.run(rows)
            secs = time.perf_counter() - t
            count = tool.count()
            out[job] = {"seconds": secs, "count": count, "expected": len(rows), **info}
            print(f"  {tool.name:>10} | {job:<24} {secs:8.2f}s  count {count} (expected {out[job]['expected']}, "
                  f"{len(rows)} passages)  {info}", flush=True)  # fmt: skip
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=3000, help="passages (default 3000)")
    p.add_argument("--max-chars", type=int, default=600, help="characters per passage (600: about 130 tokens)")
    p.add_argument("--only", default=",".join(TOOLS), help="comma-separated tools to run")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()

    rows = corpus(a.limit, a.max_chars)
    states = jobs(rows)
    names = [n.strip() for n in a.only.split(",") if n.strip()]
    print(f"{len(rows)} passages (pydoc members, <= {a.max_chars} chars); tools: {', '.join(names)}", flush=True)
    results = {n: measure(TOOLS[n], states) for n in names}

    print(f"\n| job | {' | '.join(names)} |" + "".join(f" {n} / embedrail |" for n in names if n != "embedrail"))
    print("| --- " * (len(names) + sum(1 for n in names if n != "embedrail") + 1) + "|")
    for job in JOBS:
        cells = []
        for n in names:
            r = results[n][job]
            ok = "" if r["count"] == r["expected"] else f" (count {r['count']} != {r['expected']})"
            cells.append(f"{r['seconds']:.2f} s{ok}")
        ratios = [f"{results[n][job]['seconds'] / results['embedrail'][job]['seconds']:.1f}x" for n in names
                  if n != "embedrail" and "embedrail" in results]  # fmt: skip
        print(f"| {job} | {' | '.join(cells)} |" + "".join(f" {x} |" for x in ratios))
    if a.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
