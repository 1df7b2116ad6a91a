"""Airflow glue: a DAG factory that runs the sync engine as plan -> mapped partitions -> deletes -> report.

This is the only ``integration`` module that imports Airflow (3.x, the TaskFlow API of ``airflow.sdk``);
the rest of embedrail works without it.

```python
from integration.airflow import build_reindex_dag

dag = build_reindex_dag(
    "docs_reindex",
    source="/data/docs.jsonl",
    targets=["conn:my_es/docs", "weaviate://weaviate:8080/Docs?grpc_port=50051"],
    ledger="conn:embedrail_ledger",        # PostgreSQL when workers are spread over machines
    schedule="@hourly",                    # or Asset("file:///data/docs.jsonl") / [Asset, ...]
    partitions=4,                          # 4 mapped tasks, each embeds its share of the documents
    queue="gpu",                           # route the embedding tasks to GPU workers
)
```

Task graph (one DAG run = one ``SyncEngine`` run, split over processes):

- ``plan``: ``SyncEngine.prepare()`` — resolves model/dims, ensures the indexes (or begins the full
  rebuilds); pushes the JSON run context as XCom ``context`` (no secrets in it: targets are keyed by
  redacted URLs) and returns the partitions ``[{"index": i, "count": n}, ...]`` to map over. A user
  error (bad config, an index of another model/dims) fails it at once, without retries.
- ``sync_partition`` (mapped, one per partition): ``SyncEngine.sync_partition(i, n, ctx)`` — the
  documents whose stable hash of the id falls in partition *i*: plan against the ledger, embed, write,
  delete their stale chunks, commit the ledger. Retrying it is safe: the ledger only moves after the
  store acknowledged, so a retry does the remaining work only.
- ``delete_stale``: ``SyncEngine.delete_absent(ctx)`` — snapshot deletes (documents gone from the source).
- ``report``: ``SyncEngine.finalize(ctx, partials)`` — flushes, switches full rebuilds; its XCom
  (``return_value``) is the JSON report ``embedrail reindex --json`` prints. On success it marks one
  Asset per target as updated (``index_asset(target)``), so downstream DAGs can wait for a fresh index.
  A dry run pushes the report and ends *skipped* (no Asset event); a run where a target failed pushes
  the report and fails (no Asset event; the next run catches the target up).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from airflow.sdk import Asset, Param, dag, get_current_context, task
from airflow.sdk.definitions.xcom_arg import XComArg

from embedrail.errors import ConfigError

__all__ = [
    "CONN_PREFIX",
    "ReindexConfig",
    "TargetSpec",
    "build_dags_from_folder",
    "build_reindex_dag",
    "cached_embedder",
    "connection_to_url",
    "index_asset",
    "load_dag_config",
    "patch_airflow_for_dag_test",
    "resolve_target",
]

log = logging.getLogger("embedrail.airflow")

CONN_PREFIX = "conn:"
_ENV_RE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


# ------------------------------------------------------------------------------------------------
# The embedding model: loaded once per (worker) process, reused by every task that runs in it.
_EMBEDDERS: dict[tuple[str, int | None, str], Any] = {}
_EMBEDDERS_LOCK = threading.Lock()


def cached_embedder(name: str, dims: int | None = None, device: str = "auto", **kwargs: Any) -> Any:
    """``embed_core.Embedder.load(name, dims=..., device=...)``, cached per process by (model, dims, device).

    Every task of a DAG gets its model through this cache, so the model is loaded once per process
    that runs tasks and reused by every later task in it (``dag.test()``, executors that reuse worker
    processes). Airflow 3's Local/Celery executors start each task try in a fresh process, where it
    is then loaded once per partition task — never per batch — and not at all when nothing changed
    (the engine asks for it only to chunk or embed). To load a model once per GPU and share it
    between all tasks, run ``embedrail serve --model M --device cuda`` on the GPU node and give the
    DAG ``model="http://gpu-node:8000/v1#M"`` (remote form, key from ``EMBEDRAIL_EMBED_API_KEY``).
    Parsing a DAG file never calls this.
    """
    key = (name, dims, device)
    with _EMBEDDERS_LOCK:
        emb = _EMBEDDERS.get(key)
        if emb is None and name.startswith(("http://", "https://")):
            # a remote OpenAI-compatible server, as the CLI takes it: http://host:8000/v1#model-name
            # (the API key comes from EMBEDRAIL_EMBED_API_KEY, never from the DAG)
            from embed_core import Embedder

            base, _, remote_model = name.partition("#")
            if not remote_model:
                raise ConfigError("a remote model is given as http(s)://host:port/v1#model-name")
            emb = Embedder.remote(
                base, remote_model, dims=dims, api_key=os.environ.get("EMBEDRAIL_EMBED_API_KEY")
            )
            _EMBEDDERS[key] = emb
        if emb is None:
            from embed_core import Embedder

            log.info(
                "loading embedding model %s (dims=%s, device=%s) for this worker process",
                name,
                dims or "native",
                device,
            )
            emb = Embedder.load(name, dims=dims, device=device, **kwargs)
            _EMBEDDERS[key] = emb
        return emb


# ------------------------------------------------------------------------------------------------
# Targets: store URLs (with ${ENV} placeholders) or Airflow connections.
def expand_env(text: str, *, strict: bool = True) -> str:
    """Replace ``${VAR}`` / ``${VAR:-default}`` by the environment. Unset without default: an error
    (``strict``) or left as is."""

    def sub(m: re.Match[str]) -> str:
        value = os.environ.get(m.group("name"))
        if value:
            return value
        if m.group("default") is not None:
            return m.group("default")
        if strict:
            raise ConfigError(
                f"environment variable {m.group('name')} is not set (used in {text!r}); set it or give ${{VAR:-default}}"
            )
        return m.group(0)

    return _ENV_RE.sub(sub, text)


@dataclass(frozen=True)
class TargetSpec:
    """One target of a DAG as written by its author (no secrets are resolved at parse time).

    ``target``: a store URL (``es://h:9200/docs``, may hold ``${ENV}`` placeholders) or ``conn:ID`` /
    ``conn:ID/INDEX`` (an Airflow connection). ``index``: the index/collection name, inserted into the
    URL (or overriding the connection's). ``asset``: the URI of the Asset marked updated after a run.
    """

    target: str
    index: str | None = None
    asset: str | None = None

    @classmethod
    def of(cls, t: str | Mapping[str, Any] | TargetSpec) -> TargetSpec:
        if isinstance(t, TargetSpec):
            return t
        if isinstance(t, str):
            if not t.strip():
                raise ConfigError("empty target")
            return cls(t.strip())
        if isinstance(t, Mapping):
            unknown = set(t) - {"url", "conn", "index", "collection", "asset"}
            if unknown:
                raise ConfigError(f"unknown target key(s) {sorted(unknown)}: use url or conn, index, asset")
            if ("url" in t) == ("conn" in t):
                raise ConfigError(f"a target needs exactly one of url: or conn:, got {sorted(t)}")
            raw = str(t["url"]) if "url" in t else CONN_PREFIX + str(t["conn"]).removeprefix(CONN_PREFIX)
            index = t.get("index", t.get("collection"))
            return cls(raw, str(index) if index else None, str(t["asset"]) if t.get("asset") else None)
        raise ConfigError(f"a target is a URL string, conn:ID or a mapping, got {type(t).__name__}")

    @property
    def is_conn(self) -> bool:
        return self.target.startswith(CONN_PREFIX)

    def conn_id_and_index(self) -> tuple[str, str | None]:
        rest = self.target[len(CONN_PREFIX) :]
        conn_id, _, index = rest.partition("/")
        if not conn_id:
            raise ConfigError(f"{self.target!r}: expected conn:CONNECTION_ID or conn:CONNECTION_ID/INDEX")
        return conn_id, (self.index or index or None)


def with_index(url: str, index: str | None) -> str:
    """Put an index/collection name into a store URL (``chroma:///dir`` takes it as ``?collection=``)."""
    if not index:
        return url
    u = urlsplit(url)
    if u.scheme == "chroma":  # embedded: the path is the directory
        q = [(k, v) for k, v in parse_qsl(u.query, keep_blank_values=True) if k != "collection"]
        return f"{u.scheme}://{u.netloc}{u.path}?{urlencode([*q, ('collection', index)])}"
    path = u.path.rstrip("/") + "/" + quote(index)
    return urlunsplit((u.scheme, u.netloc, path, u.query, ""))


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


def _netloc(host: str, port: int | None, login: str | None = None, password: str | None = None) -> str:
    h = f"[{host}]" if ":" in host and not host.startswith("[") else host
    out = h + (f":{port}" if port else "")
    if login:
        auth = quote(login, safe="") + (":" + quote(password, safe="") if password else "")
        out = f"{auth}@{out}"
    return out


def _split_host(host: str | None, default_scheme: str) -> tuple[str, str, int | None]:
    """Hosts are sometimes entered as ``https://host:9200``: split such a value."""
    host = (host or "").strip()
    if "://" in host:
        u = urlsplit(host)
        return (u.scheme or default_scheme), (u.hostname or ""), u.port
    return default_scheme, host, None


def _store_kind(conn: Any) -> str:
    ctype = (getattr(conn, "conn_type", None) or "").lower()
    extra = dict(getattr(conn, "extra_dejson", None) or {})
    kind = str(extra.get("store") or ctype).lower()
    kinds = {
        "elasticsearch": "es",
        "es": "es",
        "weaviate": "weaviate",
        "chroma": "chroma",
        "chromadb": "chroma",
    }
    if kind not in kinds:
        raise ConfigError(
            f"connection {getattr(conn, 'conn_id', '?')!r} has type {ctype!r}: use an elasticsearch or weaviate "
            'connection, or a generic one with extra {"store": "chroma"} (see integration.airflow)'
        )
    return kinds[kind]


def connection_to_url(conn: Any, index: str | None = None) -> tuple[str, list[str]]:
    """Turn an Airflow connection into an embedrail store URL. Returns ``(url, secrets)``.

    - **elasticsearch** (provider ``apache-airflow-providers-elasticsearch``): host, port, schema
      (``http``/``https``), login/password; extra ``api_key`` (encoded string or ``[id, key]``),
      ``ca_certs``, ``verify_certs``, ``index``.
    - **weaviate** (provider ``apache-airflow-providers-weaviate``): host, port; extra ``http_secure``,
      ``grpc_host``, ``grpc_port`` (default 50051, or 443 with ``grpc_secure``), ``api_key`` (or
      ``token``), ``collection``.
    - **Chroma** (no provider: a ``generic`` connection with extra ``{"store": "chroma"}``, or conn type
      ``chroma``): extra ``path`` for an embedded database on the worker's disk, else host, port,
      schema (``http``/``https``); ``password`` or extra ``token`` is the auth token; extra ``tenant``,
      ``database``, ``token_header`` (``Authorization`` or ``X-Chroma-Token``), ``collection``.

    The index/collection comes from ``index`` (the ``conn:ID/INDEX`` form) or the extra.
    """
    kind = _store_kind(conn)
    extra = dict(getattr(conn, "extra_dejson", None) or {})
    secrets: list[str] = []
    login = getattr(conn, "login", None) or None
    password = getattr(conn, "password", None) or None
    port = getattr(conn, "port", None)
    conn_id = getattr(conn, "conn_id", "?")
    if password:
        secrets.append(password)
    params: dict[str, str] = {}
    if kind == "es":
        index = index or extra.get("index")
        schema = (getattr(conn, "schema", None) or "http").lower()
        scheme, host, hport = _split_host(
            getattr(conn, "host", None), schema if schema in ("http", "https") else "http"
        )
        api_key = extra.get("api_key")
        if isinstance(api_key, list | tuple) and len(api_key) == 2:
            api_key = base64.b64encode(f"{api_key[0]}:{api_key[1]}".encode()).decode()
        if api_key:
            params["api_key"] = str(api_key)
            secrets.append(str(api_key))
        for k in ("ca_certs", "verify_certs"):
            if extra.get(k) is not None:
                params[k] = str(extra[k]).lower() if isinstance(extra[k], bool) else str(extra[k])
        base = f"es+{scheme}://" if scheme == "https" else "es://"
        url = base + _netloc(host or "localhost", port or hport or 9200, login, password)
    elif kind == "weaviate":
        index = index or extra.get("collection") or extra.get("index")
        if login:
            raise ConfigError(
                f"connection {conn_id!r}: Weaviate username/password (OIDC) is not supported; use extra api_key"
            )
        secure = _truthy(extra.get("http_secure", False))
        scheme, host, hport = _split_host(getattr(conn, "host", None), "https" if secure else "http")
        grpc_secure = _truthy(extra.get("grpc_secure", False))
        params["grpc_port"] = str(extra.get("grpc_port") or (443 if grpc_secure else 50051))
        if extra.get("grpc_host"):
            params["grpc_host"] = str(extra["grpc_host"])
        key = extra.get("api_key") or extra.get("token")
        if key:
            params["api_key"] = str(key)
            secrets.append(str(key))
        base = "weaviate+https://" if scheme == "https" else "weaviate://"
        url = base + _netloc(host or "localhost", port or hport or (443 if scheme == "https" else 8080))
    else:  # chroma
        index = index or extra.get("collection") or extra.get("index")
        path = extra.get("path")
        if path:
            url = f"chroma://{Path(str(path)).expanduser().resolve()}"
            if not index:
                raise ConfigError(
                    f"connection {conn_id!r} names no collection: use conn:{conn_id}/NAME or extra collection"
                )
            return with_index(url, str(index)), list(dict.fromkeys(secrets))
        schema = (getattr(conn, "schema", None) or "http").lower()
        scheme, host, hport = _split_host(
            getattr(conn, "host", None), schema if schema in ("http", "https") else "http"
        )
        token = password or extra.get("token")
        if token:
            params["token"] = str(token)
            secrets.append(str(token))
        for k in ("tenant", "database", "token_header"):
            if extra.get(k):
                params[k] = str(extra[k])
        url = f"chroma+{scheme}://" + _netloc(host or "localhost", port or hport or 8000)
    if not index:
        raise ConfigError(
            f"connection {conn_id!r} names no index/collection: use conn:{conn_id}/NAME or extra index/collection"
        )
    url = with_index(url, str(index))
    if params:
        url += "?" + urlencode(params)
    return url, list(dict.fromkeys(secrets))


def _get_connection(conn_id: str) -> Any:
    from airflow.sdk import Connection

    return Connection.get(conn_id)


def _mask(secrets: Iterable[str]) -> None:
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - older task SDKs
        return
    for s in secrets:
        if s and len(s) >= 3:
            mask_secret(s)


def resolve_target(t: str | Mapping[str, Any] | TargetSpec) -> tuple[str, list[str]]:
    """The store URL (credentials included: use it, never log it) and its secrets, at task run time."""
    spec = TargetSpec.of(t)
    if spec.is_conn:
        conn_id, index = spec.conn_id_and_index()
        url, secrets = connection_to_url(_get_connection(conn_id), index)
    else:
        url = with_index(expand_env(spec.target), spec.index)
        secrets = _url_secrets(url)
    _mask(secrets)
    return url, secrets


def _url_secrets(url: str) -> list[str]:
    try:
        u = urlsplit(url)
    except ValueError:
        return []
    out = [u.password] if u.password else []
    from urllib.parse import unquote

    if u.password:
        out.append(unquote(u.password))
    for k, v in parse_qsl(u.query):
        if k.lower() in ("api_key", "apikey", "password", "token", "secret", "auth") and v:
            out.append(v)
    return out


def index_asset(target: str | Mapping[str, Any] | TargetSpec) -> Asset:
    """The Asset a reindex DAG marks as updated for ``target``. Use the same call in a downstream DAG:
    ``@dag(schedule=[index_asset("conn:my_es/docs")])``.

    URI: the store URL without credentials (``${ENV}`` expanded from this process's environment, no
    network), or ``embedrail+conn://CONN_ID/INDEX`` for a connection target, or the spec's ``asset``.
    """
    spec = TargetSpec.of(target)
    if spec.asset:
        return Asset(uri=spec.asset)
    if spec.is_conn:
        conn_id, index = spec.conn_id_and_index()
        return Asset(uri=f"embedrail+conn://{conn_id}/{index or ''}".rstrip("/"))
    url = with_index(expand_env(spec.target, strict=False), spec.index)
    from integration.engine import redact_url

    return Asset(uri=redact_url(url))


# ------------------------------------------------------------------------------------------------
# Ledger: a SQLAlchemy URL, an Airflow connection, or a SQLite file under AIRFLOW_HOME.
def resolve_ledger(ledger: str | None) -> tuple[str, list[str]]:
    """The ledger's SQLAlchemy URL at task run time, and its secrets.

    ``None``: ``$EMBEDRAIL_LEDGER`` (as for the CLI) or ``sqlite:///$AIRFLOW_HOME/embedrail/ledger.sqlite`` (one
    machine). ``conn:ID``: an Airflow connection (postgres/mysql/sqlite types; extra
    ``sqlalchemy_scheme`` e.g. ``postgresql+psycopg`` picks the driver). Anything else: a SQLAlchemy URL
    (``${ENV}`` placeholders are expanded).
    """
    if not ledger:
        env = os.environ.get("EMBEDRAIL_LEDGER") or os.environ.get("EMBEDRAIL_LEDGER_URL")
        if env:
            return env, _url_secrets(env)
        home = Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")
        (home / "embedrail").mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{home / 'embedrail' / 'ledger.sqlite'}", []
    if ledger.startswith(CONN_PREFIX):
        conn = _get_connection(ledger[len(CONN_PREFIX) :])
        ctype = (conn.conn_type or "").lower()
        extra = dict(conn.extra_dejson or {})
        if ctype == "sqlite":
            return f"sqlite:///{conn.host}", []
        scheme = extra.get("sqlalchemy_scheme") or {
            "postgres": "postgresql",
            "postgresql": "postgresql",
            "mysql": "mysql",
        }.get(ctype)
        if not scheme:
            raise ConfigError(
                f"ledger connection {conn.conn_id!r} of type {ctype!r}: use postgres, mysql or sqlite (or extra sqlalchemy_scheme)"
            )
        url = f"{scheme}://{_netloc(conn.host or 'localhost', conn.port, conn.login, conn.password)}/{conn.schema or ''}"
        secrets = [conn.password] if conn.password else []
        _mask(secrets)
        return url, secrets
    url = expand_env(ledger)
    secrets = _url_secrets(url)
    _mask(secrets)
    return url, secrets


# ------------------------------------------------------------------------------------------------
def _scrub(obj: Any, secrets: Sequence[str]) -> Any:
    """Remove any literal secret from a JSON-able value (defence in depth: XComs must hold none)."""
    secrets = [s for s in secrets if s and len(s) >= 3]
    if not secrets:
        return obj
    if isinstance(obj, str):
        for s in secrets:
            obj = obj.replace(s, "***")
        return obj
    if isinstance(obj, Mapping):
        return {_scrub(k, secrets): _scrub(v, secrets) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_scrub(v, secrets) for v in obj]
    return obj


@dataclass
class ReindexConfig:
    """Everything a task needs to build its ``SyncEngine`` (kept in the DAG file's closure, never in
    XComs or rendered task arguments)."""

    source: Any
    targets: list[TargetSpec]
    model: str | None = None
    dims: int | None = None
    ledger: str | None = None
    device: str = "auto"
    deletes: str = "auto"
    chunk_tokens: int | None = None
    chunk_overlap: int = 0
    batch_size: int = 64
    on_bad_row: str = "skip"
    source_options: dict[str, Any] = field(default_factory=dict)
    allow_empty_source: bool = False
    connect: Callable[[str], Any] | None = None
    embedder_factory: Callable[..., Any] | None = None

    def engine(self, *, mode: str, dims: int | None, dry_run: bool) -> tuple[Any, list[str]]:
        from integration.engine import SyncEngine

        urls, secrets = [], []
        for t in self.targets:
            url, s = resolve_target(t)
            urls.append(url)
            secrets += s
        ledger, s = resolve_ledger(self.ledger)
        secrets += s
        source = expand_env(self.source) if isinstance(self.source, str) else self.source

        def connect(url: str) -> Any:
            if self.connect is not None:
                return self.connect(url)
            from connectors import connect as _connect

            return _connect(url)

        engine = SyncEngine(
            source,
            urls,
            model=self.model,
            dims=dims,
            ledger=ledger,
            device=self.device,
            mode=mode,
            deletes=self.deletes,
            dry_run=dry_run,
            chunk_tokens=self.chunk_tokens,
            chunk_overlap=self.chunk_overlap,
            batch_size=self.batch_size,
            on_bad_row=self.on_bad_row,
            source_options=dict(self.source_options) or None,
            allow_empty_source=self.allow_empty_source,
            progress=False,
            connect=connect,
            embedder_factory=self.embedder_factory or cached_embedder,
        )
        return engine, secrets


@contextmanager
def _no_retry_for_user_errors(secrets: Sequence[str] = ()) -> Iterator[None]:
    """A user error (bad config, an index of another model/dims, a dims limit, bad input) fails the task
    at once with its one-line message: retrying cannot fix it. A store that is down stays retryable."""
    from embedrail.errors import (
        DimensionLimitError,
        IndexMismatchError,
        InputError,
        ModelError,
        RemoteEmbeddingError,
    )

    try:
        yield
    except (ConfigError, InputError, IndexMismatchError, DimensionLimitError, ModelError) as e:
        if isinstance(e, RemoteEmbeddingError):
            raise
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(_scrub(f"{type(e).__name__}: {e}", secrets)) from None


def _param_dims(value: Any) -> int | None:
    if value in (None, "", 0, "0"):
        return None
    try:
        dims = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"param dims must be a positive integer or empty, got {value!r}") from None
    if dims <= 0:
        raise ConfigError(f"param dims must be a positive integer or empty, got {value!r}")
    return dims


def _asset_extra(report: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {
        "target": key,
        "model": report.get("model"),
        "dims": report.get("dims"),
        "fingerprint": report.get("fingerprint"),
        "mode": report.get("mode"),
        "upserted": report.get("upserted", {}).get(key, 0),
        "deleted": report.get("deleted", {}).get(key, 0),
        "documents": report.get("documents"),
    }


def build_reindex_dag(
    dag_id: str,
    *,
    source: Any,
    targets: Sequence[str | Mapping[str, Any] | TargetSpec],
    model: str | None = None,
    dims: int | None = None,
    ledger: str | None = None,
    schedule: Any = None,
    partitions: int = 1,
    mode: str = "incremental",
    dry_run: bool = False,
    deletes: str = "auto",
    device: str = "auto",
    chunk_tokens: int | None = None,
    chunk_overlap: int = 0,
    batch_size: int = 64,
    on_bad_row: str = "skip",
    source_options: Mapping[str, Any] | None = None,
    allow_empty_source: bool = False,
    queue: str | None = None,
    pool: str | None = None,
    pool_slots: int = 1,
    executor_config: Mapping[str, Any] | None = None,
    embed_task_options: Mapping[str, Any] | None = None,
    retries: int = 2,
    retry_delay: timedelta | float = timedelta(seconds=30),
    max_active_tis_per_dag: int | None = None,
    outlets: Sequence[Asset] | None = None,
    tags: Sequence[str] = ("embedrail",),
    start_date: Any = None,
    catchup: bool = False,
    default_args: Mapping[str, Any] | None = None,
    description: str | None = None,
    connect: Callable[[str], Any] | None = None,
    embedder_factory: Callable[..., Any] | None = None,
    **dag_kwargs: Any,
) -> Any:
    """Build an Airflow DAG that keeps ``targets`` in step with ``source`` (see the module doc).

    ``source``/``targets`` take the CLI's strings; a target may also be ``conn:CONN_ID[/INDEX]`` (an Airflow
    connection, see ``connection_to_url``) or ``{"url"|"conn": ..., "index": ..., "asset": ...}``;
    ``${ENV}`` placeholders are expanded when a task runs. ``ledger``: a SQLAlchemy URL, ``conn:ID``, or
    ``None`` (SQLite under ``$AIRFLOW_HOME/embedrail``, one machine only). ``schedule``: a cron string,
    ``None``, an ``Asset`` or a list of Assets (the source was updated). ``partitions``: how many mapped
    embedding tasks (each embeds the documents whose stable hash of the id falls in its share).

    GPU routing: ``queue`` (Celery / CeleryKubernetes queue), ``pool``/``pool_slots`` (limit concurrent
    model users per GPU), ``executor_config`` (e.g. a Kubernetes pod override requesting
    ``nvidia.com/gpu``) and ``embed_task_options`` (any other operator argument) apply to the
    embedding tasks (``sync_partition``) only; ``plan``/``delete_stale``/``report`` stay on default workers.

    Params a person can set when triggering: ``mode`` (incremental|full), ``dims``, ``dry_run``,
    ``partitions``. Parsing builds only the task graph: no model load, no network, no connection lookup.
    """
    if not targets:
        raise ConfigError(f"{dag_id}: at least one target is needed")
    if partitions < 1:
        raise ConfigError(f"{dag_id}: partitions must be >= 1, got {partitions}")
    if mode not in ("incremental", "full"):
        raise ConfigError(f"{dag_id}: mode must be incremental or full, got {mode!r}")
    specs = [TargetSpec.of(t) for t in targets]
    cfg = ReindexConfig(
        source=source,
        targets=specs,
        model=model,
        dims=dims,
        ledger=ledger,
        device=device,
        deletes=deletes,
        chunk_tokens=chunk_tokens,
        chunk_overlap=chunk_overlap,
        batch_size=batch_size,
        on_bad_row=on_bad_row,
        source_options=dict(source_options or {}),
        allow_empty_source=allow_empty_source,
        connect=connect,
        embedder_factory=embedder_factory,
    )
    assets = list(outlets) if outlets is not None else [index_asset(s) for s in specs]
    if start_date is None:
        from airflow.sdk import timezone

        start_date = timezone.datetime(2024, 1, 1)
    if isinstance(schedule, Asset):
        schedule = [schedule]
    delay = retry_delay if isinstance(retry_delay, timedelta) else timedelta(seconds=float(retry_delay))
    args = {"retries": retries, "retry_delay": delay, **dict(default_args or {})}
    params = {
        "mode": Param(mode, type="string", enum=["incremental", "full"],
                      description="incremental: embed what changed; full: build a new index and switch to it"),
        "dims": Param(dims, type=["null", "integer"], minimum=1,
                      description="vector dimensions (empty: what the index records, else the model's native size)"),
        "dry_run": Param(bool(dry_run), type="boolean", description="plan only: embed and write nothing"),
        "partitions": Param(partitions, type="integer", minimum=1, maximum=1024,
                            description="number of parallel embedding tasks"),
    }  # fmt: skip
    embed_opts: dict[str, Any] = {"pool_slots": pool_slots}
    if queue:
        embed_opts["queue"] = queue
    if pool:
        embed_opts["pool"] = pool
    if executor_config:
        embed_opts["executor_config"] = dict(executor_config)
    if max_active_tis_per_dag:
        embed_opts["max_active_tis_per_dag"] = max_active_tis_per_dag
    embed_opts.update(embed_task_options or {})
    doc = (
        description
        or f"embedrail: keep {', '.join(a.uri for a in assets)} in step with {_describe_source(source)}"
    )

    @dag(
        dag_id=dag_id,
        schedule=schedule,
        start_date=start_date,
        catchup=catchup,
        params=params,
        default_args=args,
        tags=list(tags),
        description=doc[:1000],
        doc_md=__doc__,
        **dag_kwargs,
    )
    def reindex() -> None:
        @task(multiple_outputs=False)
        def plan() -> list[dict[str, int]]:
            """SyncEngine.prepare(): model/dims resolved, indexes ensured or full rebuilds begun."""
            p = get_current_context()["params"]
            n = int(p.get("partitions") or partitions)
            with _no_retry_for_user_errors():
                engine, secrets = cfg.engine(mode=str(p.get("mode") or mode), dims=_param_dims(p.get("dims")),
                                             dry_run=_truthy(p.get("dry_run")))  # fmt: skip
            with engine, _no_retry_for_user_errors(secrets):
                ctx = engine.prepare()
            ctx = _scrub(ctx, secrets)
            log.info("embedrail plan: mode=%s model=%s dims=%s partitions=%d targets=%s%s", ctx["mode"], ctx["model"],
                     ctx["dims"], n, [t["key"] for t in ctx["targets"]], " (dry run)" if ctx["dry_run"] else "")  # fmt: skip
            for note in ctx.get("notes", []):
                log.info("embedrail: %s", note)
            get_current_context()["ti"].xcom_push(key="context", value=ctx)
            return [{"index": i, "count": n} for i in range(n)]

        @task(multiple_outputs=False, **embed_opts)
        def sync_partition(index: int, count: int, context: dict[str, Any]) -> dict[str, Any]:
            """SyncEngine.sync_partition(index, count, ctx): embed and write this share of the documents."""
            engine, secrets = cfg.engine(
                mode=context["mode"], dims=context["dims"], dry_run=context["dry_run"]
            )
            with engine, _no_retry_for_user_errors(secrets):
                part = engine.sync_partition(int(index), int(count), context)
            log.info("embedrail partition %d/%d: %d documents, embedded %d, upserted %s, deleted %s, failed %s",
                     index, count, part["documents"], part["embedded"], part["upserted"], part["deleted"], part["failed"])  # fmt: skip
            return _scrub(part, secrets)

        @task(multiple_outputs=False)
        def delete_stale(context: dict[str, Any]) -> dict[str, Any]:
            """SyncEngine.delete_absent(ctx): remove documents the source no longer has (snapshot deletes)."""
            engine, secrets = cfg.engine(
                mode=context["mode"], dims=context["dims"], dry_run=context["dry_run"]
            )
            with engine, _no_retry_for_user_errors(secrets):
                rep = engine.delete_absent(context)
            log.info("embedrail deletes: %s", rep["deleted"])
            return _scrub(rep, secrets)

        @task(outlets=assets, multiple_outputs=False)
        def report(
            context: dict[str, Any], partials: list[dict[str, Any]], deleted: dict[str, Any]
        ) -> dict[str, Any]:
            """SyncEngine.finalize(ctx, partials): the run report (the CLI's --json), Asset events on success."""
            from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

            engine, secrets = cfg.engine(
                mode=context["mode"], dims=context["dims"], dry_run=context["dry_run"]
            )
            with engine, _no_retry_for_user_errors(secrets):
                rep = engine.finalize(context, [*list(partials), deleted])
            rep = _scrub(rep, secrets)
            from integration.report import Report

            for line in Report.from_dict(rep).summary().splitlines():
                log.info("embedrail: %s", line)
            ac = get_current_context()
            if rep.get("dry_run") or not rep.get("ok"):
                ac["ti"].xcom_push(key="return_value", value=rep)
                if rep.get("dry_run"):
                    raise AirflowSkipException("dry run: nothing was written; the report is this task's XCom")
                failed = ", ".join(f"{t} ({rep['errors'].get(t) or str(rep['failed'].get(t, 0)) + ' failures'})"
                                   for t in Report.from_dict(rep).failed_targets())  # fmt: skip
                raise AirflowFailException(f"sync incomplete for {failed}; the next run catches up")
            keys = [t["key"] for t in context["targets"]]
            events = ac.get("outlet_events")
            if events is not None and outlets is None:
                for asset, key in zip(assets, keys, strict=True):
                    events[asset].extra = _asset_extra(rep, key)
            return rep

        shares = plan()  # return value: [{"index": i, "count": n}, ...]; the run context under key "context"
        context = XComArg(shares.operator, key="context")
        parts = sync_partition.partial(context=context).expand_kwargs(shares)
        dele = delete_stale(context)
        parts >> dele
        report(context, parts, dele)

    return reindex()


def _describe_source(source: Any) -> str:
    if isinstance(source, str):
        from integration.engine import redact_url

        return redact_url(source) if "://" in source else source
    return type(source).__name__


# ------------------------------------------------------------------------------------------------
_KEEP_ALIVE: list[Any] = []


def patch_airflow_for_dag_test() -> list[str]:
    """Only for Airflow 3.2.x (the lock uses 3.3, which needs none of this). Work around two defects of
    Airflow 3.2.2 with current pydantic/svcs that stop ``dag.test()`` (which
    runs the task execution API in-process) from running any task. Call it once before the first
    ``dag.test()``; each fix is a no-op when not needed. Returns the names of the fixes applied.

    1. ``TIStateUpdate`` passes a bare callable as ``Field(discriminator=...)``, which every pydantic 2.x
       rejects ("needs a discriminator field"): rebound to ``Discriminator(callable)``.
    2. ``InProcessExecutionAPI.transport`` enters the app's lifespan in an exit stack that dies with the
       short-lived ``InProcessExecutionAPI`` object; the loop then finalises the lifespan generator and
       svcs >= 26.2 removes its registry from the app ("'State' object has no attribute
       'svcs_registry'"). The exit stack is now kept alive (and the lifespan awaited before use).

    Parsing DAG files needs neither (nor imports the modules involved); a deployed API server is not
    affected by the second defect.
    """
    import sys
    import typing
    from functools import cached_property

    applied: list[str] = []
    try:
        from airflow.api_fastapi.execution_api.datamodels import taskinstance as m
        from pydantic import Discriminator
        from pydantic.fields import FieldInfo
    except ImportError:  # pragma: no cover - other Airflow layouts
        return applied
    args = typing.get_args(getattr(m, "TIStateUpdate", None))
    if len(args) == 2 and isinstance(args[1], FieldInfo):
        disc = args[1].discriminator
        if callable(disc) and not isinstance(disc, Discriminator):
            if "airflow.api_fastapi.execution_api.routes.task_instances" in sys.modules:
                raise RuntimeError(
                    "patch_airflow_for_dag_test() must run before the execution API is imported"
                )
            m.TIStateUpdate = typing.Annotated[args[0], Discriminator(disc)]  # type: ignore[attr-defined]
            applied.append("TIStateUpdate discriminator")
    from airflow.api_fastapi.execution_api import app as app_mod

    base = app_mod.InProcessExecutionAPI
    if not getattr(base, "_embedrail_lifespan_wait", False):

        class InProcessExecutionAPI(base):  # type: ignore[misc, valid-type]
            """The same, but ``transport`` waits until the app's lifespan has started."""

            _embedrail_lifespan_wait = True

            @cached_property
            def transport(self) -> Any:
                # building the versioned app takes seconds: one app, lifespan and transport per process
                if _KEEP_ALIVE:
                    return _KEEP_ALIVE[0]
                import asyncio
                from contextlib import AsyncExitStack

                import httpx
                from a2wsgi import ASGIMiddleware

                middleware = ASGIMiddleware(self.app)

                async def start_lifespan(cm: AsyncExitStack, app: Any) -> None:
                    await cm.enter_async_context(app.router.lifespan_context(app))

                self._cm = AsyncExitStack()
                fut = asyncio.run_coroutine_threadsafe(start_lifespan(self._cm, self.app), middleware.loop)
                fut.result(timeout=120)
                transport = httpx.WSGITransport(app=middleware)
                _KEEP_ALIVE.extend([transport, self._cm])  # see fix 2 above
                return transport

        app_mod.InProcessExecutionAPI = InProcessExecutionAPI
        applied.append("in-process execution API lifespan wait")
    return applied


# ------------------------------------------------------------------------------------------------
# YAML configs: one DAG per file in dags/configs/.
_YAML_KEYS = {
    "dag_id", "source", "targets", "model", "dims", "ledger", "schedule", "partitions", "mode", "dry_run",
    "deletes", "device", "chunk_tokens", "chunk_overlap", "batch_size", "on_bad_row", "source_options",
    "allow_empty_source", "queue", "pool", "pool_slots", "executor_config", "embed_task_options", "retries",
    "retry_delay", "max_active_tis_per_dag", "tags", "description", "max_active_runs", "catchup",
}  # fmt: skip


def _schedule_from_yaml(value: Any) -> Any:
    """``"@daily"``/cron/None, or ``{assets: [uri, ...]}`` (run when any of them is updated; ``all: true``
    waits for all)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and set(value) <= {"assets", "all"} and value.get("assets"):
        uris = value["assets"]
        uris = [uris] if isinstance(uris, str) else list(uris)
        assets = [Asset(uri=str(u)) for u in uris]
        if len(assets) == 1:
            return assets
        if value.get("all"):
            return assets
        from functools import reduce

        return reduce(lambda a, b: a | b, assets)
    raise ConfigError(f"schedule must be a cron string, null or {{assets: [uri, ...]}}, got {value!r}")


def load_dag_config(path: str | Path) -> dict[str, Any]:
    """Read one YAML config into ``build_reindex_dag`` keyword arguments (no network, no model)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping of settings")
    unknown = set(data) - _YAML_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {sorted(unknown)}; known: {sorted(_YAML_KEYS)}")
    for k in ("source", "targets"):
        if not data.get(k):
            raise ConfigError(f"{path}: {k} is required")
    cfg = dict(data)
    cfg.setdefault("dag_id", f"embedrail_{re.sub(r'[^A-Za-z0-9_]+', '_', path.stem)}")
    targets = cfg["targets"]
    cfg["targets"] = [targets] if isinstance(targets, str | Mapping) else list(targets)
    cfg["schedule"] = _schedule_from_yaml(cfg.get("schedule"))
    if "tags" in cfg:
        cfg["tags"] = ["embedrail", *[t for t in cfg["tags"] if t != "embedrail"]]
    return cfg


def build_dags_from_folder(folder: str | Path) -> dict[str, Any]:
    """One DAG per ``*.yaml``/``*.yml`` in ``folder`` (sorted), keyed by dag_id."""
    folder = Path(folder)
    out: dict[str, Any] = {}
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        cfg = load_dag_config(path)
        dag_id = cfg.pop("dag_id")
        if dag_id in out:
            raise ConfigError(f"{path}: dag_id {dag_id!r} is used by another config")
        out[dag_id] = build_reindex_dag(dag_id, **cfg)
    return out
