"""Parsing documents, and listing a bucket (issue 25; not a test).

1. **Parse speed per format**: files/s and MB/s of embedrail's parsers on a corpus made from real text (the
   Python standard library's documentation, one file per module): PDF (fpdf2, one page per ~2,500
   characters, an outline entry per page), DOCX (python-docx, headings and paragraphs), HTML (``pydoc``'s own
   HTML pages of the modules, made by a real tool), Markdown and reStructuredText.
2. **The libraries compared** on the same files, speed and text quality: PDF pypdfium2 (embedrail's) vs pypdf;
   HTML selectolax with embedrail's main-content rules vs trafilatura. Quality: word recall (the share of the
   words written into the file that come back, in order: ``difflib`` on word sequences) and, for HTML pages
   wrapped in navigation, header, sidebar and footer boilerplate, the share of extracted words that are
   boilerplate.
3. **Listing cost** (``--s3``, needs ``make servers``): N small Markdown objects in the S3 server, synced once into
   the in-memory store, then unchanged runs: seconds per run, objects listed and fetched.
4. **Partitions listing a flat prefix** (``--flat N --partitions P``, needs ``make servers``): N objects under
   one prefix with no folders, split into P shares as the plan step cuts them; each share's listing (what a
   partition task lists) from its range's start (embedrail's) against the whole prefix per share (the
   baseline: what it did before), the listing cache emptied before each share as in a task of its own.

    .venv/bin/python benchmarks/parsers.py [--modules 60] [--rounds 3] [--s3 10000] [--flat 20000 --partitions 4] [--json]
"""

from __future__ import annotations

import argparse
import difflib
import io
import json
import os
import pydoc
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _servers import server_url  # noqa: E402  (benchmarks/ is on sys.path when a benchmark runs)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
NAV = "Home Products Pricing Careers Contact Login Newsletter Privacy Cookies Sitemap"


def words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z]{2,}", text.lower())


def recall(truth: str, got: str) -> float:
    """Share of the true words found in order (longest matching blocks of the word sequences)."""
    a, b = words(truth), words(got)
    if not a:
        return 1.0
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return sum(m.size for m in sm.get_matching_blocks()) / len(a)


def corpus(n: int) -> list[tuple[str, str]]:
    """(module name, its pydoc text) for n standard-library modules."""
    from embedrail.integration.sources import open_source

    docs = list(open_source(f"pydoc:?max_chars=12000&limit={n}"))
    return [(d.id, d.text) for d in docs]


def latin1(text: str) -> str:
    return text.encode("latin-1", "replace").decode("latin-1")


def make_files(mods: list[tuple[str, str]], out: Path) -> dict[str, list[tuple[Path, str]]]:
    """Per format, (file, the text written into it)."""
    import importlib

    import docx
    from fpdf import FPDF

    files: dict[str, list[tuple[Path, str]]] = {k: [] for k in ("pdf", "docx", "html", "html+boilerplate", "md", "rst")}
    for name, text in mods:
        paras = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
        body = latin1("\n\n".join(paras))
        pdf = FPDF()
        pdf.set_font("helvetica", size=10)
        chunk, page = [], 0
        for p in paras + [""]:
            if sum(len(x) for x in chunk) > 2500 or (not p and chunk):
                pdf.add_page()
                page += 1
                pdf.start_section(f"{name} part {page}")
                pdf.multi_cell(0, 5, latin1("\n\n".join(chunk)))
                chunk = []
            if p:
                chunk.append(p)
        f = out / f"{name}.pdf"
        pdf.output(str(f))
        files["pdf"].append((f, body))
        d = docx.Document()
        d.add_heading(name, 0)
        for i, p in enumerate(paras):
            if i % 6 == 0:
                d.add_heading(f"Part {i // 6 + 1}", 1)
            d.add_paragraph(p)
        f = out / f"{name}.docx"
        d.save(str(f))
        files["docx"].append((f, "\n\n".join(paras)))
        md = "\n\n".join((f"## Part {i // 6 + 1}\n\n" if i % 6 == 0 else "") + p for i, p in enumerate(paras))
        f = out / f"{name}.md"
        f.write_text(f"# {name}\n\n{md}")
        files["md"].append((f, "\n\n".join(paras)))
        rst = "\n\n".join((f"Part {i // 6 + 1}\n--------\n\n" if i % 6 == 0 else "") + p for i, p in enumerate(paras))
        f = out / f"{name}.rst"
        f.write_text(f"{name}\n{'=' * len(name)}\n\n{rst}")
        files["rst"].append((f, "\n\n".join(paras)))
        try:
            module = importlib.import_module(name)
            html = pydoc.HTMLDoc().page(name, pydoc.HTMLDoc().document(module))
        except Exception:  # noqa: BLE001 - a module pydoc cannot render: no HTML file for it
            continue
        f = out / f"{name}.html"
        f.write_text(html)
        files["html"].append((f, re.sub(r"<[^>]+>", " ", html)))
        wrapped = (f"<html><head><title>{name}</title></head><body><nav>{NAV}</nav><header>Acme Docs Portal Search</header>"
                   + "<main>" + "".join(f"<p>{p}</p>" for p in paras) + "</main>"
                   + f"<aside>Related Trending Popular Sponsored</aside><footer>Copyright Acme {NAV}</footer></body></html>")  # fmt: skip
        f = out / f"{name}.boiler.html"
        f.write_text(wrapped)
        files["html+boilerplate"].append((f, "\n\n".join(paras)))
    return files


