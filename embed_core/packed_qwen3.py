"""A padding-free forward pass for Qwen3 (decoder) embedding models: Qwen3-Embedding-0.6B/4B/8B.

Like ``packed_bert``: the batch's tokens are packed into one ``(total_tokens, hidden)`` matrix, so the
linear layers (Q/K/V fused into one GEMM, gate/up fused into one, o and down) and the RMS norms run on
real tokens only. The attention core, causal within each text, runs

- on CUDA with ``torch.nn.attention.varlen.varlen_attn`` (flash-attention varlen: no padding at all)
  where this PyTorch has it and the dtype/head size allow it;
- elsewhere (CPU, older PyTorch) with SDPA's causal mask per run of texts of similar length
  (``PackedBatch.buckets``), each on a *right*-padded block: with a causal mask a real query never
  sees a padding key, so no key mask is needed and the result for real tokens is exact.

Positions restart at 0 for every text (as the padded path's ``position_ids`` do), RoPE is applied per
token, the weights are the model's own (only the fused matrices are copies), and the last-token
pooling reads each text's last packed row. The result equals the transformers forward pass up to
float rounding; a configuration this does not cover (sliding-window layers, biases on the norms,
another activation or RoPE type) falls back to the transformers model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from embedrail.embed_core.packing import Bucket, PackedBatch

__all__ = ["PackedQwen3", "supports"]


def supports(model: Any) -> bool:
    """True when ``model`` is a plain transformers ``Qwen3Model`` this module can run exactly."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) != "qwen3" or type(model).__name__ != "Qwen3Model":
        return False
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return False
    if getattr(cfg, "hidden_act", None) != "silu":
        return False
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        return False
    if any(type(m).__name__.startswith(("Quantized", "DynamicQuantized")) for m in model.modules()):
        return False
    return cfg.num_attention_heads % cfg.num_key_value_heads == 0


def _varlen_attn() -> Any:
    """``torch.nn.attention.varlen.varlen_attn`` as ``f(q, k, v, cu_seqlens, max_len)``, causal, GQA-aware;
    None where this PyTorch has none. Its keywords changed between releases (``is_causal`` in the first
    ones, ``window_size=(-1, 0)`` later; ``enable_gqa`` later still): the wrapper follows the signature."""
    try:
        import inspect

        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # pragma: no cover - PyTorch < 2.10
        return None
    params = inspect.signature(varlen_attn).parameters
    causal: dict[str, Any] = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    if "window_size" not in params and "is_causal" not in params:  # pragma: no cover - unknown API
        return None
    gqa = "enable_gqa" in params

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int) -> torch.Tensor:
        if k.shape[1] != q.shape[1]:
            if gqa:
                return varlen_attn(q, k, v, cu, cu, max_len, max_len, enable_gqa=True, **causal)
            k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
        return varlen_attn(q, k, v, cu, cu, max_len, max_len, **causal)

    return attend


