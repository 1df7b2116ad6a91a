"""A padding-free forward pass for BERT-architecture encoders (MiniLM, bge, e5, ...).

The batch's tokens are *packed* into one ``(total_tokens, hidden)`` matrix, so every linear layer
(the bulk of the FLOPs) runs on real tokens only; the attention core (PyTorch SDPA) runs per run of
texts of similar length, each on a right-padded ``(rows, heads, width, head_dim)`` block with a key
mask, so it computes about as many scores as there are real ones. On CPU, blocks up to
``CPU_EXPLICIT_ATTENTION_WIDTH`` tokens wide run an explicit attention (two batched matrix products and
an fp32 softmax) instead: PyTorch's fused CPU kernel is slower there for MiniLM's 32-wide heads. The three Q/K/V projections are
fused into one matrix multiply. The weights are read from the checkpoint's safetensors
(``load_packed_bert``) or taken from a loaded transformers model (``PackedBert.from_model``); the
result equals the transformers forward pass up to float rounding. Any configuration this does not
cover falls back to the transformers model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from embedrail.embed_core.packing import PackedBatch

#: On CPU, attention blocks up to this many tokens wide run as two batched matrix products with an fp32
#: softmax in between, wider ones through SDPA's fused kernel: the explicit form wins for short blocks and
#: loses for long ones, and this limit was the fastest end to end with the same vectors (A/B runs of the
#: stdlib corpus; the figures are in docs/benchmarks.md).
CPU_EXPLICIT_ATTENTION_WIDTH = 160

_ACTS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def supports(model: Any) -> bool:
    """True when ``model`` is a plain transformers BertModel this module can run exactly."""
    cfg = getattr(model, "config", None)
    if cfg is None or type(model).__name__ != "BertModel":
        return False
    if any(type(m).__name__.startswith(("Quantized", "DynamicQuantized")) for m in model.modules()):
        return False
    return supports_config(cfg.to_dict())


def supports_config(cfg: dict[str, Any]) -> bool:
    """True when a ``config.json`` describes a BERT encoder this module runs exactly (no decoder, no
    cross-attention, absolute positions, a known activation)."""
    if cfg.get("model_type") != "bert" or cfg.get("is_decoder") or cfg.get("add_cross_attention"):
        return False
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        return False
    if not isinstance(cfg.get("hidden_act"), str) or cfg["hidden_act"] not in _ACTS:
        return False
    try:
        return int(cfg["hidden_size"]) % int(cfg["num_attention_heads"]) == 0 and int(cfg["num_hidden_layers"]) > 0
    except (KeyError, TypeError, ValueError):
        return False


def load_packed_bert(path: Path, compute_dtype: torch.dtype, device: torch.device) -> PackedBert | None:
    """A ``PackedBert`` read straight from a model directory's ``config.json`` + ``model.safetensors``,
    without importing or building the transformers model (which costs ~2 s of imports at every process
    start). None when the directory is not a plain BERT checkpoint in one safetensors file: the caller
    then loads the transformers model."""
    cfg_file, weights_file = path / "config.json", path / "model.safetensors"
    if not (cfg_file.is_file() and weights_file.is_file()):
        return None
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict) or not supports_config(cfg):
        return None
    from safetensors.torch import load_file

    weights = load_file(str(weights_file), device=str(device))
    if not any(k.startswith("bert.") for k in weights) and "embeddings.word_embeddings.weight" not in weights:
        return None
    weights = {k.removeprefix("bert."): v for k, v in weights.items()}
    try:
        return PackedBert(cfg, weights, compute_dtype)
    except KeyError:  # not the tensors of a BertModel (another head, another naming)
        return None


class PackedBert:
    """Callable: ``PackedBatch -> (total_tokens, hidden)`` last hidden states (float32), packed.

    ``compute_dtype`` is the dtype of the matrix products (default: the model's). With bfloat16 or
    float16 they run in that dtype (weights converted once; oneDNN / cuBLAS accumulate in fp32), while
    the residual stream, the LayerNorms and the biases of the residual adds stay in float32: the half
    precision only ever rounds a GEMM's inputs and output, never the running sum a token carries through
    the layers. The softmax accumulates in fp32: SDPA's half-precision kernels do, and the explicit CPU
    attention of narrow blocks takes its scores to fp32 before the softmax.
    """

    def __init__(self, cfg: dict[str, Any], weights: Mapping[str, torch.Tensor], compute_dtype: torch.dtype) -> None:
        """``cfg``: the model's ``config.json``; ``weights``: its tensors by BertModel name (a
        ``state_dict`` or a safetensors file's contents). Use ``from_model`` for a loaded model."""
        self.heads = int(cfg["num_attention_heads"])
        self.hidden = int(cfg["hidden_size"])
        self.head_dim = self.hidden // self.heads
        self.scale = self.head_dim**-0.5  # SDPA's default softmax scale
        self.act = _ACTS[cfg["hidden_act"]]
        cd = self.compute_dtype = compute_dtype
        eps = float(cfg.get("layer_norm_eps", 1e-12))
        f32 = torch.float32

        def w(name: str, dtype: torch.dtype) -> torch.Tensor:
            return weights[name].detach().to(dtype)

        def ln(prefix: str) -> tuple[torch.Tensor, torch.Tensor, float]:
            return w(prefix + ".weight", f32), w(prefix + ".bias", f32), eps

        self.word = w("embeddings.word_embeddings.weight", f32)
        self.pos = w("embeddings.position_embeddings.weight", f32)
        self.types = w("embeddings.token_type_embeddings.weight", f32)
        self.type0 = self.types[0]
        self.emb_ln = ln("embeddings.LayerNorm")
        self.layers = []
        for i in range(int(cfg["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            sa, att, inter, out = p + "attention.self.", p + "attention.output.", p + "intermediate.", p + "output."
            qkv_w = torch.cat([w(sa + n + ".weight", cd) for n in ("query", "key", "value")]).contiguous()
            qkv_b = torch.cat([w(sa + n + ".bias", cd) for n in ("query", "key", "value")]).contiguous()
            self.layers.append((qkv_w, qkv_b, w(att + "dense.weight", cd), w(att + "dense.bias", f32),
                                ln(att + "LayerNorm"), w(inter + "dense.weight", cd), w(inter + "dense.bias", cd),
                                w(out + "dense.weight", cd), w(out + "dense.bias", f32), ln(out + "LayerNorm")))  # fmt: skip
        self.max_positions = int(self.pos.shape[0])
        self.up = self._fused_up(cfg["hidden_act"])

    def _fused_up(self, act_name: str) -> Any:
        """The intermediate layer ``act(x @ W.T + b)``: on CPU in bf16 with exact GELU, oneDNN's fused
        linear + GELU (the GEMM's epilogue applies the activation: one pass less over the widest
        activation of the layer), else linear then activation. The fused kernel is checked against
        the unfused one at load; any failure keeps the unfused path."""
        act = self.act

        def plain(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return act(F.linear(x, w, b))

        w, b = self.layers[0][5], self.layers[0][6]
        op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
        if act_name != "gelu" or self.compute_dtype != torch.bfloat16 or w.device.type != "cpu" or op is None:
            return plain

        def fused(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return op(x, w, b, "gelu", [], "none")

        try:
            probe = torch.randn(7, w.shape[1], generator=torch.Generator().manual_seed(0)).to(w.dtype)
            if not torch.allclose(fused(probe, w, b).float(), plain(probe, w, b).float(), rtol=2e-2, atol=2e-2):
                return plain
        except (RuntimeError, TypeError):  # an older oneDNN / torch build without the fused op
            return plain
        return fused

    @classmethod
    def from_model(cls, model: Any, compute_dtype: torch.dtype | None = None) -> PackedBert:
        """From a loaded transformers ``BertModel`` (its weights are shared, not copied, where the
        dtype allows)."""
        cd = compute_dtype or next(model.parameters()).dtype
        return cls(model.config.to_dict(), dict(model.named_parameters()), cd)

    def __call__(self, pb: PackedBatch) -> torch.Tensor:
        """Run the encoder on a packed batch. The attention core runs per length bucket of the batch
        (``PackedBatch.buckets``), each on its own right-padded block with a key mask, so it computes
        about as many scores as the texts really have."""
        cd, h, d, hidden = self.compute_dtype, self.heads, self.head_dim, self.hidden
        types = self.type0 if pb.token_types is None else F.embedding(pb.token_types, self.types)  # pairs: segment A/B
        x = F.embedding(pb.ids, self.word) + F.embedding(pb.positions, self.pos) + types
        x = F.layer_norm(x, (hidden,), *self.emb_ln)  # the residual stream: float32 throughout
        buckets = pb.buckets()
        # narrow blocks on CPU: explicit attention, with the key mask as an additive fp32 mask (None: no padding)
        explicit = [x.device.type == "cpu" and b.width <= CPU_EXPLICIT_ATTENTION_WIDTH for b in buckets]
        masks = [_additive(b.key_mask) if e else None for b, e in zip(buckets, explicit, strict=True)]
        for qkv_w, qkv_b, o_w, o_b, o_ln, i_w, i_b, out_w, out_b, out_ln in self.layers:
            qkv = F.linear(x.to(cd), qkv_w, qkv_b)  # (T, 3H), one GEMM for Q, K and V
            parts = []
            for b, e, mask in zip(buckets, explicit, masks, strict=True):
                q, k, v = b.to_block(qkv).view(b.rows, b.width, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
                if e:
                    ctx = _explicit_attention(q, k, v, mask, self.scale)
                else:
                    ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=b.key_mask)  # (rows, h, width, d)
                parts.append(b.from_block(ctx.transpose(1, 2).reshape(b.rows * b.width, hidden)))
            ctx = parts[0] if len(parts) == 1 else torch.cat(parts)
            x = F.layer_norm(_residual(x, ctx, o_w, o_b), (hidden,), *o_ln)
            inner = self.up(x.to(cd), i_w, i_b)
            x = F.layer_norm(_residual(x, inner, out_w, out_b), (hidden,), *out_ln)
        return x


def _additive(key_mask: torch.Tensor | None) -> torch.Tensor | None:
    """A boolean key mask (True = real token) as an additive fp32 mask (0 or -inf)."""
    if key_mask is None:
        return None
    return torch.zeros(key_mask.shape, device=key_mask.device).masked_fill_(~key_mask, float("-inf"))


def _explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                        scale: float) -> torch.Tensor:  # fmt: skip
    """``softmax(q k^T * scale + mask) v`` with the scores and the softmax in fp32 and both products in
    the inputs' dtype (SDPA's result up to rounding)."""
    scores = torch.matmul(q, k.transpose(-1, -2)).float().mul_(scale)
    if mask is not None:
        scores.add_(mask)
    return torch.matmul(torch.softmax(scores, -1).to(v.dtype), v)


def _residual(x: torch.Tensor, inp: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``x + b + inp @ w.T`` with ``x``/``b`` in float32 and the product in ``w``'s dtype."""
    if w.dtype == x.dtype:  # residual and bias first, then the GEMM accumulates in place (no extra copy)
        return (x + b).addmm_(inp, w.t())
    return (x + b).add_(F.linear(inp, w))