def pypdf_text(data: bytes) -> str:
    import pypdf

    return "\n\n".join(p.extract_text() or "" for p in pypdf.PdfReader(io.BytesIO(data)).pages)


def trafilatura_text(data: bytes) -> str:
    import trafilatura

    return trafilatura.extract(data.decode("utf-8", "replace"), include_tables=True, favor_recall=True) or ""


def measure(fn: Any, files: list[tuple[Path, str]], rounds: int) -> dict[str, Any]:
    datas = [(f.read_bytes(), truth, f.name) for f, truth in files]
    mb = sum(len(d) for d, _, _ in datas) / 1e6
    times, outs = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        outs = [fn(d, name) for d, _, name in datas]
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    rec = statistics.mean(recall(truth, out) for (_, truth, _), out in zip(datas, outs, strict=True))
    boiler = set(words(NAV + " Acme Docs Portal Search Related Trending Popular Sponsored Copyright"))
    leak = statistics.mean(sum(w in boiler for w in words(o)) / max(1, len(words(o))) for o in outs)
    return {"files": len(datas), "MB": round(mb, 2), "seconds": round(t, 3), "files_per_s": round(len(datas) / t, 1),
            "MB_per_s": round(mb / t, 2), "word_recall": round(rec, 4), "boilerplate_share": round(leak, 4)}  # fmt: skip


def parse_bench(n: int, rounds: int) -> dict[str, Any]:
    from embedrail.integration.parsers import PARSERS

    tmp = Path(tempfile.mkdtemp(prefix="embedrail-parsers-"))
    files = make_files(corpus(n), tmp)
    ours = {"pdf": ".pdf", "docx": ".docx", "html": ".html", "html+boilerplate": ".html", "md": ".md", "rst": ".rst"}
    out: dict[str, Any] = {}
    for fmt, suffix in ours.items():
        out[f"{fmt} embedrail ({PARSERS[suffix].identity})"] = measure(lambda d, name, s=suffix: PARSERS[s](d, name).text,
                                                                      files[fmt], rounds)  # fmt: skip
    out["pdf pypdf"] = measure(lambda d, name: pypdf_text(d), files["pdf"], rounds)
    out["html trafilatura"] = measure(lambda d, name: trafilatura_text(d), files["html"], rounds)
    out["html+boilerplate trafilatura"] = measure(lambda d, name: trafilatura_text(d), files["html+boilerplate"], rounds)
    return out


def listing_bench(n: int, rounds: int) -> dict[str, Any]:
    if not _s3_env():
        return {"skipped": "no S3 server (make servers)"}
    import s3fs

    from embedrail import sync

    fs = s3fs.S3FileSystem()
    bucket = f"listing{n}"
    t0 = time.perf_counter()
    _fill(fs, bucket, n, lambda i: (f"{i // 1000:03d}/note{i:06d}.md", f"# Note {i}\n\nThe number {i} is noted here."))
    upload = time.perf_counter() - t0
    tmp = Path(tempfile.mkdtemp(prefix="embedrail-listing-"))
    led, target = f"sqlite:///{tmp / 'ledger.sqlite'}", f"memory://listing/n{n}"
    t0 = time.perf_counter()
    first = sync(f"s3://{bucket}/docs", [target], ledger=led, chunk_tokens=64).to_dict()
    first_s = time.perf_counter() - t0
    runs = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        rep = sync(f"s3://{bucket}/docs", [target], ledger=led, chunk_tokens=64).to_dict()
        runs.append((time.perf_counter() - t0, rep["files"], rep["embedded"]))
    t = statistics.median(r[0] for r in runs)
    t0 = time.perf_counter()
    listed = len(fs.find(f"{bucket}/docs", detail=True))
    bare = time.perf_counter() - t0
    return {"objects": n, "upload_s": round(upload, 1), "first_run_s": round(first_s, 1), "first_files": first["files"],
            "unchanged_run_s": round(t, 2), "unchanged_files": runs[-1][1], "unchanged_embedded": runs[-1][2],
            "bare_listing_s": round(bare, 2), "bare_listed": listed, "unchanged_objects_per_s": round(n / t)}  # fmt: skip


