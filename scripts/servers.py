#!/usr/bin/env python3
"""Provision, start and stop the real servers the test suite runs against.

    python scripts/servers.py up [--only es,weaviate,chroma]   # start in the background, write .servers.env
    python scripts/servers.py down                             # stop what `up` started (by PID)
    python scripts/servers.py run -- CMD ARGS...               # start what is missing, run CMD, always stop
    python scripts/servers.py provision                        # only download/build (fills the cache)

Servers (all on 127.0.0.1, free ports, throw-away data directories):

- Elasticsearch: the ``integ-test-zip`` distribution from Maven Central, run with the machine's JDK
  (ES 8.x needs Java 17+) with a small heap, single-node discovery, security off. Elasticsearch
  refuses to run as root, so when we are root it runs as the system user ``embedrail`` (created
  on first use) from an unpacked copy under /var/cache/embedrail.
- Weaviate: built from the Go module ``github.com/weaviate/weaviate`` (``./cmd/weaviate-server``)
  with the Go toolchain, run with anonymous access and ``DEFAULT_VECTORIZER_MODULE=none``.
- Chroma: ``chroma run`` from the ``chromadb`` wheel in the active virtualenv.
- PostgreSQL (the ledger shared by workers, Airflow's metadata DB): a throw-away cluster, ``initdb``
  into a temp dir and ``postgres`` on loopback, password auth for TCP (the password is random per
  start, so tests can assert it never reaches a log). PostgreSQL refuses to run as root, so as root it
  runs as the system user ``embedrail`` like Elasticsearch. Installed from Debian (``postgresql``)
  when the machine has no server binaries.
  The pgvector extension is built into that installation from source when missing (Debian 12 has no
  package for it): the source of ``github.com/pgvector/pgvector`` through the Go module proxy, PGXS
  from ``postgresql-server-dev-<major>``.
- OpenSearch with the k-NN plugin: assembled from Maven Central artefacts -- the ``integ-test-zip``
  distribution, the ``opensearch-knn`` plugin zip, and the ``lang-painless`` module the plugin extends
  (absent from the integ-test zip: its jar, its dependencies' jars and a generated descriptor) -- and
  run like Elasticsearch (JDK 17, small heap, single node, security off; as the ``embedrail`` user
  when root). Only the Lucene k-NN engine works there (faiss/nmslib need native libraries).
- Redis (the Celery broker): ``redis-server`` on loopback, no persistence; installed from Debian
  (``redis-server``) when missing.
- An S3-compatible object store (the file/bucket source's tests): SeaweedFS (Apache-2.0), built from the Go
  module ``github.com/seaweedfs/seaweedfs`` (``./weed``) like Weaviate, run as ``weed server`` (master,
  volume, filer and S3 gateway in one process) with one access key; ``EMBEDRAIL_S3_URL`` is
  ``http://ACCESS_KEY:SECRET_KEY@127.0.0.1:PORT``.

A server whose ``EMBEDRAIL_ES_URL`` / ``EMBEDRAIL_WEAVIATE_URL`` / ``EMBEDRAIL_CHROMA_URL`` /
``EMBEDRAIL_PG_URL`` / ``EMBEDRAIL_REDIS_URL`` / ``EMBEDRAIL_OPENSEARCH_URL`` / ``EMBEDRAIL_S3_URL`` is already set in the environment is not started: that
URL is used as is (run the suite against your cluster; the PostgreSQL user must be able to create
databases).

Downloads and builds are cached in ``$EMBEDRAIL_CACHE`` (default ``~/.cache/embedrail``), so a second
start on the same machine takes seconds. Standard library only: `down` must work without the venv.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = ROOT / ".servers"
STATE_FILE = STATE_DIR / "state.json"
ENV_FILE = ROOT / ".servers.env"
CACHE = Path(os.environ.get("EMBEDRAIL_CACHE", Path.home() / ".cache" / "embedrail"))

# Elasticsearch: Elastic publishes the integ-test-zip to Maven Central only up to 8.19.x (no 9.x
# there), and 8.19 runs on the machine's JDK 17. Override with EMBEDRAIL_ES_VERSION.
ES_VERSION = os.environ.get("EMBEDRAIL_ES_VERSION", "8.19.21")
ES_URL_TMPL = (
    "https://repo1.maven.org/maven2/org/elasticsearch/distribution/integ-test-zip/elasticsearch/"
    "{v}/elasticsearch-{v}.zip"
)
# Weaviate: v1.39.3 is the newest release whose whole dependency graph the Go module proxy serves
# (1.39.4+ need github.com/weaviate/sroar v0.0.17/18, which the proxy answers 403 for).
WEAVIATE_VERSION = os.environ.get("EMBEDRAIL_WEAVIATE_VERSION", "v1.39.3")
# SeaweedFS publishes no module versions the proxy lists (its tags are not Go-module semver): a pseudo-version
SEAWEEDFS_VERSION = os.environ.get("EMBEDRAIL_SEAWEEDFS_VERSION", "v0.0.0-20261109003541-7506e5f91cd6")
ES_USER = "embedrail"
# OpenSearch: 2.19.1 is the newest release whose k-NN plugin zip is on Maven Central for a 2.x line
OPENSEARCH_VERSION = os.environ.get("EMBEDRAIL_OPENSEARCH_VERSION", "2.19.1")
MAVEN = "https://repo1.maven.org/maven2"
_PAINLESS_DEPS = ("org/antlr/antlr4-runtime/4.13.1/antlr4-runtime-4.13.1.jar", "org/ow2/asm/asm/9.7/asm-9.7.jar",
                  "org/ow2/asm/asm-util/9.7/asm-util-9.7.jar", "org/ow2/asm/asm-tree/9.7/asm-tree-9.7.jar",
                  "org/ow2/asm/asm-commons/9.7/asm-commons-9.7.jar", "org/ow2/asm/asm-analysis/9.7/asm-analysis-9.7.jar")  # fmt: skip

KINDS = ("es", "weaviate", "chroma", "pg", "redis", "opensearch", "s3")
ENV_NAMES = {
    "es": "EMBEDRAIL_ES_URL",
    "weaviate": "EMBEDRAIL_WEAVIATE_URL",
    "chroma": "EMBEDRAIL_CHROMA_URL",
    "pg": "EMBEDRAIL_PG_URL",
    "redis": "EMBEDRAIL_REDIS_URL",
    "opensearch": "EMBEDRAIL_OPENSEARCH_URL",
    "s3": "EMBEDRAIL_S3_URL",
}


class ProvisionError(RuntimeError):
    """A server could not be provisioned or started; the message says why and what to do."""


def log(msg: str) -> None:
    print(f"[servers] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# helpers


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports, taken from below the kernel's ephemeral range.

    A port that ``bind(0)`` hands out comes from the ephemeral range, the same range every outgoing connection
    draws its local port from: between choosing it and the server binding it, any connection on the machine (a
    server's own internal gRPC dial included) can take it, and the server dies with "address already in use".
    Ports below that range are never handed to outgoing connections. All sockets stay open while choosing so the
    ports are distinct; ``start`` still restarts a server that loses a port race."""
    low, _ = _ephemeral_range()
    lo, hi = max(1024, low - 16384), low
    rng = random.Random()
    socks: list[socket.socket] = []
    try:
        for _ in range(200 * n):
            if len(socks) == n:
                break
            port = rng.randrange(lo, hi) if hi - lo >= 256 else 0
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            socks.append(s)
        if len(socks) < n:
            raise ProvisionError(f"could not find {n} free loopback ports in {lo}-{hi - 1}")
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def redis_ok(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def pg_ok(host: str, port: int, timeout: float = 2.0) -> bool:
    """The server accepts connections (pg_isready's answer; any auth outcome counts as up)."""
    isready = pg_bin("pg_isready", required=False)
    if isready is None:  # no client tools: a TCP connect is the best we can do
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return True
        except OSError:
            return False
    r = subprocess.run([str(isready), "-h", host, "-p", str(port), "-t", str(int(max(1, timeout)))],
                       capture_output=True)  # fmt: skip
    return r.returncode == 0


def health_ok(url: str) -> bool:
    """``url``: an http(s) health URL, ``pg://host:port`` or ``redis://host:port``."""
    if url.startswith(("pg://", "redis://")):
        hostport = url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
        host, _, port = hostport.rpartition(":")
        return (pg_ok if url.startswith("pg://") else redis_ok)(host, int(port))
    return http_ok(url)


def url_health(kind: str, url: str) -> str:
    """The ``health_ok`` URL of a PostgreSQL (``postgresql[+driver]://...``) or Redis (``redis://...``) URL."""
    rest = url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    return f"{'pg' if kind == 'pg' else 'redis'}://{rest}"


_apt_updated = False


def ensure_debian_package(binary: str, package: str, where: Iterable[Path] = ()) -> Path:
    """The path of ``binary`` (on PATH or in ``where``), installing Debian's ``package`` if it is missing."""
    global _apt_updated

    def find() -> Path | None:
        for d in where:
            if (d / binary).exists():
                return d / binary
        found = shutil.which(binary)
        return Path(found) if found else None

    path = find()
    if path is not None:
        return path
    if not (is_root() and shutil.which("apt-get")):
        raise ProvisionError(f"{binary!r} not found; install the Debian package {package!r} (apt-get install {package}) "
                             f"or point the suite at a running server with its EMBEDRAIL_*_URL")  # fmt: skip
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for attempt in range(2):
        if not _apt_updated or attempt:
            log("apt-get update")
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
            _apt_updated = True
        log(f"installing the Debian package {package}")
        r = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", package],
                           env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
        path = find()
        if r.returncode == 0 and path is not None:
            return path
    raise ProvisionError(f"apt-get install {package} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")


def pg_bin(name: str, required: bool = True) -> Path | None:
    """A PostgreSQL server program (initdb, postgres, pg_isready): Debian keeps them out of PATH, under
    /usr/lib/postgresql/<major>/bin (the newest major wins)."""
    dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
                  reverse=True)  # fmt: skip
    for d in dirs:
        if (d / name).exists():
            return d / name
    found = shutil.which(name)
    if found:
        return Path(found)
    if not required:
        return None
    ensure_debian_package("initdb", "postgresql", where=())
    return pg_bin(name, required=False) or _missing(name)


