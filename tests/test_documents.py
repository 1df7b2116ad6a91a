"""Documents from where they live (issue 25): files in a folder or an S3 bucket, parsed (PDF, DOCX, HTML,
Markdown, reStructuredText), chunked on their own structure, kept in step by their listing.

The files are made by the real tools in the tests (fpdf2 for PDF, python-docx for DOCX); the bucket is a real
S3-compatible server (SeaweedFS, started by ``scripts/servers.py``); the index a real Elasticsearch.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_integration_support import minilm
from util import opened, with_name

from embedrail import sync
from embedrail.errors import ConfigError, SourceUnavailableError
from embedrail.integration.chunking import Chunker
from embedrail.integration.cli import main
from embedrail.integration.documents import Document, Section
from embedrail.integration.ledger import Ledger
from embedrail.integration.parsers import PARSERS, ParseError, parser_for, resolve_parsers
from embedrail.integration.sources import FileSource, open_source

BODY = {
    "guide.pdf": "Herons wade in shallow water and strike at passing fish with their long beaks.",
    "owls.pdf": "Barn owls hunt voles at night, guided by hearing so sharp they need no light at all.",
    "handbook.docx": "The boiler must be bled every autumn before the radiators are switched on again.",
    "page.html": "Sourdough needs a starter fed with flour and water for about a week before baking.",
    "notes.md": "Glaciers carve U-shaped valleys as they grind slowly down from the mountains.",
    "intro.rst": "A lighthouse keeper once trimmed the wicks and wound the clockwork every four hours.",
}


# ------------------------------------------------------------------------------------------------ real files
def make_pdf(path: Path, pages: list[tuple[str | None, int, str]], title: str | None = None, password: str | None = None) -> Path:
    """A PDF by fpdf2: one page per (outline title or None, outline level, text)."""
    from fpdf import FPDF

    pdf = FPDF()
    if title:
        pdf.set_title(title)
    pdf.set_font("helvetica", size=12)
    for heading, level, text in pages:
        pdf.add_page()
        if heading:
            pdf.start_section(heading, level=level)
        pdf.multi_cell(0, 8, text)
    if password:
        pdf.set_encryption(owner_password="owner", user_password=password)
    pdf.output(str(path))
    return path


def make_image_pdf(path: Path) -> Path:
    """A PDF whose only page is a picture (a scan): no text to extract."""
    from fpdf import FPDF
    from PIL import Image

    img = path.with_suffix(".png")
    Image.new("RGB", (60, 30), (200, 30, 30)).save(img)
    pdf = FPDF()
    pdf.add_page()
    pdf.image(str(img), x=10, y=10, w=60)
    pdf.output(str(path))
    return path


def make_docx(path: Path, title: str, body: str) -> Path:
    import docx

    d = docx.Document()
    d.core_properties.title = title
    d.add_heading(title, 0)
    d.add_heading("Install", 1)
    d.add_paragraph("Run the installer as an administrator.")
    d.add_heading("Heating", 2)
    d.add_paragraph(body)
    t = d.add_table(rows=2, cols=2)
    t.cell(0, 0).text, t.cell(0, 1).text = "month", "task"
    t.cell(1, 0).text, t.cell(1, 1).text = "October", "bleed radiators"
    d.add_heading("Garden", 1)
    d.add_paragraph("Prune the roses in late winter.")
    d.save(str(path))
    return path


HTML = """<!doctype html><html><head><title>Bakery notes</title><style>p {{color: red}}</style>
<script>var tracking = "SCRIPT TEXT";</script></head>
<body><nav><a href="/">Home</a> | <a href="/about">NAVIGATION TEXT</a></nav>
<header>HEADER BANNER TEXT</header>
<main><h1>Bread</h1><p>Good bread starts with good flour.</p>
<h2>Sourdough</h2><div>{body}</div><ul><li>rye</li><li>spelt <b>flour</b></li></ul></main>
<aside>SIDEBAR TEXT</aside><footer>FOOTER TEXT 2026</footer></body></html>"""

MARKDOWN = """---
title: Field notes
---
# Geology

Rocks tell slow stories.

## Ice

### Valleys

{body}

```python
# a comment, not a heading
print("x")
```

