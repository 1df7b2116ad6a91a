"""Throughput of embed_core's Embedder against sentence-transformers on CPU (not a test).

Corpus: >= 2,000 real, mixed-length texts present offline on every machine: the docstrings of the
Python standard library's modules, classes and functions (unique texts only, so no side gets a
free ride from duplicates). Same texts, same model (the packaged all-MiniLM-L6-v2), same thread
count (2 by default); the Embedder in fp32 and at its default precision (bf16 matrix products
where the CPU has native bf16). Reported: tokens/s (real tokens only: padding excluded, truncated at
the model's 256-token limit), the ratio to the named baseline "sentence-transformers default"
(``SentenceTransformer.encode`` with its default batch_size=32), and the largest cosine
difference to that baseline.

    .venv/bin/python benchmarks/embed_throughput.py [--texts 2000] [--threads 2] [--repeat 1]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SKIP_PREFIXES = ("test", "idlelib", "tkinter", "turtle", "lib2to3", "ensurepip", "venv", "antigravity", "this")


def stdlib_docstrings(limit: int) -> list[str]:
    """Unique docstrings of stdlib modules and their public classes/functions, in a fixed order."""
    seen: set[str] = set()
    texts: list[str] = []
    names = sorted(m.name for m in pkgutil.iter_modules() if m.name in sys.stdlib_module_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            if name.startswith(("_", *SKIP_PREFIXES)):
                continue
            try:
                module = importlib.import_module(name)
            except Exception:  # noqa: BLE001 - some stdlib modules need a GUI or platform
                continue
            objects: list[object] = [module]
            for attr, obj in sorted(vars(module).items()):
                if attr.startswith("_") or getattr(obj, "__module__", name) != name:
                    continue
                if inspect.isfunction(obj) or inspect.isbuiltin(obj):
                    objects.append(obj)
                elif inspect.isclass(obj):
                    objects.append(obj)
                    objects.extend(
                        member for mname, member in sorted(vars(obj).items())
                        if not mname.startswith("_") and callable(member)
                    )  # fmt: skip
            for obj in objects:
                doc = inspect.getdoc(obj)
                if doc and len(doc.strip()) >= 3 and doc not in seen:
                    seen.add(doc)
                    texts.append(doc)
    if len(texts) < limit:
        raise SystemExit(f"only {len(texts)} unique stdlib docstrings found; need {limit}")
    # keep a deterministic, length-mixed sample
    step = len(texts) / limit
    return [texts[int(i * step)] for i in range(limit)]


def timed(fn: Callable[[], np.ndarray], repeat: int) -> tuple[float, float, np.ndarray]:
    """Median wall seconds, median process CPU seconds (robust when other jobs share the CPU), output."""
    walls, cpus = [], []
    out = None
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    assert out is not None
    return statistics.median(walls), statistics.median(cpus), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="runs per engine (median is reported)")
    parser.add_argument("--batch-tokens", type=int, default=None)
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from embedrail.embed_core import Embedder, packaged_minilm_dir
    from embedrail.embed_core.device import cpu_fast_bf16

    texts = stdlib_docstrings(args.texts)
    emb = Embedder.load("minilm", device="cpu", num_threads=args.threads, batch_tokens=args.batch_tokens,
                        dtype="float32")  # fmt: skip
    auto = Embedder.load("minilm", device="cpu", num_threads=args.threads, batch_tokens=args.batch_tokens)
    precision = str(auto.placement.compute).removeprefix("torch.")
    torch.set_num_threads(args.threads)
    st = SentenceTransformer(str(packaged_minilm_dir()), device="cpu")
    torch.set_num_threads(args.threads)

    real_tokens = sum(min(n, emb.max_tokens) for n in emb.count_tokens(texts))
    chars = [len(t) for t in texts]
    print(f"corpus: {len(texts)} unique stdlib docstrings, {sum(chars):,} chars "
          f"(median {int(statistics.median(chars))}, max {max(chars)}), {real_tokens:,} real tokens "
          f"after truncation at {emb.max_tokens}")  # fmt: skip
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, model={emb.model_id}, "
          f"Embedder batch_tokens={emb.batch_tokens}; the default precision here: {precision} matrix products "
          f"(native bf16: {cpu_fast_bf16()})")  # fmt: skip

    # warm-up (first-call allocations, kernels)
    emb.embed_documents(texts[:64])
    auto.embed_documents(texts[:64])
    st.encode(texts[:64])

    runs: dict[str, tuple[float, float, np.ndarray]] = {}
    runs["sentence-transformers default"] = timed(
        lambda: st.encode(texts, convert_to_numpy=True, normalize_embeddings=True), args.repeat
    )
    runs["sentence-transformers batch_size=128"] = timed(
        lambda: st.encode(texts, batch_size=128, convert_to_numpy=True, normalize_embeddings=True), args.repeat
    )
    emb.stats.reset()
    runs["embed_core Embedder fp32"] = timed(lambda: emb.embed_documents(texts), args.repeat)
    padding = 1 - emb.stats.tokens / max(emb.stats.padded_tokens, 1)
    runs[f"embed_core Embedder default ({precision})"] = timed(lambda: auto.embed_documents(texts), args.repeat)

    base_time, base_cpu, base_vecs = runs["sentence-transformers default"]
    print(f"\n{'engine':<38} {'wall s':>7} {'tokens/s':>9} {'ratio':>6} {'cpu s':>7} {'cpu ratio':>9} "
          f"{'max |cos diff|':>15}")  # fmt: skip
    for name, (seconds, cpu, vecs) in runs.items():
        cos = (vecs * base_vecs).sum(1) / (np.linalg.norm(vecs, axis=1) * np.linalg.norm(base_vecs, axis=1))
        print(f"{name:<38} {seconds:7.2f} {real_tokens / seconds:9,.0f} {base_time / seconds:5.2f}x "
              f"{cpu:7.2f} {base_cpu / cpu:8.2f}x {float(np.abs(1 - cos).max()):15.2e}")  # fmt: skip
    fp32_vecs = runs["embed_core Embedder fp32"][2]
    default_vecs = runs[f"embed_core Embedder default ({precision})"][2]
    print(f"\ndefault vs fp32 Embedder: min cos {float((fp32_vecs * default_vecs).sum(1).min()):.6f}")
    print(f"Embedder: {emb.stats.batches} batches, padding {padding:.1%} of processed tokens "
          f"(per timed run), {emb.stats.truncated} truncated")  # fmt: skip
    print("ratio = wall seconds(sentence-transformers default) / wall seconds(engine); cpu ratio: the same with "
          "process CPU time, steadier when other processes share the CPU")  # fmt: skip


if __name__ == "__main__":
    main()