def _missing(name: str) -> Path:
    raise ProvisionError(f"PostgreSQL's {name!r} not found after installing the Debian package 'postgresql'")


def download(url: str, dest: Path) -> None:
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    log(f"downloading {url}")
    last_err: Exception | None = None
    for attempt in range(4):
        try:
            with urllib.request.urlopen(url, timeout=120) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f, 1 << 20)
            tmp.replace(dest)
            return
        except (urllib.error.URLError, OSError) as e:  # pragma: no cover - network flake
            last_err = e
            time.sleep(2 * (attempt + 1))
    raise ProvisionError(f"could not download {url}: {last_err}")


def redact(url: str) -> str:
    """``url`` without its password (for log lines)."""
    scheme, sep, rest = url.partition("://")
    auth, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{auth.split(':', 1)[0]}:***{at}{host}" if at and ":" in auth else url


def is_root() -> bool:
    return os.geteuid() == 0


def ensure_es_user() -> None:
    try:
        pwd.getpwnam(ES_USER)
    except KeyError:
        log(f"creating system user {ES_USER!r} (Elasticsearch refuses to run as root)")
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", ES_USER],
            check=True,
        )


def as_service_user(cmd: list[str], env_names: Iterable[str] = (), env: dict[str, str] | None = None) -> list[str]:
    """``cmd`` run as the unprivileged ``embedrail`` user when we are root (servers that refuse root)."""
    if not is_root():
        return cmd
    ensure_es_user()
    passed = [f"{k}={(env or os.environ)[k]}" for k in env_names if k in (env or os.environ)]
    return ["runuser", "-u", ES_USER, "--", "env", *passed, *cmd]


