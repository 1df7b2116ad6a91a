"""Each partition reads only its share of the source (issue 27): JSONL/CSV by byte ranges at record
boundaries, SQL by key ranges the database evaluates; P partitions read the source once in total and the
store ends exact."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from test_integration_support import assert_in_step, minilm, sentences, store_records, write_jsonl
from util import LEDGERS, with_name

from embedrail.errors import SourceUnavailableError
from embedrail.integration.engine import SyncEngine
from embedrail.integration.sources import CsvSource, JsonlSource, SqlSource, open_source
from embedrail.integration.sources import split as split_mod


def read(src: Any, share: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(id, location) of every document, and of every bad row, that one iteration over ``share`` yields."""
    src.read_share(share)
    try:
        out = [(d.id, d.location) for d in src]
        return out + [(b.reason, b.location) for b in src.bad_rows]
    finally:
        src.read_share(None)


def rows(n: int) -> list[dict[str, Any]]:
    # lengths vary a lot, so that byte cuts fall anywhere in a record
    return [{"id": f"d{i:03d}", "text": f"doc {i} " + "word " * (i * 7 % 53)} for i in range(n)]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 40])
def test_jsonl_shares_read_every_line_once_with_its_line_number(tmp_path: Path, count: int) -> None:
    docs = rows(29)
    lines = [json.dumps(d) for d in docs]
    lines[5] = "{not json"  # a bad row keeps its line number in a share too
    lines.insert(9, "")
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    src = JsonlSource(tmp_path / "d.jsonl")
    whole = read(src)
    shares = src.shares(count, src.state())
    assert len(shares) == count and shares[0]["start"] == 0 and shares[-1]["end"] == (tmp_path / "d.jsonl").stat().st_size
    assert all(a["end"] == b["start"] for a, b in zip(shares, shares[1:], strict=False))
    got = [r for sh in shares for r in read(src, sh)]
    assert sorted(got) == sorted(whole) and len(got) == len(whole)


@pytest.mark.parametrize("count", [1, 2, 3, 5, 16])
def test_csv_shares_cut_only_between_records(tmp_path: Path, count: int) -> None:
    """Quoted fields with newlines, doubled quotes and commas: a cut never falls inside a record."""
    path = tmp_path / "d.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "note"])
        for i in range(40):
            text = f'line one of {i}\n"quoted", line two\nthree' if i % 3 == 0 else f"plain {i} " + "x" * (i * 5 % 31)
            w.writerow([f"r{i:02d}", text, 'a "b", c' if i % 4 == 0 else ""])
    src = CsvSource(path)
    whole = read(src)
    assert len(whole) == 40 and whole[1][1] == f"{path}:5"  # the first record spans lines 2-4
    got = [r for sh in src.shares(count, src.state()) for r in read(src, sh)]
    assert sorted(got) == sorted(whole) and len(got) == len(whole)
    texts = {d.id: d.text for d in src}
    for sh in src.shares(count, src.state()):
        src.read_share(sh)
        assert all(d.text == texts[d.id] for d in src)
    src.read_share(None)


def test_a_file_rewritten_after_the_plan_is_refused_an_appended_one_read_as_planned(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", rows(20))
    src = JsonlSource(path)
    shares = src.shares(3, src.state())
    with path.open("a") as f:  # appended after the plan: the next run reads it
        f.write(json.dumps({"id": "late", "text": "appended"}) + "\n")
    assert {i for sh in shares for i, _ in read(src, sh)} == {d["id"] for d in rows(20)}
    write_jsonl(path, [{**d, "text": d["text"] + "!"} for d in rows(25)])  # rewritten: the byte ranges no longer fit
    with pytest.raises(SourceUnavailableError, match="changed while this run read it"):
        read(src, shares[1])


def test_boundaries_on_a_file_without_a_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}')
    size = path.stat().st_size
    assert split_mod.boundaries(path, 0, size, [0, 1, 25, 26, size], quoted=False) == [(0, 0), (25, 1), (25, 1), (size, 1),
                                                                                        (size, 1)]  # fmt: skip


