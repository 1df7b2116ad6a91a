"""The embedding fingerprint: one hash over everything that changes stored document vectors."""

from __future__ import annotations

import hashlib
import json
from typing import Any

FINGERPRINT_VERSION = 1

#: The keys a fingerprint is computed from (see :func:`compute_fingerprint`).
FINGERPRINT_KEYS = (
    "v",
    "model",
    "revision",
    "content",
    "dims",
    "pooling",
    "normalize",
    "document_prefix",
    "document_instruction",
    "max_tokens",
    "append_eos",
    "quantize",
)


def compute_fingerprint(components: dict[str, Any]) -> str:
    """sha256 (first 32 hex digits) over the canonical JSON of the fingerprint components.

    Components: model identity (hub id, or ``local`` for a directory, whose content hash is used
    instead of its path), revision (hub commit), content hash, dims, pooling, normalisation, the
    document-side prefix/instruction, max_tokens (it changes vectors of long texts), whether EOS is
    appended (``quantize`` is reserved and always ``None``). Device and float precision are left out: a
    GPU bf16 run and a CPU fp32 run of the same model are interchangeable.
    """
    canonical = {k: components.get(k) for k in FINGERPRINT_KEYS}
    canonical["v"] = FINGERPRINT_VERSION
    blob = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]