def chown_tree(path: Path, user: str) -> None:
    subprocess.run(["chown", "-R", user, str(path)], check=True)


def java_major(home: Path) -> int | None:
    java = home / "bin" / "java"
    if not java.exists():
        return None
    try:
        out = subprocess.run(
            [str(java), "-XshowSettings:properties", "-version"], capture_output=True, text=True, timeout=30
        ).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        if "java.specification.version" in line:
            return int(line.split("=")[1].strip().split(".")[0])
    return None


def find_java(min_major: int) -> Path:
    """A JDK with major version >= min_major: $EMBEDRAIL_JAVA_HOME if set, else the lowest such JDK
    on the machine (the LTS an ES release is tested on most), from $JAVA_HOME, /usr/lib/jvm or PATH."""
    forced = os.environ.get("EMBEDRAIL_JAVA_HOME")
    if forced:
        return Path(forced)
    candidates: list[Path] = []
    for env in ("ES_JAVA_HOME", "JAVA_HOME"):
        if os.environ.get(env):
            candidates.append(Path(os.environ[env]))
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        candidates += sorted(p for p in jvm.iterdir() if (p / "bin" / "java").exists())
    java_on_path = shutil.which("java")
    if java_on_path:
        candidates.append(Path(java_on_path).resolve().parent.parent)
    usable = [(m, h) for h in candidates if (m := java_major(h)) is not None and m >= min_major]
    if not usable:
        raise ProvisionError(
            f"no JDK >= {min_major} found (looked in $JAVA_HOME, /usr/lib/jvm, PATH); "
            f"install one (e.g. apt-get install openjdk-17-jdk-headless) or set EMBEDRAIL_JAVA_HOME"
        )
    return min(usable, key=lambda mh: mh[0])[1]


# --------------------------------------------------------------------------------------------
# servers


@dataclass
class Server:
    kind: str
    url: str
    pid: int
    log: str
    data_dir: str
    health_url: str
    extra: dict[str, object] = field(default_factory=dict)


#: the servers this process started: they outlive it (tracked by PID in the state file); held here so that
#: a Popen collected while its server runs does not warn (pytest turns that warning into an error)
_DETACHED: list[subprocess.Popen] = []


def _spawn(cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as logf:  # the child has its own descriptor of it
        p = subprocess.Popen(
            cmd,
            env=env,
            cwd=str(cwd) if cwd else None,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: stopped as a group by PID
        )
    _DETACHED.append(p)
    return p


def _unpack_search_zip(zip_path: Path, top: str, base: Path) -> tuple[Path, Path]:
    """Unzip an Elasticsearch/OpenSearch distribution under a temporary dir in ``base``; returns (tmp, unpacked home).

    Zip files carry no Unix modes, so launchers (any bin/ dir) and native helpers are made executable here.
    """
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=base, prefix=".unpack-"))
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(tmp)
    src = tmp / top
    for p in (src / "bin").iterdir():
        p.chmod(0o755)
    for p in src.rglob("*"):
        if p.is_file() and (p.parent.name == "bin" or "native" in p.parts):
            p.chmod(p.stat().st_mode | 0o755)
    return tmp, src


def _install_search_home(tmp: Path, src: Path, home: Path) -> None:
    """Move an unpacked (and completed) distribution to its final home, owned by the service user when root."""
    if home.exists():
        shutil.rmtree(home)
    src.rename(home)
    shutil.rmtree(tmp, ignore_errors=True)
    if is_root():
        ensure_es_user()
        chown_tree(home, ES_USER)


def _search_base() -> Path:
    return Path("/var/cache/embedrail") if is_root() else CACHE


def provision_es() -> Path:
    zip_path = CACHE / f"elasticsearch-{ES_VERSION}.zip"
    download(ES_URL_TMPL.format(v=ES_VERSION), zip_path)
    home = _search_base() / f"elasticsearch-{ES_VERSION}"
    if not (home / "bin" / "elasticsearch").exists():
        log(f"unpacking Elasticsearch {ES_VERSION} into {home}")
        _install_search_home(*_unpack_search_zip(zip_path, f"elasticsearch-{ES_VERSION}", _search_base()), home)
    elif is_root():
        ensure_es_user()
    return home