def sql_table(url: str, table: str, n: int, *, null_ids: int = 0, repeats: int = 0) -> None:
    eng = sa.create_engine(url)
    with eng.begin() as c:
        c.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        c.execute(sa.text(f"CREATE TABLE {table} (id VARCHAR(20), text TEXT, updated INTEGER)"))
        data = [{"id": f"k{i:04d}", "text": sentences(f"k{i}", 1, 6), "u": i} for i in range(n)]
        data += [{"id": None, "text": "no id", "u": 0} for _ in range(null_ids)]
        data += [{"id": f"k{i:04d}", "text": "a repeat", "u": 0} for i in range(repeats)]
        c.execute(sa.text(f"INSERT INTO {table} VALUES (:id, :text, :u)"), data)
    eng.dispose()


@pytest.mark.parametrize("ledger_kind", LEDGERS)
def test_sql_key_ranges_read_each_row_once(ledger_url: str, ledger_kind: str, unique_name: str) -> None:
    """The ledger_url fixture's database (SQLite file or PostgreSQL) holds the table: the ranges are the
    database's own, rows without an id go to the first share, a repeated id stays in one share."""
    table = f"src_{unique_name}"[:40]
    sql_table(ledger_url, table, 50, null_ids=2, repeats=3)
    src = SqlSource(ledger_url, table=table)
    whole = read(src)
    assert len(whole) == 55  # 50 documents, 2 rows without an id, 3 repeats
    for count in (2, 4, 60):
        shares = src.shares(count, src.state())
        assert len(shares) == count and (count < 55 or any(s.get("empty") for s in shares))
        per = [read(src, sh) for sh in shares]
        assert sorted(i for p in per for i, _ in p if i.startswith("k")) == sorted(i for i, _ in whole if i.startswith("k"))
        assert sum(len(p) for p in per) == 55
        assert sum(1 for p in per for r, _ in p if r.startswith("missing id")) == 2
        assert sum(1 for p in per for r, _ in p if r.startswith("duplicate id")) == 3  # each repeat met in its own share
    src.close()
    # a feed: the ranges split the rows above the watermark only
    feed = SqlSource(ledger_url, table=table, watermark="updated")
    feed.set_watermark(40)
    shares = feed.shares(3, None)
    assert sorted(i for sh in shares for i, _ in read(feed, sh)) == [f"k{i:04d}" for i in range(40, 50)]
    feed.close()


def in_tasks(src: Path, target: str, ledger: str, n: int) -> dict[str, Any]:
    """The steps as Airflow runs them, each in an engine of its own: a plan, the split decided once (through JSON),
    n partition tasks, deletes, report."""
    with SyncEngine(str(src), [target], ledger=ledger, embedder=minilm(), chunk_tokens=32) as e:
        ctx = json.loads(json.dumps(e.prepare().to_dict()))
        shares = json.loads(json.dumps(e.split(ctx, n)))
    parts = []
    for i, share in enumerate(shares):
        with SyncEngine(str(src), [target], ledger=ledger, embedder=minilm(), chunk_tokens=32) as e:
            parts.append(e.sync_partition(i, n, ctx, share))
    with SyncEngine(str(src), [target], ledger=ledger, embedder=minilm(), chunk_tokens=32) as e:
        return e.finalize(ctx, [*parts, e.delete_absent(ctx)])


@pytest.mark.parametrize("ledger_kind", LEDGERS)
def test_four_partitions_read_the_source_once_and_the_store_ends_exact(tmp_path: Path, ledger_url: str, pgvector_url: str,
                                                                       unique_name: str) -> None:  # fmt: skip
    target = with_name(pgvector_url, "s" + unique_name[-30:])
    docs = [{"id": f"s{i:03d}", "text": sentences(f"s{i}", 1 + i % 3, 8)} for i in range(90)]
    src = write_jsonl(tmp_path / "docs.jsonl", docs)

    def run_in_tasks(n: int) -> dict[str, Any]:
        return in_tasks(src, target, ledger_url, n)

    first = run_in_tasks(4)
    assert first["ok"] and first["read"] == 90 and first["documents"] == 90
    assert_in_step(target, minilm(), docs, 32)
    docs = [d for d in docs if d["id"] != "s007"] + [{"id": "s900", "text": "A new document about herons."}]
    docs[3] = {**docs[3], "text": "An edited document about kingfishers."}
    write_jsonl(src, docs)
    second = run_in_tasks(4)
    assert second["ok"] and second["read"] == 90 and next(iter(second["plan"].values()))["new"] >= 1
    assert_in_step(target, minilm(), docs, 32)
    # a source that cannot split: every partition reads it whole and keeps its hash share
    with SyncEngine(lambda: iter(docs), [target], ledger=ledger_url, embedder=minilm(), chunk_tokens=32) as e:
        ctx = e.prepare()
        assert e.split(ctx, 3) == [None] * 3
        parts = [e.sync_partition(i, 3, ctx) for i in range(3)]
        final = e.finalize(ctx, [*parts, e.delete_absent(ctx)])
    assert final["ok"] and final["read"] == 3 * 90 and final["documents"] == 90 and final["embedded"] == 0
    assert_in_step(target, minilm(), docs, 32)


