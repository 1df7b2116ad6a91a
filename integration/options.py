"""``SyncOptions``: the knobs of a sync run, declared once.

The CLI (``embedrail reindex`` flags are generated from the fields below), ``SyncEngine``, the Airflow
DAG factory and operator, and the YAML DAG configs all read and validate their options through this
one type, so a new option is one field here (plus its use in the engine).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from embedrail.errors import ConfigError

__all__ = ["BAD_ROW_POLICIES", "DELETES", "MODES", "REPAIRS", "Deletes", "Mode", "OnBadRow", "Repair", "SyncOptions",
           "positive_int", "truthy"]

Mode = Literal["incremental", "full"]
Deletes = Literal["auto", "snapshot", "tombstone", "none"]
OnBadRow = Literal["skip", "fail"]
Precision = Literal["float32", "bfloat16", "float16"]
Repair = Literal["auto", "on", "off"]
MODES: tuple[str, ...] = get_args(Mode)
REPAIRS: tuple[str, ...] = get_args(Repair)
DELETES: tuple[str, ...] = get_args(Deletes)
BAD_ROW_POLICIES: tuple[str, ...] = get_args(OnBadRow)
_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off", ""}


def truthy(value: Any) -> bool:
    """A boolean from YAML, an Airflow param, a CSV cell or a URL parameter."""
    if isinstance(value, str):
        return value.strip().lower() in _TRUE
    return bool(value)


def _opt(help: str, *, cli: str | None = None, const: Any = None, **kw: Any) -> Any:
    """A field with its ``--flag`` help (``cli``: another flag name, "" for none; ``const``: the value of the
    flag given without one, for a choice)."""
    return field(metadata={"help": help, "cli": cli, "const": const}, **kw)


@dataclass(frozen=True, kw_only=True)
class SyncOptions:
    """How a sync run embeds and writes (what and where — source, targets, ledger — are not options)."""

    model: str | None = _opt("embedding model: minilm, a model dir, a hub id or http(s)://host/v1#name "
                             "(default: what the target records, else the packaged minilm)", default=None)  # fmt: skip
    dims: int | None = _opt("output dimension of the targets without their own URL#dims=N (default: what each index "
                            "records, else native, capped by each store's limit)", default=None)  # fmt: skip
    device: str = _opt("auto | cpu | cuda | cuda:N", default="auto")
    dtype: Precision | None = _opt("model precision (default: bf16 on CUDA; on CPU bf16 matrix products where the CPU "
                                   "has native bf16, else fp32)", default=None)  # fmt: skip
    mode: Mode = _opt("incremental: embed what changed; full: build a new index and switch to it", default="incremental")
    deletes: Deletes = _opt("snapshot: delete what the source no longer has; tombstone: rows marked deleted; "
                            "auto: snapshot, or tombstone for a watermark feed; none", default="auto")  # fmt: skip
    dry_run: bool = _opt("print the plan, write nothing", default=False)
    chunk_tokens: int | None = _opt("chunk size in tokens (default: the model's limit)", default=None)
    chunk_overlap: int = _opt("tokens shared by consecutive chunks", default=0)
    chunk_context: str | None = _opt("contextual chunk header: embed TEMPLATE filled in ({context} = title > heading path, "
                                     "{title}, {heading_path}, {page}, {path}, {text}) while the stored text stays the chunk; "
                                     "'default' = '{context}\\n\\n{text}'", default=None, const="default")  # fmt: skip
    chunker: str | None = _opt("your own splitter, 'module:function' called as fn(doc, max_tokens, overlap) -> [str | "
                               "(str, metadata)] (Python: the function itself)", default=None)  # fmt: skip
    batch_size: int = _opt("chunks per embedding batch", default=64)
    queue_depth: int = _opt("embedded batches waiting for the writer (memory bound); the writer writes queued batches together", default=8)
    on_bad_row: OnBadRow = _opt("skip (and report) or fail on a bad source row", default="skip")
    source_options: Mapping[str, Any] = _opt("options of the source (id_field, text_field, ...)", cli="",
                                             default_factory=dict)  # fmt: skip
    max_delete_fraction: float = _opt("a snapshot run that would delete more than this share of a target's documents "
                                      "writes its upserts but not those deletes, and fails (1.0: no limit)", default=0.5)  # fmt: skip
    allow_mass_delete: bool = _opt("delete what the source no longer has, whatever its share (an empty source included)",
                                   default=False)  # fmt: skip
    adopt: bool = _opt("take over a non-empty index this ledger does not know: rebuild the ledger's rows for it from the "
                       "records' own _doc/_fp, then sync incrementally (deleting what the source no longer has)",
                       default=False)  # fmt: skip
    repair: Repair = _opt("auto: every run compares the store's count and a sample of records with the ledger and repairs "
                          "the drift it finds; on (--repair): compare every id and fingerprint and repair; off: report "
                          "drift only", default="auto", const="on")  # fmt: skip
    drift_sample: int = _opt("records the drift probe of every incremental run reads back (0: count only)", default=100)

    def __post_init__(self) -> None:
        if self.chunker is not None:
            from embedrail.integration.chunking import chunker_identity, resolve_chunker

            object.__setattr__(self, "chunker", chunker_identity(self.chunker))
            resolve_chunker(self.chunker)  # a typo fails here, not in the middle of a run
        if isinstance(self.repair, bool):  # repair=True (Python), as the issue of the flag
            object.__setattr__(self, "repair", "on" if self.repair else "off")
        if isinstance(self.max_delete_fraction, int) and not isinstance(self.max_delete_fraction, bool):
            object.__setattr__(self, "max_delete_fraction", float(self.max_delete_fraction))
        hints = _hints()
        for f in dataclasses.fields(self):
            _check(f.name, getattr(self, f.name), hints[f.name])
        if self.chunk_overlap < 0:
            raise ConfigError(f"chunk_overlap must be >= 0, got {self.chunk_overlap}")
        if self.chunk_tokens is not None and self.chunk_overlap >= self.chunk_tokens:
            raise ConfigError(f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_tokens ({self.chunk_tokens})")
        if self.model is not None and not self.model.strip():
            raise ConfigError("model must be a non-empty string or None")
        if self.model is not None:
            from embedrail.embed_core.factory import check_model_name

            check_model_name(self.model)
        if not 0.0 < self.max_delete_fraction <= 1.0:
            raise ConfigError(f"max_delete_fraction must be above 0 and at most 1 (1: no limit), got {self.max_delete_fraction}")
        if self.chunk_context is not None and "{text}" not in self.chunk_context and self.chunk_context != "default":
            raise ConfigError("chunk_context must contain {text} (or be 'default')")
        if self.drift_sample < 0:
            raise ConfigError(f"drift_sample must be >= 0, got {self.drift_sample}")
        object.__setattr__(self, "source_options", {k: v for k, v in dict(self.source_options).items() if v is not None})

    # --------------------------------------------------------------------------- construction
    @classmethod
    def names(cls) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, where: str = "options") -> SyncOptions:
        """From a mapping of loosely typed values (YAML, Airflow params, JSON): ``"true"`` and ``"8"``
        are accepted for booleans and integers; unknown keys are an error that lists the known ones."""
        unknown = set(data) - cls.names()
        if unknown:
            raise ConfigError(f"{where}: unknown option(s) {sorted(unknown)}; known: {sorted(cls.names())}")
        hints = _hints()
        return cls(**{k: _coerce(k, v, hints[k]) for k, v in data.items()})

    def replace(self, **changes: Any) -> SyncOptions:
        """A copy with some options changed (validated again)."""
        return self.from_mapping({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (dict(v) if isinstance(v := getattr(self, f.name), Mapping) else v) for f in dataclasses.fields(self)}

    # --------------------------------------------------------------------------- the CLI
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One ``--flag`` per option (``source_options`` excepted: the CLI has its own field flags)."""
        hints = _hints()
        for f in dataclasses.fields(cls):
            if f.metadata.get("cli") == "":
                continue
            flag = f.metadata.get("cli") or "--" + f.name.replace("_", "-")
            typ, default, help_ = hints[f.name], f.default, f.metadata["help"]
            base, optional = _base(typ)
            if base is bool:
                parser.add_argument(flag, dest=f.name, action="store_true", help=help_)
            elif get_origin(base) is Literal and f.metadata.get("const") is not None:  # --flag alone, or --flag CHOICE
                parser.add_argument(flag, dest=f.name, nargs="?", const=f.metadata["const"], choices=get_args(base),
                                    default=default, help=help_)  # fmt: skip
            elif get_origin(base) is Literal:
                parser.add_argument(flag, dest=f.name, choices=get_args(base), default=default, help=help_)
            elif base is float:
                parser.add_argument(flag, dest=f.name, type=float, default=default, help=help_)
            elif base is int:
                conv = positive_int if (optional or f.name in ("batch_size", "queue_depth")) else int
                parser.add_argument(flag, dest=f.name, type=conv, default=default, help=help_)
            elif f.metadata.get("const") is not None:  # --flag alone (its const), or --flag VALUE
                parser.add_argument(flag, dest=f.name, nargs="?", const=f.metadata["const"], default=default, help=help_)
            else:
                parser.add_argument(flag, dest=f.name, default=default, help=help_)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **extra: Any) -> SyncOptions:
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
        return cls(**{**values, **extra})