def _start_search_node(kind: str, label: str, version: str, home: Path, launcher: str, env_prefix: str,
                       helper_jvm_var: str, extra_settings: Iterable[str] = ()) -> Server:
    """Start one single-node Elasticsearch-family server on free loopback ports with a throwaway data dir.

    ``env_prefix`` is ES or OPENSEARCH: the launcher reads <prefix>_JAVA_HOME, <prefix>_JAVA_OPTS (and
    EMBEDRAIL_<kind>_JAVA_OPTS overrides the heap) and <prefix>_TMPDIR; ``helper_jvm_var`` is the variable
    whose JVM options reach the launcher's own helper JVMs (both launchers drop JAVA_TOOL_OPTIONS). As
    root the node runs as the unprivileged service user.
    """
    java_home = find_java(17)
    http_port, transport_port = free_ports(2)
    data = Path(tempfile.mkdtemp(prefix=f"embedrail-{kind}-"))
    (data / "data").mkdir()
    (data / "logs").mkdir()
    (data / "tmp").mkdir()
    log_path = STATE_DIR / f"{launcher}.log"
    # the node's temp dir and the helper JVMs' probes ("final-flags*") live in the throwaway data dir,
    # removed on stop, instead of piling up in /tmp run after run
    java_env = {
        f"{env_prefix}_JAVA_HOME": str(java_home),
        f"{env_prefix}_JAVA_OPTS": os.environ.get(f"EMBEDRAIL_{kind.upper()}_JAVA_OPTS", "-Xms512m -Xmx1g"),
        f"{env_prefix}_TMPDIR": str(data / "tmp"),
        helper_jvm_var: f"-Djava.io.tmpdir={data / 'tmp'}",
    }
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"} | java_env
    cmd = [
        str(home / "bin" / launcher),
        "-E", "discovery.type=single-node",
        "-E", "network.host=127.0.0.1",
        "-E", f"http.port={http_port}",
        "-E", f"transport.port={transport_port}",
        "-E", f"path.data={data / 'data'}",
        "-E", f"path.logs={data / 'logs'}",
        "-E", f"cluster.name=embedrail-test-{kind}",
        "-E", "cluster.routing.allocation.disk.threshold_enabled=false",
        "-E", "action.destructive_requires_name=false",
    ]  # fmt: skip
    for setting in extra_settings:
        cmd += ["-E", setting]
    if is_root():
        chown_tree(data, ES_USER)
        cmd = as_service_user(cmd, java_env, env)
    log(f"starting {label} {version} (JDK {java_home}) on 127.0.0.1:{http_port}")
    p = _spawn(cmd, env, log_path, cwd=home)
    return Server(kind=kind, url=f"{kind}://127.0.0.1:{http_port}", pid=p.pid, log=str(log_path), data_dir=str(data),
                  health_url=f"http://127.0.0.1:{http_port}/_cluster/health?wait_for_status=yellow&timeout=1s",
                  extra={"version": version, "java_home": str(java_home)})  # fmt: skip


def start_es() -> Server:
    return _start_search_node("es", "Elasticsearch", ES_VERSION, provision_es(), "elasticsearch", "ES", "CLI_JAVA_OPTS",
                              ["xpack.security.enabled=false"])  # fmt: skip


def provision_opensearch() -> Path:
    """OpenSearch + k-NN, assembled once (see the module doc); returns its home."""
    v = OPENSEARCH_VERSION
    cache = CACHE / f"opensearch-{v}"
    files = {
        "dist": (f"{MAVEN}/org/opensearch/distribution/integ-test-zip/opensearch/{v}/opensearch-{v}.zip", cache / f"opensearch-{v}.zip"),
        "knn": (f"{MAVEN}/org/opensearch/plugin/opensearch-knn/{v}.0/opensearch-knn-{v}.0.zip", cache / f"opensearch-knn-{v}.0.zip"),
        "painless": (f"{MAVEN}/org/opensearch/plugin/lang-painless/{v}/lang-painless-{v}.jar", cache / f"lang-painless-{v}.jar"),
        "spi": (f"{MAVEN}/org/opensearch/plugin/opensearch-scripting-painless-spi/{v}/opensearch-scripting-painless-spi-{v}.jar",
                cache / f"opensearch-scripting-painless-spi-{v}.jar"),
        # the analyzers every full distribution has (stemmers, word_delimiter_graph, stop, ...): keyword search
        "analysis": (f"{MAVEN}/org/opensearch/plugin/analysis-common/{v}/analysis-common-{v}.jar", cache / f"analysis-common-{v}.jar"),
    }  # fmt: skip
    for i, dep in enumerate(_PAINLESS_DEPS):
        files[f"dep{i}"] = (f"{MAVEN}/{dep}", cache / Path(dep).name)
    home = _search_base() / f"opensearch-{v}"
    if (home / "bin" / "opensearch").exists() and (home / "plugins" / "opensearch-knn").is_dir() and (
            home / "modules" / "analysis-common").is_dir():
        if is_root():
            ensure_es_user()
        return home
    for url, dest in files.values():
        download(url, dest)
    log(f"assembling OpenSearch {v} + k-NN + lang-painless + analysis-common into {home}")
    tmp, src = _unpack_search_zip(files["dist"][1], f"opensearch-{v}", _search_base())
    painless = src / "modules" / "lang-painless"
    painless.mkdir(parents=True, exist_ok=True)
    for key, (_, path) in files.items():
        if key in ("painless", "spi") or key.startswith("dep"):
            shutil.copy2(path, painless / path.name)
    (painless / "plugin-descriptor.properties").write_text(
        "description=An easy, safe and fast scripting language for OpenSearch\n"
        f"version={v}\nname=lang-painless\nclassname=org.opensearch.painless.PainlessPlugin\njava.version=11\n"
        f"opensearch.version={v}\nextended.plugins=\nhas.native.controller=false\n"
    )
    (painless / "plugin-security.policy").write_text(
        'grant {\n  permission java.lang.RuntimePermission "createClassLoader";\n'
        '  permission java.lang.RuntimePermission "getClassLoader";\n};\n'
    )
    analysis = src / "modules" / "analysis-common"
    analysis.mkdir(parents=True, exist_ok=True)
    shutil.copy2(files["analysis"][1], analysis / files["analysis"][1].name)
    (analysis / "plugin-descriptor.properties").write_text(
        'description=Adds "built in" analyzers to OpenSearch.\n'
        f"version={v}\nname=analysis-common\nclassname=org.opensearch.analysis.common.CommonAnalysisPlugin\n"
        f"java.version=11\nopensearch.version={v}\nextended.plugins=lang-painless\nhas.native.controller=false\n"
    )
    with zipfile.ZipFile(files["knn"][1]) as z:
        z.extractall(src / "plugins" / "opensearch-knn")
    _install_search_home(tmp, src, home)
    return home


