"""A padding-free forward pass for BERT-architecture encoders (MiniLM, bge, e5, ...).

The batch's tokens are *packed* into one ``(total_tokens, hidden)`` matrix, so every linear layer
(the bulk of the FLOPs) runs on real tokens only; only the attention core is computed on the
padded ``(batch, heads, seq, head_dim)`` layout (with a key mask), by PyTorch SDPA. The three
Q/K/V projections are fused into one matrix multiply. Weights are the model's own (shared, not
copied except for the fused QKV matrix), so the result equals the transformers forward pass up
to float rounding. Any configuration this does not cover falls back to the transformers model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

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
    """Callable: ``(flat_ids, lengths) -> (total_tokens, hidden)`` last hidden states, packed."""

    def __init__(self, model: Any) -> None:
        cfg = model.config
        self.heads = int(cfg.num_attention_heads)
        self.hidden = int(cfg.hidden_size)
        self.head_dim = self.hidden // self.heads
        self.act = _ACTS[cfg.hidden_act]
        emb = model.embeddings
        self.word = emb.word_embeddings.weight
        self.pos = emb.position_embeddings.weight
        self.type0 = emb.token_type_embeddings.weight[0]
        self.emb_ln = emb.LayerNorm
        self.layers = []
        for layer in model.encoder.layer:
            sa = layer.attention.self
            qkv_w = torch.cat([sa.query.weight, sa.key.weight, sa.value.weight], dim=0).detach().contiguous()
            qkv_b = torch.cat([sa.query.bias, sa.key.bias, sa.value.bias], dim=0).detach().contiguous()
            self.layers.append(
                (
                    qkv_w,
                    qkv_b,
                    layer.attention.output.dense,
                    layer.attention.output.LayerNorm,
                    layer.intermediate.dense,
                    layer.output.dense,
                    layer.output.LayerNorm,
                )
            )
        self.max_positions = int(self.pos.shape[0])

    def __call__(self, flat_ids: torch.Tensor, positions: torch.Tensor, scatter: torch.Tensor | None,
                 key_mask: torch.Tensor | None, batch: int, width: int) -> torch.Tensor:  # fmt: skip
        """Run the encoder.

        ``flat_ids``/``positions``: ``(T,)``; ``scatter``: index of each packed token in the
        ``(batch * width)`` padded layout, or ``None`` when no row is padded; ``key_mask``:
        ``(batch, 1, 1, width)`` bool (True = real token) or ``None``.
        """
        x = F.embedding(flat_ids, self.word) + F.embedding(positions, self.pos) + self.type0
        x = self.emb_ln(x)
        h, d = self.heads, self.head_dim
        # padded (B * L, 3H) buffer for the attention core; padding rows are zero and stay zero,
        # because every layer writes the same real rows
        padded = x.new_zeros(batch * width, 3 * self.hidden) if scatter is not None else None
        for qkv_w, qkv_b, o_dense, o_ln, i_dense, out_dense, out_ln in self.layers:
            qkv = F.linear(x, qkv_w, qkv_b)  # (T, 3H), one GEMM for Q, K and V
            if padded is not None:
                qkv = padded.index_copy_(0, scatter, qkv)
            q, k, v = qkv.view(batch, width, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (B, h, L, d)
            ctx = ctx.transpose(1, 2).reshape(batch * width, self.hidden)
            if scatter is not None:
                ctx = ctx.index_select(0, scatter)
            # residual + bias first, then the GEMM accumulates in place (no bias copy, no extra add)
            x = o_ln((x + o_dense.bias).addmm_(ctx, o_dense.weight.t()))
            inner = self.act(i_dense(x))
            x = out_ln((x + out_dense.bias).addmm_(inner, out_dense.weight.t()))
        return x
