"""Airflow connections -> embedrail URLs (the provider "hook" role), ``${ENV}`` placeholders, target
specs and the ledger URL. Resolved when a task runs, never while a DAG file is parsed; every secret
found is registered with Airflow's log masker.

Store connection types, one function each (``CONNECTION_TYPES``):

- **elasticsearch** (provider ``apache-airflow-providers-elasticsearch``): host, port, schema
  (``http``/``https``), login/password; extra ``api_key`` (encoded string or ``[id, key]``),
  ``ca_certs``, ``verify_certs``, ``index``.
- **weaviate** (provider ``apache-airflow-providers-weaviate``): host, port; extra ``http_secure``,
  ``grpc_host``, ``grpc_port`` (default 50051, or 443 with ``grpc_secure``), ``api_key`` (or ``token``),
  ``collection``.
- **Chroma** (conn type ``embedrail_chroma``, registered by embedrail's provider entry point; also a
  ``generic`` connection with extra ``{"store": "chroma"}``): extra ``path`` for an embedded database on
  the worker's disk, else host, port, schema (``http``/``https``); ``password`` or extra ``token`` is the
  auth token; extra ``tenant``, ``database``, ``token_header`` (``Authorization`` or ``X-Chroma-Token``),
  ``collection``.
- **opensearch**, **qdrant**, **postgres** (pgvector): the official providers' connection types.
- **embedrail_store** (embedrail's): any of the above by extra ``store`` (``es``, ``opensearch``,
  ``weaviate``, ``qdrant``, ``chroma``, ``pgvector``), with that store's fields.

A target (or a ledger) written without ``://`` is a connection id: ``my_es/docs`` is ``conn:my_es/docs``.

A file source in a bucket names its connection in the URL, ``s3://bucket/docs?conn_id=aws_docs``
(:func:`resolve_source`): **aws** (login / password = access key / secret, extra ``aws_session_token``,
``endpoint_url`` (or ``service_config: {s3: {endpoint_url}}``), ``region_name``), **google_cloud_platform**
(extra ``key_path`` or ``keyfile_dict``, ``project``), **wasb** / **azure_data_lake** (login = account name,
password = account key; extra ``connection_string``, ``sas_token``), or any connection whose extra is the
filesystem's own storage options.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from embedrail.errors import ConfigError
from embedrail.integration.options import truthy
from embedrail.integration.targets import Target
from embedrail.secrets import url_secrets

__all__ = ["CONNECTION_TYPES", "CONN_PREFIX", "TargetSpec", "connection_to_url", "expand_env", "mask_secrets",
           "resolve_ledger", "resolve_source", "resolve_target", "storage_options", "with_index"]  # fmt: skip

CONN_PREFIX = "conn:"
_ENV_RE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


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
            raise ConfigError(f"environment variable {m.group('name')} is not set (used in {text!r}); set it or give ${{VAR:-default}}")
        return m.group(0)

    return _ENV_RE.sub(sub, text)


@dataclass(frozen=True)
class TargetSpec:
    """One target of a DAG as written by its author (no secrets are resolved at parse time).

    ``target``: a store URL (``es://h:9200/docs``, may hold ``${ENV}`` placeholders) or ``conn:ID`` /
    ``conn:ID/INDEX`` (an Airflow connection); ``…#dims=N`` gives its dims. ``index``: the index/collection
    name, inserted into the URL (or overriding the connection's). ``asset``: the URI of the Asset marked
    updated after a run. ``dims``: this target's own dimension (Matryoshka models; default: the run's).
    """

    target: str
    index: str | None = None
    asset: str | None = None
    dims: int | None = None

    @classmethod
    def of(cls, t: str | Mapping[str, Any] | TargetSpec) -> TargetSpec:
        """From a store URL, ``conn:ID[/INDEX]``, a bare connection id ``ID[/INDEX]`` (no ``://``), a mapping
        (``url:`` or ``conn:``, ``index:``, ``asset:``, ``dims:``) or a ``TargetSpec``."""
        if isinstance(t, TargetSpec):
            return t
        if isinstance(t, str):
            if not t.strip():
                raise ConfigError("empty target")
            target = Target.of(_conn_or_url(t.strip()))
            return cls(str(target.target), dims=target.dims)
        if isinstance(t, Mapping):
            unknown = set(t) - {"url", "conn", "index", "collection", "asset", "dims"}
            if unknown:
                raise ConfigError(f"unknown target key(s) {sorted(unknown)}: use url or conn, index, asset, dims")
            if ("url" in t) == ("conn" in t):
                raise ConfigError(f"a target needs exactly one of url: or conn:, got {sorted(t)}")
            raw = _conn_or_url(str(t["url"])) if "url" in t else CONN_PREFIX + str(t["conn"]).removeprefix(CONN_PREFIX)
            target = Target.of({"url": raw, "dims": t.get("dims")})
            index = t.get("index", t.get("collection"))
            return cls(str(target.target), str(index) if index else None, str(t["asset"]) if t.get("asset") else None, target.dims)
        raise ConfigError(f"a target is a URL string, conn:ID or a mapping, got {type(t).__name__}")

    @property
    def is_conn(self) -> bool:
        return self.target.startswith(CONN_PREFIX)

    def conn_id_and_index(self) -> tuple[str, str | None]:
        conn_id, _, index = self.target[len(CONN_PREFIX) :].partition("/")
        if not conn_id:
            raise ConfigError(f"{self.target!r}: expected conn:CONNECTION_ID or conn:CONNECTION_ID/INDEX")
        return conn_id, (self.index or index or None)


def _conn_or_url(text: str) -> str:
    """``conn:ID...`` for a bare connection id (no ``://``, no ``${ENV}`` placeholder), else the text."""
    if text.startswith(CONN_PREFIX) or "://" in text or "${" in text:
        return text
    return CONN_PREFIX + text


def with_index(url: str, index: str | None) -> str:
    """Put an index/collection name into a store URL (``chroma:///dir`` takes it as ``?collection=``)."""
    if not index:
        return url
    u = urlsplit(url)
    if u.scheme in ("chroma", "qdrant") and not u.netloc or u.scheme.split("+")[0] in ("pgvector", "postgresql", "postgres"):
        key = "table" if u.scheme.split("+")[0] in ("pgvector", "postgresql", "postgres") else "collection"  # embedded Chroma: the path is the directory;
        q = [(k, v) for k, v in parse_qsl(u.query, keep_blank_values=True) if k != key]  # pgvector: the database
        return f"{u.scheme}://{u.netloc}{u.path}?{urlencode([*q, (key, index)])}"
    return urlunsplit((u.scheme, u.netloc, u.path.rstrip("/") + "/" + quote(index), u.query, ""))


# ------------------------------------------------------------------------------------------------
# One function per store connection type: (connection, its extra) -> (URL without index, params, secrets, index)
_Mapped = tuple[str, dict[str, str], list[str], str | None]


def _netloc(host: str, port: int | None, login: str | None = None, password: str | None = None) -> str:
    h = f"[{host}]" if ":" in host and not host.startswith("[") else host
    out = h + (f":{port}" if port else "")
    if login:
        out = quote(login, safe="") + (":" + quote(password, safe="") if password else "") + "@" + out
    return out


def _host(conn: Any, default_scheme: str) -> tuple[str, str, int | None]:
    """(scheme, host, port): hosts are sometimes entered as ``https://host:9200``."""
    host = (getattr(conn, "host", None) or "").strip()
    if "://" in host:
        u = urlsplit(host)
        return (u.scheme or default_scheme), (u.hostname or ""), u.port
    return default_scheme, host, None


def _http_scheme(conn: Any) -> str:
    schema = (getattr(conn, "schema", None) or "http").lower()
    return schema if schema in ("http", "https") else "http"


def _elasticsearch(conn: Any, extra: dict[str, Any]) -> _Mapped:
    scheme, host, hport = _host(conn, _http_scheme(conn))
    params: dict[str, str] = {}
    secrets = [conn.password] if getattr(conn, "password", None) else []
    api_key = extra.get("api_key")
    if isinstance(api_key, list | tuple) and len(api_key) == 2:
        api_key = base64.b64encode(f"{api_key[0]}:{api_key[1]}".encode()).decode()
    if api_key:
        params["api_key"] = str(api_key)
        secrets.append(str(api_key))
    for k in ("ca_certs", "verify_certs"):
        if extra.get(k) is not None:
            params[k] = str(extra[k]).lower() if isinstance(extra[k], bool) else str(extra[k])
    netloc = _netloc(host or "localhost", getattr(conn, "port", None) or hport or 9200, getattr(conn, "login", None) or None,
                     getattr(conn, "password", None) or None)  # fmt: skip
    return ("es+https://" if scheme == "https" else "es://") + netloc, params, secrets, extra.get("index")


def _weaviate(conn: Any, extra: dict[str, Any]) -> _Mapped:
    if getattr(conn, "login", None):
        raise ConfigError(f"connection {conn.conn_id!r}: Weaviate username/password (OIDC) is not supported; use extra api_key")
    scheme, host, hport = _host(conn, "https" if truthy(extra.get("http_secure", False)) else "http")
    params = {"grpc_port": str(extra.get("grpc_port") or (443 if truthy(extra.get("grpc_secure", False)) else 50051))}
    if extra.get("grpc_host"):
        params["grpc_host"] = str(extra["grpc_host"])
    secrets = []
    key = extra.get("api_key") or extra.get("token")
    if key:
        params["api_key"] = str(key)
        secrets.append(str(key))
    netloc = _netloc(host or "localhost", getattr(conn, "port", None) or hport or (443 if scheme == "https" else 8080))
    return ("weaviate+https://" if scheme == "https" else "weaviate://") + netloc, params, secrets, extra.get("collection") or extra.get("index")


def _chroma(conn: Any, extra: dict[str, Any]) -> _Mapped:
    index = extra.get("collection") or extra.get("index")
    if extra.get("path"):  # an embedded database on the worker's disk
        return f"chroma://{Path(str(extra['path'])).expanduser().resolve()}", {}, [], index
    scheme, host, hport = _host(conn, _http_scheme(conn))
    params: dict[str, str] = {}
    secrets: list[str] = []
    token = getattr(conn, "password", None) or extra.get("token")
    if token:
        params["token"] = str(token)
        secrets.append(str(token))
    for k in ("tenant", "database", "token_header"):
        if extra.get(k):
            params[k] = str(extra[k])
    return f"chroma+{scheme}://" + _netloc(host or "localhost", getattr(conn, "port", None) or hport or 8000), params, secrets, index


def _opensearch(conn: Any, extra: dict[str, Any]) -> _Mapped:
    """The official opensearch provider's connection (host, port, login/password; extra use_ssl,
    verify_certs, ca_certs) -> an OpenSearch index URL."""
    ssl = truthy(extra.get("use_ssl", False)) or (getattr(conn, "schema", None) or "").lower() == "https"
    scheme, host, hport = _host(conn, "https" if ssl else "http")
    params = {k: (str(extra[k]).lower() if isinstance(extra[k], bool) else str(extra[k]))
              for k in ("ca_certs", "verify_certs") if extra.get(k) is not None}  # fmt: skip
    password = getattr(conn, "password", None) or None
    netloc = _netloc(host or "localhost", getattr(conn, "port", None) or hport or 9200, getattr(conn, "login", None) or None, password)
    return ("opensearch+https://" if scheme == "https" else "opensearch://") + netloc, params, [password] if password else [], extra.get("index")


def _qdrant(conn: Any, extra: dict[str, Any]) -> _Mapped:
    """The official qdrant provider's connection (host, port, password or extra api_key; extra grpc_port,
    prefer_grpc, https) -> a Qdrant collection URL; extra ``path`` -> embedded local mode."""
    index = extra.get("collection") or extra.get("index")
    if extra.get("path"):
        return f"qdrant://{Path(str(extra['path'])).expanduser().resolve()}", {}, [], index
    https = truthy(extra.get("https", False))
    scheme, host, hport = _host(conn, "https" if https else "http")
    params = {k: (str(extra[k]).lower() if isinstance(extra[k], bool) else str(extra[k]))
              for k in ("grpc_port", "prefer_grpc") if extra.get(k) is not None}  # fmt: skip
    key = extra.get("api_key") or getattr(conn, "password", None)
    if key:
        params["api_key"] = str(key)
    netloc = _netloc(host or "localhost", getattr(conn, "port", None) or hport or 6333)
    return ("qdrant+https://" if scheme == "https" else "qdrant://") + netloc, params, [str(key)] if key else [], index


def _postgres(conn: Any, extra: dict[str, Any]) -> _Mapped:
    """The official postgres provider's connection (schema = the database) -> a pgvector table URL."""
    params = {k: str(extra[k]) for k in ("sslmode", "connect_timeout") if extra.get(k)}
    if extra.get("pg_schema"):
        params["schema"] = str(extra["pg_schema"])
    password = getattr(conn, "password", None) or None
    netloc = _netloc(getattr(conn, "host", None) or "localhost", getattr(conn, "port", None) or 5432,
                     getattr(conn, "login", None) or None, password)  # fmt: skip
    db = getattr(conn, "schema", None) or "postgres"
    return f"pgvector://{netloc}/{quote(db)}", params, [password] if password else [], extra.get("table") or extra.get("index")


#: connection type (or extra ``store``) -> how it maps to a store URL
CONNECTION_TYPES: dict[str, Callable[[Any, dict[str, Any]], _Mapped]] = {
    "elasticsearch": _elasticsearch,
    "es": _elasticsearch,
    "weaviate": _weaviate,
    "chroma": _chroma,
    "chromadb": _chroma,
    "opensearch": _opensearch,
    "qdrant": _qdrant,
    "postgres": _postgres,
    "postgresql": _postgres,
    "pgvector": _postgres,
    "embedrail_chroma": _chroma,  # embedrail's own connection type (no Chroma provider exists)
}


def connection_to_url(conn: Any, index: str | None = None, *, fallback_index: str | None = None) -> tuple[str, list[str]]:
    """Turn an Airflow connection into an embedrail store URL. Returns ``(url, secrets)``. The
    index/collection comes from ``index`` (the ``conn:ID/INDEX`` form), else the connection's extra, else
    ``fallback_index`` (a name to reach the server with, e.g. to test the connection)."""
    ctype = (getattr(conn, "conn_type", None) or "").lower()
    extra = _extra(conn, ctype)
    kind = str(extra.get("store") or ctype).lower()
    mapper = CONNECTION_TYPES.get(kind)
    conn_id = getattr(conn, "conn_id", "?")
    if mapper is None:
        raise ConfigError(f"connection {conn_id!r} has type {ctype!r}: use an elasticsearch, opensearch, weaviate, qdrant, postgres "
                          "(pgvector) or embedrail_chroma connection, or an embedrail_store (or generic) one with extra store "
                          "(es, opensearch, weaviate, qdrant, chroma, pgvector)")  # fmt: skip
    url, params, secrets, default_index = mapper(conn, extra)
    index = index or default_index or fallback_index
    if not index:
        raise ConfigError(f"connection {conn_id!r} names no index/collection: use conn:{conn_id}/NAME or extra index/collection")
    if params:
        url += "?" + urlencode(params)
    url = with_index(url, str(index))
    return url, list(dict.fromkeys(secrets))


def _extra(conn: Any, ctype: str) -> dict[str, Any]:
    """The connection's extra, with form fields stored as ``extra__TYPE__NAME`` read as ``NAME``."""
    extra = dict(getattr(conn, "extra_dejson", None) or {})
    prefix = f"extra__{ctype}__"
    for k in [k for k in extra if k.startswith(prefix)]:
        value = extra.pop(k)
        if value not in (None, ""):
            extra.setdefault(k[len(prefix) :], value)
    return {k: v for k, v in extra.items() if v not in (None, "")}


# ------------------------------------------------------------------------------------------------
def _get_connection(conn_id: str) -> Any:
    from airflow.sdk import Connection

    return Connection.get(conn_id)


def mask_secrets(secrets: Iterable[str]) -> None:
    """Register secrets with Airflow's log masker (task logs show ``***``)."""
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
        secrets = url_secrets(url)
    mask_secrets(secrets)
    return url, secrets


def resolve_ledger(ledger: str | None) -> tuple[str, list[str]]:
    """The ledger's SQLAlchemy URL at task run time, and its secrets.

    ``None``: ``$EMBEDRAIL_LEDGER`` (as for the CLI) or ``sqlite:///$AIRFLOW_HOME/embedrail/ledger.sqlite``
    (one machine). ``conn:ID`` or a bare ``ID`` (no ``://``): an Airflow connection (``embedrail_ledger``,
    ``postgres``, ``mysql`` or ``sqlite``; extra ``sqlalchemy_scheme`` e.g. ``postgresql+psycopg`` picks the
    driver, extra ``path`` makes it a SQLite file). Anything else: a SQLAlchemy URL (``${ENV}`` placeholders
    are expanded).
    """
    if not ledger:
        env = os.environ.get("EMBEDRAIL_LEDGER") or os.environ.get("EMBEDRAIL_LEDGER_URL")
        if env:
            return env, url_secrets(env)
        home = Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")
        (home / "embedrail").mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{home / 'embedrail' / 'ledger.sqlite'}", []
    ledger = _conn_or_url(ledger)
    if ledger.startswith(CONN_PREFIX):
        conn = _get_connection(ledger[len(CONN_PREFIX) :])
        ctype = (conn.conn_type or "").lower()
        extra = _extra(conn, ctype)
        if ctype == "sqlite" or extra.get("path"):
            return f"sqlite:///{Path(str(extra.get('path') or conn.host)).expanduser()}", []
        scheme = extra.get("sqlalchemy_scheme") or {"postgres": "postgresql", "postgresql": "postgresql", "mysql": "mysql",
                                                    "embedrail_ledger": "postgresql"}.get(ctype)  # fmt: skip
        if not scheme:
            raise ConfigError(f"ledger connection {conn.conn_id!r} of type {ctype!r}: use postgres, mysql or sqlite "
                              "(or extra sqlalchemy_scheme)")  # fmt: skip
        url = f"{scheme}://{_netloc(conn.host or 'localhost', conn.port, conn.login, conn.password)}/{conn.schema or ''}"
        secrets = [conn.password] if conn.password else []
    else:
        url = expand_env(ledger)
        secrets = url_secrets(url)
    mask_secrets(secrets)
    return url, secrets


# ------------------------------------------------------------------------------------------------ object storage
def storage_options(conn: Any) -> tuple[dict[str, Any], list[str]]:
    """An Airflow connection as fsspec storage options (s3fs / gcsfs / adlfs keywords), and its secrets."""
    ctype = (conn.conn_type or "").lower()
    extra = _extra(conn, ctype)
    secrets: list[str] = []
    if ctype in ("aws", "s3"):
        opts: dict[str, Any] = {}
        if conn.login:
            opts["key"] = conn.login
        if conn.password:
            opts["secret"] = conn.password
            secrets.append(conn.password)
        if extra.get("aws_session_token"):
            opts["token"] = extra["aws_session_token"]
            secrets.append(extra["aws_session_token"])
        endpoint = extra.get("endpoint_url") or ((extra.get("service_config") or {}).get("s3") or {}).get("endpoint_url")
        if endpoint:
            opts["endpoint_url"] = endpoint
        if extra.get("region_name"):
            opts["client_kwargs"] = {"region_name": extra["region_name"]}
        return opts, secrets
    if ctype in ("google_cloud_platform", "gcp", "gcs"):
        opts = {}
        if extra.get("keyfile_dict"):
            kd = extra["keyfile_dict"]
            opts["token"] = json.loads(kd) if isinstance(kd, str) else kd
            secrets.append(json.dumps(opts["token"]) if not isinstance(kd, str) else kd)
        elif extra.get("key_path"):
            opts["token"] = extra["key_path"]
        if extra.get("project"):
            opts["project"] = extra["project"]
        return opts, secrets
    if ctype in ("wasb", "azure_data_lake", "adls", "azure_blob_storage"):
        opts = {}
        if conn.login:
            opts["account_name"] = conn.login
        if conn.password:
            opts["account_key"] = conn.password
            secrets.append(conn.password)
        for k in ("connection_string", "sas_token", "tenant_id", "client_id", "client_secret"):
            if extra.get(k):
                opts[k] = extra[k]
                if k != "tenant_id" and k != "client_id":
                    secrets.append(str(extra[k]))
        return opts, secrets
    return dict(extra), [str(v) for k, v in extra.items() if any(w in k.lower() for w in ("secret", "key", "token", "password"))]


def resolve_source(source: Any, source_options: Mapping[str, Any] | None = None) -> tuple[Any, dict[str, Any], list[str]]:
    """At task run time: a source URL naming ``conn_id=`` (a bucket's Airflow connection) becomes the URL without
    it plus ``storage_options`` from the connection; ``${ENV}`` placeholders are expanded. Returns the source,
    its options and the secrets found."""
    opts = dict(source_options or {})
    conn_id = opts.pop("conn_id", None)
    if isinstance(source, str):
        source = expand_env(source)
        base, sep, query = source.partition("?")
        if sep:
            pairs = parse_qsl(query, keep_blank_values=True)
            conn_id = next((v for k, v in pairs if k == "conn_id"), conn_id)
            rest = [(k, v) for k, v in pairs if k != "conn_id"]
            source = base + ("?" + urlencode(rest) if rest else "")
    elif hasattr(source, "fs") and hasattr(source, "path") and not conn_id:  # Airflow's ObjectStoragePath
        from embedrail.integration.sources import FileSource

        return FileSource(str(source.path), fs=source.fs, **opts), {}, []
    if not conn_id:
        return source, opts, []
    got, secrets = storage_options(_get_connection(str(conn_id)))
    mask_secrets(secrets)
    opts["storage_options"] = {**got, **dict(opts.get("storage_options") or {})}
    return source, opts, secrets