def start_opensearch() -> Server:
    return _start_search_node("opensearch", "OpenSearch + k-NN", OPENSEARCH_VERSION, provision_opensearch(),
                              "opensearch", "OPENSEARCH", "_JAVA_OPTIONS")  # HotSpot's: its helper JVMs take no other  # fmt: skip


def provision_weaviate() -> Path:
    return _go_build("weaviate", "github.com/weaviate/weaviate", WEAVIATE_VERSION, "./cmd/weaviate-server",
                     CACHE / f"weaviate-server-{WEAVIATE_VERSION}")  # fmt: skip


def provision_seaweedfs() -> Path:
    return _go_build("seaweedfs", "github.com/seaweedfs/seaweedfs", SEAWEEDFS_VERSION, "./weed", CACHE / f"weed-{SEAWEEDFS_VERSION}")


def _go_build(name: str, module: str, version: str, package: str, binary: Path) -> Path:
    """``go build`` ``package`` of ``module@version`` (from the Go module proxy) into ``binary``, once."""
    if binary.exists():
        return binary
    go = shutil.which("go")
    if not go:
        raise ProvisionError(f"the Go toolchain is needed to build {name}; install Go >= 1.24 and retry")
    env = dict(os.environ)
    env.update(
        GOMODCACHE=str(CACHE / "gomod"),
        GOCACHE=str(CACHE / "gocache"),
        GOFLAGS="-modcacherw",
        CGO_ENABLED=env.get("CGO_ENABLED", "1"),
    )
    env.setdefault("GOTOOLCHAIN", "auto")
    CACHE.mkdir(parents=True, exist_ok=True)
    log(f"fetching {module}@{version} from the Go module proxy")
    out = subprocess.run(
        [go, "mod", "download", "-json", f"{module}@{version}"],
        env=env,
        capture_output=True,
        text=True,
        cwd=str(CACHE),
    )
    if out.returncode != 0:
        raise ProvisionError(f"go mod download of {module}@{version} failed:\n{out.stdout}{out.stderr}")
    src = Path(json.loads(out.stdout)["Dir"])
    log(f"building {name} {version} (first time only; a few minutes on 2 cores)")
    tmp = binary.with_suffix(".tmp")
    build = subprocess.run([go, "build", "-o", str(tmp), package], env=env, cwd=str(src), capture_output=True, text=True)
    if build.returncode != 0:
        raise ProvisionError(f"building {name} failed:\n{build.stdout[-4000:]}{build.stderr[-4000:]}")
    tmp.replace(binary)
    return binary


def start_weaviate() -> Server:
    binary = provision_weaviate()
    http_port, grpc_port, gossip, data_port, raft, raft_rpc = free_ports(6)
    data = Path(tempfile.mkdtemp(prefix="embedrail-weaviate-"))
    log_path = STATE_DIR / "weaviate.log"
    env = dict(os.environ)
    env.update(
        PERSISTENCE_DATA_PATH=str(data),
        AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED="true",
        DEFAULT_VECTORIZER_MODULE="none",
        ENABLE_MODULES="",
        CLUSTER_HOSTNAME="embedrail-test",
        CLUSTER_BIND_ADDR="127.0.0.1",
        CLUSTER_ADVERTISE_ADDR="127.0.0.1",
        CLUSTER_GOSSIP_BIND_PORT=str(gossip),
        CLUSTER_DATA_BIND_PORT=str(data_port),
        RAFT_PORT=str(raft),
        RAFT_INTERNAL_RPC_PORT=str(raft_rpc),
        RAFT_BOOTSTRAP_EXPECT="1",
        RAFT_JOIN="embedrail-test",
        GRPC_PORT=str(grpc_port),
        DISABLE_TELEMETRY="true",
        GO_PROFILING_DISABLE="true",
        QUERY_DEFAULTS_LIMIT="25",
        LOG_LEVEL="info",
        LIMIT_RESOURCES="true",
    )
    cmd = [str(binary), "--host", "127.0.0.1", "--port", str(http_port), "--scheme", "http"]
    log(f"starting Weaviate {WEAVIATE_VERSION} on 127.0.0.1:{http_port} (gRPC {grpc_port})")
    p = _spawn(cmd, env, log_path, cwd=data)
    return Server(
        kind="weaviate",
        url=f"weaviate://127.0.0.1:{http_port}?grpc_port={grpc_port}",
        pid=p.pid,
        log=str(log_path),
        data_dir=str(data),
        health_url=f"http://127.0.0.1:{http_port}/v1/.well-known/ready",
        extra={"version": WEAVIATE_VERSION, "grpc_port": grpc_port},
    )


def chroma_binary() -> Path:
    here = Path(sys.executable).parent / "chroma"
    if here.exists():
        return here
    venv = ROOT / ".venv" / "bin" / "chroma"
    if venv.exists():
        return venv
    found = shutil.which("chroma")
    if found:
        return Path(found)
    raise ProvisionError("the `chroma` command (from the chromadb wheel) was not found; run `make venv` first")


