"""Which embedding a run uses, and the embedder itself, loaded only when a chunk must be cut or embedded.

The model and each target's dimension are chosen from the options, what the targets' indexes record and
what their servers accept (DESIGN.md, "Dimension choice"). The model runs once, at the largest dimension
a target needs; a Matryoshka model's narrower targets get the truncation to their own dims, described
(fingerprint included) as the model loaded at those dims (``embed_core.mrl``). A model's description
(fingerprint, dims, token limit) is cached in the ledger, so a run that finds nothing to embed never
loads the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from embedrail.connectors.base import IndexSpec
from embedrail.errors import DimensionLimitError, ModelError
from embedrail.integration.context import RunContext
from embedrail.integration.ledger import Ledger

__all__ = ["EmbeddingChoice", "ModelInfo", "ModelResolver", "TargetNeed"]

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

    def at(self, dims: int) -> ModelInfo:
        """This model at ``dims`` (a Matryoshka truncation): what loading it at ``dims`` would describe."""
        if dims == self.dims:
            return self
        from embedrail.embed_core.mrl import info_at_dims

        emb = info_at_dims({"model_id": self.model_id, **self.embedding, "dims": self.dims}, dims)
        return replace(self, dims=dims, fingerprint=str(emb["fingerprint"]), embedding=emb)


@dataclass(frozen=True)
class TargetNeed:
    """What ``ModelResolver.choose`` needs to know of one target."""

    key: str
    dims: int | None  # asked for it (its own, else the run's option); None: recorded, else native
    limit: int | None  # the most its store accepts (None: no limit, or the store is down)


@dataclass(frozen=True)
class EmbeddingChoice:
    """The embedding of a run: load ``name`` at ``load_dims`` (its vectors are described by ``spec``);
    target ``key``'s index records ``specs[key]`` and gets the vectors cut to its dims."""

    name: str
    load_dims: int | None
    info: ModelInfo
    spec: IndexSpec
    specs: Mapping[str, IndexSpec]
    notes: tuple[str, ...] = ()


def _spec(info: ModelInfo, name: str) -> IndexSpec:
    embedding = {"model": info.model_id, **info.embedding, "dims": info.dims, "load_name": name}
    return IndexSpec(dims=info.dims, metric=info.metric, fingerprint=info.fingerprint, embedding=embedding)


