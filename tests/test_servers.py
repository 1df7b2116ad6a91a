"""The test servers are real, reachable, and the versions the README names."""

from __future__ import annotations

import json
import urllib.request

from util import http_base, with_name


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_elasticsearch_is_real(es_url):
    nodes = _get(f"{http_base(es_url)}/_nodes/_local?filter_path=nodes.*.version")["nodes"]
    (node,) = nodes.values()
    assert int(node["version"].split(".")[0]) >= 8
    health = _get(f"{http_base(es_url)}/_cluster/health")
    assert health["status"] in ("green", "yellow")


def test_weaviate_is_real(weaviate_url):
    meta = _get(f"{http_base(weaviate_url)}/v1/meta")
    major, minor = (int(x) for x in meta["version"].split(".")[:2])
    assert (major, minor) >= (1, 32), "collection aliases need Weaviate >= 1.32"
    assert "grpc_port=" in weaviate_url


def test_chroma_server_is_real(chroma_http_url):
    beat = _get(f"{http_base(chroma_http_url)}/api/v2/heartbeat")
    assert beat


def test_postgresql_is_real_and_needs_its_password(pg_server_url):
    import psycopg
    import pytest
    from sqlalchemy.engine import make_url

    u = make_url(pg_server_url)
    with psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.database) as c:
        version = c.execute("SHOW server_version_num").fetchone()[0]
        assert int(version) >= 130000
        assert c.execute("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host=u.host, port=u.port, user=u.username, password="wrong", dbname=u.database).close()


def test_redis_is_real(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping() and client.set("embedrail-test", "1") and client.get("embedrail-test") == b"1"
    finally:
        client.close()


def test_with_name_builds_store_urls():
    assert with_name("es://h:1", "docs") == "es://h:1/docs"
    assert with_name("weaviate://h:1?grpc_port=2", "Docs") == "weaviate://h:1/Docs?grpc_port=2"
    assert with_name("chroma+http://h:1", "docs") == "chroma+http://h:1/docs"
    assert with_name("chroma:///tmp/x", "docs") == "chroma:///tmp/x?collection=docs"


def test_a_server_that_loses_its_port_is_started_again(monkeypatch):
    """A port chosen free can be taken before the server binds it (the CI failure of 2026-12-05: SeaweedFS's filer
    died with "address already in use"). ``start`` starts such a server again on fresh ports instead of failing
    the whole test run. Fault injected: the first port handed to Redis is one a socket here is listening on."""
    import socket

    from conftest import servers

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    real = servers.free_ports
    handed = []

    def first_one_taken(n):
        handed.append(n)
        return [taken.getsockname()[1]] if len(handed) == 1 else real(n)

    monkeypatch.setattr(servers, "free_ports", first_one_taken)
    port = taken.getsockname()[1]
    try:
        (srv,) = servers.start(["redis"])
    finally:
        taken.close()
    try:
        assert f":{port}/" not in srv.url
        assert len(handed) == 2, "the first start must have failed on the taken port and been retried once"
        import redis

        client = redis.Redis.from_url(srv.url)
        assert client.ping()
        client.close()
    finally:
        servers.stop_server(srv)


def test_free_ports_avoid_the_ephemeral_range():
    from conftest import servers

    low, high = servers._ephemeral_range()
    ports = servers.free_ports(8)
    assert len(set(ports)) == 8
    assert all(p < low or p > high for p in ports), (ports, low, high)