class PackedQwen3:
    """Callable on a packed batch -> ``(total_tokens, hidden)`` last hidden states (after the final norm).

    The norms are PyTorch's fused ``rms_norm`` (normalised in fp32, as the transformers model does) and
    RoPE is two fused multiply-adds, so each layer launches few element-wise kernels besides its four
    GEMMs. ``compile=True`` additionally compiles the layer with ``torch.compile`` (dynamic shapes: one
    graph for every batch), fusing the remaining element-wise work; it pays a compile on first use.
    """

    def __init__(self, model: Any, *, compile: bool = False) -> None:
        cfg = model.config
        self.heads = int(cfg.num_attention_heads)
        self.kv_heads = int(cfg.num_key_value_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.embed = model.embed_tokens.weight
        self.rotary = model.rotary_emb
        self.norm = (model.norm.weight, float(model.norm.variance_epsilon))
        self.layers = []
        for layer in model.layers:
            at, mlp = layer.self_attn, layer.mlp
            qkv_w = torch.cat([at.q_proj.weight, at.k_proj.weight, at.v_proj.weight], dim=0).detach().contiguous()
            qkv_b = None
            if at.q_proj.bias is not None:
                qkv_b = torch.cat([at.q_proj.bias, at.k_proj.bias, at.v_proj.bias], dim=0).detach().contiguous()
            gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight], dim=0).detach().contiguous()
            self.layers.append(((layer.input_layernorm.weight, float(layer.input_layernorm.variance_epsilon)), qkv_w, qkv_b,
                                (at.q_norm.weight, float(at.q_norm.variance_epsilon)),
                                (at.k_norm.weight, float(at.k_norm.variance_epsilon)), at.o_proj.weight, at.o_proj.bias,
                                (layer.post_attention_layernorm.weight, float(layer.post_attention_layernorm.variance_epsilon)),
                                gate_up, mlp.down_proj.weight))  # fmt: skip
        self._varlen = _varlen_attn()
        self._layer = torch.compile(self._layer_eager, dynamic=True) if compile else self._layer_eager

    def _use_varlen(self, x: torch.Tensor) -> bool:
        return (self._varlen is not None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)
                and self.head_dim <= 256 and self.head_dim % 8 == 0)  # fmt: skip

    def __call__(self, pb: PackedBatch) -> torch.Tensor:
        """Run the decoder on a packed batch (positions restart at 0 in every text)."""
        x = F.embedding(pb.ids, self.embed)
        cos, sin = self.rotary(x.unsqueeze(0), pb.positions.unsqueeze(0))
        cos, sin = cos[0].unsqueeze(1), sin[0].unsqueeze(1)  # (T, 1, head_dim): one rotation per token
        half = self.head_dim // 2
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)  # rotate_half's sign folded into sin
        varlen = self._use_varlen(x)
        cu = F.pad(pb.lengths.cumsum(0, dtype=torch.int32), (1, 0)) if varlen else None
        buckets = None if varlen else pb.buckets()
        for weights in self.layers:
            x = self._layer(x, cos, sin, cu, pb.width, buckets, weights)
        w, eps = self.norm
        return F.rms_norm(x, (x.shape[-1],), w, eps)

    def _layer_eager(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cu: torch.Tensor | None,
                     width: int, buckets: list[Bucket] | None, weights: tuple) -> torch.Tensor:  # fmt: skip
        (in_w, in_eps), qkv_w, qkv_b, (qn_w, qn_eps), (kn_w, kn_eps), o_w, o_b, (post_w, post_eps), gate_up, down_w = weights
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        total, hidden = x.shape
        qkv = F.linear(F.rms_norm(x, (hidden,), in_w, in_eps), qkv_w, qkv_b)  # one GEMM for Q, K and V
        q, k, v = qkv.split((h * d, kv * d, kv * d), dim=-1)
        q = F.rms_norm(q.view(total, h, d), (d,), qn_w, qn_eps)
        k = F.rms_norm(k.view(total, kv, d), (d,), kn_w, kn_eps)
        q = torch.addcmul(q * cos, q.roll(d // 2, dims=-1), sin)  # RoPE: q·cos + rotate_half(q)·sin
        k = torch.addcmul(k * cos, k.roll(d // 2, dims=-1), sin)
        v = v.reshape(total, kv, d)
        if cu is not None:
            ctx = self._varlen(q, k, v.contiguous(), cu, width)
        else:
            assert buckets is not None
            ctx = self._bucketed_attention(q, k, v, buckets)
        x = x + F.linear(ctx.reshape(total, h * d), o_w, o_b)
        gate, up = F.linear(F.rms_norm(x, (hidden,), post_w, post_eps), gate_up).chunk(2, dim=-1)
        return x + F.linear(F.silu(gate) * up, down_w)

    def _bucketed_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, buckets: list[Bucket]) -> torch.Tensor:
        """Causal attention per text, one right-padded block per bucket (exact for real tokens)."""
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        parts = []
        for b in buckets:
            qp, kp, vp = (b.to_block(t).view(b.rows, b.width, n, d).transpose(1, 2) for t, n in ((q, h), (k, kv), (v, kv)))
            if kv != h:
                kp, vp = kp.repeat_interleave(h // kv, dim=1), vp.repeat_interleave(h // kv, dim=1)
            ctx = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True)  # (rows, h, width, d)
            parts.append(b.from_block(ctx.transpose(1, 2).reshape(b.rows * b.width, h, d)))
        return parts[0] if len(parts) == 1 else torch.cat(parts)
