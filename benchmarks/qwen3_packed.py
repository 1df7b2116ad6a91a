"""Qwen3-Embedding throughput: the padded forward (transformers, left padding) vs embed_core's packed
(padding-free) forward, on a randomly initialised model of a real Qwen3-Embedding shape.

No weights can be downloaded, so the model is ``Qwen3Model(config)`` with random weights of the real
configuration (``--shape 4b``: 36 layers, hidden 2560, 32 query / 8 KV heads of 128, MLP 9728), saved
to a temporary directory with a tokenizer and loaded through ``Embedder.load`` like any model. Inputs
are random token ids fed to the embedder's batching (token-budget batches, length-sorted): the same
texts for both paths. Prints real tokens/s, the padding each path computed, model FLOP utilisation
(MFU: useful FLOPs — every linear layer on real tokens plus causal attention — over the GPU's bf16
dense peak) and the ratio packed/padded, plus the cosine between the two paths' vectors. Not a test.

    python benchmarks/qwen3_packed.py --device cuda --shape 4b          # on a GPU
    python benchmarks/qwen3_packed.py --device cpu --shape tiny         # a smoke run anywhere
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

SHAPES = {  # Qwen3-Embedding configurations (config.json of the released models)
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8),
    "4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8),
    "8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
}
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}  # dense bf16 tensor-core peaks (FLOP/s)


def build_model(out: Path, shape: str, device: str) -> dict:
    from test_embed_fixtures import build_tiny_qwen3
    from transformers import Qwen3Config, Qwen3Model

    build_tiny_qwen3(out)  # a Qwen-like tokenizer (+ a tiny model, overwritten below)
    cfg = Qwen3Config(vocab_size=151669, head_dim=128 if shape != "tiny" else 32, max_position_embeddings=32768,
                      **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device if device.startswith("cuda") else "cpu"):
        model = Qwen3Model(cfg).to(torch.bfloat16 if device.startswith("cuda") else torch.float32).eval()
    for p in model.parameters():  # small weights keep a deep random stack's activations finite
        p.data.normal_(0.0, 0.02)
    for name, p in model.named_parameters():
        if "norm" in name:
            p.data.fill_(1.0)
    model.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters()) - model.embed_tokens.weight.numel()
    del model
    return {"config": cfg, "nonembed_params": n}


def flops_per_text(n: int, info: dict) -> float:
    """Useful FLOPs of one text of ``n`` tokens: 2·params per token + causal attention (QKᵀ and AV)."""
    cfg = info["config"]
    attn = 2 * 2 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * (n * (n + 1) / 2)
    return 2 * info["nonembed_params"] * n + attn


def run(emb, texts: list[list[int]], repeat: int, sync) -> tuple[float, np.ndarray, int]:
    emb.stats.reset()
    out = emb._run(texts[: max(1, len(texts) // 8)])  # warm-up (kernels, allocator)
    sync()
    best = float("inf")
    for _ in range(repeat):
        emb.stats.reset()
        t0 = time.perf_counter()
        out = emb._run(texts)
        sync()
        best = min(best, time.perf_counter() - t0)
    return best, out, emb.stats.padded_tokens


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shape", choices=sorted(SHAPES), default="4b")
    p.add_argument("--texts", type=int, default=512, help="texts per workload")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also measure the packed path under torch.compile")
    p.add_argument("--json", help="also write the results to this file")
    a = p.parse_args()

    from embedrail.embed_core import Embedder

    cuda = a.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    gpu = torch.cuda.get_device_name() if cuda else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
    rng = np.random.default_rng(0)
    results: dict = {"device": gpu, "shape": a.shape, "torch": torch.__version__, "workloads": {}}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        info = build_model(Path(tmp), a.shape, a.device)
        print(f"{a.shape}: {info['nonembed_params'] / 1e9:.2f}B non-embedding parameters, random weights "
              f"({time.perf_counter() - t0:.0f}s to build); device {gpu}, torch {torch.__version__}")  # fmt: skip
        workloads = {
            "uniform 512": [512] * a.texts,
            "mixed 16-512": [int(x) for x in rng.integers(16, 513, a.texts)],
        }
        vocab = 151000
        variants = {"padded": {"packed": False}, "packed": {"packed": True}}
        if a.compile:
            variants["packed+compile"] = {"packed": True, "compile": True}
        embedders = {}
        for label, opts in variants.items():
            emb = embedders[label] = Embedder.load(tmp, device=a.device, max_tokens=512, **opts)
            impl = type(emb._packed).__name__ if emb._packed is not None else "transformers " + emb.placement.attn_implementation
            varlen = emb._packed is not None and emb._packed._use_varlen(emb._packed.embed)
            print(f"  {label}: {impl}{' (varlen attention)' if varlen else ''}, {emb.placement.dtype}, "
                  f"batch budget {emb.batch_tokens} tokens")  # fmt: skip
        for name, lengths in workloads.items():
            texts = [rng.integers(100, vocab, n).tolist() for n in lengths]
            real = sum(lengths)
            useful = sum(flops_per_text(n, info) for n in lengths)
            row: dict = {}
            vecs = {}
            for label, emb in embedders.items():
                sec, out, padded = run(emb, texts, a.repeat, sync)
                vecs[label] = out
                row[label] = {"seconds": round(sec, 4), "tokens_per_s": round(real / sec), "padded_tokens": padded,
                              "mfu": round(useful / sec / peak, 4) if peak else None}  # fmt: skip
            results["workloads"][name] = row
            print(f"\n{name}: {len(lengths)} texts, {real} real tokens")
            for label in embedders:
                r = row[label]
                if label != "padded":
                    a_, b_ = vecs[label], vecs["padded"]
                    cos = (a_ * b_).sum(1) / (np.linalg.norm(a_, axis=1) * np.linalg.norm(b_, axis=1))
                    r["vs_padded"] = round(row["padded"]["seconds"] / r["seconds"], 3)
                    r["min_cos_vs_padded"] = round(float(cos.min()), 6)
                mfu = f"  MFU {100 * r['mfu']:.1f}%" if r["mfu"] is not None else ""
                vs = f"  {r['vs_padded']:.2f}x padded, min cos {r['min_cos_vs_padded']}" if label != "padded" else ""
                print(f"  {label:15s} {r['tokens_per_s']:>10,} tok/s  ({r['seconds']:.3f}s, padded layout {r['padded_tokens']:,}){mfu}{vs}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
