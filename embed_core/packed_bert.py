"""A padding-free forward pass for BERT-architecture encoders (MiniLM, bge, e5, ...).

The batch's tokens are *packed* into one ``(total_tokens, hidden)`` matrix, so every linear layer
(the bulk of the FLOPs) runs on real tokens only; only the attention core is computed on the
padded ``(batch, heads, seq, head_dim)`` layout (with a key mask), by PyTorch SDPA. The three
Q/K/V projections are fused into one matrix multiply. Weights are the model's own (shared, not
copied except for the fused QKV matrix), so the result equals the transformers forward pass up
to float rounding. Any configuration this does not cover falls back to the transformers model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .packing import PackedBatch

_ACTS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def supports(model: Any) -> bool:
    """True when ``model`` is a plain transformers BertModel this module can run exactly."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) != "bert" or type(model).__name__ != "BertModel":
        return False
    if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
        return False
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
        return False
    if not isinstance(getattr(cfg, "hidden_act", None), str) or cfg.hidden_act not in _ACTS:
        return False
    if any(type(m).__name__.startswith(("Quantized", "DynamicQuantized")) for m in model.modules()):
        return False
    return cfg.hidden_size % cfg.num_attention_heads == 0


class PackedBert:
    """Callable: ``PackedBatch -> (total_tokens, hidden)`` last hidden states (float32), packed.

    ``compute_dtype`` is the dtype of the matrix products (default: the model's). With bfloat16 or
    float16 they run in that dtype (weights converted once; oneDNN / cuBLAS accumulate in fp32), while
    the residual stream, the LayerNorms and the biases of the residual adds stay in float32: the half
    precision only ever rounds a GEMM's inputs and output, never the running sum a token carries through
    the layers. The softmax of SDPA accumulates in fp32 in every half-precision kernel.
    """

    def __init__(self, model: Any, compute_dtype: torch.dtype | None = None) -> None:
        cfg = model.config
        self.heads = int(cfg.num_attention_heads)
        self.hidden = int(cfg.hidden_size)
        self.head_dim = self.hidden // self.heads
        self.act = _ACTS[cfg.hidden_act]
        cd = self.compute_dtype = compute_dtype or next(model.parameters()).dtype
        f32 = torch.float32

        def ln(m: Any) -> tuple[torch.Tensor, torch.Tensor, float]:
            return m.weight.detach().to(f32), m.bias.detach().to(f32), float(m.eps)

        emb = model.embeddings
        self.word = emb.word_embeddings.weight.detach().to(f32)
        self.pos = emb.position_embeddings.weight.detach().to(f32)
        self.type0 = emb.token_type_embeddings.weight[0].detach().to(f32)
        self.emb_ln = ln(emb.LayerNorm)
        self.layers = []
        for layer in model.encoder.layer:
            sa, out_att, inter, out = layer.attention.self, layer.attention.output, layer.intermediate, layer.output
            qkv_w = torch.cat([sa.query.weight, sa.key.weight, sa.value.weight], dim=0).detach().to(cd).contiguous()
            qkv_b = torch.cat([sa.query.bias, sa.key.bias, sa.value.bias], dim=0).detach().to(cd).contiguous()
            self.layers.append((qkv_w, qkv_b, out_att.dense.weight.detach().to(cd), out_att.dense.bias.detach().to(f32),
                                ln(out_att.LayerNorm), inter.dense.weight.detach().to(cd), inter.dense.bias.detach().to(cd),
                                out.dense.weight.detach().to(cd), out.dense.bias.detach().to(f32), ln(out.LayerNorm)))  # fmt: skip
        self.max_positions = int(self.pos.shape[0])

    def __call__(self, pb: PackedBatch) -> torch.Tensor:
        """Run the encoder on a packed batch; the attention core uses its padded layout and key mask."""
        scatter, key_mask, batch, width = pb.scatter, pb.key_mask, pb.batch, pb.width
        cd, h, d, hidden = self.compute_dtype, self.heads, self.head_dim, self.hidden
        x = F.embedding(pb.ids, self.word) + F.embedding(pb.positions, self.pos) + self.type0
        x = F.layer_norm(x, (hidden,), *self.emb_ln)  # the residual stream: float32 throughout
        # padded (B * L, 3H) buffer for the attention core; padding rows are zero and stay zero,
        # because every layer writes the same real rows
        padded = x.new_zeros(batch * width, 3 * hidden, dtype=cd) if scatter is not None else None
        for qkv_w, qkv_b, o_w, o_b, o_ln, i_w, i_b, out_w, out_b, out_ln in self.layers:
            qkv = F.linear(x.to(cd), qkv_w, qkv_b)  # (T, 3H), one GEMM for Q, K and V
            if padded is not None:
                qkv = padded.index_copy_(0, scatter, qkv)
            q, k, v = qkv.view(batch, width, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (B, h, L, d)
            ctx = ctx.transpose(1, 2).reshape(batch * width, hidden)
            if scatter is not None:
                ctx = ctx.index_select(0, scatter)
            x = F.layer_norm(_residual(x, ctx, o_w, o_b), (hidden,), *o_ln)
            inner = self.act(F.linear(x.to(cd), i_w, i_b))
            x = F.layer_norm(_residual(x, inner, out_w, out_b), (hidden,), *out_ln)
        return x


def _residual(x: torch.Tensor, inp: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``x + b + inp @ w.T`` with ``x``/``b`` in float32 and the product in ``w``'s dtype."""
    if w.dtype == x.dtype:  # residual and bias first, then the GEMM accumulates in place (no extra copy)
        return (x + b).addmm_(inp, w.t())
    return (x + b).add_(F.linear(inp, w))
