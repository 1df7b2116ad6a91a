"""Packed (padding-free) batches and the packed forward passes that take them.

A ``PackedBatch`` holds the token ids of several texts one after another, ``(total_tokens,)``, with
each token's position in its text and its row; ``buckets()`` groups texts of similar length into
right-padded blocks for attention kernels that need a padded layout. ``packer_for(model)`` picks the packed
forward pass for an architecture (BERT encoders, Qwen3 decoders), or None for the padded one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["PackedBatch", "packer_for"]


@dataclass(frozen=True)
class Bucket:
    """Consecutive texts of similar length whose attention runs as one right-padded block."""

    start: int  # first token (in the packed order)
    end: int  # one past the last token
    rows: int
    width: int  # the longest text in the bucket
    scatter: torch.Tensor | None  # (end - start,) index into the (rows * width) block; None: no padding
    key_mask: torch.Tensor | None  # (rows, 1, 1, width) bool, True = real token; None: no padding

    def to_block(self, packed: torch.Tensor) -> torch.Tensor:
        """This bucket's rows of a packed ``(T, ...)`` tensor as a zero-padded ``(rows * width, ...)`` block."""
        part = packed[self.start : self.end]
        if self.scatter is None:
            return part
        return part.new_zeros((self.rows * self.width, *part.shape[1:])).index_copy_(0, self.scatter, part)

    def from_block(self, block: torch.Tensor) -> torch.Tensor:
        """The real tokens' rows of a ``(rows * width, ...)`` block, packed again."""
        return block if self.scatter is None else block.index_select(0, self.scatter)


@dataclass(frozen=True)
class PackedBatch:
    ids: torch.Tensor  # (T,) token ids, text after text
    positions: torch.Tensor  # (T,) position of each token in its text
    segment: torch.Tensor  # (T,) row (text) of each token
    lengths: torch.Tensor  # (B,) tokens per text
    batch: int
    width: int  # the longest text
    host_lengths: np.ndarray  # ``lengths`` on the host
    token_types: torch.Tensor | None = None  # (T,) segment ids of sentence pairs (BERT cross-encoders); None: all 0

    @property
    def total(self) -> int:
        return int(self.ids.shape[0])

    @classmethod
    def build(cls, texts: list[list[int]], device: torch.device, token_types: list[list[int]] | None = None) -> PackedBatch:
        n = len(texts)
        lengths = np.fromiter((len(x) for x in texts), dtype=np.int64, count=n)
        width, total = int(lengths.max()), int(lengths.sum())
        flat = np.fromiter(itertools.chain.from_iterable(texts), dtype=np.int64, count=total)
        starts = np.cumsum(lengths) - lengths
        positions = torch.from_numpy(np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)).to(device)
        segment = torch.from_numpy(np.repeat(np.arange(n, dtype=np.int64), lengths)).to(device)
        ids = torch.from_numpy(flat).to(device)
        types = None
        if token_types is not None:
            types = torch.from_numpy(np.fromiter(itertools.chain.from_iterable(token_types), dtype=np.int64, count=total)).to(device)
        return cls(ids, positions, segment, torch.from_numpy(lengths).to(device), n, width, lengths, types)

    def buckets(self, waste: float = 0.15, slack: int = 8) -> list[Bucket]:
        """Split the texts, in their order, into runs of similar length, so that an attention kernel
        that needs a padded layout computes about as many scores as there are real ones: a run ends
        where a text is longer than the run's first or shorter by more than ``max(slack, waste *
        width)`` tokens. Texts sorted by length (as the embedder batches them) give few runs."""
        lengths = self.host_lengths
        dev = self.ids.device
        out: list[Bucket] = []
        row, tok, n = 0, 0, len(lengths)
        while row < n:
            width = int(lengths[row])
            floor = width - max(slack, int(waste * width))
            end_row = row + 1
            while end_row < n and floor <= lengths[end_row] <= width:
                end_row += 1
            rows = end_row - row
            seg = lengths[row:end_row]
            ntok = int(seg.sum())
            scatter = key_mask = None
            if ntok != rows * width:
                local_rows = np.repeat(np.arange(rows, dtype=np.int64), seg)
                starts = np.cumsum(seg) - seg
                pos = np.arange(ntok, dtype=np.int64) - np.repeat(starts, seg)
                scatter = torch.from_numpy(local_rows * width + pos).to(dev)
                mask = np.arange(width)[None, :] < seg[:, None]
                key_mask = torch.from_numpy(mask).to(dev).view(rows, 1, 1, width)
            out.append(Bucket(tok, tok + ntok, rows, width, scatter, key_mask))
            row, tok = end_row, tok + ntok
        return out


def packer_for(model: Any, padding_side: str, compute_dtype: torch.dtype | None = None, *, compile: bool = False) -> Any:
    """The packed forward pass for ``model`` (a callable on a ``PackedBatch``), or None.

    ``compute_dtype``: the matrix products' dtype for the BERT path (its residual stream stays fp32);
    the Qwen3 path runs in the model's dtype, as the transformers model does."""
    from embedrail.embed_core import packed_bert, packed_qwen3

    if padding_side == "right" and packed_bert.supports(model):
        return packed_bert.PackedBert.from_model(model, compute_dtype)
    if packed_qwen3.supports(model):
        return packed_qwen3.PackedQwen3(model, compile=compile)
    return None
