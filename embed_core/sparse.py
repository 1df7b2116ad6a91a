"""Learned sparse vectors (SPLADE): a masked-language model's vocabulary logits as term weights.

    from embedrail.embed_core.sparse import open_sparse_encoder
    enc = open_sparse_encoder("/models/splade-v3")            # a BertForMaskedLM-style directory or hub id
    indices, values = enc.document("The fox is a canid.")      # vocabulary ids and their weights

For each token position the MLM head gives a logit per vocabulary entry; the weight of entry ``v`` is
``max over positions t of log(1 + relu(logit[t, v]))``, padding excluded (SPLADE-max, Formal et al.
2021, as the models of naver/splade and sentence-transformers' ``SpladePooling`` compute it). On a CPU with
native bf16 the weights are loaded in bf16 unless ``dtype`` says otherwise; on a GPU as the embedder's
(bf16 where supported). Entries of
weight 0 are left out; ``top_k`` keeps only the largest. Queries and documents are encoded alike (the
SPLADE models with one encoder).

The encoder's ``identity`` (model id, content hash, max tokens, top_k) goes into what the index records and
into the chunk fingerprint of a target that uses it: another sparse model re-encodes, the same one does
not. The object has the duck type the connectors take as a sparse encoder (``identity``, ``document``,
``query``, ``documents``), so a store that keeps sparse vectors (Qdrant) calls it without importing this
package.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from embedrail.errors import ConfigError, ModelError

__all__ = ["SparseEncoder", "open_sparse_encoder", "splade_max"]

log = logging.getLogger(__name__)


def splade_max(logits: Any, attention_mask: Any) -> Any:
    """``max_t log1p(relu(logits[b, t, v]))`` over the unmasked positions: (batch, vocab) float32. The
    logits are consumed in place (relu and log1p write into them) so a batch holds one (batch, tokens,
    vocab) tensor, not three."""
    import torch

    x = logits.float() if logits.dtype != torch.float32 else logits
    torch.relu_(x)
    torch.log1p_(x)
    x.mul_(attention_mask.unsqueeze(-1).to(x.dtype))
    return x.amax(dim=1)


class SparseEncoder:
    """A SPLADE model on a device, encoding texts in batches sorted by length."""

    kind = "splade"

    def __init__(self, resolved: Any, *, device: str = "auto", dtype: str | None = None, max_tokens: int | None = None,
                 batch_size: int = 16, top_k: int | None = None, num_threads: int | None = None) -> None:  # fmt: skip
        import json

        import torch
        from transformers import AutoModelForMaskedLM

        from embedrail.embed_core.device import available_cpus, choose_placement, cpu_fast_bf16
        from embedrail.embed_core.loading import load_fast_tokenizer, load_transformer

        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ConfigError(f"top_k must be a positive integer or None, got {top_k!r}")
        started = time.perf_counter()
        self._resolved = resolved
        self.model_id = resolved.model_id
        self.placement = choose_placement(device, dtype)
        if dtype is None and self.placement.device.type == "cpu" and cpu_fast_bf16():
            # bf16 weights on a CPU with native bf16: the project rule (cosine to float32 >= 0.9999; docs/benchmarks.md)
            self.placement = choose_placement(device, "bfloat16")
        if self.placement.device.type == "cpu":
            torch.set_num_threads(num_threads or available_cpus())
        archs = json.loads((resolved.path / "config.json").read_text()).get("architectures") or []
        if archs and not any(str(a).endswith("ForMaskedLM") for a in archs):
            raise ModelError(f"{self.model_id} is a {archs[0]}, not a masked language model: a SPLADE model is a "
                             "*ForMaskedLM (e.g. naver/splade-v3, prithivida/Splade_PP_en_v1)")  # fmt: skip
        self.tokenizer = load_fast_tokenizer(resolved.path, self.model_id)
        self._net, self.placement = load_transformer(resolved.path, self.model_id, self.placement, auto_class=AutoModelForMaskedLM)
        limit = int(getattr(self._net.config, "max_position_embeddings", 512) or 512)
        if max_tokens is not None and not 8 <= max_tokens <= limit:
            raise ConfigError(f"max_tokens must be between 8 and {self.model_id}'s limit of {limit}, got {max_tokens!r}")
        self.max_tokens = max_tokens or min(limit, 512)
        self.batch_size, self.top_k = batch_size, top_k
        self.vocab_size = int(self._net.config.vocab_size)
        self._lock = threading.Lock()
        log.info("loaded sparse encoder %s (max_tokens=%d) on %s in %.1fs", self.model_id, self.max_tokens,
                 self.placement.device, time.perf_counter() - started)  # fmt: skip

    @property
    def identity(self) -> dict[str, Any]:
        """What an index and a fingerprint record of this encoder."""
        return {"name": self.kind, "model": self.model_id, "hash": self._resolved.content_hash or self._resolved.revision,
                "max_tokens": self.max_tokens, "top_k": self.top_k}  # fmt: skip

    def encode(self, texts: Sequence[str]) -> list[tuple[list[int], list[float]]]:
        """(vocabulary ids ascending, weights) of each text."""
        import torch

        if isinstance(texts, str):
            raise ConfigError("encode() takes a list of texts, not one string")
        texts = list(texts)
        out: list[tuple[list[int], list[float]]] = [([], [])] * len(texts)
        if not texts:
            return out
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_tokens, add_special_tokens=True)
        ids = enc["input_ids"]
        order = np.argsort([len(x) for x in ids], kind="stable")
        pad = int(self.tokenizer.pad_token_id or 0)
        dev = self.placement.device
        with self._lock, torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                width = max(len(ids[i]) for i in rows)
                input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for j, i in enumerate(rows):
                    input_ids[j, : len(ids[i])] = torch.tensor(ids[i])
                    mask[j, : len(ids[i])] = 1
                kw = {"input_ids": input_ids.to(dev), "attention_mask": mask.to(dev)}
                if "token_type_ids" in enc:
                    kw["token_type_ids"] = torch.zeros_like(kw["input_ids"])
                weights = splade_max(self._net(**kw).logits, kw["attention_mask"]).cpu().numpy()
                for j, i in enumerate(rows):
                    out[i] = self._sparse(weights[j])
        return out

    def _sparse(self, w: np.ndarray) -> tuple[list[int], list[float]]:
        nz = np.flatnonzero(w > 0)
        if self.top_k is not None and len(nz) > self.top_k:
            nz = np.sort(nz[np.argpartition(-w[nz], self.top_k - 1)[: self.top_k]])
        return nz.tolist(), w[nz].astype(np.float32).tolist()

    # the connectors' sparse-encoder duck type (see connectors._sparse.Bm25Sparse)
    def document(self, text: str) -> tuple[list[int], list[float]]:
        return self.encode([text])[0]

    def query(self, text: str) -> tuple[list[int], list[float]]:
        return self.encode([text])[0]

    def documents(self, texts: Sequence[str]) -> list[tuple[list[int], list[float]]]:
        return self.encode(texts)

    def close(self) -> None:
        self._net = None


def open_sparse_encoder(model: str, *, device: str = "auto", revision: str | None = None, **kwargs: Any) -> SparseEncoder:
    """A SPLADE encoder for a local ``*ForMaskedLM`` directory or a hub id (``max_tokens``, ``batch_size``,
    ``top_k``, ``dtype``, ``num_threads``)."""
    from embedrail.embed_core.spec import resolve_model

    if not isinstance(model, str) or not model:
        raise ConfigError("a sparse encoder is a local model directory or a hub id")
    return SparseEncoder(resolve_model(model, revision), device=device, **kwargs)
