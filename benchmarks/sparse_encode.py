"""SPLADE encoding speed: ``embed_core.sparse`` against sentence-transformers' ``SparseEncoder`` on the same
model, the same texts, in the same run (issue 28; not a test).

A random-init model of a real SPLADE architecture and size (BERT-base with its MLM head, 110M parameters,
the WordPiece vocabulary of the packaged MiniLM: what naver/splade-v3 is), so no weights are needed; the
speed of a forward pass does not depend on the weights. Texts: stdlib docstrings cut to about 120 words.

    .venv/bin/python benchmarks/sparse_encode.py [--docs 512] [--batch 16] [--max-tokens 256]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_model(out: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from embedrail.embed_core import packaged_minilm_dir

    tok = AutoTokenizer.from_pretrained(str(packaged_minilm_dir()))
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=tok.vocab_size)).eval().save_pretrained(out)  # BERT-base sizes
    tok.save_pretrained(out)
    return out


def _dense(pairs: list[tuple[list[int], list[float]]], vocab: int) -> Any:
    import numpy as np

    out = np.zeros((len(pairs), vocab), dtype=np.float32)
    for row, (idx, val) in zip(out, pairs, strict=True):
        row[idx] = val
    return out


def _cos(a: Any, b: Any) -> Any:
    import numpy as np

    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=256)
    args = ap.parse_args()
    import torch
    from sentence_transformers import SparseEncoder as StSparse
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling

    from embedrail.embed_core.sparse import open_sparse_encoder
    from embedrail.integration.sources import open_source

    texts = []
    for d in open_source("pydoc:?per=member"):
        words = d.text.split()
        if len(words) >= 40:
            texts.append(" ".join(words[:120]))
        if len(texts) == args.docs:
            break
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "splade-base-random")
        ours = open_sparse_encoder(str(model), device="cpu", dtype="float32", batch_size=args.batch, max_tokens=args.max_tokens)
        st = StSparse(modules=[MLMTransformer(str(model), max_seq_length=args.max_tokens), SpladePooling("max")], device="cpu")
        print(f"{len(texts)} texts, batch {args.batch}, max {args.max_tokens} tokens, {torch.get_num_threads()} threads; "
              "BERT-base MLM (random init), float32")  # fmt: skip
        ours.encode(texts[: args.batch])  # warm-up
        st.encode(texts[: args.batch], batch_size=args.batch)
        bf16 = open_sparse_encoder(str(model), device="cpu", dtype="bfloat16", batch_size=args.batch, max_tokens=args.max_tokens)
        bf16.encode(texts[: args.batch])
        rows, out = [], {}
        for name, fn in (("embedrail embed_core.sparse", lambda: ours.encode(texts)),
                         ("sentence-transformers SparseEncoder", lambda: st.encode(texts, batch_size=args.batch, convert_to_tensor=True)),
                         ("embedrail, bf16 weights (CPU default)", lambda: bf16.encode(texts))):  # fmt: skip
            t = time.perf_counter()
            out[name] = fn()
            rows.append((name, time.perf_counter() - t))
        base = rows[1][1]
        for name, secs in rows:
            print(f"{name:<38}{secs:8.1f} s  {len(texts) / secs:7.1f} texts/s  {base / secs:5.2f}x sentence-transformers")
        dense = {n: _dense(v, ours.vocab_size) for n, v in out.items() if n.startswith("embedrail")}
        ref = out["sentence-transformers SparseEncoder"].to_dense().numpy()
        for n, m in dense.items():
            print(f"cosine to sentence-transformers' vectors, {n}: min {_cos(m, ref).min():.6f}, mean {_cos(m, ref).mean():.6f}")


if __name__ == "__main__":
    main()
