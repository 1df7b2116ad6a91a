"""What local and remote embedders share: input checks, instructions/prefixes, streaming, stats."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from embedrail.embed_core.config import QWEN3_QUERY_TEMPLATE
from embedrail.embed_core.fingerprint import compute_fingerprint
from embedrail.embed_core.text import check_texts
from embedrail.errors import ConfigError

#: Texts taken from an iterable per step of :meth:`BaseEmbedder.iter_embed_documents`.
DEFAULT_STREAM_CHUNK = 2048


@dataclass
class EmbedStats:
    """Running counters of one embedder (read them, or ``reset()`` them). Counted with :meth:`add`, so
    an embedder called from several threads at once (``embedrail serve``'s workers) keeps exact totals;
    :meth:`tally` counts what one thread's calls added."""

    texts: int = 0  # texts embedded (after de-duplication within a call)
    duplicates: int = 0  # texts served from an identical text in the same call
    tokens: int = 0  # real tokens fed to the model (padding excluded)
    padded_tokens: int = 0  # tokens including padding
    truncated: int = 0  # texts cut at max_tokens
    batches: int = 0  # forward passes / HTTP requests
    oom_retries: int = 0  # CUDA out-of-memory events answered by halving the batch budget
    http_retries: int = 0  # remote backend: retried requests
    seconds: float = 0.0  # wall time spent embedding

    def __post_init__(self) -> None:
        self._lock = threading.Lock()  # not fields: as_dict / reset / == leave them alone
        self._local = threading.local()

    def add(self, **counts: float) -> None:
        """Add to counters (``stats.add(tokens=n, batches=1)``), here and in this thread's open tallies."""
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)
        for tally in getattr(self._local, "tallies", ()):
            tally.add(**counts)

    @contextmanager
    def tally(self) -> Iterator[EmbedStats]:
        """``with stats.tally() as mine:`` — counters of what this thread's calls add inside the block,
        while other threads keep counting into the same embedder."""
        mine = EmbedStats()
        tallies = self._local.__dict__.setdefault("tallies", [])
        tallies.append(mine)
        try:
            yield mine
        finally:
            tallies[:] = [t for t in tallies if t is not mine]  # by identity: equal counters are not the same tally

    def reset(self) -> None:
        with self._lock:
            for f in fields(self):
                setattr(self, f.name, type(getattr(self, f.name))())

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self)}