class ModelResolver:
    """Chooses the run's embedding and hands out its embedder (loaded once, on first need).

    ``embedder``: an already loaded embedder to use as is (its model wins; targets at lower dims get
    Matryoshka truncations of its vectors). ``factory``:
    ``factory(name, dims=..., device=...)`` loads one (e.g. a per-process cache in Airflow workers);
    default ``embed_core.open_embedder``. Embedders this resolver opened itself are closed by ``close()``.
    """

    def __init__(self, ledger: Ledger, device: str = "auto", embedder: Any = None,
                 factory: Callable[..., Any] | None = None, dtype: str | None = None, model: str | None = None) -> None:  # fmt: skip
        self.ledger, self.device = ledger, device
        self._user_model = model  # the model the user named (its server may get the API key; one an index records may not)
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

    def _cache_key(self, name: str) -> str:
        return f"model2:{name}:native:{self.device}"  # 2: descriptions carry mrl_min_dims

    def load(self, name: str, dims: int | None) -> Any:
        if self._given is not None:
            return self._given
        if self._loaded is not None and self._loaded_key == (name, dims):
            return self._loaded
        self.close()
        from embedrail.embed_core.factory import env_api_key, is_remote_model, split_remote_model

        options = dict(self._load_options)
        if is_remote_model(name) and name != self._user_model:  # read from an index: the key only to a listed server
            options["api_key"] = env_api_key(split_remote_model(name)[0], trusted=False) or ""
        if self._factory is not None:
            emb, owned = self._factory(name, dims=dims, device=self.device, **options), False
        else:
            from embedrail.embed_core import open_embedder

            emb, owned = open_embedder(name, dims=dims, device=self.device, **options), True
        self._loaded, self._loaded_key, self._owned = emb, (name, dims), owned
        return emb

    def info(self, name: str) -> ModelInfo:
        """The model's description at its native dims, from the ledger cache when possible (no model
        load); every other size is derived from it (``ModelInfo.at``)."""
        if self._given is not None:
            return ModelInfo.of(self._given)
        cached = self.ledger.meta(self._cache_key(name))
        if cached:
            return ModelInfo(**cached)
        info = ModelInfo.of(self.load(name, None))
        self.ledger.set_meta(self._cache_key(name), asdict(info))
        return info

    def choose(self, model: str | None, needs: Sequence[TargetNeed], *, incremental: bool,
               recorded: Callable[[str], Mapping[str, Any] | None]) -> EmbeddingChoice:  # fmt: skip
        """The run's model and every target's dims.

        Model: the option, else what the first reachable index records (``recorded(key)``), else the
        packaged default. A target's dims: its own or the run's ``dims``, else (incremental, same model)
        what its index records, else the model's native size; lowered to the target's store limit with
        a note. The model is run once, at the largest of them, and each target gets the Matryoshka
        truncation to its own (its ``IndexSpec`` and fingerprint are those of the model loaded at its
        dims). Raised before anything is written: ``DimensionLimitError`` for dims asked above a store's
        limit; ``ModelError`` for dims a non-Matryoshka model cannot give (it has one size for every target).
        """
        from embedrail.embed_core import DEFAULT_MODEL

        seen: dict[str, Mapping[str, Any] | None] = {}

        def rec(key: str) -> Mapping[str, Any]:
            if key not in seen:
                seen[key] = recorded(key)
            return seen[key] or {}

        name = model
        if name is None:
            name = next((r.get("load_name") or r.get("model") for n in needs if (r := rec(n.key)) and (r.get("load_name") or r.get("model"))),
                        None) or DEFAULT_MODEL  # fmt: skip
        for n in needs:
            if n.dims is not None and n.limit is not None and n.dims > n.limit:
                raise DimensionLimitError(f"{n.key} accepts at most {n.limit} dimensions but dims {n.dims} was requested; "
                                          f"use dims {n.limit} or less for it (--dims, or URL#dims=N for one target)")  # fmt: skip
        base = ModelInfo.of(self._given) if self._given is not None else self.info(name)
        notes: list[str] = []
        wanted: dict[str, tuple[int, str]] = {}  # key -> (dims, why)
        for n in needs:
            d, why = n.dims, "asked for"
            if d is None and incremental:
                r = rec(n.key)
                if model in (None, r.get("load_name"), r.get("model")) and isinstance(r.get("dims"), int):
                    d, why = int(r["dims"]), "recorded in its index"
            if d is None:
                d, why = base.dims, "the model's size"
            if n.limit is not None and d > n.limit:
                notes.append(f"{n.key}: dims {d} lowered to {n.limit}, the most it accepts")
                d, why = n.limit, "the most its store accepts"
            wanted[n.key] = (d, why)
        width = max(d for d, _ in wanted.values())
        if self._given is not None:  # its own vectors; each target cuts its own
            wide, load_dims = base, None
        else:
            wide, load_dims = self._at(base, width, name, "the widest target"), (None if width == base.dims else width)
        specs = {key: _spec(self._at(wide, d, name, f"{key} ({why})"), name) for key, (d, why) in wanted.items()}
        if len({s.dims for s in specs.values()}) > 1:
            notes.append(f"embedded once at {wide.dims} dims; " + ", ".join(f"{k}: {s.dims}" for k, s in specs.items()))
        return EmbeddingChoice(name, load_dims, wide, _spec(wide, name), specs, tuple(notes))

    @staticmethod
    def _at(info: ModelInfo, dims: int, name: str, who: str) -> ModelInfo:
        try:
            return info.at(dims)
        except ModelError as e:
            raise ModelError(f"{who} needs {dims} dims of {name}: {e}") from None

    def for_run(self, ctx: RunContext) -> Any:
        """The embedder of a prepared run; it must still be the model ``prepare()`` described."""
        emb = self.load(ctx.model, ctx.load_dims)
        fp = getattr(emb, "fingerprint", "")
        if fp == ctx.fingerprint:
            return emb
        if self._given is None:  # our cached description is stale: forget it; the next run describes the model anew
            self.ledger.set_meta(self._cache_key(ctx.model), None)
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
