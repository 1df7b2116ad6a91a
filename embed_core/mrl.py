"""Matryoshka (MRL) truncation: the vectors, and the description of the embedding at a lower dimension.

A Matryoshka-trained model's vector cut to its first ``d`` components and L2-normalised again *is* the
model's ``d``-dimensional embedding: ``truncate_and_normalize(embedder_at(D).embed(x), d)`` equals
``embedder_at(d).embed(x)`` for any ``d <= D`` (up to float rounding). So one embedding pass at the
largest dimension any index needs serves every smaller index, and :func:`info_at_dims` says what the
embedding at ``d`` is called — its ``embedding_info()``, fingerprint included, exactly as an embedder
loaded at ``d`` reports it — without loading anything.

numpy only: the remote backend and the sync engine use it without torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from embedrail.embed_core.fingerprint import compute_fingerprint
from embedrail.errors import ConfigError, ModelError

__all__ = ["info_at_dims", "truncate_and_normalize"]


def truncate_and_normalize(vectors: np.ndarray, dims: int) -> np.ndarray:
    """Keep the first ``dims`` components (Matryoshka) and L2-normalise each row again (float32)."""
    out = np.asarray(vectors, dtype=np.float32)
    if out.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {out.shape}")
    if dims < out.shape[1]:
        out = out[:, :dims]
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(out / norms, dtype=np.float32)


def _check_truncation(info: Mapping[str, Any], dims: int) -> None:
    """Raise unless the embedding ``info`` describes can give ``dims``-dimensional vectors by truncation."""
    if not isinstance(dims, int) or isinstance(dims, bool) or dims < 1:
        raise ConfigError(f"dims must be a positive integer, got {dims!r}")
    have, model = int(info["dims"]), info.get("model_id") or info.get("model") or "the model"
    if dims == have:
        return
    if dims > have:
        raise ModelError(f"{model} gives {have}-dimensional vectors: {dims} dims cannot be made from them")
    if not info.get("matryoshka"):
        raise ModelError(f"{model} is not known to be Matryoshka-trained, so its {have}-dim vectors cannot be cut to {dims}: "
                         f"give every target {have} dims, or use an MRL model (Qwen3-Embedding), or load it with "
                         "matryoshka=True if it is one")  # fmt: skip
    low = int(info.get("mrl_min_dims") or 1)
    if dims < low:
        raise ModelError(f"dims={dims} is below {model}'s smallest Matryoshka dimension {low}")


def info_at_dims(info: Mapping[str, Any], dims: int) -> dict[str, Any]:
    """The ``embedding_info()`` of the same model truncated to ``dims`` (fingerprint recomputed), as an
    embedder loaded at ``dims`` reports it. Raises ``ModelError`` for a non-MRL model, a larger
    ``dims``, or one below the model's smallest Matryoshka dimension."""
    _check_truncation(info, dims)
    if dims == int(info["dims"]):
        return dict(info)
    comps = info.get("fingerprint_components")
    if not isinstance(comps, Mapping):
        raise ModelError("this embedding description has no fingerprint components: load the model at the dimension instead")
    comps = {**comps, "dims": dims}
    return {**info, "dims": dims, "fingerprint": compute_fingerprint(comps), "fingerprint_components": comps}
