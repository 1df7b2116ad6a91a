"""The local embedder: a transformers model run in-process (CPU or CUDA)."""

from __future__ import annotations

import copy
import inspect
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from embedrail.embed_core.base import BaseEmbedder, EmbedStats
from embedrail.embed_core.batching import TokenBudgetBatching
from embedrail.embed_core.config import DEFAULT_MODEL, EmbedderConfig
from embedrail.embed_core.device import Placement, available_cpus, choose_placement, free_device_memory
from embedrail.embed_core.loading import load_dense_head, load_fast_tokenizer, load_transformer
from embedrail.embed_core.mrl import truncate_and_normalize
from embedrail.embed_core.packing import PackedBatch, packer_for
from embedrail.embed_core.pooling import pool, pool_packed
from embedrail.embed_core.spec import (
    ModelSpec,
    ResolvedModel,
    check_config,
    choose_dims,
    read_spec,
    resolve_model,
)
from embedrail.embed_core.text import check_texts, split_by_offsets
from embedrail.errors import ConfigError, InputError, ModelError

log = logging.getLogger(__name__)

#: Default token budget of one forward pass (padded tokens), per device type.
DEFAULT_BATCH_TOKENS = {"cpu": 16384, "cuda": 32768, "mps": 8192}
PACKED_CPU_BATCH_TOKENS = 4096
#: A batch may close early when the next text would be padded by more than this fraction ...
PAD_TOLERANCE = 0.08
#: ... but only once it holds this many tokens (small passes waste per-call overhead instead).
MIN_BATCH_TOKENS = 1024


