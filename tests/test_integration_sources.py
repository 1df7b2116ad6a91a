"""Sources: parsing, field names, metadata, tombstones, bad rows with their location."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedrail.errors import ConfigError, InputError
from embedrail.integration.documents import Document, partition_of
from embedrail.integration.sources import (
    BadRow,
    CsvSource,
    FileSource,
    JsonlSource,
    PydocSource,
    SqlSource,
    open_source,
)


def test_jsonl_fields_metadata_tombstones_and_bad_rows(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    rows = [
        {"key": 1, "body": "first", "lang": "en", "tags": ["a"]},
        {"key": "2", "body": "gone", "_deleted": True},
        {"key": "3"},
        {"key": 1, "body": "dup"},
    ]
    p.write_bytes(b"\n".join(json.dumps(r).encode() for r in rows) + b'\n[1, 2]\n{"key": "x", "body": "\xc3("}\n\n')
    src = open_source(str(p), id_field="key", text_field="body")
    assert isinstance(src, JsonlSource)
    docs = list(src)
    assert [(d.id, d.text, d.metadata, d.deleted) for d in docs] == [
        ("1", "first", {"lang": "en", "tags": ["a"]}, False),
        ("2", "gone", {}, True),
    ]
    assert [(b.location.rsplit(":", 1)[1], b.reason.split(" ")[0]) for b in src.bad_rows] == [
        ("3", "missing"), ("4", "duplicate"), ("5", "expected"), ("6", "invalid"),
    ]  # fmt: skip
    assert src.bad_ids == {"3"}
    with pytest.raises(InputError, match=r"d.jsonl:3: missing text field 'body'"):
        list(open_source(str(p), id_field="key", text_field="body", on_bad_row="fail"))


def test_csv_and_query_string_options(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text('doc,content,lang\na,"multi\nline text",en\nb,,de\nc,third,fr,extra\n', encoding="utf-8")
    src = open_source(f"{p}?id=doc&text=content")
    assert isinstance(src, CsvSource)
    docs = list(src)
    assert [(d.id, d.text, d.metadata) for d in docs] == [("a", "multi\nline text", {"lang": "en"})]
    assert [b.location.rsplit(":", 1)[1] for b in src.bad_rows] == ["4", "5"]


def test_directory_source_ids_are_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.md").write_text("# A\ntext")
    (tmp_path / "sub" / "b.txt").write_text("bee")
    (tmp_path / "sub" / "c.bin").write_bytes(b"\x00\xff")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.md").write_text("secret")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe bad")
    src = open_source(str(tmp_path))
    assert isinstance(src, FileSource)
    listed = list(src)  # listed, not read: the engine reads a file only when its listing version changed
    assert [d.id for d in listed] == ["a.md", "bad.txt", "sub/b.txt"] and all(d.lazy and d.text == "" for d in listed)
    assert src.stats["ignored"] == 2  # c.bin (no parser) and the hidden folder's file
    loaded = [d.loader() for d in listed]
    assert [(x.id, x.text) for x in loaded if not isinstance(x, BadRow)] == [("a.md", "# A\n\ntext"), ("sub/b.txt", "bee")]
    assert loaded[0].sections[0].heading_path == ("A",) and loaded[0].metadata == {"path": "a.md", "title": "A"}
    assert [(x.id, x.reason) for x in loaded if isinstance(x, BadRow)] == [("bad.txt", "invalid UTF-8 at byte 0")]
    assert [d.id for d in open_source(str(tmp_path), glob="sub/*.txt")] == ["sub/b.txt"]


def test_pydoc_source_is_deterministic_and_capped() -> None:
    src = open_source("pydoc:?max_chars=800&modules=argparse,json,shlex")
    assert isinstance(src, PydocSource)
    a, b = list(src), list(open_source("pydoc:?max_chars=800&modules=argparse,json,shlex"))
    assert [d.id for d in a] == ["argparse", "json", "shlex"] and a == b
    assert all(len(d.text) <= 800 for d in a) and "command-line" in a[0].text.lower()
    members = list(open_source("pydoc:?modules=json&per=member"))
    assert members[0].id == "json" and "json.dumps" in {d.id for d in members}
    assert len(list(open_source("pydoc:"))) > 150  # the whole standard library


def test_sql_source_watermark(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "s.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (id INTEGER, text TEXT, ts TEXT)")
    con.executemany("INSERT INTO t VALUES (?,?,?)", [(1, "a", "2024-01-01"), (2, "b", "2024-02-01")])
    con.commit()
    src = open_source(f"sql+sqlite:///{db}?query=SELECT id, text, ts FROM t&watermark=ts")
    assert isinstance(src, SqlSource) and src.is_feed
    assert [d.id for d in src] == ["1", "2"] and src.max_watermark() == "2024-02-01"
    src.set_watermark("2024-01-15")
    assert [d.id for d in src] == ["2"]
    with pytest.raises(ConfigError, match="query=SELECT"):
        open_source(f"sql+sqlite:///{db}")


def test_iterables_and_errors() -> None:
    docs = [Document("a", "x"), {"id": "b", "text": "y", "n": 1}]
    assert [d.id for d in open_source(docs)] == ["a", "b"]
    gen = open_source(iter(docs))
    assert len(list(gen)) == 2
    with pytest.raises(ConfigError, match="one-shot"):
        list(gen)
    with pytest.raises(ConfigError, match="not found"):
        open_source("/no/such/file.jsonl")
    with pytest.raises(ConfigError, match="unknown option"):
        open_source("pydoc:?colour=blue")


def test_partitions_are_stable_and_cover_everything() -> None:
    ids = [f"doc-{i}" for i in range(300)]
    parts = [partition_of(i, 4) for i in ids]
    assert set(parts) == {0, 1, 2, 3} and parts == [partition_of(i, 4) for i in ids]
    assert (partition_of("doc-1", 4), partition_of("a", 7)) == (1, 2)  # the same on every machine


def test_pydoc_text_never_contains_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # cgi.parse(environ=os.environ) & co: a rendered default would leak every variable (and change per run)
    monkeypatch.setenv("EMBEDRAIL_TEST_SECRET", "s3cr3t-value-that-must-not-leak")
    docs = list(open_source("pydoc:?per=member&modules=cgi,os,platform,subprocess"))
    assert docs and not any("s3cr3t-value-that-must-not-leak" in d.text for d in docs)