def _fill(fs: Any, bucket: str, n: int, obj: Any) -> None:
    """``n`` objects under ``bucket/docs/`` (``obj(i)`` -> (relative key, text)), kept from an earlier run."""
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    have = len(fs.find(f"{bucket}/docs")) if fs.exists(f"{bucket}/docs") else 0
    if have < n:
        fs.pipe({f"{bucket}/docs/{k}": t.encode() for k, t in (obj(i) for i in range(have, n))})


def _s3_env() -> bool:
    """Point boto at the test S3 server (False: none)."""
    from urllib.parse import urlsplit

    url = server_url("EMBEDRAIL_S3_URL")
    if not url:
        return False
    u = urlsplit(url)
    os.environ.update(AWS_ACCESS_KEY_ID=u.username or "", AWS_SECRET_ACCESS_KEY=u.password or "",
                      AWS_ENDPOINT_URL=f"http://{u.hostname}:{u.port}", AWS_DEFAULT_REGION="us-east-1")  # fmt: skip
    return True


def flat_listing_bench(n: int, parts: int, rounds: int) -> dict:
    if not _s3_env():
        return {"skipped": "no S3 server (make servers)"}
    import s3fs

    from embedrail.integration.sources import open_source
    from embedrail.integration.sources.objects import FileSource

    fs = s3fs.S3FileSystem()
    bucket = f"flat{n}"
    _fill(fs, bucket, n, lambda i: (f"note{i:07d}.md", f"# Note {i}"))
    src = open_source(f"s3://{bucket}/docs")
    shares = src.shares(parts, None)
    ranged = FileSource._ls

    def listing(whole: bool) -> tuple[float, int, int]:
        """Seconds and store entries for every share's listing, and the files the shares hold."""
        entries, files = 0, 0

        def ls(self: FileSource, path: str, lo: str | None, hi: str | None) -> list:
            nonlocal entries
            got = list(self.fs.ls(path, detail=True)) if whole else ranged(self, path, lo, hi)
            entries += len(got)
            return got

        FileSource._ls = ls  # type: ignore[method-assign]
        try:
            t0 = time.perf_counter()
            for sh in shares:
                src.fs.invalidate_cache()  # each partition is a task of its own: no listing cached
                src.read_share(sh)
                files += len(src._list())  # noqa: SLF001 - the listing alone
            return time.perf_counter() - t0, entries, files
        finally:
            FileSource._ls = ranged  # type: ignore[method-assign]
            src.read_share(None)

    runs: dict[str, list[tuple[float, int, int]]] = {"ranged": [], "whole": []}
    for _ in range(rounds):
        for kind in ("whole", "ranged"):
            runs[kind].append(listing(kind == "whole"))
    out: dict = {"objects": n, "partitions": parts}
    for kind, rs in runs.items():
        out[kind] = {"seconds": round(statistics.median(r[0] for r in rs), 3), "entries_listed": rs[-1][1], "files": rs[-1][2]}
    out["ratio_whole_to_ranged"] = round(out["whole"]["seconds"] / out["ranged"]["seconds"], 2)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modules", type=int, default=60, help="standard-library modules in the corpus")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--s3", type=int, default=0, help="objects for the listing benchmark (0: skip it)")
    p.add_argument("--flat", type=int, default=0, help="objects under one flat prefix for the partitions' listing (0: skip)")
    p.add_argument("--partitions", type=int, default=4, help="shares of the flat prefix (--flat)")
    p.add_argument("--no-parsers", action="store_true", help="only the listing benchmarks")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    out: dict = {"parsers": {} if a.no_parsers else parse_bench(a.modules, a.rounds)}
    if a.s3:
        out["listing"] = listing_bench(a.s3, a.rounds)
    if a.flat:
        out["flat_partitions"] = flat_listing_bench(a.flat, a.partitions, a.rounds)
    if a.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{'parser':<58} {'files':>5} {'MB':>6} {'files/s':>8} {'MB/s':>6} {'recall':>7} {'boiler':>7}")
    for name, r in out["parsers"].items():
        print(f"{name:<58} {r['files']:>5} {r['MB']:>6} {r['files_per_s']:>8} {r['MB_per_s']:>6} {r['word_recall']:>7} "
              f"{r['boilerplate_share']:>7}")  # fmt: skip
    for key in ("listing", "flat_partitions"):
        if key in out:
            print(json.dumps(out[key], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