Rivers
------

Rivers cut V-shaped valleys instead.
"""

RST = """=========
Lighthouse
=========

Lamps and lenses.

History
-------

{body}

Keepers
~~~~~~~

They lived on the rock.
"""


def corpus(folder: Path) -> Path:
    """The mixed corpus: two PDFs, a DOCX, an HTML page, Markdown and reStructuredText."""
    folder.mkdir(parents=True, exist_ok=True)
    make_pdf(folder / "guide.pdf", [("Birds", 0, "Birds are everywhere in the marsh."), ("Herons", 1, BODY["guide.pdf"]),
                                    ("Trees", 0, "Alders line the banks of the marsh.")], title="Marsh guide")  # fmt: skip
    (folder / "nested").mkdir(exist_ok=True)
    make_pdf(folder / "nested" / "owls.pdf", [(None, 0, BODY["owls.pdf"])])
    make_docx(folder / "handbook.docx", "House handbook", BODY["handbook.docx"])
    (folder / "page.html").write_text(HTML.format(body=BODY["page.html"]))
    (folder / "notes.md").write_text(MARKDOWN.format(body=BODY["notes.md"]))
    (folder / "intro.rst").write_text(RST.format(body=BODY["intro.rst"]))
    return folder


def parse(path: Path) -> Any:
    p = parser_for(path.name, PARSERS)
    assert p is not None
    return p(path.read_bytes(), path.name)


# ------------------------------------------------------------------------------------------------ parsers
def test_pdf_text_per_page_with_outline_headings_and_title(tmp_path: Path) -> None:
    doc = parse(corpus(tmp_path) / "guide.pdf")
    assert doc.title == "Marsh guide"
    assert [(s.page, s.heading_path) for s in doc.sections] == [(1, ("Birds",)), (2, ("Birds", "Herons")), (3, ("Trees",))]
    assert BODY["guide.pdf"] in doc.sections[1].text and doc.metadata == {"pages": 3}


def test_unreadable_pdfs_say_why(tmp_path: Path) -> None:
    enc = make_pdf(tmp_path / "secret.pdf", [(None, 0, "classified")], password="hunter2")
    with pytest.raises(ParseError, match="encrypted"):
        parse(enc)
    with pytest.raises(ParseError, match="scanned image"):
        parse(make_image_pdf(tmp_path / "scan.pdf"))
    (tmp_path / "cut.pdf").write_bytes(make_pdf(tmp_path / "whole.pdf", [(None, 0, "x" * 50)]).read_bytes()[:200])
    with pytest.raises(ParseError, match="not a readable PDF"):
        parse(tmp_path / "cut.pdf")


def test_docx_headings_paragraphs_and_tables_in_document_order(tmp_path: Path) -> None:
    doc = parse(make_docx(tmp_path / "h.docx", "House handbook", BODY["handbook.docx"]))
    assert doc.title == "House handbook"
    paths = [s.heading_path for s in doc.sections]
    assert paths == [("House handbook", "Install"), ("House handbook", "Install", "Heating"), ("House handbook", "Garden")]
    heating = doc.sections[1].text
    assert BODY["handbook.docx"] in heating and "month | task\nOctober | bleed radiators" in heating
    with pytest.raises(ParseError, match="not a readable DOCX"):
        PARSERS[".docx"](b"PK\x03\x04 truncated", "x.docx")


def test_html_main_content_only(tmp_path: Path) -> None:
    (tmp_path / "p.html").write_text(HTML.format(body=BODY["page.html"]))
    doc = parse(tmp_path / "p.html")
    assert doc.title == "Bakery notes"
    assert [s.heading_path for s in doc.sections] == [("Bread",), ("Bread", "Sourdough")]
    assert BODY["page.html"] in doc.text and "spelt flour" in doc.text
    for noise in ("NAVIGATION", "HEADER BANNER", "SIDEBAR", "FOOTER", "SCRIPT TEXT", "color: red"):
        assert noise not in doc.text


def test_html_that_pydoc_made() -> None:
    """A real-world page: Python's own HTML documentation of a module, as ``pydoc`` writes it."""
    import pydoc

    html = pydoc.HTMLDoc().page("json", pydoc.HTMLDoc().document(json))
    doc = PARSERS[".html"](html.encode(), "json.html")
    assert doc.title == "Python: json"
    assert "JSON (JavaScript Object Notation)" in doc.text and "Serialize ``obj`` as a JSON formatted stream" in doc.text and "<a href" not in doc.text