class BaseEmbedder:
    """The Embedder interface, and what every backend shares: input checks, query/document formatting,
    de-duplication of identical texts within a call, stats, streaming and the JSON description
    (``embedding_info``) stored in index metadata.

    A backend implements ``_embed_unique`` (distinct, formatted texts -> unit vectors),
    ``fingerprint_components`` and ``_info_extra``.
    """

    backend: str = ""  # "local" | "remote": how embedding_info() says to rebuild it
    model_id: str
    model: str
    revision: str | None = None
    dims: int
    native_dims: int
    matryoshka: bool = False
    pooling: str = ""
    max_tokens: int
    query_instruction: str | None
    query_prefix: str
    document_prefix: str
    metric = "cosine"  # vectors are unit-norm, so cosine similarity == dot product
    stats: EmbedStats
    #: strip leading/trailing whitespace before embedding (and before de-duplication)
    strip_inputs: bool = False

    # ---- to implement -------------------------------------------------------------------------
    def _embed_unique(self, texts: list[str]) -> np.ndarray:  # pragma: no cover - abstract
        """``(len(texts), dims)`` float32 unit vectors for distinct, non-empty, formatted texts."""
        raise NotImplementedError

    def fingerprint_components(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _info_extra(self) -> dict[str, Any]:
        """Backend-specific members of :meth:`embedding_info` (what it takes to load it again)."""
        return {}

    def close(self) -> None:
        """Release the model / HTTP client. The object is unusable afterwards."""

    def set_thread_budget(self, threads: int) -> None:
        """CPU threads a call made from the calling thread may use (local models; nothing to set for a
        remote one). Embedders may be called from several threads at once."""

    # ---- shared: the embedding call --------------------------------------------------------------
    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        """Embed formatted, validated texts: each distinct text once, results in input order."""
        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        started = time.perf_counter()
        if self.strip_inputs:
            texts = [t.strip() for t in texts]
        unique: dict[str, int] = {}
        inverse = np.fromiter((unique.setdefault(t, len(unique)) for t in texts), dtype=np.int64, count=len(texts))
        vectors = self._embed_unique(list(unique))
        self.stats.add(texts=len(unique), duplicates=len(texts) - len(unique), seconds=time.perf_counter() - started)
        return vectors if len(unique) == len(texts) else vectors[inverse]

    def embedding_info(self) -> dict[str, Any]:
        """JSON-able description stored in index metadata; ``embed_core.embedder_from_info`` (or
        ``Embedder.from_info``) loads the same model again from it."""
        return {
            "backend": self.backend,
            "model": self.model,
            "model_id": self.model_id,
            "revision": self.revision,
            "dims": self.dims,
            "native_dims": self.native_dims,
            "matryoshka": self.matryoshka,
            "metric": self.metric,
            "pooling": self.pooling,
            "normalize": True,
            "max_tokens": self.max_tokens,
            "document_prefix": self.document_prefix,
            "query_prefix": self.query_prefix,
            "query_instruction": self.query_instruction,
            **self._info_extra(),
            "fingerprint": self.fingerprint,
            "fingerprint_components": self.fingerprint_components(),
        }

    def embedding_info_at(self, dims: int) -> dict[str, Any]:
        """:meth:`embedding_info` of this model at ``dims`` (a Matryoshka truncation of its vectors, made by
        ``embed_core.truncate_and_normalize``), exactly as the model loaded at ``dims`` describes itself.
        ``ModelError`` when the model is not MRL, or ``dims`` is above :attr:`dims` or below its MRL minimum."""
        from embedrail.embed_core.mrl import info_at_dims

        return info_at_dims(self.embedding_info(), dims)

    def __enter__(self) -> BaseEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- shared -----------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Hash of everything that changes stored document vectors (see ``embed_core.fingerprint``)."""
        return compute_fingerprint(self.fingerprint_components())

    @property
    def instruction_style(self) -> bool:
        """True for instruction-following models (Qwen3-Embedding): queries get ``Instruct: ...``."""
        return self.query_instruction is not None

    def format_query(self, text: str, instruction: str | None = None) -> str:
        """The exact string a query is embedded as.

        Instruction-style models (Qwen3-Embedding): ``Instruct: {task}\\nQuery:{text}``; others:
        ``query_prefix + text``.
        """
        if instruction is not None:
            if not isinstance(instruction, str) or not instruction.strip():
                raise ConfigError("instruction must be a non-empty string (or None for the model's default)")
            if not self.instruction_style:
                raise ConfigError(
                    f"{self.model_id} is not an instruction-style model, so embed_queries(instruction=...) does not "
                    "apply; load it with query_instruction=... to force Qwen3-style instructions, or pass None"
                )
            return QWEN3_QUERY_TEMPLATE.format(instruction=instruction, text=text)
        if self.query_instruction is not None:
            return QWEN3_QUERY_TEMPLATE.format(instruction=self.query_instruction, text=text)
        return self.query_prefix + text

    def format_document(self, text: str) -> str:
        """The exact string a document is embedded as (``document_prefix + text``; Qwen3: unchanged)."""
        return self.document_prefix + text

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Embed documents: ``(n, dims)`` float32, unit L2 norm, in input order.

        Empty or whitespace-only texts raise :class:`~embedrail.errors.InputError` naming the
        position (the sync engine drops empty chunks before embedding).
        """
        items = check_texts(texts)
        return self._embed_texts([self.format_document(t) for t in items])

    def embed_queries(self, texts: Sequence[str], instruction: str | None = None) -> np.ndarray:
        """Embed search queries (with the model's query instruction or prefix); see :meth:`format_query`."""
        items = check_texts(texts, what="queries")
        return self._embed_texts([self.format_query(t, instruction) for t in items])

    def embed_raw(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts verbatim: no document prefix, no query instruction (what a plain
        OpenAI-style ``/v1/embeddings`` request does). Last-token models still get their EOS."""
        return self._embed_texts(check_texts(texts))

    def embed_query(self, text: str, instruction: str | None = None) -> np.ndarray:
        """One query -> a ``(dims,)`` vector."""
        return self.embed_queries([text], instruction=instruction)[0]

    def iter_embed_documents(
        self,
        texts: Iterable[str],
        progress: Callable[[int], Any] | None = None,
        chunk_size: int = DEFAULT_STREAM_CHUNK,
    ) -> Iterator[np.ndarray]:
        """Stream documents: yields ``(k, dims)`` arrays in input order, ``chunk_size`` texts at a time.

        Memory stays bounded by ``chunk_size`` whatever the iterable's length. ``progress`` is called
        after each chunk with the number of texts just embedded (so ``tqdm(...).update`` fits).
        Error positions count from the start of the whole stream.
        """
        if isinstance(texts, (str, bytes)):
            check_texts(texts)  # raises the "single string" error
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        iterator = iter(texts)
        offset = 0
        while True:
            block = list(itertools.islice(iterator, chunk_size))
            if not block:
                return
            items = check_texts(block, offset=offset)
            vectors = self._embed_texts([self.format_document(t) for t in items])
            offset += len(block)
            if progress is not None:
                progress(len(block))
            yield vectors

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model_id!r}, dims={self.dims}, fingerprint={self.fingerprint})"
