"""Token-budget batching, shared by every local model of embed_core (the embedder, the rerankers).

Inputs (token-id lists) are sorted by length, longest first, and cut into forward passes of at most
``budget`` padded tokens; a pass also ends early where the next input is much shorter than the pass's
longest (more than ``pad tolerance`` of it would be padding) once it holds enough tokens. On a CUDA
out-of-memory error the budget is halved and the failed pass re-planned, so a job never dies of one
over-large batch; an input that alone does not fit is a clear ``ModelError``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from embedrail.errors import ModelError

__all__ = ["TokenBudgetBatching"]

log = logging.getLogger(__name__)


class TokenBudgetBatching:
    """Mixin: ``_plan`` and ``_run_batches``. The class sets ``_budget`` (padded tokens per pass, halved on
    OOM), ``_pad_tolerance``, ``_min_batch_tokens``, ``_max_batch_size``, ``placement`` and ``stats``
    (an ``EmbedStats``)."""

    _budget: int
    _pad_tolerance: float
    _min_batch_tokens: int
    _max_batch_size: int
    placement: Any
    stats: Any

    def _plan(self, lengths: np.ndarray, order: np.ndarray, budget: int) -> list[np.ndarray]:
        """Cut length-sorted (descending) indices into batches of at most ``budget`` padded tokens.

        A batch also ends early when the next input is much shorter than the batch's longest one
        (more than ``_pad_tolerance`` of it would be padding) once the batch already holds
        ``_min_batch_tokens``, so padding waste stays small without tiny forward passes.
        """
        batches: list[np.ndarray] = []
        i, n = 0, len(order)
        cap = self._max_batch_size
        sorted_lengths = lengths[order]
        while i < n:
            longest = max(int(sorted_lengths[i]), 1)
            size = max(1, min(cap, budget // longest, n - i))
            floor = longest * (1.0 - self._pad_tolerance)
            min_count = max(1, self._min_batch_tokens // longest)
            if size > min_count:
                short = np.nonzero(sorted_lengths[i + min_count : i + size] < floor)[0]
                if short.size:
                    size = min_count + int(short[0])
            batches.append(order[i : i + size])
            i += size
        return batches

    def _run_batches(self, lengths: np.ndarray, width: int, forward: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """``forward(indices)`` over every input in token-budget batches (``lengths``: tokens per input)
        -> ``(len(lengths), width)`` float32, in input order."""
        from embedrail.embed_core.device import (  # torch: only where a local model runs
            free_device_memory,
            is_oom,
        )

        order = np.argsort(-lengths, kind="stable")
        out = np.empty((len(lengths), width), dtype=np.float32)
        pending = self._plan(lengths, order, self._budget)
        pending.reverse()
        while pending:
            batch = pending.pop()
            try:
                out[batch] = forward(batch)
            except Exception as exc:
                if not is_oom(exc):
                    raise
                free_device_memory(self.placement.device)
                self.stats.add(oom_retries=1)
                longest = int(lengths[batch[0]])
                if len(batch) == 1 or self._budget <= longest:
                    raise ModelError(
                        f"out of memory on one input of {longest} tokens on {self.placement.device}; "
                        "lower max_tokens, use a smaller model, or free GPU memory"
                    ) from exc
                self._budget = max(longest, self._budget // 2)
                log.warning("out of memory on %s: batch token budget halved to %d", self.placement.device, self._budget)
                pending.extend(reversed(self._plan(lengths, batch, self._budget)))
        return out