def test_markdown_and_rst_headings(tmp_path: Path) -> None:
    (tmp_path / "n.md").write_text(MARKDOWN.format(body=BODY["notes.md"]))
    md = parse(tmp_path / "n.md")
    assert md.title == "Field notes"  # front matter wins over the first heading
    assert [s.heading_path for s in md.sections] == [("Geology",), ("Geology", "Ice", "Valleys"), ("Geology", "Rivers")]
    assert "# a comment, not a heading" in md.sections[1].text  # a fence is code, not structure
    (tmp_path / "i.rst").write_text(RST.format(body=BODY["intro.rst"]))
    rst = parse(tmp_path / "i.rst")
    assert [s.heading_path for s in rst.sections] == [("Lighthouse",), ("Lighthouse", "History"), ("Lighthouse", "History", "Keepers")]
    with pytest.raises(ParseError, match="invalid UTF-8"):
        PARSERS[".txt"](b"ok \xff\xfe", "x.txt")
    with pytest.raises(ParseError, match="no text"):
        PARSERS[".md"](b"  \n\n ", "x.md")


def shout(data: bytes, path: str) -> str:
    return data.decode().upper()


shout.version = "2"  # type: ignore[attr-defined]


def test_user_parsers_from_python_and_from_an_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.log").write_text("disk full on node 7")
    src = FileSource(str(tmp_path), parsers={".log": shout})
    (doc,) = list(src)
    assert doc.version.endswith("|test_documents:shout:2")  # the parser's identity: a new version re-parses
    assert doc.loader().text == "DISK FULL ON NODE 7"
    # an installed distribution declaring `[embedrail.parsers] log = module:function`
    dist = tmp_path / "site" / "logparse-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: logparse\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[embedrail.parsers]\nlog = test_documents:shout\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    parsers = resolve_parsers()
    assert parsers[".log"].fn is shout and parsers[".log"].identity == "ep:test_documents:shout:1.0"
    with pytest.raises(ConfigError, match="module:function"):
        resolve_parsers({".x": "no_colon_here"})


# ------------------------------------------------------------------------------------------------ chunking
def test_chunks_follow_the_structure_and_carry_heading_path_and_page(tmp_path: Path) -> None:
    folder = corpus(tmp_path / "c")
    chunker = Chunker(minilm(), 64)
    for name, want in (("guide.pdf", [("Birds", 1), ("Birds > Herons", 2), ("Trees", 3)]),
                       ("handbook.docx", [("House handbook > Install", None), ("House handbook > Install > Heating", None),
                                          ("House handbook > Garden", None)])):  # fmt: skip
        doc = FileSource(str(folder), include=name).__iter__().__next__().loader()
        chunks = chunker.chunk(doc)
        assert [(c.metadata.get("heading_path"), c.metadata.get("page")) for c in chunks] == want
        assert all(c.embed_text is None for c in chunks)
    # a long section is split by tokens, every piece keeping its heading path
    long = Document("l", "x", sections=[Section("word " * 300, ("A", "B"), 4)])
    pieces = chunker.chunk(long)
    assert len(pieces) > 4 and all(c.metadata == {"heading_path": "A > B", "page": 4} for c in pieces)