def test_sql_source_split_into_pgvector(pg_url: str, pgvector_url: str, unique_name: str, tmp_path: Path) -> None:
    """A SQL source on PostgreSQL, 4 partitions with their key ranges, into pgvector: read once, exact."""
    table = f"docs_{unique_name}"[:40]
    sql_table(pg_url, table, 80)
    spec = f"sql+{pg_url}?table={table}"
    target = with_name(pgvector_url, "s" + unique_name[-30:])
    ledger = f"sqlite:///{tmp_path}/ledger.sqlite"
    with SyncEngine(spec, [target], ledger=ledger, embedder=minilm(), chunk_tokens=32) as e:
        ctx = e.prepare()
        shares = e.split(ctx, 4)
        assert all(s is not None for s in shares)
        parts = [e.sync_partition(i, 4, ctx, s) for i, s in enumerate(shares)]
        final = e.finalize(ctx, [*parts, e.delete_absent(ctx)])
    assert final["ok"] and final["read"] == 80 and [p["read"] for p in parts] == [20, 20, 20, 20]
    want = [{"id": f"k{i:04d}", "text": sentences(f"k{i}", 1, 6), "updated": i} for i in range(80)]
    assert_in_step(target, minilm(), want, 32)
    again = open_source(spec)
    assert again.shares(4, None) == shares  # the same ranges, whoever asks
    again.close()


def folder(root: Path, n: int) -> list[str]:
    """n Markdown/text files spread over nested folders (names that sort around ``/``: ``a/b.c`` and ``a/b``)."""
    names = []
    for i in range(n):
        sub = ["", "a/", "a/b/", "a/b.c/", "ab/", "z/y/x/", "m/"][i * 5 % 7]
        name = f"{sub}f{i:02d}" + (".md" if i % 3 else ".txt")
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"# Title {i}\n\n" + sentences(f"f{i}", 1 + i % 4, 8))
        names.append(name)
    return names


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 80])
def test_a_folder_splits_its_listing(tmp_path: Path, count: int) -> None:
    """Each share is a range of relative paths: the ranges cover every file once (more shares than files: empty
    ones), and a partition lists only folders that can hold its range."""
    from fsspec.implementations.local import LocalFileSystem

    class Seen(LocalFileSystem):  # records what was listed: observation only, the files are real
        listed: list[str] = []

        def ls(self, path: str, detail: bool = False, **kw: Any) -> Any:
            self.listed.append(path)
            return super().ls(path, detail=detail, **kw)

    names = folder(tmp_path / "docs", 40)
    src = open_source(str(tmp_path / "docs"))
    whole = sorted(i for i, _ in read(src))
    assert whole == sorted(names)
    shares = json.loads(json.dumps(src.shares(count, None)))
    assert len(shares) == count and shares[0]["from"] is None and shares[-1]["to"] is None
    got = [sorted(i for i, _ in read(src, sh)) for sh in shares]
    assert sorted(i for part in got for i in part) == whole  # once each
    if count <= len(whole):
        assert all(part for part in got) and max(map(len, got)) <= 3 * len(whole) / count
    fs = Seen()
    spy = FileSourceWith(fs, str(tmp_path / "docs"))
    for sh, part in zip(shares, got, strict=True):
        Seen.listed = []
        assert sorted(i for i, _ in read(spy, sh)) == part
        if count > 1 and sh["to"] is not None and sh["to"] < "z/":
            assert not any("/z" in p.removeprefix(str(tmp_path)) for p in Seen.listed), Seen.listed  # never looked in z/


def FileSourceWith(fs: Any, root: str) -> Any:  # noqa: N802 - reads as the class it builds
    from embedrail.integration.sources.objects import FileSource

    return FileSource(root, fs=fs)