def start_chroma() -> Server:
    binary = chroma_binary()
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="embedrail-chroma-"))
    log_path = STATE_DIR / "chroma.log"
    env = dict(os.environ)
    env["ANONYMIZED_TELEMETRY"] = "False"
    cmd = [str(binary), "run", "--path", str(data), "--host", "127.0.0.1", "--port", str(port)]
    log(f"starting Chroma server on 127.0.0.1:{port}")
    p = _spawn(cmd, env, log_path, cwd=data)
    return Server(
        kind="chroma",
        url=f"chroma+http://127.0.0.1:{port}",
        pid=p.pid,
        log=str(log_path),
        data_dir=str(data),
        health_url=f"http://127.0.0.1:{port}/api/v2/heartbeat",
    )


PG_USER = "embedrail"
# pgvector (the pgvector connector's extension): built from source into the PostgreSQL installation when it
# is missing (Debian 12 has no postgresql-15-pgvector package). The source comes through the Go module
# proxy (it serves any GitHub tag as a module zip), PGXS from Debian's postgresql-server-dev-<major>.
PGVECTOR_VERSION = os.environ.get("EMBEDRAIL_PGVECTOR_VERSION", "v0.8.1")


def ensure_pgvector() -> str:
    """Make ``CREATE EXTENSION vector`` possible in the local PostgreSQL; returns the pgvector version there."""
    pg_config = pg_bin("pg_config")
    assert pg_config is not None

    def cfg(flag: str) -> Path:
        return Path(subprocess.run([str(pg_config), flag], capture_output=True, text=True, check=True).stdout.strip())

    control = cfg("--sharedir") / "extension" / "vector.control"
    if control.exists() and (cfg("--pkglibdir") / "vector.so").exists():
        return next((ln.split("=", 1)[1].strip().strip("'") for ln in control.read_text().splitlines()
                     if ln.startswith("default_version")), "?")  # fmt: skip
    if not is_root():
        raise ProvisionError(f"pgvector is not installed in {pg_config.parent.parent} and installing it needs root: "
                             "install your distribution's pgvector package or point EMBEDRAIL_PG_URL at a server with it")  # fmt: skip
    major = pg_config.parent.parent.name
    headers = cfg("--includedir-server")  # postgres.h & co, shipped by postgresql-server-dev-<major>
    if not (headers / "postgres.h").exists() or not cfg("--pgxs").exists():
        ensure_debian_package("postgres.h", f"postgresql-server-dev-{major}", where=[headers])
    go = shutil.which("go")
    if not go:
        raise ProvisionError("the Go toolchain fetches pgvector's source from the Go module proxy; install Go and retry")
    env = dict(os.environ, GOMODCACHE=str(CACHE / "gomod"), GOFLAGS="-modcacherw")
    CACHE.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([go, "mod", "download", "-json", f"github.com/pgvector/pgvector@{PGVECTOR_VERSION}"], env=env,
                         capture_output=True, text=True, cwd=str(CACHE))  # fmt: skip
    if out.returncode != 0:
        raise ProvisionError(f"fetching pgvector {PGVECTOR_VERSION} failed:\n{out.stdout}{out.stderr}")
    src = Path(json.loads(out.stdout)["Dir"])
    build = Path(tempfile.mkdtemp(prefix="embedrail-pgvector-"))
    try:
        shutil.copytree(src, build / "src")
        subprocess.run(["chmod", "-R", "u+w", str(build)], check=True)
        log(f"building pgvector {PGVECTOR_VERSION} for PostgreSQL {major}")
        for target in ("all", "install"):
            r = subprocess.run(["make", "-j2", target, f"PG_CONFIG={pg_config}", "with_llvm=no", "OPTFLAGS="],
                               cwd=build / "src", capture_output=True, text=True)  # fmt: skip
            if r.returncode != 0:
                raise ProvisionError(f"building pgvector failed (make {target}):\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return PGVECTOR_VERSION.lstrip("v")


def start_pg() -> Server:
    initdb, postgres = pg_bin("initdb"), pg_bin("postgres")
    assert initdb and postgres
    pgvector = ensure_pgvector()
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="embedrail-pg-"))
    cluster, sockets = data / "cluster", data / "sock"
    sockets.mkdir()
    password = uuid.uuid4().hex
    pwfile = data / "pw"
    pwfile.write_text(password + "\n")
    log_path = STATE_DIR / "postgres.log"
    if is_root():
        ensure_es_user()
        chown_tree(data, ES_USER)
    pwfile.chmod(0o600)
    r = subprocess.run(
        as_service_user([str(initdb), "-D", str(cluster), "-U", PG_USER, f"--pwfile={pwfile}", "-E", "UTF8",
                         "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"]),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    pwfile.unlink()
    if r.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        raise ProvisionError(f"initdb failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    # Throw-away cluster: durability traded for speed (fsync off); enough connections for an Airflow
    # scheduler, API server, workers and the test processes at once.
    cmd = [str(postgres), "-D", str(cluster), "-h", "127.0.0.1", "-p", str(port), "-k", str(sockets),
           "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
           "-c", "max_connections=300", "-c", "shared_buffers=128MB", "-c", "log_min_messages=warning"]  # fmt: skip
    log(f"starting PostgreSQL ({postgres.parent.parent.name}) on 127.0.0.1:{port}")
    p = _spawn(as_service_user(cmd), dict(os.environ), log_path, cwd=data)
    return Server(
        kind="pg",
        url=f"postgresql://{PG_USER}:{password}@127.0.0.1:{port}/postgres",
        pid=p.pid,
        log=str(log_path),
        data_dir=str(data),
        health_url=f"pg://127.0.0.1:{port}",
        extra={"stop_signal": "SIGINT", "pgvector": pgvector},  # SIGINT: fast shutdown (SIGTERM waits for every client)
    )


def start_redis() -> Server:
    binary = ensure_debian_package("redis-server", "redis-server")
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="embedrail-redis-"))
    log_path = STATE_DIR / "redis.log"
    cmd = [str(binary), "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
           "--dir", str(data), "--protected-mode", "no", "--daemonize", "no"]  # fmt: skip
    log(f"starting Redis on 127.0.0.1:{port}")
    p = _spawn(cmd, dict(os.environ), log_path, cwd=data)
    return Server(kind="redis", url=f"redis://127.0.0.1:{port}/0", pid=p.pid, log=str(log_path), data_dir=str(data),
                  health_url=f"redis://127.0.0.1:{port}")  # fmt: skip