def test_contextual_header_is_embedded_not_stored(tmp_path: Path) -> None:
    folder = corpus(tmp_path / "c")
    led = f"sqlite:///{tmp_path / 'l.sqlite'}"
    target = "memory://ctx/docs"
    rep = sync(f"{folder}?include=guide.pdf", [target], ledger=led, chunk_context="default")
    assert rep.ok and rep.embedded == 3
    with_header, plain = minilm().embed_documents([f"Marsh guide > Birds > Herons\n\n{BODY['guide.pdf']}", BODY["guide.pdf"]])
    with opened(target) as store:
        rec = store.get(["guide.pdf#1"])["guide.pdf#1"]
        (top,) = store.search(np.asarray(with_header), k=1)
        (top_plain,) = store.search(np.asarray(plain), k=1)
    assert rec.text == BODY["guide.pdf"] and rec.metadata["heading_path"] == "Birds > Herons" and rec.metadata["page"] == 2
    assert top.id == "guide.pdf#1" and top.score > 0.9999  # the header was embedded with the chunk
    assert top_plain.id == "guide.pdf#1" and top_plain.score < 0.99  # not the bare text
    # the template is part of the fingerprint: another one re-embeds, the same one embeds nothing
    assert sync(f"{folder}?include=guide.pdf", [target], ledger=led, chunk_context="default").embedded == 0
    other = sync(f"{folder}?include=guide.pdf", [target], ledger=led, chunk_context="{title}: {text}")
    assert other.ok and other.embedded == 3


def split_on_sentences(doc: Document, max_tokens: int | None, overlap: int) -> list[Any]:
    return [(s.strip() + ".", {"kind": "sentence"}) for s in doc.text.split(".") if s.strip()]


