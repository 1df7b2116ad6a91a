"""Rerank latency: one query against 100 candidates, as the second stage of a search runs it.

Candidates are real texts (standard-library member docs, the retrieval benchmark's documents), truncated
by the model as it would be. Models are randomly initialised at full size (no weights can be downloaded):
latency does not depend on the weights.

- ``cross-encoder``: the shape of cross-encoder/ms-marco-MiniLM-L-6-v2 (BERT, 6 layers, 384 hidden, 512
  tokens, the MiniLM WordPiece vocabulary). Ours (``embed_core.open_reranker``; bf16 matrix products where
  the CPU has them, and forced fp32) against the named baseline, sentence-transformers'
  ``CrossEncoder.predict`` (batch_size 32) on the same directory, in the same run.
- ``--qwen3``: the shape of Qwen3-Reranker-0.6B (28 layers, 1,024 hidden, 16/8 heads, 151,669 vocabulary)
  with a small stand-in tokenizer (its token counts are printed: they are not the real tokenizer's), in
  ``--qwen3-dtype`` (bfloat16 by default); ours (packed) against the left-padded transformers forward pass
  (``packed=False``, the model card's layout) on the same model. Slow on 2 cores: ``--qwen3-candidates``.

    .venv/bin/python benchmarks/rerank_latency.py [--candidates 100] [--pick typical|longest] [--repeat 5] [--qwen3] [--device cpu]
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

QUERY = "parse a header value with parameters"


def candidates(n: int, pick: str) -> list[str]:
    """``longest``: the n longest docs (nearly all cut at the model's limit: the worst case); ``typical``:
    n docs spread evenly over the set (its length distribution)."""
    from retrieval_quality import retrieval_set

    docs = [doc for _, _, doc in retrieval_set(None, "summary")]
    if pick == "longest":
        return sorted(docs, key=len, reverse=True)[:n]
    return docs[:: max(1, len(docs) // n)][:n]


def timed(fn, repeat: int) -> float:  # noqa: ANN001
    fn()  # warm-up (first-call allocations, oneDNN kernel selection)
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def build_minilm_cross_encoder(out: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from embedrail.embed_core import packaged_minilm_dir

    tok = AutoTokenizer.from_pretrained(str(packaged_minilm_dir()))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512, num_labels=1)  # fmt: skip
    BertForSequenceClassification(cfg).eval().save_pretrained(out)
    tok.model_max_length = 512
    tok.save_pretrained(out)
    return out


def build_qwen3_06b(out: Path) -> Path:
    import torch
    from test_embed_fixtures import build_tiny_qwen3_reranker
    from transformers import Qwen3Config, Qwen3ForCausalLM

    build_tiny_qwen3_reranker(out)  # the stand-in tokenizer (its small model is replaced below)
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=151669, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                      num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                      tie_word_embeddings=True, torch_dtype="bfloat16")  # fmt: skip
    Qwen3ForCausalLM(cfg).to(torch.bfloat16).eval().save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--pick", choices=["typical", "longest"], default="typical", help="which candidate texts")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--qwen3", action="store_true", help="also the Qwen3-Reranker-0.6B shape")
    ap.add_argument("--qwen3-candidates", type=int, default=20)
    ap.add_argument("--qwen3-dtype", default="bfloat16")
    ap.add_argument("--qwen3-max-tokens", type=int, default=512)
    args = ap.parse_args()
    import torch
    from sentence_transformers import CrossEncoder

    from embedrail.embed_core import open_reranker
    from embedrail.embed_core.device import cpu_fast_bf16

    texts = candidates(args.candidates, args.pick)
    tmp = Path(tempfile.mkdtemp(prefix="bench-rerank-"))
    atexit.register(shutil.rmtree, tmp, True)  # the random checkpoints (over 1 GB with --qwen3)
    ce_dir = build_minilm_cross_encoder(tmp / "ce")
    print(f"{len(texts)} {args.pick} candidates (stdlib member docs, {statistics.mean(map(len, texts)):.0f} chars on average); "
          f"device {args.device}; torch {torch.__version__}; CPU native bf16: {cpu_fast_bf16()}")  # fmt: skip
    rows = []
    st = CrossEncoder(str(ce_dir), device=args.device)
    base = timed(lambda: st.predict([(QUERY, t) for t in texts], batch_size=32), args.repeat)
    rows.append(("cross-encoder MiniLM-L6", "CrossEncoder.predict bs=32 (baseline)", base, base))
    for label, kw in (("ours (default)", {}), ("ours float32", {"dtype": "float32"})):
        rr = open_reranker(str(ce_dir), device=args.device, **kw)
        rows.append(("cross-encoder MiniLM-L6", label, timed(lambda: rr.rerank(QUERY, texts), args.repeat), base))  # noqa: B023
        tokens = rr.stats.tokens // max(rr.stats.texts, 1)
        rr.close()
    print(f"cross-encoder: {tokens} tokens per (query, candidate) pair on average (max 512)")
    if args.qwen3:
        q_dir = build_qwen3_06b(tmp / "qwen3")
        q_texts = texts[: args.qwen3_candidates]
        rr = open_reranker(str(q_dir), device=args.device, dtype=args.qwen3_dtype, max_tokens=args.qwen3_max_tokens)
        ours = timed(lambda: rr.rerank(QUERY, q_texts), max(1, args.repeat // 2))
        tokens = rr.stats.tokens // max(rr.stats.texts, 1)
        rr.close()
        padded = open_reranker(str(q_dir), device=args.device, dtype=args.qwen3_dtype, max_tokens=args.qwen3_max_tokens,
                               packed=False)  # fmt: skip
        card = timed(lambda: padded.rerank(QUERY, q_texts), max(1, args.repeat // 2))
        padded.close()
        label = f"Qwen3-Reranker-0.6B shape ({len(q_texts)} cand.)"
        rows.append((label, "padded transformers path (baseline)", card, card))
        rows.append((label, f"ours packed ({args.qwen3_dtype})", ours, card))
        print(f"qwen3: {tokens} stand-in tokens per pair on average (max {args.qwen3_max_tokens})")
    print(f"\n{'model':<40}{'path':<40}{'ms/query':>10}{'vs baseline':>13}")
    for model, label, sec, ref in rows:
        print(f"{model:<40}{label:<40}{1000 * sec:>10.1f}{ref / sec:>12.2f}x")


if __name__ == "__main__":
    main()