# ------------------------------------------------------------------------------------------------
_HINTS: dict[str, Any] = {}


def _hints() -> dict[str, Any]:
    if not _HINTS:
        _HINTS.update(get_type_hints(SyncOptions))
    return _HINTS


def _base(typ: Any) -> tuple[Any, bool]:
    """(the type without ``None``, whether ``None`` is allowed)."""
    if get_origin(typ) in (Union, types.UnionType):
        args = [a for a in get_args(typ) if a is not type(None)]
        return args[0], len(args) < len(get_args(typ))
    return typ, False


def _check(name: str, value: Any, typ: Any) -> None:
    base, optional = _base(typ)
    if value is None:
        if not optional:
            raise ConfigError(f"option {name} must not be empty")
        return
    if get_origin(base) is Literal:
        if value not in get_args(base):
            raise ConfigError(f"{name} must be one of {', '.join(get_args(base))}; got {value!r}")
    elif base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
    elif base is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        if optional or name in ("batch_size", "queue_depth"):
            if value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    elif base is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"{name} must be a number, got {value!r}")
    elif base is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
    elif get_origin(base) is Mapping or base is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name} must be a mapping, got {type(value).__name__}")


def _coerce(name: str, value: Any, typ: Any) -> Any:
    base, optional = _base(typ)
    if value is None or (optional and value == ""):
        return None
    if base is bool and isinstance(value, str):
        if value.strip().lower() not in _TRUE | _FALSE:
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return truthy(value)
    if base is int and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if base is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if name == "repair" and (isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() not in REPAIRS)):
        return "on" if truthy(value) else "off" if isinstance(value, bool) or value.strip().lower() in _FALSE else value
    return value


def positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {v}")
    return v