def test_custom_chunker_by_import_path(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("One cat sat. Two dogs ran. Three birds flew.")
    led = f"sqlite:///{tmp_path / 'l.sqlite'}"
    rep = sync(str(tmp_path / "d"), ["memory://custom/docs"], ledger=led, chunker="test_documents:split_on_sentences")
    assert rep.ok and rep.chunks == 3
    with opened("memory://custom/docs") as store:
        hit = store.get(["a.txt#1"])["a.txt#1"]
    assert hit.text == "Two dogs ran." and hit.metadata["kind"] == "sentence"
    # the function itself (Python) is the same chunker as its import path: nothing to redo
    same = sync(str(tmp_path / "d"), ["memory://custom/docs"], ledger=led, chunker=split_on_sentences)
    assert same.ok and same.embedded == 0 and same.chunks == 3
    with pytest.raises(ConfigError, match="cannot import chunker"):
        sync(str(tmp_path / "d"), ["memory://custom/docs"], ledger=led, chunker="test_documents:nope")
    # back to the built-in splitter: its identity left the fingerprint, so the document is chunked again
    again = sync(str(tmp_path / "d"), ["memory://custom/docs"], ledger=led)
    assert again.ok and again.chunks == 1 and again.to_dict()["plan"]["memory://custom/docs"]["deleted"] == 2


# ------------------------------------------------------------------------------------------------ a folder, run after run
def test_the_listing_decides_what_is_read(tmp_path: Path) -> None:
    """An unchanged folder is listed, not read; a touched file is read and embeds nothing; an edit re-embeds its
    chunks only; a deleted file's chunks go; a corrupt file is a bad row while the rest succeed."""
    folder = corpus(tmp_path / "docs")
    led, target = f"sqlite:///{tmp_path / 'l.sqlite'}", "memory://listing/docs"

    def run(**kw: Any) -> dict[str, Any]:
        rep = sync(str(folder), [target], ledger=led, **kw)
        return rep.to_dict()

    first = run()
    assert first["ok"] and first["documents"] == 6 and first["files"] == {"listed": 6, "fetched": 6, "parsed": 6}
    n = first["chunks"]
    second = run()
    assert second["files"] == {"listed": 6, "fetched": 0, "parsed": 0, "skipped_unchanged": 6} and second["embedded"] == 0
    os.utime(folder / "notes.md", (time.time() + 5, time.time() + 5))  # touched, same bytes
    touched = run()
    assert touched["files"]["fetched"] == 1 and touched["embedded"] == 0 and touched["plan"][target]["unchanged"] == n
    assert run()["files"]["fetched"] == 0  # the new mtime was recorded
    (folder / "notes.md").write_text(MARKDOWN.format(body="Moraines are heaps of rock a glacier left behind."))
    edited = run()
    assert edited["files"]["fetched"] == 1 and edited["embedded"] == 1 and edited["plan"][target]["changed"] == 1
    (folder / "handbook.docx").unlink()
    (folder / "intro.rst").write_bytes(b"\xff\xfe not text")
    gone = run()
    assert gone["plan"][target]["deleted"] == 3 and gone["skipped_bad_rows"] == 1
    assert gone["bad_rows"] == [{"location": str(folder / "intro.rst"), "reason": "invalid UTF-8 at byte 0", "id": "intro.rst"}]
    with opened(target) as store:
        ids = {i.split("#")[0] for i in store.get([f"{d}#0" for d in BODY if d != "owls.pdf"] + ["nested/owls.pdf#0"])}
    assert ids == {"guide.pdf", "page.html", "notes.md", "intro.rst", "nested/owls.pdf"}  # the bad file keeps its old chunks
    # the bad file is not read again while it is unchanged, and is reported every run
    again = run()
    assert again["files"]["fetched"] == 0 and again["bad_rows"] == [
        {"location": str(folder / "intro.rst"), "id": "intro.rst", "reason": "invalid UTF-8 at byte 0 (unchanged since it was last read)"}]
    (folder / "intro.rst").write_text(RST.format(body=BODY["intro.rst"]))  # fixed: read, and no longer bad
    fixed = run()
    assert fixed["files"]["fetched"] == 1 and fixed["skipped_bad_rows"] == 0 and fixed["embedded"] == 0
    # a parser upgrade (another identity) re-parses every file it reads, and embeds nothing whose text did not change
    rep = sync(str(folder), [target], ledger=led, source_options={"parsers": {".md": PARSERS[".md"].fn}}).to_dict()
    assert rep["files"]["fetched"] == 1 and rep["files"]["parsed"] == 1 and rep["embedded"] == 0
    assert run(source_options={"fetch": "always"})["files"]["fetched"] == 5


def test_an_emptied_folder_is_a_mass_delete_refused(tmp_path: Path) -> None:
    folder = corpus(tmp_path / "docs")
    led, target = f"sqlite:///{tmp_path / 'l.sqlite'}", "memory://emptied/docs"
    assert sync(str(folder), [target], ledger=led).ok
    for p in [p for p in folder.rglob("*") if p.is_file()]:
        p.unlink()
    rep = sync(str(folder), [target], ledger=led)
    assert not rep.ok and target in rep.refused_deletes
    with pytest.raises(ConfigError, match="source not found"):
        sync(str(tmp_path / "nowhere") + "/", [target], ledger=led)
    with pytest.raises(ConfigError, match="source directory not found"):
        sync(f"file://{tmp_path / 'nowhere'}", [target], ledger=led)


def test_a_ledger_made_before_listing_versions_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # er_docs as 0.2 made it
        db.execute("CREATE TABLE er_docs (target VARCHAR(512) NOT NULL, generation VARCHAR(512) NOT NULL, doc_id VARCHAR(1024) "
                   "NOT NULL, doc_hash VARCHAR(64) NOT NULL, n_chunks INTEGER NOT NULL, PRIMARY KEY (target, generation, doc_id))")
        db.execute("INSERT INTO er_docs VALUES ('t', 'g', 'd', 'h', 1)")
    led = Ledger(f"sqlite:///{path}")
    assert led.doc_hashes("t", "g") == {"d": ("h", 1, None)}
    led.commit("t", "g", docs_done=[("e", "h2", 2, "v1")])
    assert led.doc_hashes("t", "g")["e"] == ("h2", 2, "v1")
    led.set_versions("t", "g", [("d", "h", "v2"), ("e", "other-hash", "v3")])  # only where the hash still matches
    assert led.doc_hashes("t", "g") == {"d": ("h", 1, "v2"), "e": ("h2", 2, "v1")}
    led.close()


# ------------------------------------------------------------------------------------------------ a real bucket
def _bucket(name: str) -> Any:
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir(name)
    return fs


def _upload(fs: Any, folder: Path, prefix: str) -> None:
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix != ".png":
            fs.pipe(f"{prefix}/{p.relative_to(folder).as_posix()}", p.read_bytes())


def test_reindex_from_an_s3_bucket(s3_env: dict[str, str], es_url: str, tmp_path: Path, unique_name: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """The acceptance run, as a user types it: ``embedrail reindex --source s3://...`` (credentials and endpoint in the
    environment) into Elasticsearch; then the mixed corpus answers a query for each file's body with that file."""
    bucket = f"b{unique_name.replace('_', '')[-20:].lower()}"
    fs = _bucket(bucket)
    _upload(fs, corpus(tmp_path / "docs"), f"{bucket}/docs")
    make_pdf(tmp_path / "x.pdf", [(None, 0, "fine")])
    fs.pipe(f"{bucket}/docs/broken.pdf", (tmp_path / "x.pdf").read_bytes()[:300])  # a corrupt PDF
    target = with_name(es_url, unique_name)
    args = ["reindex", "--source", f"s3://{bucket}/docs", "--target", target, "--ledger", f"sqlite:///{tmp_path / 'l.sqlite'}",
            "--chunk-tokens", "128", "--json"]  # fmt: skip

    def reindex() -> dict[str, Any]:
        code = main(args)
        out = capsys.readouterr().out
        rep = json.loads(out)
        assert code == 0, out
        return rep

    first = reindex()
    assert first["files"] == {"listed": 7, "fetched": 7, "parsed": 6} and first["documents"] == 6
    assert [(b["id"], b["location"]) for b in first["bad_rows"]] == [("broken.pdf", f"s3://{bucket}/docs/broken.pdf")]
    assert "not a readable PDF" in first["bad_rows"][0]["reason"]
    second = reindex()  # nothing read, nothing embedded; the corrupt PDF reported again, not fetched again
    assert second["files"] == {"listed": 7, "fetched": 0, "parsed": 0, "skipped_unchanged": 7} and second["embedded"] == 0
    assert [b["id"] for b in second["bad_rows"]] == ["broken.pdf"]
    fs.pipe(f"{bucket}/docs/page.html", HTML.format(body="Croissants are laminated with cold butter, folded thrice.").encode())
    changed = reindex()
    assert changed["files"]["fetched"] == 1 and changed["embedded"] == 1 and changed["plan"][target]["changed"] == 1
    fs.rm(f"{bucket}/docs/nested/owls.pdf")
    deleted = reindex()
    assert deleted["plan"][target]["deleted"] == 1 and deleted["embedded"] == 0

    code = main(["search", "--target", target, "--filter", "page=2", "--json", "-k", "5", "herons wading"])
    paged = json.loads(capsys.readouterr().out)
    assert code == 0 and paged and {(h["metadata"]["path"], h["metadata"]["page"]) for h in paged} == {("guide.pdf", 2)}

    from embedrail import Searcher

    with Searcher(target) as s:
        hits = {name: s.search(body, k=3).hits for name, body in BODY.items() if name != "owls.pdf"}
        hits["page.html"] = s.search("Croissants laminated with cold butter", k=3).hits
    want = {"guide.pdf": ("Marsh guide", "Birds > Herons", 2), "handbook.docx": ("House handbook", "House handbook > Install > Heating", None),
            "page.html": ("Bakery notes", "Bread > Sourdough", None), "notes.md": ("Field notes", "Geology > Ice > Valleys", None),
            "intro.rst": ("Lighthouse", "Lighthouse > History", None)}  # fmt: skip
    for name, (title, heading, page) in want.items():
        top = hits[name][0]
        assert top.metadata["path"] == name, (name, [(h.id, h.score) for h in hits[name]])
        assert top.metadata["url"] == f"s3://{bucket}/docs/{name}"
        assert (top.metadata.get("title"), top.metadata.get("heading_path"), top.metadata.get("page")) == (title, heading, page)


def test_a_bucket_splits_by_path_ranges(s3_env: dict[str, str], unique_name: str) -> None:
    """Shares of a bucket (issue 27): ranges of relative paths balanced by bytes; each reads its range once, through
    the store's own listing of prefixes (``a/b`` and ``a/b.c`` sort around ``/``)."""
    bucket = f"sp{unique_name.replace('_', '')[-20:].lower()}"
    fs = _bucket(bucket)
    names = [f"{d}f{i:02d}.md" for i, d in enumerate(["", "a/", "a/b/", "a/b.c/", "ab/", "z/y/", "m/"] * 4)]
    fs.pipe({f"{bucket}/docs/{n}": f"# {n}\n\n".encode() + b"word " * (10 + 40 * (i % 5)) for i, n in enumerate(names)})
    src = open_source(f"s3://{bucket}/docs")
    whole = sorted(d.id for d in src)
    assert whole == sorted(names)
    for count in (2, 3, 5):
        shares = src.shares(count, None)
        got = []
        for sh in shares:
            src.read_share(sh)
            part = [d.id for d in src]
            assert part and src.stats["listed"] == len(part)  # listed only its range
            got += part
        src.read_share(None)
        assert sorted(got) == whole, count


def test_a_flat_bucket_prefix_is_listed_by_range_not_whole(s3_env: dict[str, str], unique_name: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A prefix with no folders: each partition lists the store's keys from its range's start (``StartAfter``) to
    the first page past its end, so P partitions list about the prefix once in total, not P times; the ranges
    still read every object once."""
    from embedrail.integration.sources.objects import FileSource

    bucket = f"fl{unique_name.replace('_', '')[-20:].lower()}"
    fs = _bucket(bucket)
    names = [f"f{i:03d}.md" for i in range(120)] + ["f050.md.bak/x.md", "f0/y.md"]  # two folders among the keys
    fs.pipe({f"{bucket}/docs/{n}": f"# {n}\n\nword {n}\n".encode() for n in names})
    monkeypatch.setattr(FileSource, "LIST_PAGE", 10)
    src = open_source(f"s3://{bucket}/docs")
    listed: list[int] = []
    real = FileSource._ls

    def counting(self: FileSource, path: str, lo: str | None, hi: str | None) -> list[dict[str, Any]]:
        got = real(self, path, lo, hi)
        listed.append(len(got))
        return got

    monkeypatch.setattr(FileSource, "_ls", counting)
    whole = sorted(d.id for d in src)
    assert whole == sorted(names)
    shares = src.shares(4, None)
    got: list[str] = []
    per_share = []
    for sh in shares:
        listed.clear()
        src.read_share(sh)
        part = [d.id for d in src]
        per_share.append(sum(listed))
        got += part
        assert sum(listed) <= len(part) + 2 * 10 + 4, (sh, sum(listed), len(part))  # its range, a page past it, the folders
    src.read_share(None)
    assert sorted(got) == whole
    assert sum(per_share) < 2 * len(names)  # about once in total (listed whole, 4 partitions would list 4 times)


def test_a_bucket_that_is_down_or_missing(s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with pytest.raises(ConfigError, match="does the bucket exist"):
        list(open_source("s3://no-such-bucket-here/docs"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")  # nothing listens there
    src = open_source("s3://somebucket/docs", storage_options={"config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}}})
    with pytest.raises(SourceUnavailableError, match="nothing was deleted"):
        list(src)


@pytest.mark.slow
def test_airflow_task_reads_a_bucket_through_its_connection(s3_url: str, tmp_path: Path, unique_name: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """``source: s3://bucket/docs?conn_id=aws_docs``: the task takes the key, secret and endpoint from the Airflow
    connection (none in the environment), and keeps them out of what it returns."""
    from urllib.parse import urlsplit

    from embedrail.airflow import ReindexJob

    u = urlsplit(s3_url)
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DOCS", json.dumps({"conn_type": "aws", "login": u.username, "password": u.password,
                                                            "extra": {"endpoint_url": f"http://{u.hostname}:{u.port}",
                                                                      "region_name": "us-east-1"}}))  # fmt: skip
    import s3fs

    fs = s3fs.S3FileSystem(key=u.username, secret=u.password, endpoint_url=f"http://{u.hostname}:{u.port}")
    bucket = f"af{unique_name.replace('_', '')[-20:].lower()}"
    fs.mkdir(bucket)
    fs.pipe(f"{bucket}/docs/a.md", b"# Alpha\n\nThe first letter.")
    fs.pipe(f"{bucket}/docs/b.md", b"# Beta\n\nThe second letter.")
    job = ReindexJob(f"s3://{bucket}/docs?conn_id=aws_docs", ["memory://airflow-s3/docs"], f"sqlite:///{tmp_path / 'l.sqlite'}")
    engine, secrets = job.engine()
    with engine:
        rep = engine.run()
    assert rep.ok and rep.documents == 2 and rep.files["fetched"] == 2
    assert u.password in secrets and u.password not in json.dumps(rep.to_dict())
    # an Airflow 3 ObjectStoragePath: its own filesystem, as it is
    from airflow.sdk import ObjectStoragePath

    (tmp_path / "osp").mkdir()
    (tmp_path / "osp" / "c.md").write_text("# Gamma\n\nThe third letter.")
    job = ReindexJob(ObjectStoragePath(f"file://{tmp_path / 'osp'}"), ["memory://airflow-osp/docs"], f"sqlite:///{tmp_path / 'l2.sqlite'}")
    engine, _ = job.engine()
    with engine:
        rep = engine.run()
    assert rep.ok and rep.documents == 1 and rep.files["parsed"] == 1


def test_storage_options_from_python(s3_url: str, tmp_path: Path, unique_name: str) -> None:
    """``source_options={"storage_options": ...}``: the credentials given in code, none in the environment."""
    from urllib.parse import urlsplit

    import s3fs

    u = urlsplit(s3_url)
    opts = {"key": u.username, "secret": u.password, "endpoint_url": f"http://{u.hostname}:{u.port}"}
    fs = s3fs.S3FileSystem(**opts)
    bucket = f"so{unique_name.replace('_', '')[-20:].lower()}"
    fs.mkdir(bucket)
    fs.pipe({f"{bucket}/hr/a.md": b"# A\n\nalpha", f"{bucket}/hr/drafts/b.md": b"# B\n\nbeta"})
    report = sync(f"s3://{bucket}/hr", ["memory://so/hr"], ledger=f"sqlite:///{tmp_path / 'l.sqlite'}",
                  source_options={"storage_options": opts, "exclude": "drafts/*"})  # fmt: skip
    assert report.ok and report.documents == 1 and report.files == {"listed": 2, "fetched": 1, "parsed": 1}


def test_open_source_routes_urls(tmp_path: Path) -> None:
    assert isinstance(open_source(str(tmp_path)), FileSource)
    assert isinstance(open_source(f"file://{tmp_path}?glob=**/*.pdf"), FileSource)
    src = open_source("s3://bucket/docs?endpoint_url=http://127.0.0.1:1&anon=true&exclude=drafts/*")
    assert isinstance(src, FileSource) and src.exclude == ["drafts/*"] and src.fs.anon is True
    with pytest.raises(ConfigError, match="only an Airflow task"):
        open_source("s3://bucket/docs?conn_id=aws")
    with pytest.raises(ConfigError, match="fetch must be"):
        open_source(str(tmp_path), fetch="sometimes")


@pytest.mark.parametrize(("tokens", "overlap", "context"), [(None, 0, None), (24, 0, None), (24, 6, "default"), (40, 0, "{title}: {text}")])
def test_chunking_a_window_at_once_gives_the_chunks_of_one_at_a_time(tokens: int | None, overlap: int, context: str | None) -> None:
    """The pipeline chunks a window of documents with one batched tokenizer call (``chunk_many``): the chunks,
    and so every fingerprint, are those of chunking each document alone."""
    long = " ".join(f"Sentence {i} about rivers, stones and the number {i * 7}." for i in range(60))
    docs = [
        Document("short", "A short one."),
        Document("long", long, {"title": "Rivers"}),
        Document("blank-lines", "First paragraph.\n\n\nSecond paragraph after blank lines.\n" * 9),
        Document("sections", "x", {"title": "Guide"}, sections=[Section("Install it like this. " * 30, ("Guide", "Install")),
                                                                Section("   ", ("Guide", "Empty")),
                                                                Section("Page two text. " * 5, (), 2)]),  # fmt: skip
        Document("same-text", "A short one."),
        Document("unicode", "Größe 😀 naïve café " * 40),
    ]
    ch = Chunker(minilm(), tokens, overlap, context=context)
    one_by_one = [ch.chunk(d) for d in docs]
    assert ch.chunk_many(docs) == one_by_one
    assert any(len(c) > 1 for c in one_by_one)
    texts = [d.text for d in docs] + ["", "  \n "]
    assert minilm().split_texts(texts, tokens, overlap) == [minilm().split_text(t, tokens, overlap) for t in texts]
