"""Connector logic that needs no server: URLs and credential redaction, the ES dims limit per
version, index option defaults, the portable filter form, metadata encoding, name normalisation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from embedrail.connectors import ConfigError, IndexSpec, connect, parse_filter, safe_url
from embedrail.connectors._es_schema import default_index_options, dims_limit
from embedrail.connectors._es_schema import es_filter as _es_filter
from embedrail.connectors._es_schema import filterable as _filterable
from embedrail.connectors._es_schema import score as _score
from embedrail.connectors._filters import Cond
from embedrail.connectors._records import check_spec, decode_scalar_metadata, encode_scalar_metadata
from embedrail.connectors._urls import parse_url
from embedrail.connectors.chroma import _where
from embedrail.connectors.weaviate import normalize_name
from embedrail.errors import IndexMismatchError
from embedrail.secrets import scrub

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "version,limit",
    [
        ("8.0.0", 1024),
        ("8.7.1", 1024),
        ("8.8.0", 2048),
        ("8.10.4", 2048),
        ("8.11.0", 4096),
        ("8.19.21", 4096),
        ("9.0.0", 4096),
        ("9.2.1-SNAPSHOT", 4096),
        ((8, 9), 2048),
    ],
)
def test_es_dims_limit_per_version(version: str | tuple[int, ...], limit: int) -> None:
    assert dims_limit(version) == limit


def test_es_default_index_options() -> None:
    assert default_index_options("8.11.3") == "hnsw"
    assert default_index_options("8.12.0") == "int8_hnsw"
    assert default_index_options("9.1.0") == "int8_hnsw"  # explicit: 9.1+ would pick bbq_hnsw by itself


def test_es_score_conversion_back_to_similarity() -> None:
    assert _score("dot_product", (1 + 0.8) / 2) == pytest.approx(0.8)
    assert _score("cosine", (1 - 0.2) / 2) == pytest.approx(-0.2)
    assert _score("l2_norm", 1 / (1 + 0.5**2)) == pytest.approx(-0.5)
    assert _score("max_inner_product", 1 + 0.3) == pytest.approx(0.3)
    assert _score("max_inner_product", 1 / (1 + 0.3)) == pytest.approx(-0.3)


@pytest.mark.parametrize(
    "url,store,transport,host,port,name",
    [
        ("es://127.0.0.1:9200/docs", "es", "http", "127.0.0.1", 9200, "docs"),
        ("es+https://u:p@es.example.com:9243/docs?ca_certs=/ca.pem", "es", "https", "es.example.com", 9243, "docs"),
        ("chroma:///var/lib/chroma?collection=docs", "chroma", "file", "", None, "var/lib/chroma"),
        ("chroma+http://localhost:8000/docs", "chroma", "http", "localhost", 8000, "docs"),
        ("chroma+https://c.example.com/docs", "chroma", "https", "c.example.com", None, "docs"),
        ("weaviate://127.0.0.1:8080/Docs?grpc_port=50051", "weaviate", "http", "127.0.0.1", 8080, "Docs"),
        ("weaviate+https://w.example.com/Docs?api_key=k", "weaviate", "https", "w.example.com", None, "Docs"),
    ],
)
def test_parse_url(url: str, store: str, transport: str, host: str, port: int | None, name: str) -> None:
    u = parse_url(url)
    assert (u.store, u.transport, u.host, u.port, u.name) == (store, transport, host, port, name)


@pytest.mark.parametrize(
    "url,expected",
    [
        ("es+https://elastic:s3cr3t@h:9200/docs", "es+https://h:9200/docs"),
        ("es+https://h:9200/docs?api_key=QUJDOmRlZg==&ca_certs=/etc/ca.pem", "es+https://h:9200/docs?ca_certs=/etc/ca.pem"),
        ("weaviate://h:8080/Docs?grpc_port=50051&api_key=sekret", "weaviate://h:8080/Docs?grpc_port=50051"),
        ("chroma+http://u:tok@h:8000/docs?token=abc", "chroma+http://h:8000/docs"),
        ("chroma:///data/db?collection=docs", "chroma:///data/db?collection=docs"),
    ],
)
def test_safe_url_drops_credentials(url: str, expected: str) -> None:
    assert safe_url(url) == expected


def test_store_url_attribute_has_no_credentials() -> None:
    es = connect("es+https://elastic:s3cr3t@h.invalid:9200/docs?api_key=TOPSECRET&ca_certs=/nonexistent.pem")
    assert es.url == "es+https://h.invalid:9200/docs?ca_certs=/nonexistent.pem"
    wv = connect("weaviate://h.invalid:8080/docs?grpc_port=1&api_key=TOPSECRET")
    assert "TOPSECRET" not in wv.url and wv.name == "Docs"
    ch = connect("chroma+http://user:TOPSECRET@h.invalid:8000/docs")
    assert "TOPSECRET" not in ch.url and ch.name == "docs"


def test_scrub_removes_secrets_from_messages() -> None:
    msg = "failed GET https://elastic:pw123@h:9200/x?api_key=abc123 Authorization: ApiKey Zm9vYmFy"
    out = scrub(msg, "pw123")
    assert "pw123" not in out and "abc123" not in out and "Zm9vYmFy" not in out


@pytest.mark.parametrize(
    "bad",
    [
        "http://h:9200/docs",
        "es",
        "mongo://h/db",
        "es+ftp://h/docs",
        "es://h:notaport/docs",
    ],
)
def test_bad_urls_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError):
        connect(bad)


def test_names_are_validated_or_normalised() -> None:
    with pytest.raises(ConfigError):
        connect("es://h:9200/Docs")  # ES index names are lowercase
    with pytest.raises(ConfigError):
        connect("es://h:9200/")  # no index
    with pytest.raises(ConfigError):
        connect("chroma:///tmp/x")  # no collection
    with pytest.raises(ConfigError):
        connect("chroma+http://h:8000/a")  # too short for Chroma
    assert normalize_name("docs") == "Docs"
    assert normalize_name("my-index.v2") == "My_index_v2"
    assert normalize_name("2024_docs") == "C2024_docs"


def test_connect_imports_no_store_client_until_used() -> None:
    code = (
        "import sys\nfrom embedrail import connectors\n"
        "s = connectors.connect('es://h.invalid:9200/docs')\n"  # constructing does not connect
        "bad = [m for m in ('weaviate', 'chromadb', 'embedrail.connectors.chroma', 'embedrail.connectors.weaviate') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "assert 'elasticsearch' not in sys.modules or s.url == 'es://h.invalid:9200/docs'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT), timeout=60)
    assert out.returncode == 0, out.stderr


def test_filter_parsing() -> None:
    conds = parse_filter({"lang": "en", "year": {"$gte": 2020, "$lt": 2025}, "tag": {"$in": ["a", "b"]}})
    assert conds == [
        Cond("lang", "$eq", "en"),
        Cond("year", "$gte", 2020),
        Cond("year", "$lt", 2025),
        Cond("tag", "$in", ["a", "b"]),
    ]
    assert parse_filter(None) == [] and parse_filter({}) == []
    for bad in (
        {"$and": [{"a": 1}]},
        {"a": {"$like": "x"}},
        {"a": {}},
        {"a": {"$in": []}},
        {"a": {"$in": "abc"}},
        {"a": {"$gt": "x"}},
        {"a": {"$gt": True}},
        {"a": None},
        {"a": [1]},
        {"a": float("nan")},
    ):
        with pytest.raises(ConfigError):
            parse_filter(bad)
    with pytest.raises(ConfigError):
        parse_filter(["a"])  # type: ignore[arg-type]


def test_filter_translation() -> None:
    conds = parse_filter({"lang": "en", "year": {"$gte": 2020, "$lt": 2025}, "t": {"$nin": ["x"]}, "k": {"$ne": 1}})
    assert _where(conds) == {
        "$and": [
            {"lang": {"$eq": "en"}},
            {"year": {"$gte": 2020}},
            {"year": {"$lt": 2025}},
            {"t": {"$nin": ["x"]}},
            {"k": {"$ne": 1}},
        ]
    }
    assert _where(parse_filter({"a": 1})) == {"a": {"$eq": 1}}
    assert _es_filter(conds) == {
        "bool": {
            "filter": [{"term": {"m.lang": "en"}}, {"range": {"m.year": {"gte": 2020, "lt": 2025}}}],
            "must_not": [{"terms": {"m.t": ["x"]}}, {"term": {"m.k": 1}}],
        }
    }


def test_scalar_metadata_encoding_round_trips() -> None:
    md = {"s": "x", "i": 1, "f": 1.5, "b": False, "l": [1, "a"], "d": {"x": {"y": [None]}}, "n": None,
          "__json__tricky": "not json", "nan_is_json": "NaN"}
    enc = encode_scalar_metadata(md)
    assert all(isinstance(v, str | int | float | bool) for v in enc.values())
    assert enc["s"] == "x" and enc["i"] == 1 and "l" not in enc  # scalars stay filterable
    assert decode_scalar_metadata(enc) == md


def test_es_filterable_copy_only_holds_addressable_values() -> None:
    md = {"s": "x", "i": 1, "l": ["a", "b"], "mixed": [1, "a"], "d": {"a": 1}, "n": None, "a.b": 1, "_x": 1, "e": []}
    assert _filterable(md) == {"s": "x", "i": 1, "l": ["a", "b"]}


def test_spec_check_messages() -> None:
    a = IndexSpec(dims=384, metric="cosine", fingerprint="fa", embedding={"model": "minilm"})
    check_spec("idx", a, a, "u")
    check_spec("idx", None, a, "u")
    with pytest.raises(IndexMismatchError, match=r"minilm.*dims 384 != requested 768"):
        check_spec("idx", a, IndexSpec(dims=768, metric="cosine", fingerprint="fa"), "u")
