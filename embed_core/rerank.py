"""Rerankers: score (query, document) pairs for the second stage of a search.

One small interface for every backend::

    from embedrail.embed_core import open_reranker
    rr = open_reranker("/models/Qwen3-Reranker-0.6B", device="cuda")   # or a cross-encoder dir, a URL
    scores = rr.rerank("what is a fox?", ["The fox is a canid.", "Paris is in France."])  # float32, higher = better

- **Qwen3-Reranker** (a causal LM, ``*ForCausalLM`` in ``config.json``): the model card's prompt — the system
  message and ``<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {doc}`` between the chat-template
  prefix and suffix — left-padded (or packed, padding-free, on the architecture ``packed_qwen3`` covers);
  the score is P(yes) = softmax over the logits of the tokens "yes" and "no" at the last position.
  Only those two rows of the LM head are computed. A long pair is cut at the end of the formatted text
  (the document's tail) to ``max_tokens`` minus the prefix and suffix, exactly as the model card's code
  cuts it (``truncation='longest_first'`` on one sequence). ``instruction=None`` uses the model card's
  default task.
- **Cross-encoders** (``*ForSequenceClassification``, e.g. sentence-transformers ``CrossEncoder``
  directories): query and document as a sentence pair, truncated ``longest_first`` at the model's
  ``max_seq_length``; the score is the saved activation (``activation_fn`` in
  ``config_sentence_transformers.json``, else sigmoid for one label) of the logit, as
  ``CrossEncoder.predict`` computes it; a two-label head scores softmax P(label 1). BERT cross-encoders run
  on the packed (padding-free) BERT path, in bf16 matrix products on CPUs with native bf16.
- **Remote**: ``http(s)://host:port/v1#model`` (the ``/v1/rerank`` API of Jina, Cohere, vLLM and
  ``embedrail serve --reranker``) or ``http(s)://host:port/rerank`` (Text Embeddings Inference);
  see :mod:`embed_core.remote_rerank`.

Local rerankers batch by token budget like the embedder (sorted by length, OOM halves the budget); the
device string is the only switch between CPU and CUDA.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedrail.embed_core.base import EmbedStats
from embedrail.errors import ConfigError, InputError, ModelError

__all__ = [
    "QWEN3_RERANK_INSTRUCTION",
    "BaseReranker",
    "CrossEncoderReranker",
    "Qwen3Reranker",
    "Reranker",
    "open_reranker",
    "qwen3_rerank_prompt",
]

log = logging.getLogger(__name__)

#: the model card's default task for Qwen3-Reranker
QWEN3_RERANK_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
QWEN3_RERANK_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
#: the model card's max_length
QWEN3_RERANK_MAX_TOKENS = 8192
#: environment variable with the API key of a remote reranker (when none is passed)
RERANK_API_KEY_ENV = "EMBEDRAIL_RERANK_API_KEY"


def qwen3_rerank_prompt(query: str, document: str, instruction: str | None = None) -> str:
    """The user turn of the Qwen3-Reranker prompt (between ``QWEN3_RERANK_PREFIX`` and ``_SUFFIX``)."""
    return f"<Instruct>: {instruction or QWEN3_RERANK_INSTRUCTION}\n<Query>: {query}\n<Document>: {document}"


class BaseReranker:
    """``rerank(query, texts, instruction=None) -> scores`` (float32, one per text, higher = more relevant).

    Scores are absolute (a probability or the model's activation), so they compare across calls and
    batches. A backend implements ``_score`` on validated input.
    """

    backend: str = ""  # "local" | "remote"
    kind: str = ""  # "qwen3" | "cross-encoder" | "remote"
    model: str
    model_id: str
    max_tokens: int
    instruction: str | None = None  # the default instruction (instruction-aware models)
    stats: EmbedStats

    def _score(self, query: str, texts: list[str], instruction: str | None) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def rerank(self, query: str, texts: Sequence[str], instruction: str | None = None) -> np.ndarray:
        """Relevance of each text to ``query``. ``instruction``: the task of an instruction-aware reranker
        (Qwen3; ignored by cross-encoders, which have none). An empty ``texts`` gives an empty array."""
        if not isinstance(query, str) or not query.strip():
            raise InputError("the query is empty; rerank needs a query text")
        if isinstance(texts, (str, bytes)) or texts is None:
            raise InputError("texts must be a list of strings; wrap a single text in a list")
        items = list(texts)
        for i, t in enumerate([query, *items]):
            if not isinstance(t, str):
                raise InputError(f"texts[{i - 1}] is a {type(t).__name__}, not a str")
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as exc:
                what = "the query" if i == 0 else f"texts[{i - 1}]"
                raise InputError(f"{what} is not valid Unicode text ({exc.reason}); decode your input properly") from None
        if instruction is not None and not isinstance(instruction, str):
            raise InputError("instruction must be a string")
        if not items:
            return np.zeros(0, dtype=np.float32)
        started = time.perf_counter()
        scores = np.asarray(self._score(query, items, instruction), dtype=np.float32)
        self.stats.add(texts=len(items), seconds=time.perf_counter() - started)
        return scores

    def rank(self, query: str, texts: Sequence[str], top_k: int | None = None,
             instruction: str | None = None) -> list[tuple[int, float]]:  # fmt: skip
        """``(index, score)`` of the ``top_k`` best texts (all by default), best first; ties keep input order."""
        scores = self.rerank(query, texts, instruction)
        order = np.argsort(-scores, kind="stable")
        return [(int(i), float(scores[i])) for i in order[: top_k if top_k is not None else len(order)]]

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_id, "kind": self.kind, "backend": self.backend, "max_tokens": self.max_tokens,
                "instruction": self.instruction}  # fmt: skip

    def close(self) -> None:
        pass

    def __enter__(self) -> BaseReranker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def reranker_kind(path: Path) -> str:
    """``"qwen3"`` for a causal LM (the yes/no reranker recipe), ``"cross-encoder"`` for a sequence
    classifier; ``ModelError`` otherwise."""
    cfg = _read_json(path / "config.json")
    archs = [str(a) for a in cfg.get("architectures") or []]
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "cross-encoder"
    if any(a.endswith("ForCausalLM") for a in archs):
        return "qwen3"
    raise ModelError(
        f"{path} is not a reranker this package runs: config.json's architectures are {archs or 'missing'}; "
        "expected a Qwen3-Reranker (…ForCausalLM) or a cross-encoder (…ForSequenceClassification)"
    )


def _local_classes() -> dict[str, type[_LocalReranker]]:
    return {"qwen3": Qwen3Reranker, "cross-encoder": CrossEncoderReranker}


class Reranker:
    """Loader namespace: ``Reranker.load(model, ...)`` (same as :func:`open_reranker`)."""

    @staticmethod
    def load(model: str, **kwargs: Any) -> BaseReranker:
        return open_reranker(model, **kwargs)


def open_reranker(model: str, *, device: str = "auto", kind: str | None = None, api_key: str | None = None,
                  **kwargs: Any) -> BaseReranker:  # fmt: skip
    """A reranker for ``model``: a local directory or hub id (its ``config.json`` says Qwen3-Reranker or
    cross-encoder; ``kind=`` forces one), or a remote URL (see the module doc; the API key comes from
    ``api_key`` or ``EMBEDRAIL_RERANK_API_KEY``).

    Local keywords: ``device`` (``auto``/``cpu``/``cuda``/``cuda:N``), ``dtype`` (``float32``,
    ``bfloat16``, ``float16``), ``max_tokens``, ``batch_tokens``, ``instruction`` (Qwen3 default task),
    ``revision``, ``packed`` (False: the transformers forward pass), ``num_threads``, ``attn_implementation``,
    ``trust_remote_code``.
    """
    if not isinstance(model, str) or not model:
        raise ConfigError("a reranker model is a local directory, a hub id or an http(s) URL")
    if model.startswith(("http://", "https://")):
        from embedrail.embed_core.remote_rerank import RemoteReranker

        key = api_key if api_key is not None else os.environ.get(RERANK_API_KEY_ENV)
        return RemoteReranker(model, api_key=key, **kwargs)
    if api_key is not None:
        raise ConfigError("api_key applies to remote rerankers (http(s)://…) only")
    from embedrail.embed_core.spec import resolve_model

    resolved = resolve_model(model, kwargs.pop("revision", None))
    chosen = kind or reranker_kind(resolved.path)
    classes = _local_classes()
    if chosen not in classes:
        raise ConfigError(f"kind must be one of {sorted(classes)}, got {chosen!r}")
    return classes[chosen](resolved, device=device, **kwargs)


# ----------------------------------------------------------------------------------------------
# local rerankers
# ----------------------------------------------------------------------------------------------
from embedrail.embed_core.batching import TokenBudgetBatching  # noqa: E402  (torch-free module; the torch imports are below, lazy)


class _LocalReranker(TokenBudgetBatching, BaseReranker):
    """What the local rerankers share: device/dtype placement, threads, the fast tokenizer, token-budget
    batching, the lock, close."""

    backend = "local"

    def __init__(self, resolved: Any, *, device: str = "auto", dtype: str | None = None, max_tokens: int | None = None,
                 batch_tokens: int | None = None, instruction: str | None = None, packed: bool | None = None,
                 num_threads: int | None = None, attn_implementation: str | None = None,
                 trust_remote_code: bool = False, max_batch_size: int = 1024) -> None:  # fmt: skip
        import torch

        from embedrail.embed_core.device import available_cpus, choose_placement
        from embedrail.embed_core.embedder import DEFAULT_BATCH_TOKENS, PACKED_CPU_BATCH_TOKENS
        from embedrail.embed_core.loading import load_fast_tokenizer

        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 8):
            raise ConfigError(f"max_tokens must be an integer >= 8, got {max_tokens!r}")
        started = time.perf_counter()
        self._resolved = resolved
        self.model, self.model_id = resolved.name, resolved.model_id
        self.stats = EmbedStats()
        self._lock = threading.RLock()
        self._closed = False
        self.placement = choose_placement(device, dtype, attn_implementation)
        self._threads = (num_threads or available_cpus()) if self.placement.device.type == "cpu" else None
        if self._threads:
            torch.set_num_threads(self._threads)
        self._config = _read_json(resolved.path / "config.json")
        self.tokenizer = load_fast_tokenizer(resolved.path, self.model_id, trust_remote_code=trust_remote_code)
        limit = self._token_limit()
        if max_tokens is not None and max_tokens > limit:
            raise ConfigError(f"max_tokens={max_tokens} exceeds {self.model_id}'s limit of {limit} tokens")
        self.max_tokens = max_tokens or limit
        self._load(packed, trust_remote_code)
        packed_path = self._packed is not None
        self._pad_tolerance = 1.0 if packed_path else 0.08
        self._min_batch_tokens = 4096 if packed_path else 1024
        self._max_batch_size = max_batch_size
        dev = self.placement.device.type
        default = PACKED_CPU_BATCH_TOKENS if packed_path and dev == "cpu" else DEFAULT_BATCH_TOKENS.get(dev, 16384)
        self.batch_tokens = self._budget = max(batch_tokens or default, self.max_tokens)
        if instruction is not None:
            self.instruction = instruction
        log.info("loaded reranker %s (%s, max_tokens=%d, %s) on %s/%s in %.1fs", self.model_id, self.kind,
                 self.max_tokens, "packed" if packed_path else "padded", self.placement.device,
                 str(self.placement.dtype).removeprefix("torch."), time.perf_counter() - started)  # fmt: skip

    _packed: Any = None

    def _token_limit(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load(self, packed: bool | None, trust_remote_code: bool) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _forward(self, batch: list[list[int]], types: list[list[int]] | None) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _score_ids(self, ids_list: list[list[int]], types: list[list[int]] | None = None) -> np.ndarray:
        """Scores of model inputs (token ids; ``types``: their segment ids, sentence pairs)."""
        lengths = np.fromiter((len(x) for x in ids_list), dtype=np.int64, count=len(ids_list))

        def forward(idx: np.ndarray) -> np.ndarray:
            return self._forward([ids_list[j] for j in idx], None if types is None else [types[j] for j in idx])

        with self._lock:
            if self._closed:
                raise ModelError(f"this reranker ({self.model_id}) was closed; load it again")
            if self._threads:  # torch's thread count is per calling thread: this one may have had another
                import torch

                torch.set_num_threads(self._threads)
            return self._run_batches(lengths, 1, forward)[:, 0]

    def _account(self, tokens: int, padded: int) -> None:
        self.stats.add(batches=1, tokens=tokens, padded_tokens=padded)

    def close(self) -> None:
        from embedrail.embed_core.device import free_device_memory

        with self._lock:
            self._closed = True
            self._net = self._packed = None
            free_device_memory(self.placement.device)


class Qwen3Reranker(_LocalReranker):
    """Qwen3-Reranker-0.6B/4B/8B (see the module doc for the exact recipe)."""

    kind = "qwen3"
    instruction: str | None = QWEN3_RERANK_INSTRUCTION

    def _token_limit(self) -> int:
        return min(QWEN3_RERANK_MAX_TOKENS, int(self._config.get("max_position_embeddings") or QWEN3_RERANK_MAX_TOKENS))

    def _load(self, packed: bool | None, trust_remote_code: bool) -> None:
        import inspect

        import torch
        from transformers import AutoModelForCausalLM

        from embedrail.embed_core.loading import load_transformer
        from embedrail.embed_core.packing import packer_for

        tok = self.tokenizer
        ids = []
        for word in ("no", "yes"):
            tid = tok.convert_tokens_to_ids(word)
            if not isinstance(tid, int) or tid == tok.unk_token_id:
                raise ModelError(f"{self.model_id}: the tokenizer has no single token {word!r}; not a Qwen3-Reranker")
            ids.append(tid)
        backend = tok.backend_tokenizer
        self._prefix = backend.encode(QWEN3_RERANK_PREFIX, add_special_tokens=False).ids
        self._suffix = backend.encode(QWEN3_RERANK_SUFFIX, add_special_tokens=False).ids
        room = self.max_tokens - len(self._prefix) - len(self._suffix)
        if room < 8:
            raise ConfigError(f"max_tokens={self.max_tokens} leaves no room for a query and a document after the prompt")
        self._tok = copy.deepcopy(backend)  # a private copy that truncates the user turn
        self._tok.no_padding()
        self._tok.enable_truncation(room, strategy="longest_first")
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self._pad_id = int(pad if pad is not None else 0)

        net, self.placement = load_transformer(self._resolved.path, self.model_id, self.placement,
                                               trust_remote_code=trust_remote_code, auto_class=AutoModelForCausalLM)  # fmt: skip
        head = net.get_output_embeddings()
        # only the "no" and "yes" rows of the LM head: the score needs two logits, not the vocabulary's
        self._head_w = head.weight[ids].detach().to(torch.float32).clone()
        bias = getattr(head, "bias", None)
        self._head_b = bias[ids].detach().to(torch.float32).clone() if bias is not None else None
        self._net = net.get_decoder()  # the base model; the full LM head is dropped with ``net``
        if packed is not False:
            self._packed = packer_for(self._net, "left")
        if packed and self._packed is None:
            raise ConfigError(f"{self.model_id}: no packed forward pass for this architecture; use packed=None")
        params = inspect.signature(self._net.forward).parameters
        self._extra = {"use_cache": False} if "use_cache" in params else {}

    def _encode(self, query: str, texts: list[str], instruction: str | None) -> tuple[list[list[int]], int]:
        prompts = [qwen3_rerank_prompt(query, t, instruction or self.instruction) for t in texts]
        encs = self._tok.encode_batch(prompts, add_special_tokens=True)
        truncated = sum(1 for e in encs if e.overflowing)
        return [[*self._prefix, *e.ids, *self._suffix] for e in encs], truncated

    def _score(self, query: str, texts: list[str], instruction: str | None) -> np.ndarray:
        ids, truncated = self._encode(query, texts, instruction)
        self.stats.add(truncated=truncated)
        return self._score_ids(ids)

    def _forward(self, batch: list[list[int]], types: list[list[int]] | None) -> np.ndarray:
        import torch

        dev = self.placement.device
        with torch.inference_mode():
            if self._packed is not None:
                from embedrail.embed_core.packing import PackedBatch
                from embedrail.embed_core.pooling import pool_packed

                pb = PackedBatch.build(batch, dev)
                last = pool_packed(self._packed(pb), pb.lengths, pb.segment, pb.positions, "lasttoken")
                self._account(pb.total, pb.batch * pb.width)
            else:
                n, width = len(batch), max(len(x) for x in batch)
                ids = np.full((n, width), self._pad_id, dtype=np.int64)
                mask = np.zeros((n, width), dtype=np.int64)
                for row, seq in enumerate(batch):  # left padding: every text ends at the last column
                    ids[row, width - len(seq) :], mask[row, width - len(seq) :] = seq, 1
                ids_t, mask_t = torch.from_numpy(ids).to(dev), torch.from_numpy(mask).to(dev)
                positions = (mask_t.cumsum(dim=1) - 1).clamp(min=0)
                out = self._net(input_ids=ids_t, attention_mask=mask_t, position_ids=positions, **self._extra)
                last = out.last_hidden_state[:, -1]
                self._account(int(mask.sum()), n * width)
            logits = torch.nn.functional.linear(last.float(), self._head_w, self._head_b)  # (n, 2): no, yes
            return torch.log_softmax(logits, dim=-1)[:, 1:].exp().cpu().numpy()


_ACTIVATIONS = {"sigmoid": "sigmoid", "identity": "identity", "tanh": "tanh", "softmax": "identity"}


class CrossEncoderReranker(_LocalReranker):
    """A sequence-classification model scoring (query, document) pairs (sentence-transformers CrossEncoder)."""

    kind = "cross-encoder"
    instruction = None

    def _token_limit(self) -> int:
        cfg, path = self._config, self._resolved.path
        st = _read_json(path / "sentence_bert_config.json")
        limit = st.get("max_seq_length")
        if not isinstance(limit, int):
            tok_max = getattr(self.tokenizer, "model_max_length", None)
            limit = tok_max if isinstance(tok_max, int) and tok_max < 1_000_000 else None
        positions = int(cfg.get("max_position_embeddings") or 512)
        if cfg.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
            positions -= 2  # their position ids start after the padding index
        return min(limit or positions, positions)

    def _activation(self) -> str:
        st = _read_json(self._resolved.path / "config_sentence_transformers.json")
        path = st.get("activation_fn") or (self._config.get("sentence_transformers") or {}).get("activation_fn")
        path = path or self._config.get("sbert_ce_default_activation_function")
        if path:
            name = str(path).rsplit(".", 1)[-1].lower()
            if name not in _ACTIVATIONS:
                raise ModelError(f"{self.model_id}: activation {path!r} is not supported (sigmoid, identity, tanh)")
            return _ACTIVATIONS[name]
        return "sigmoid" if self.num_labels == 1 else "identity"

    def _load(self, packed: bool | None, trust_remote_code: bool) -> None:
        from transformers import AutoModelForSequenceClassification

        from embedrail.embed_core import packed_bert
        from embedrail.embed_core.loading import load_transformer

        backend = self.tokenizer.backend_tokenizer
        self._tok = copy.deepcopy(backend)
        self._tok.no_padding()
        self._tok.enable_truncation(self.max_tokens, strategy="longest_first")
        self._types = "token_type_ids" in getattr(self.tokenizer, "model_input_names", ())
        self._pad_id = int(self.tokenizer.pad_token_id or 0)
        net, self.placement = load_transformer(self._resolved.path, self.model_id, self.placement,
                                               trust_remote_code=trust_remote_code,
                                               auto_class=AutoModelForSequenceClassification)  # fmt: skip
        self.num_labels = int(net.config.num_labels)
        if self.num_labels not in (1, 2):
            raise ModelError(f"{self.model_id} has {self.num_labels} labels; a reranker needs one score (1 label, or 2: "
                             "relevant/not)")  # fmt: skip
        self.activation = self._activation()
        self._net = net
        bert = getattr(net, "bert", None)
        if (packed is not False and type(net).__name__ == "BertForSequenceClassification" and bert is not None
                and bert.pooler is not None and packed_bert.supports(bert)):  # fmt: skip
            self._packed = packed_bert.PackedBert.from_model(bert, self.placement.compute)
        if packed and self._packed is None:
            raise ConfigError(f"{self.model_id}: no packed forward pass for this architecture; use packed=None")

    def _score(self, query: str, texts: list[str], instruction: str | None) -> np.ndarray:
        encs = self._tok.encode_batch([(query, t) for t in texts], add_special_tokens=True)
        self.stats.add(truncated=sum(1 for e in encs if e.overflowing))
        return self._score_ids([e.ids for e in encs], [e.type_ids for e in encs])

    def _forward(self, batch: list[list[int]], types: list[list[int]] | None) -> np.ndarray:
        import torch

        assert types is not None
        dev = self.placement.device
        net = self._net
        with torch.inference_mode():
            if self._packed is not None:
                from embedrail.embed_core.packing import PackedBatch

                pb = PackedBatch.build(batch, dev, types if self._types else None)
                hidden = self._packed(pb)  # (T, H) fp32
                starts = pb.lengths.cumsum(0) - pb.lengths  # each pair's [CLS]
                pooler = net.bert.pooler.dense
                pooled = torch.tanh(pooler(hidden.index_select(0, starts).to(pooler.weight.dtype)))
                logits = net.classifier(pooled)
                self._account(pb.total, pb.batch * pb.width)
            else:
                n, width = len(batch), max(len(x) for x in batch)
                ids = np.full((n, width), self._pad_id, dtype=np.int64)
                mask = np.zeros((n, width), dtype=np.int64)
                tt = np.zeros((n, width), dtype=np.int64)
                for row, (seq, ty) in enumerate(zip(batch, types, strict=True)):
                    ids[row, : len(seq)], mask[row, : len(seq)], tt[row, : len(seq)] = seq, 1, ty
                kw: dict[str, Any] = {"input_ids": torch.from_numpy(ids).to(dev), "attention_mask": torch.from_numpy(mask).to(dev)}
                if self._types:
                    kw["token_type_ids"] = torch.from_numpy(tt).to(dev)
                logits = net(**kw).logits
                self._account(int(mask.sum()), n * width)
            logits = logits.float()
            if self.num_labels == 2:
                scores = torch.softmax(logits, dim=-1)[:, 1]
            elif self.activation == "sigmoid":
                scores = torch.sigmoid(logits[:, 0])
            elif self.activation == "tanh":
                scores = torch.tanh(logits[:, 0])
            else:
                scores = logits[:, 0]
            return scores[:, None].cpu().numpy()