S3_ACCESS_KEY = "embedrail"


def start_s3() -> Server:
    """SeaweedFS: master, volume server, filer and S3 gateway in one ``weed server`` process, every port
    (HTTP and gRPC) chosen free, the extra Iceberg / Lance endpoints off, one access key with a random secret."""
    binary = provision_seaweedfs()
    ports = free_ports(8)
    master, volume, filer, s3, master_g, volume_g, filer_g, s3_g = ports
    data = Path(tempfile.mkdtemp(prefix="embedrail-s3-"))
    secret = uuid.uuid4().hex
    config = data / "s3.json"
    config.write_text(json.dumps({"identities": [{"name": "embedrail", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                                                  "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": secret}]}]}))  # fmt: skip
    (data / "store").mkdir()
    log_path = STATE_DIR / "s3.log"
    cmd = [str(binary), "server", f"-dir={data / 'store'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           f"-master.port={master}", f"-master.port.grpc={master_g}", f"-volume.port={volume}", f"-volume.port.grpc={volume_g}",
           "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_g}", "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_g}",
           "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}", "-volume.max=400",
           "-master.volumeSizeLimitMB=16"]  # fmt: skip  (each bucket grows volumes of its own)
    log(f"starting SeaweedFS (S3 gateway) on 127.0.0.1:{s3}")
    p = _spawn(cmd, dict(os.environ), log_path, cwd=data)
    return Server(kind="s3", url=f"http://{S3_ACCESS_KEY}:{secret}@127.0.0.1:{s3}", pid=p.pid, log=str(log_path),
                  data_dir=str(data), health_url=f"http://127.0.0.1:{s3}/healthz", extra={"version": SEAWEEDFS_VERSION})  # fmt: skip


STARTERS = {"es": start_es, "weaviate": start_weaviate, "chroma": start_chroma, "pg": start_pg, "redis": start_redis,
            "opensearch": start_opensearch, "s3": start_s3}  # fmt: skip
TIMEOUTS = {"es": 180.0, "weaviate": 120.0, "chroma": 60.0, "pg": 60.0, "redis": 30.0, "opensearch": 180.0, "s3": 90.0}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours is not alive
    try:
        wpid, _ = os.waitpid(pid, os.WNOHANG)
        return wpid == 0
    except ChildProcessError:
        return True


def tail(path: str, n: int = 60) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


START_ATTEMPTS = 3


def wait_healthy(servers: list[Server], restart: Callable[[Server], Server] | None = None) -> None:
    """Wait until every server answers its health check. A server that exits during start-up is started again
    (``restart``, fresh ports and data directory) up to ``START_ATTEMPTS`` times in all: most such exits are a
    port that something else bound first. ``servers`` is updated in place so the caller can stop what runs."""
    pending = {s.kind: s for s in servers}
    attempts = dict.fromkeys(pending, 1)
    deadline = {k: time.monotonic() + TIMEOUTS[k] for k in pending}
    while pending:
        for kind, s in list(pending.items()):
            if health_ok(s.health_url):
                log(f"{kind} is up: {redact(s.url)}")
                del pending[kind]
            elif not pid_alive(s.pid):
                if restart is None or attempts[kind] >= START_ATTEMPTS:
                    raise ProvisionError(f"{kind} exited during start-up; its log ({s.log}) ends with:\n{tail(s.log)}")
                kept = f"{s.log}.attempt{attempts[kind]}"  # the next attempt writes the same log: keep this one
                with contextlib.suppress(OSError):
                    shutil.copyfile(s.log, kept)
                log(f"{kind} exited during start-up (attempt {attempts[kind]}); its log ({kept}) ends with:\n"
                    f"{tail(s.log, 25)}\nstarting it again on fresh ports")  # fmt: skip
                stop_server(s)
                fresh = restart(s)
                servers[servers.index(s)] = fresh
                pending[kind] = fresh
                attempts[kind] += 1
                deadline[kind] = time.monotonic() + TIMEOUTS[kind]
            elif time.monotonic() > deadline[kind]:
                raise ProvisionError(
                    f"{kind} did not become healthy within {TIMEOUTS[kind]:.0f}s; its log ({s.log}) ends with:\n"
                    f"{tail(s.log)}"
                )
        if pending:
            time.sleep(0.5)


