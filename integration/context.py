"""``RunContext``: what ``SyncEngine.prepare()`` decided for one run, handed to every later step.

It crosses process boundaries (Airflow XComs), so it is a dataclass with an exact JSON round trip
(``to_dict``/``from_dict``) and holds no secret: targets are keyed by their redacted URLs.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from embedrail.connectors.base import IndexSpec
from embedrail.errors import ConfigError
from embedrail.integration.chunking import Chunker
from embedrail.integration.options import Mode
from embedrail.integration.report import Report

__all__ = ["RunContext", "TargetRun", "Watermark", "spec_dict"]

DeleteMode = Literal["snapshot", "tombstone", "none"]


@dataclass
class TargetRun:
    """One target as this run sees it."""

    index: int  # position in the engine's target list
    key: str  # the key the ledger keeps the target by (its URL without credentials, or the one its index is stamped with); report key
    given: str | None = None  # the key of the URL as given, when the index is stamped with another (``key``)
    generation: str | None = None  # the physical index the run writes (None: none yet, e.g. a dry run on a new index)
    rebuild: bool = False  # the run writes a full rebuild into `generation`, switched to by finalize()
    error: str | None = None  # why the target is out of this run (down, refused); None: it takes part
    spec: IndexSpec | None = None  # what its index records: its own dims and fingerprint (None: the run's)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Watermark:
    """A feed's watermark: read only rows above ``since`` (encoded; None: read everything)."""

    key: str
    since: str | None


@dataclass
class RunContext:
    """Everything the steps after ``prepare()`` need, JSON round-trippable."""

    VERSION = 5  # 4: targets keyed by their ledger key (``given``), drift; 5: source_state

    mode: Mode
    dry_run: bool
    deletes: DeleteMode  # resolved: "auto" is decided by prepare()
    model: str  # the name the embedder is loaded by (minilm, a dir, a hub id, http://host/v1#name)
    load_dims: int | None  # dims to load it at (None: native)
    model_id: str
    spec: IndexSpec  # the embedding the model runs at: the widest target's (each target records its own)
    chunk_tokens: int | None
    chunk_overlap: int
    chunk_context: str | None = None  # the contextual chunk header template (None: off)
    chunker: str | None = None  # a custom chunker's identity, "module:function" (None: the built-in)
    #: the delete guard, decided once for every step (an Airflow trigger param reaches the delete task this way)
    max_delete_fraction: float = 0.5
    allow_mass_delete: bool = False
    targets: list[TargetRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    watermark: Watermark | None = None
    drift: dict[str, dict[str, Any]] = field(default_factory=dict)  # target key -> what prepare's drift probe found
    #: what the plan recorded of the source so that every partition's share reads the same data (a file's size)
    source_state: dict[str, Any] | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started: float = field(default_factory=time.time)

    @property
    def dims(self) -> int:
        """The dims the model runs at (the widest target's)."""
        return self.spec.dims

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the vectors the model gives (the widest target's)."""
        return self.spec.fingerprint

    def spec_of(self, run: TargetRun) -> IndexSpec:
        """What ``run``'s index records: its own dims and fingerprint."""
        return run.spec or self.spec

    def doc_config(self, run: TargetRun | None = None) -> str:
        """What, besides a document's own text and metadata, decides its chunks and the vectors ``run``'s
        target holds (its fingerprint covers its dims)."""
        fp = self.spec_of(run).fingerprint if run is not None else self.spec.fingerprint
        return f"{fp}|{Chunker.config_string(self.chunk_tokens, self.chunk_overlap, self.chunk_context, self.chunker)}"

    def new_report(self, **kw: Any) -> Report:
        rep = Report(mode=self.mode, dry_run=self.dry_run, model=self.model_id, dims=self.dims, fingerprint=self.fingerprint, **kw)
        rep.drift = {k: dict(v) for k, v in self.drift.items()}
        for t in self.targets:
            rep.add_target(t.key, self.spec_of(t).dims)
        return rep

    # --------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spec"] = spec_dict(self.spec)
        d["targets"] = [{**asdict(t), "spec": spec_dict(t.spec) if t.spec is not None else None} for t in self.targets]
        return {"version": self.VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunContext:
        if not isinstance(d, dict) or d.get("version") != cls.VERSION:
            raise ConfigError("the run context was made by another embedrail version: run prepare() again")
        d = dict(d)
        d.pop("version")
        d["spec"] = IndexSpec(**d["spec"])
        d["targets"] = [TargetRun(**{**t, "spec": IndexSpec(**t["spec"]) if t.get("spec") else None}) for t in d["targets"]]
        d["watermark"] = Watermark(**d["watermark"]) if d.get("watermark") else None
        return cls(**d)

    @classmethod
    def of(cls, ctx: RunContext | dict[str, Any]) -> RunContext:
        """A ``RunContext`` from itself or its ``to_dict()`` (e.g. an Airflow XCom)."""
        return ctx if isinstance(ctx, RunContext) else cls.from_dict(ctx)


def spec_dict(spec: IndexSpec) -> dict[str, Any]:
    """An ``IndexSpec`` as JSON (the context's XComs, the ledger's target rows)."""
    return {"dims": spec.dims, "metric": spec.metric, "fingerprint": spec.fingerprint, "embedding": dict(spec.embedding)}