class Embedder(TokenBudgetBatching, BaseEmbedder):
    """Embeds texts with a local transformers model. Build it with :meth:`Embedder.load`.

    Vectors are ``float32`` with unit L2 norm, so ``metric == "cosine"`` and cosine == dot product.
    """

    backend = "local"
    strip_inputs = True  # the tokenizer would drop the whitespace anyway: "a" and " a" are one text

    # ------------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        model: str = DEFAULT_MODEL,
        *,
        dims: int | None = None,
        device: str = "auto",
        revision: str | None = None,
        max_tokens: int | None = None,
        batch_tokens: int | None = None,
        query_instruction: str | None = None,
        query_prefix: str | None = None,
        document_prefix: str | None = None,
        matryoshka: bool | None = None,
        **kwargs: Any,
    ) -> Embedder:
        """Load a model: ``"minilm"`` (the packaged offline default), a local directory, or a hub id.

        - ``dims``: output dimension; below the native size only for Matryoshka models (Qwen3 is
          recognised; force others with ``matryoshka=True``).
        - ``device``: ``"auto"`` (CUDA if present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        - ``max_tokens``: truncation length (default: the model's limit); ``batch_tokens``: padded
          tokens per forward pass (halved automatically on CUDA out-of-memory).
        - ``query_instruction`` (Qwen3-style task), ``query_prefix`` / ``document_prefix`` (e5-style).
        - more keywords: see :class:`EmbedderConfig` (``pooling``, ``dtype``, ``attn_implementation``,
          ``num_threads``, ``max_batch_size``, ``trust_remote_code``).
        """
        unknown = set(kwargs) - set(EmbedderConfig.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown Embedder.load option(s): {', '.join(sorted(unknown))}")
        config = EmbedderConfig(
            model=model,
            dims=dims,
            device=device,
            revision=revision,
            max_tokens=max_tokens,
            batch_tokens=batch_tokens,
            query_instruction=query_instruction,
            query_prefix=query_prefix,
            document_prefix=document_prefix,
            matryoshka=matryoshka,
            **kwargs,
        )
        return cls(config)

    @classmethod
    def from_info(cls, info: dict[str, Any], *, check: bool = True, **overrides: Any) -> BaseEmbedder:
        """Load the embedder an ``embedding_info()`` describes (local or remote); see
        :func:`embed_core.embedder_from_info`."""
        from embedrail.embed_core.factory import embedder_from_info

        return embedder_from_info(info, check=check, **overrides)

    @staticmethod
    def remote(base_url: str, model: str, dims: int | None = None, api_key: str | None = None, **kwargs: Any) -> BaseEmbedder:
        """An Embedder-compatible client of an OpenAI-compatible ``/v1/embeddings`` server."""
        from embedrail.embed_core.remote import RemoteEmbedder

        return RemoteEmbedder(base_url, model, dims=dims, api_key=api_key, **kwargs)

    def __init__(self, config: EmbedderConfig) -> None:
        config.validate()
        check_config(config)
        self.config = config
        self.stats = EmbedStats()
        # calls run concurrently (serve's workers); close() waits for the ones in flight
        self._gate = threading.Condition()
        self._inflight = 0
        started = time.perf_counter()

        resolved: ResolvedModel = resolve_model(config.model, config.revision)
        spec: ModelSpec = read_spec(resolved.path)
        self._resolved, self._spec = resolved, spec
        for note in spec.notes:
            log.warning("%s: %s", resolved.model_id, note)

        self.model = resolved.name
        self.model_id = resolved.model_id
        self.revision = resolved.revision
        self.native_dims = spec.output_dims
        self.dims = choose_dims(spec, config)
        self.matryoshka = bool(spec.is_mrl if config.matryoshka is None else config.matryoshka)
        self.pooling = config.pooling or spec.pooling
        self.padding_side = "left" if self.pooling == "lasttoken" else spec.padding_side
        self.append_eos = spec.append_eos or self.pooling == "lasttoken"
        if config.max_tokens is not None and config.max_tokens > spec.token_limit:
            raise ConfigError(
                f"max_tokens={config.max_tokens} exceeds the model's limit of {spec.token_limit} tokens; pass a smaller value"
            )
        self.max_tokens = config.max_tokens or spec.max_tokens
        if config.query_instruction is not None:
            self.query_instruction: str | None = config.query_instruction
            self.query_prefix = ""
        elif config.query_prefix is not None:
            self.query_instruction, self.query_prefix = None, config.query_prefix
        else:
            self.query_instruction, self.query_prefix = spec.query_instruction, spec.query_prefix
        self.document_prefix = config.document_prefix if config.document_prefix is not None else spec.document_prefix

        self.placement: Placement = choose_placement(config.device, config.dtype, config.attn_implementation)
        if self.placement.device.type == "cpu":
            torch.set_num_threads(config.num_threads or available_cpus())

        self.tokenizer = self._load_tokenizer()
        self._dense = load_dense_head(spec.dense, self.placement.device)
        self._net: Any = None
        self._packed: Any = None
        if config.packed is not False and self.padding_side == "right" and config.attn_implementation is None:
            # a BERT checkpoint runs packed straight from its safetensors: no transformers model to import
            from embedrail.embed_core.packed_bert import load_packed_bert

            self._packed = load_packed_bert(resolved.path, self.placement.compute, self.placement.device)
        if self._packed is None:
            self._net, self.placement = load_transformer(resolved.path, self.model_id, self.placement,
                                                         trust_remote_code=config.trust_remote_code)  # fmt: skip
            if config.packed is not False:
                self._packed = packer_for(self._net, self.padding_side, self.placement.compute, compile=config.compile)
        if config.packed and self._packed is None:
            raise ConfigError(f"{self.model_id}: no packed (padding-free) forward pass for this architecture; "
                              "use packed=None or False")  # fmt: skip
        # the packed paths pay for padding only in their attention core, which runs per length bucket
        # (or varlen): fewer, larger batches win; the padded transformers path wants length-bucketed batches
        packed, device_type = self._packed is not None, self.placement.device.type
        self._pad_tolerance = 1.0 if packed else PAD_TOLERANCE
        self._min_batch_tokens = 4096 if packed else MIN_BATCH_TOKENS
        self._max_batch_size = config.max_batch_size
        # a packed CPU batch of 4,096 tokens keeps a BERT layer's activations in cache: faster on MiniLM
        # than 16,384 (benchmarks/embed_throughput.py; docs/benchmarks.md)
        default = PACKED_CPU_BATCH_TOKENS if packed and device_type == "cpu" else DEFAULT_BATCH_TOKENS.get(device_type, 16384)
        self.batch_tokens = self._budget = max(config.batch_tokens or default, self.max_tokens)
        params = inspect.signature(self._net.forward).parameters if self._net is not None else {}
        self._pass_positions = self.padding_side == "left" and "position_ids" in params
        self._extra_forward: dict[str, Any] = {"use_cache": False} if "use_cache" in params else {}
        self._closed = False
        log.info(
            "loaded %s (%s, dims=%d/%d, pooling=%s, max_tokens=%d) on %s/%s in %.1fs",
            self.model_id, resolved.source, self.dims, self.native_dims, self.pooling, self.max_tokens,
            self.placement.device, str(self.placement.dtype).removeprefix("torch."), time.perf_counter() - started,
        )  # fmt: skip

    def _load_tokenizer(self) -> Any:
        tok = load_fast_tokenizer(self._resolved.path, self.model_id, trust_remote_code=self.config.trust_remote_code)
        backend = tok.backend_tokenizer
        tok.padding_side = self.padding_side
        tok.model_max_length = self.max_tokens
        # private copies of the Rust tokenizer: one that truncates (for embedding), one that doesn't
        self._tok_trunc = copy.deepcopy(backend)
        self._tok_trunc.no_padding()
        self._tok_trunc.enable_truncation(self.max_tokens)
        self._tok_full = copy.deepcopy(backend)
        self._tok_full.no_padding()
        self._tok_full.no_truncation()
        self.eos_token_id: int | None = self._pool_token_id(tok)
        if self.append_eos and self.eos_token_id is None:
            raise ModelError(f"{self.model_id} uses last-token pooling but its tokenizer defines no EOS token")
        pad = tok.pad_token_id
        if pad is None:
            pad = tok.eos_token_id if tok.eos_token_id is not None else 0
        self.pad_token_id: int = int(pad)
        # the special tokens the tokenizer puts before and after a text's content tokens (token-id
        # inputs get the same), and how many tokens they and the EOS rule add (split_text's budget)
        bare = self._tok_full.encode("a", add_special_tokens=False).ids
        full = self._tok_full.encode("a", add_special_tokens=True).ids
        at = next((i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare), len(full))
        self._special_pre, self._special_post = full[:at], full[at + len(bare) :]
        self._special_overhead = len(full) - len(bare)
        self._content_room = self.max_tokens - len(full) + len(bare)  # content tokens that fit one input
        if self.append_eos and (not full or full[-1] != self.eos_token_id):
            self._special_overhead += 1
        # content token ids of the chunks split_text cut last (each one's own encoding, which the split
        # computes anyway): embedding one of them again skips its tokenisation (tokenise once)
        self._split_ids: OrderedDict[str, list[int]] = OrderedDict()
        self._split_lock = threading.Lock()
        return tok

    def _pool_token_id(self, tok: Any) -> int | None:
        """The end token last-token pooling reads: Qwen embedding models end every input with
        ``<|endoftext|>`` (not the chat EOS ``<|im_end|>``); other models use the tokenizer's EOS."""
        if self._spec.model_type.startswith("qwen"):
            tid = tok.convert_tokens_to_ids("<|endoftext|>")
            if isinstance(tid, int) and tid != tok.unk_token_id:
                return tid
        return tok.eos_token_id

    def close(self) -> None:
        with self._gate:
            self._closed = True
            self._gate.wait_for(lambda: not self._inflight)
            device = self.placement.device
            self._net = None
            self._packed = None
            self._dense = []
            free_device_memory(device)

    # ------------------------------------------------------------------------------------------
    # description
    # ------------------------------------------------------------------------------------------
    def fingerprint_components(self) -> dict[str, Any]:
        r = self._resolved
        return {
            "model": "local" if r.source == "local" else r.model_id,
            "revision": r.revision if r.source == "hub" else None,
            "content": r.content_hash,
            "dims": self.dims,
            "pooling": self.pooling,
            "normalize": True,
            "document_prefix": self.document_prefix,
            "document_instruction": None,
            "max_tokens": self.max_tokens,
            "append_eos": self.append_eos,
            "quantize": None,
        }

    def _info_extra(self) -> dict[str, Any]:
        return {"source": self._resolved.source, "content_hash": self._resolved.content_hash, "append_eos": self.append_eos,
                "mrl_min_dims": self._spec.mrl_min_dims if self.matryoshka else None}

    # ------------------------------------------------------------------------------------------
    # tokens
    # ------------------------------------------------------------------------------------------
    SPLIT_IDS_CACHE = 8192  # chunks whose token ids split_text keeps for their embedding

    def _encode(self, texts: list[str]) -> tuple[list[list[int]], int]:
        """Token ids per text (truncated at max_tokens, EOS ensured for last-token models). A text that
        ``split_text`` returned as a chunk (and that fits untruncated) takes the ids the split computed
        for exactly that string: its special tokens added as the tokenizer adds them, nothing else."""
        out: list[list[int] | None] = [None] * len(texts)
        if self._split_ids:
            with self._split_lock:
                cached = [self._split_ids.get(t) for t in texts]
                for t in texts:  # used: the cache only bridges a split and the embedding that follows it
                    self._split_ids.pop(t, None)
            for i, ids in enumerate(cached):
                if ids is not None and len(ids) <= self._content_room:
                    out[i] = self._with_specials(ids)
        todo = [i for i, ids in enumerate(out) if ids is None]
        truncated = 0
        if todo:
            encodings = self._tok_trunc.encode_batch([texts[i] for i in todo], add_special_tokens=True)
            truncated = sum(1 for enc in encodings if enc.overflowing)
            for i, enc in zip(todo, encodings, strict=True):
                out[i] = self._ensure_eos(enc.ids)
        return out, truncated  # type: ignore[return-value]

    def _with_specials(self, content: list[int]) -> list[int]:
        """Content token ids as one model input: the tokenizer's special tokens around them, EOS rule."""
        return self._ensure_eos([*self._special_pre, *content, *self._special_post])

    def _ensure_eos(self, ids: list[int]) -> list[int]:
        """Last-token models end every input with their EOS: appended, or over the last token at
        ``max_tokens``."""
        eos = self.eos_token_id
        if self.append_eos and (not ids or ids[-1] != eos):
            if len(ids) >= self.max_tokens:
                ids[-1] = eos  # type: ignore[assignment]
            else:
                ids.append(eos)  # type: ignore[arg-type]
        return ids

    def embed_token_ids(self, inputs: Sequence[Sequence[int]]) -> np.ndarray:
        """Embed inputs given as token ids of this model's tokenizer (content tokens, as the OpenAI
        API takes them): the model's special tokens are added around them as its tokenizer adds them
        to a text, then the same truncation, EOS rule and pooling as ``embed_raw``."""
        if not inputs:
            return np.zeros((0, self.dims), dtype=np.float32)
        vocab = self._tok_full.get_vocab_size(with_added_tokens=True)
        room = self._content_room
        ids_list: list[list[int]] = []
        truncated = 0
        for i, seq in enumerate(inputs):
            ids = [int(t) for t in seq]
            if not ids:
                raise InputError(f"input {i} is an empty list of token ids")
            if min(ids) < 0 or max(ids) >= vocab:
                raise InputError(f"input {i} has a token id outside the model's vocabulary [0, {vocab})")
            if len(ids) > room:
                ids, truncated = ids[:room], truncated + 1
            ids_list.append(self._with_specials(ids))
        started = time.perf_counter()
        vectors = self._embed_ids(ids_list, truncated)
        self.stats.add(texts=len(ids_list), seconds=time.perf_counter() - started)
        return vectors

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text takes as model input, untruncated (special tokens and EOS included,
        prefixes/instructions not)."""
        items = check_texts(texts) if not isinstance(texts, str) else check_texts([texts])
        encodings = self._tok_full.encode_batch([t.strip() for t in items], add_special_tokens=True)
        counts = []
        for enc in encodings:
            n = len(enc.ids)
            if self.append_eos and (n == 0 or enc.ids[-1] != self.eos_token_id):
                n += 1
            counts.append(n)
        return counts

    def split_text(self, text: str, max_tokens: int | None = None, overlap: int = 0) -> list[str]:
        """Split ``text`` into exact substrings of at most ``max_tokens`` content tokens each
        (counted on the chunk alone, without special tokens or prefix).

        Windows are cut on the model tokenizer's offsets and prefer paragraph, line and sentence
        breaks near their end; consecutive chunks share ``overlap`` tokens. The default
        ``max_tokens`` is the model limit minus the special tokens and the document prefix, so a
        default chunk is never truncated. Returns ``[]`` for an empty/whitespace text.
        """
        return self.split_texts([text], max_tokens, overlap)[0]

    def split_texts(self, texts: list[str], max_tokens: int | None = None, overlap: int = 0) -> list[list[str]]:
        """:meth:`split_text` for many texts at once, with the same results: one batched call of the Rust
        tokenizer (its own threads) instead of one call per text, which is what keeps the CPU side of a sync
        ahead of a GPU."""
        for t in texts:
            if not isinstance(t, str):
                raise InputError(f"split_text takes a str, got {type(t).__name__}")
        if max_tokens is None:
            prefix = len(self._tok_full.encode(self.document_prefix, add_special_tokens=False).ids) if self.document_prefix else 0
            max_tokens = max(1, self.max_tokens - self._special_overhead - prefix)
        out: list[list[str]] = [[] for _ in texts]
        todo = [i for i, t in enumerate(texts) if t.strip()]
        encs = self._tok_full.encode_batch([texts[i] for i in todo], add_special_tokens=False) if todo else []
        kept: list[tuple[str, list[int]]] = []
        for i, enc in zip(todo, encs, strict=True):
            text = texts[i]
            seen: dict[str, list[int]] = {text: enc.ids}  # each piece's own encoding (the whole text's is known)

            def ids_of(piece: str, seen: dict[str, list[int]] = seen) -> list[int]:
                got = seen.get(piece)
                if got is None:
                    got = seen[piece] = self._tok_full.encode(piece, add_special_tokens=False).ids
                return got

            pieces = out[i] = split_by_offsets(text, enc.offsets, max_tokens, overlap, lambda piece, f=ids_of: len(f(piece)))
            kept.extend((piece, ids_of(piece)) for piece in pieces)  # the split measured each piece it returns
        with self._split_lock:
            for piece, ids in kept:
                self._split_ids[piece] = ids
                self._split_ids.move_to_end(piece)
            while len(self._split_ids) > self.SPLIT_IDS_CACHE:
                self._split_ids.popitem(last=False)
        return out

    # ------------------------------------------------------------------------------------------
    # embedding
    # ------------------------------------------------------------------------------------------
    def _embed_unique(self, texts: list[str]) -> np.ndarray:
        return self._embed_ids(*self._encode(texts))

    def _embed_ids(self, ids_list: list[list[int]], truncated: int) -> np.ndarray:
        """Model inputs (special tokens and EOS in place) -> normalised vectors at ``dims``."""
        with self._gate:
            if self._closed:
                raise ModelError("this Embedder was closed; load the model again")
            self._inflight += 1
        try:
            vectors = truncate_and_normalize(self._run(ids_list), self.dims)
        finally:
            with self._gate:
                self._inflight -= 1
                self._gate.notify_all()
        self.stats.add(truncated=truncated)
        return vectors

    def set_thread_budget(self, threads: int) -> None:
        """CPU threads one forward pass may use when called from *this* thread (torch's intra-op
        threads are per calling thread). The embedder may be called from several threads at once:
        ``embedrail serve`` runs one worker per core with a budget of 1 each on CPU, so the cores
        work on different requests instead of synchronising on every operator of one."""
        if threads < 1:
            raise ConfigError(f"threads must be at least 1, got {threads!r}")
        if self.placement.device.type == "cpu":
            torch.set_num_threads(threads)

    def _run(self, ids_list: list[list[int]]) -> np.ndarray:
        lengths = np.fromiter((len(x) for x in ids_list), dtype=np.int64, count=len(ids_list))
        return self._run_batches(lengths, self._spec.output_dims, lambda idx: self._forward([ids_list[j] for j in idx]))

    def _forward(self, batch: list[list[int]]) -> np.ndarray:
        if self._packed is not None:
            return self._forward_packed(batch)
        n = len(batch)
        width = max(len(x) for x in batch)
        ids = np.full((n, width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        left = self.padding_side == "left"
        real = 0
        for row, seq in enumerate(batch):
            k = len(seq)
            real += k
            if left:
                ids[row, width - k :] = seq
                mask[row, width - k :] = 1
            else:
                ids[row, :k] = seq
                mask[row, :k] = 1
        dev = self.placement.device
        ids_t = torch.from_numpy(ids).to(dev, non_blocking=True)
        mask_t = torch.from_numpy(mask).to(dev, non_blocking=True)
        kwargs: dict[str, Any] = dict(self._extra_forward)
        if self._pass_positions:
            kwargs["position_ids"] = (mask_t.cumsum(dim=1) - 1).clamp(min=0)
        with torch.inference_mode():
            output = self._net(input_ids=ids_t, attention_mask=mask_t, **kwargs)
            hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
            if self.pooling not in ("cls", "lasttoken"):
                hidden = hidden.float()  # sums in fp32 (bf16/fp16 on GPU would lose precision)
            pooled = pool(hidden, mask_t.to(hidden.device), self.pooling).float()
            return self._finish_batch(pooled, real, n * width)

    def _forward_packed(self, batch: list[list[int]]) -> np.ndarray:
        """Packed path: linear layers on real tokens only (``embed_core.packed_bert`` / ``packed_qwen3``)."""
        pb = PackedBatch.build(batch, self.placement.device)
        with torch.inference_mode():
            hidden = self._packed(pb)
            if self.pooling not in ("cls", "lasttoken"):
                hidden = hidden.float()
            pooled = pool_packed(hidden, pb.lengths, pb.segment, pb.positions, self.pooling).float()
            return self._finish_batch(pooled, pb.total, pb.batch * pb.width)

    def _finish_batch(self, pooled: torch.Tensor, tokens: int, padded_tokens: int) -> np.ndarray:
        """Dense head (if any) on pooled vectors, to numpy, and the batch's counters (inference mode)."""
        for layer in self._dense:
            pooled = layer(pooled)
        self.stats.add(batches=1, tokens=tokens, padded_tokens=padded_tokens)
        return pooled.cpu().numpy()