def test_folder_partitions_into_pgvector_then_a_whole_run_finds_nothing_to_do(tmp_path: Path, pgvector_url: str,
                                                                            unique_name: str) -> None:  # fmt: skip
    """A folder in 3 partitions (each lists and reads its range), a file added after the plan read by one of
    them, a deleted file's chunks deleted; then one whole run embeds, writes and deletes nothing."""
    root = tmp_path / "docs"
    names = folder(root, 30)
    target = with_name(pgvector_url, "f" + unique_name[-30:])
    ledger = f"sqlite:///{tmp_path}/ledger.sqlite"

    def run_in_tasks(n: int, after_plan: Any = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        with SyncEngine(str(root), [target], ledger=ledger, embedder=minilm(), chunk_tokens=32) as e:
            ctx = json.loads(json.dumps(e.prepare().to_dict()))
            shares = json.loads(json.dumps(e.split(ctx, n)))
        if after_plan:
            after_plan()
        parts = []
        for i, share in enumerate(shares):
            with SyncEngine(str(root), [target], ledger=ledger, embedder=minilm(), chunk_tokens=32) as e:
                parts.append(e.sync_partition(i, n, ctx, share))
        with SyncEngine(str(root), [target], ledger=ledger, embedder=minilm(), chunk_tokens=32) as e:
            return e.finalize(ctx, [*parts, e.delete_absent(ctx)]), parts

    first, parts = run_in_tasks(3, after_plan=lambda: (root / "m" / "late.md").write_text("# Late\n\nAdded after the plan."))
    assert first["ok"] and first["documents"] == 31 and first["read"] == 31 and all(p["read"] for p in parts)
    assert first["files"]["listed"] == 31  # the partitions listed the folder once in total
    (root / names[4]).unlink()
    second, _ = run_in_tasks(3)
    assert second["ok"] and second["read"] == 30 and next(iter(second["plan"].values()))["deleted"] == 1
    with SyncEngine(str(root), [target], ledger=ledger, embedder=minilm(), chunk_tokens=32) as e:
        whole = e.run().to_dict()
    plan = next(iter(whole["plan"].values()))
    assert whole["ok"] and whole["embedded"] == 0 and plan["deleted"] == 0 and plan["changed"] == 0 and plan["new"] == 0
    drift = next(iter(whole["drift"].values()))
    assert not drift["found"] and drift["store_count"] == drift["ledger_count"] > 0, drift
    assert {cid.rsplit("#", 1)[0] for cid in store_records(target)} == {*names, "m/late.md"} - {names[4]}


def test_an_id_repeated_in_two_shares_ends_as_its_first_occurrence(tmp_path: Path, pgvector_url: str, unique_name: str) -> None:
    """A file whose id repeats in two byte ranges: both partitions write their copy (neither sees the other),
    so the store and the ledger may keep either; the delete step, reading the whole file, finds the repeat
    and writes the first occurrence again (what one process keeps), so the index ends as a one-process
    run leaves it, and the next run finds nothing to do."""
    target = with_name(pgvector_url, "r" + unique_name[-30:])
    docs = [{"id": f"r{i:03d}", "text": sentences(f"r{i}", 1 + i % 3, 8)} for i in range(40)]
    first_copy = {"id": "r005", "text": docs[5]["text"]}
    later = {"id": "r005", "text": "A later copy of r005, about lighthouses. " + sentences("later", 4, 8)}  # more chunks
    src = write_jsonl(tmp_path / "docs.jsonl", [*docs, later])
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite'}"

    def run_in_tasks(n: int) -> dict[str, Any]:
        return in_tasks(src, target, ledger, n)

    r = run_in_tasks(2)
    assert r["ok"] and any("r005" in n and "more than once" in n for n in r["notes"]), r["notes"]
    assert docs[5] == first_copy
    assert_in_step(target, minilm(), docs, 32)  # the first occurrence, its chunk count, nothing of the later copy
    again = run_in_tasks(2)  # the later copy is written by its partition again, then replaced again
    assert again["ok"] and any("r005" in n for n in again["notes"])
    assert_in_step(target, minilm(), docs, 32)
    with SyncEngine(str(src), [target], ledger=ledger, embedder=minilm(), chunk_tokens=32) as e:  # one process
        one = e.run()
    assert one.ok and one.embedded == 0 and sum(one.upserted.values()) == 0 and sum(one.deleted.values()) == 0
