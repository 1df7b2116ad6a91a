"""Pooling of token states into one vector per text (MRL truncation lives in ``embed_core.mrl``).

Every function takes the attention mask into account and works for left *and* right padding.
"""

from __future__ import annotations

import torch


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real (mask == 1) token of each row, for any padding side."""
    seq_len = attention_mask.shape[1]
    positions = torch.arange(seq_len, device=attention_mask.device).expand_as(attention_mask)
    return (positions * attention_mask.to(positions.dtype)).argmax(dim=1)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool ``hidden`` (batch, seq, dim) under ``attention_mask`` (batch, seq) with ``mode``."""
    if mode == "lasttoken":
        if bool(attention_mask[:, -1].all()):  # left padding (or none): the last column is real
            return hidden[:, -1]
        idx = last_token_index(attention_mask)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
    if mode == "cls":
        if bool(attention_mask[:, 0].all()):
            return hidden[:, 0]
        first = attention_mask.to(torch.long).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if mode in ("mean", "mean_sqrt_len_tokens"):
        summed = (hidden * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        return summed / (counts if mode == "mean" else counts.sqrt())
    if mode == "max":
        masked = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min)
        return masked.max(dim=1).values
    if mode == "weightedmean":
        # weights 1..n over real tokens, in order, whatever the padding side
        weights = attention_mask.to(hidden.dtype).cumsum(dim=1) * attention_mask.to(hidden.dtype)
        w = weights.unsqueeze(-1)
        return (hidden * w).sum(dim=1) / w.sum(dim=1).clamp(min=1e-9)
    raise ValueError(f"unknown pooling mode {mode!r}")


def pool_packed(
    x: torch.Tensor, lengths: torch.Tensor, segment: torch.Tensor, positions: torch.Tensor, mode: str
) -> torch.Tensor:
    """Pool packed token states ``x`` ``(T, dim)``: row ``i`` owns ``lengths[i]`` consecutive tokens;
    ``segment``/``positions`` give each token's row and position within its row."""
    batch = lengths.shape[0]
    ends = lengths.cumsum(0)
    if mode == "cls":
        return x[ends - lengths]
    if mode == "lasttoken":
        return x[ends - 1]
    counts = lengths.to(x.dtype).unsqueeze(1)
    if mode in ("mean", "mean_sqrt_len_tokens"):
        summed = x.new_zeros(batch, x.shape[1]).index_add_(0, segment, x)
        return summed / (counts if mode == "mean" else counts.sqrt())
    if mode == "weightedmean":
        w = (positions + 1).to(x.dtype).unsqueeze(1)
        summed = x.new_zeros(batch, x.shape[1]).index_add_(0, segment, x * w)
        return summed / (counts * (counts + 1) / 2)
    if mode == "max":
        index = segment.unsqueeze(1).expand_as(x)
        return x.new_full((batch, x.shape[1]), torch.finfo(x.dtype).min).scatter_reduce_(
            0, index, x, reduce="amax", include_self=True
        )
    raise ValueError(f"unknown pooling mode {mode!r}")