def stop_server(s: Server, timeout: float = 30.0) -> None:
    try:
        pgid = os.getpgid(s.pid)
    except ProcessLookupError:
        pgid = None
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, getattr(signal, str(s.extra.get("stop_signal", "SIGTERM"))))
        end = time.monotonic() + timeout
        while time.monotonic() < end and pid_alive(s.pid):
            time.sleep(0.2)
        if pid_alive(s.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        # Elasticsearch's JVM may outlive the runuser wrapper briefly: make sure the group is gone
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    shutil.rmtree(s.data_dir, ignore_errors=True)
    log(f"stopped {s.kind} (pid {s.pid})")


def load_state() -> list[Server]:
    if not STATE_FILE.exists():
        return []
    try:
        return [Server(**d) for d in json.loads(STATE_FILE.read_text())]
    except (ValueError, TypeError):
        return []


def save_state(servers: list[Server]) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps([s.__dict__ for s in servers], indent=2))


def start(kinds: Iterable[str]) -> list[Server]:
    """Start the given servers in parallel and wait until all are healthy (stop all on failure)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    started: list[Server] = []
    try:
        # Provision (download/build) first, serially: builds need the CPU and give clear errors.
        for k in kinds:
            if k == "es":
                provision_es()
            elif k == "weaviate":
                provision_weaviate()
            elif k == "pg":
                pg_bin("initdb")
                ensure_pgvector()
            elif k == "opensearch":
                provision_opensearch()
            elif k == "s3":
                provision_seaweedfs()
            elif k == "redis":
                ensure_debian_package("redis-server", "redis-server")
        for k in kinds:
            started.append(STARTERS[k]())
        wait_healthy(started, restart=lambda s: STARTERS[s.kind]())
    except BaseException:
        for s in started:
            stop_server(s)
        raise
    return started


def write_env(urls: dict[str, str]) -> None:
    ENV_FILE.write_text("".join(f"{ENV_NAMES[k]}={v}\n" for k, v in urls.items()))


def read_env() -> dict[str, str]:
    """What ``write_env`` wrote (``EMBEDRAIL_*_URL`` -> URL); empty when no servers were started."""
    env: dict[str, str] = {}
    if ENV_FILE.exists():
        for line in ENV_FILE.read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                env[k.strip()] = v.strip()
    return env


def parse_only(only: str | None) -> list[str]:
    if not only:
        return list(KINDS)
    kinds = [k.strip() for k in only.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise SystemExit(f"unknown server kind(s) {bad}; choose from {KINDS}")
    return kinds


def cmd_up(args: argparse.Namespace) -> int:
    running = [s for s in load_state() if pid_alive(s.pid)]
    if running:
        log("servers from a previous `up` are still running; reusing them (`make servers-down` to stop)")
        write_env({s.kind: s.url for s in running})
        print(ENV_FILE.read_text(), end="")
        return 0
    kinds = [k for k in parse_only(args.only) if not os.environ.get(ENV_NAMES[k])]
    servers = start(kinds)
    save_state(servers)
    urls = {k: os.environ[ENV_NAMES[k]] for k in parse_only(args.only) if os.environ.get(ENV_NAMES[k])}
    urls.update({s.kind: s.url for s in servers})
    write_env(urls)
    print(ENV_FILE.read_text(), end="")
    log(f"URLs written to {ENV_FILE}; load them with: set -a; . {ENV_FILE.name}; set +a")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    servers = load_state()
    for s in servers:
        stop_server(s)
    with contextlib.suppress(FileNotFoundError):
        STATE_FILE.unlink()
    with contextlib.suppress(FileNotFoundError):
        ENV_FILE.unlink()
    if not servers:
        log("nothing to stop")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    if not cmd:
        raise SystemExit("usage: servers.py run -- CMD [ARGS...]")
    wanted = parse_only(args.only)
    missing = [k for k in wanted if not os.environ.get(ENV_NAMES[k])]
    given = [k for k in wanted if k not in missing]
    for k in given:
        log(f"using {ENV_NAMES[k]}={os.environ[ENV_NAMES[k]]} (not starting a local {k})")
    t0 = time.monotonic()
    servers: list[Server] = []
    env = dict(os.environ)
    try:
        try:
            servers = start(missing)
        except ProvisionError as e:
            log(f"FAILED to provision the test servers: {e}")
            return 2
        log(f"servers ready in {time.monotonic() - t0:.1f}s")
        for s in servers:
            env[ENV_NAMES[s.kind]] = s.url
        env["EMBEDRAIL_SERVER_LOGS"] = os.pathsep.join(s.log for s in servers)
        proc = subprocess.Popen(cmd, env=env)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            rc = proc.wait()
        if rc != 0:
            for s in servers:
                print(f"\n----- last lines of the {s.kind} server log ({s.log}) -----", file=sys.stderr)
                print(tail(s.log, 40), file=sys.stderr)
        return rc
    finally:
        for s in servers:
            stop_server(s)


def cmd_provision(args: argparse.Namespace) -> int:
    kinds = parse_only(args.only)
    if "es" in kinds:
        print(provision_es())
        print(find_java(17))
    if "weaviate" in kinds:
        print(provision_weaviate())
    if "chroma" in kinds:
        print(chroma_binary())
    if "opensearch" in kinds:
        print(provision_opensearch())
    if "pg" in kinds:
        print(pg_bin("postgres"))
        print("pgvector", ensure_pgvector())
    if "redis" in kinds:
        print(ensure_debian_package("redis-server", "redis-server"))
    if "s3" in kinds:
        print(provision_seaweedfs())
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("up", "down", "provision", "run"):
        p = sub.add_parser(name)
        if name != "down":
            p.add_argument("--only", help="comma-separated subset of es,weaviate,chroma,pg,redis,opensearch")
        if name == "run":
            p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    try:
        return {"up": cmd_up, "down": cmd_down, "run": cmd_run, "provision": cmd_provision}[args.command](args)
    except ProvisionError as e:
        log(f"FAILED: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
