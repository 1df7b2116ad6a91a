"""Which embedding a run uses, and the embedder itself, loaded only when a chunk must be cut or embedded.

The model and its dimension are chosen from the options, what the targets' indexes record and what
their servers accept (DESIGN.md, "Dimension choice"). A model's description (fingerprint, dims, token
limit) is cached in the ledger, so a run that finds nothing to embed never loads the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from connectors.base import IndexSpec
from embedrail.errors import DimensionLimitError, ModelError

from .context import RunContext
from .ledger import Ledger

__all__ = ["EmbeddingChoice", "ModelInfo", "ModelResolver"]

log = logging.getLogger("embedrail.sync")


@dataclass(frozen=True)
class ModelInfo:
    """What the engine needs to know of an embedder without holding it."""

    model_id: str
    dims: int
    native_dims: int
    max_tokens: int
    fingerprint: str
    metric: str
    embedding: dict[str, Any] = field(default_factory=dict)  # its embedding_info()

    @classmethod
    def of(cls, emb: Any) -> ModelInfo:
        info = emb.embedding_info() if hasattr(emb, "embedding_info") else {}
        return cls(
            model_id=str(getattr(emb, "model_id", info.get("model", "unknown"))),
            dims=int(emb.dims),
            native_dims=int(getattr(emb, "native_dims", emb.dims) or emb.dims),
            max_tokens=int(getattr(emb, "max_tokens", 0) or 0),
            fingerprint=str(emb.fingerprint),
            metric=str(getattr(emb, "metric", "cosine") or "cosine"),
            embedding=dict(info),
        )


@dataclass(frozen=True)
class EmbeddingChoice:
    """The embedding of a run: load ``name`` at ``load_dims``; every target's index records ``spec``."""

    name: str
    load_dims: int | None
    info: ModelInfo
    spec: IndexSpec
    notes: tuple[str, ...] = ()


class ModelResolver:
    """Chooses the run's embedding and hands out its embedder (loaded once, on first need).

    ``embedder``: an already loaded embedder to use as is (its model and dims win). ``factory``:
    ``factory(name, dims=..., device=...)`` loads one (e.g. a per-process cache in Airflow workers);
    default ``embed_core.open_embedder``. Embedders this resolver opened itself are closed by ``close()``.
    """

    def __init__(self, ledger: Ledger, device: str = "auto", embedder: Any = None,
                 factory: Callable[..., Any] | None = None, dtype: str | None = None) -> None:  # fmt: skip
        self.ledger, self.device = ledger, device
        self._load_options = {"dtype": dtype} if dtype else {}  # precision: not part of the model's identity
        self._given = embedder
        self._factory = factory
        self._loaded: Any = None
        self._loaded_key: tuple[str, int | None] | None = None
        self._owned = False

    @property
    def loaded(self) -> Any:
        """The embedder in use (None while no chunk needed the model)."""
        return self._given if self._given is not None else self._loaded

    def _cache_key(self, name: str, dims: int | None) -> str:
        return f"model:{name}:{dims or 'native'}:{self.device}"

    def load(self, name: str, dims: int | None) -> Any:
        if self._given is not None:
            return self._given
        if self._loaded is not None and self._loaded_key == (name, dims):
            return self._loaded
        self.close()
        if self._factory is not None:
            emb, owned = self._factory(name, dims=dims, device=self.device, **self._load_options), False
        else:
            from embed_core import open_embedder

            emb, owned = open_embedder(name, dims=dims, device=self.device, **self._load_options), True
        self._loaded, self._loaded_key, self._owned = emb, (name, dims), owned
        return emb

    def info(self, name: str, dims: int | None) -> ModelInfo:
        """The model's description, from the ledger cache when possible (no model load)."""
        if self._given is not None:
            return ModelInfo.of(self._given)
        cached = self.ledger.meta(self._cache_key(name, dims))
        if cached:
            return ModelInfo(**cached)
        info = ModelInfo.of(self.load(name, dims))
        self.ledger.set_meta(self._cache_key(name, dims), asdict(info))
        return info

    def choose(self, model: str | None, dims: int | None, *, incremental: bool, recorded: Callable[[], Mapping[str, Any] | None],
               limits: Mapping[str, int | None]) -> EmbeddingChoice:  # fmt: skip
        """Model: the option, else what the first reachable index records, else the packaged default.
        Dims: the option, else (incremental, same model) what the index records, else the model's
        native size; lowered to the smallest store limit (Matryoshka models) with a note. An explicit
        ``dims`` above a store's limit is an error before anything is written."""
        from embed_core import DEFAULT_MODEL

        rec: Mapping[str, Any] = (recorded() if model is None or (dims is None and incremental) else None) or {}
        name = model or rec.get("load_name") or rec.get("model") or DEFAULT_MODEL
        requested = dims
        if requested is None and incremental and model in (None, rec.get("load_name"), rec.get("model")):
            requested = rec["dims"] if isinstance(rec.get("dims"), int) else None
        for key, lim in limits.items():
            if dims is not None and lim is not None and dims > lim:
                raise DimensionLimitError(f"{key} accepts at most {lim} dimensions but --dims {dims} was requested; "
                                          f"use --dims {lim} or less")  # fmt: skip
        notes: list[str] = []
        if self._given is not None:
            info, load_dims = ModelInfo.of(self._given), None
            for key, lim in limits.items():
                if lim is not None and info.dims > lim:
                    raise DimensionLimitError(f"{key} accepts at most {lim} dimensions; the embedder gives {info.dims}")
        else:
            native = self.info(name, None)
            chosen = requested or native.native_dims or native.dims
            caps = [lim for lim in limits.values() if lim is not None]
            if caps and min(caps) < chosen:
                notes.append(f"dims {chosen} lowered to {min(caps)}: the most a target accepts")
                chosen = min(caps)
            info = native if chosen == native.dims else self.info(name, chosen)
            if info.dims != chosen:
                raise ModelError(f"model {name} gave {info.dims} dims where {chosen} were asked")
            load_dims = None if chosen == native.dims else chosen
        embedding = {"model": info.model_id, **info.embedding, "dims": info.dims, "load_name": name}
        spec = IndexSpec(dims=info.dims, metric=info.metric, fingerprint=info.fingerprint, embedding=embedding)
        return EmbeddingChoice(name, load_dims, info, spec, tuple(notes))

    def for_run(self, ctx: RunContext) -> Any:
        """The embedder of a prepared run; it must still be the model ``prepare()`` described."""
        emb = self.load(ctx.model, ctx.load_dims)
        fp = getattr(emb, "fingerprint", "")
        if fp == ctx.fingerprint:
            return emb
        if self._given is None:  # our cached description is stale: refresh it for the next run
            self.ledger.set_meta(self._cache_key(ctx.model, ctx.load_dims), asdict(ModelInfo.of(emb)))
            raise ModelError(f"model {ctx.model} changed since the last run (fingerprint {ctx.fingerprint} -> {fp}); "
                             "run again (an index holding the old vectors will then ask for --mode full)")  # fmt: skip
        raise ModelError(f"model {ctx.model} here has fingerprint {fp}, the run was prepared with {ctx.fingerprint}: "
                         "every worker must run the same model version")  # fmt: skip

    def close(self) -> None:
        """Close the embedder this resolver opened (not a given one, not one from the factory)."""
        if self._loaded is not None and self._owned:
            try:
                self._loaded.close()
            except Exception as e:  # noqa: BLE001
                log.debug("closing the embedder: %s", e)
        self._loaded, self._loaded_key, self._owned = None, None, False
