"""Document parsers: file bytes -> text in sections (heading path, page), for the file and object-storage sources.

A parser is a callable ``parse(data: bytes, path: str) -> Parsed | str`` chosen by the file's suffix (or
its MIME type when the name has none). The built-in ones:

========================  ==================================================================================
``.pdf``                  pypdfium2 (PDFium): text per page, page numbers kept; the PDF's outline
                          (bookmarks) gives each page its heading path. Encrypted, corrupt and image-only
                          PDFs are refused with the reason.
``.docx``                 python-docx: headings (``Heading N`` / ``Title`` styles), paragraphs and tables
                          (a row per line, cells joined by `` | ``), in document order.
``.html`` ``.htm``        selectolax (lexbor): the main content (``<main>``/``<article>``, else ``<body>``
                          without navigation, headers, footers, scripts, forms), title and headings.
``.md`` ``.markdown``     headings (ATX and setext; ``#`` inside code fences is code), front matter title.
``.rst``                  section titles (underlined, optionally overlined; levels in order of appearance).
``.txt`` ``.text``        paragraphs.
========================  ==================================================================================

``docs/documents.md`` says why these libraries (measured: ``benchmarks/parsers.py``). Users add or replace
parsers with ``parsers={".ext": callable}`` or the ``embedrail.parsers`` entry point group (name: the
suffix). A parser's identity (its name and its library's version) is part of every document's listing
fingerprint: upgrading a parser re-parses the files, and re-embeds only the chunks whose text changed.

A file a parser cannot read raises :class:`ParseError` with the reason; the source reports it as a bad
row (its path and the reason) and never indexes an empty document.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata as _md
from typing import Any

from embedrail.errors import ConfigError
from embedrail.integration.documents import Section

__all__ = ["PARSERS", "ParseError", "Parsed", "Parser", "Section", "parser_for", "resolve_parsers"]

#: bump when a built-in parser's output changes for the same library version (documents are re-parsed)
REVISION = "1"


class ParseError(Exception):
    """A file that cannot be parsed: encrypted, corrupt, no text (a scanned image), unknown type."""


@dataclass(slots=True)
class Parsed:
    sections: list[Section]
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n\n".join(s.text for s in self.sections)


@dataclass(frozen=True)
class Parser:
    """A parse function and its identity (what goes into the listing fingerprint)."""

    name: str
    fn: Callable[[bytes, str], Parsed | str]
    identity: str

    def __call__(self, data: bytes, path: str) -> Parsed:
        out = self.fn(data, path)
        if isinstance(out, str):
            out = Parsed([Section(out)]) if out.strip() else Parsed([])
        if not isinstance(out, Parsed):
            raise ParseError(f"parser {self.name} returned {type(out).__name__}, expected Parsed or str")
        out.sections = [s for s in out.sections if s.text.strip()]
        if not out.sections:
            raise ParseError("no text in the file" + (" (a scanned image? OCR it first)" if self.name == "pdf" else ""))
        return out


def _version(dist: str) -> str:
    try:
        return _md.version(dist)
    except _md.PackageNotFoundError:
        return "missing"


def _need(module: str, extra: str = "documents") -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ParseError(f"the {module} package is not installed: pip install 'embedrail[{extra}]'") from e


# --------------------------------------------------------------------------------------------- text
_WS = re.compile(r"[ \t\f\v\u00a0]+")


def _clean(text: str) -> str:
    lines = [_WS.sub(" ", ln).strip() for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ParseError(f"invalid UTF-8 at byte {e.start}") from e


class _Builder:
    """Collects blocks under the current heading path into sections; a heading with no text of its own
    is carried into the next section (so no chunk is a bare heading)."""

    def __init__(self) -> None:
        self.sections: list[Section] = []
        self.path: list[tuple[int, str]] = []  # (level, title)
        self.blocks: list[str] = []
        self.page: int | None = None
        self.title: str | None = None

    def heading(self, level: int, title: str, line: str | None = None) -> None:
        title = _WS.sub(" ", title).strip()
        if not title:
            return
        if self.title is None and level <= 1:
            self.title = title
        has_body = any(not b.startswith("\x00") for b in self.blocks)
        if has_body:
            self.flush()
        self.path = [(lv, t) for lv, t in self.path if lv < level] + [(level, title)]
        self.blocks.append("\x00" + (line or title))  # a heading line, kept in the text

    def block(self, text: str) -> None:
        text = _clean(text)
        if text:
            self.blocks.append(text)

    def flush(self) -> None:
        if any(not b.startswith("\x00") for b in self.blocks):
            text = "\n\n".join(b.lstrip("\x00") for b in self.blocks)
            self.sections.append(Section(text, tuple(t for _, t in self.path), self.page))
            self.blocks = []

    def done(self, title: str | None = None) -> Parsed:
        self.flush()
        if self.blocks and not self.sections:  # headings only
            self.sections.append(Section("\n\n".join(b.lstrip("\x00") for b in self.blocks), tuple(t for _, t in self.path)))
        return Parsed(self.sections, title or self.title)


def parse_text(data: bytes, path: str) -> Parsed:
    b = _Builder()
    for para in re.split(r"\n\s*\n", _decode(data)):
        b.block(para)
    return b.done()


_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")


def parse_markdown(data: bytes, path: str) -> Parsed:
    lines = _decode(data).replace("\r\n", "\n").split("\n")
    b, para, fence = _Builder(), [], ""
    title = None
    if lines and lines[0].strip() == "---":  # YAML front matter
        for i in range(1, len(lines)):
            if lines[i].strip() in ("---", "..."):
                for ln in lines[1:i]:
                    if ln.lower().startswith("title:"):
                        title = ln.split(":", 1)[1].strip().strip("'\"") or None
                lines = lines[i + 1 :]
                break

    def end_para() -> None:
        if para:
            b.block("\n".join(para))
            para.clear()

    for ln in lines:
        if fence:
            para.append(ln)
            if ln.strip().startswith(fence):
                fence = ""
            continue
        m = _FENCE.match(ln)
        if m:
            fence = m.group(1)[0] * 3
            para.append(ln)
            continue
        m = _ATX.match(ln)
        if m:
            end_para()
            b.heading(len(m.group(1)), m.group(2) or "", ln.strip())
            continue
        m = _SETEXT.match(ln)
        if m and len(para) == 1 and para[0].strip():  # "Title\n=====": a heading (not a rule after a blank line)
            text = para.pop()
            b.heading(1 if m.group(1)[0] == "=" else 2, text, f"{text.strip()}\n{ln.strip()}")
            continue
        if not ln.strip():
            end_para()
        else:
            para.append(ln)
    end_para()
    return b.done(title)


_ADORN = re.compile(r"^([=\-`:'\"~^_*+#<>.!$%&(),/;?@\[\]\\{|}])\1{2,}\s*$")


def parse_rst(data: bytes, path: str) -> Parsed:
    lines = _decode(data).replace("\r\n", "\n").split("\n")
    b, para = _Builder(), []
    styles: list[tuple[str, bool]] = []  # adornment styles in order of first appearance = levels
    i = 0
    while i < len(lines):
        ln = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        over = bool(_ADORN.match(ln)) and i + 2 < len(lines) and bool(_ADORN.match(lines[i + 2])) and lines[i + 1].strip() != ""
        if over and not para:
            title, style = lines[i + 1].strip(), (ln.strip()[0], True)
            i += 3
        elif ln.strip() and not para and _ADORN.match(nxt) and len(nxt.strip()) >= len(ln.strip()):
            title, style = ln.strip(), (nxt.strip()[0], False)
            i += 2
        else:
            if ln.strip():
                para.append(ln)
            elif para:
                b.block("\n".join(para))
                para = []
            i += 1
            continue
        if style not in styles:
            styles.append(style)
        b.heading(styles.index(style) + 1, title)
    if para:
        b.block("\n".join(para))
    return b.done()


# --------------------------------------------------------------------------------------------- HTML
_HTML_DROP = ("script", "style", "noscript", "nav", "header", "footer", "aside", "form", "svg", "template", "iframe",
              "button", "select", "head")  # fmt: skip
_HTML_BLOCK = {"p", "pre", "blockquote", "li", "dt", "dd", "td", "th", "figcaption", "caption", "address"}
_HTML_CONTAINERS = "p,pre,blockquote,li,dt,dd,td,th,h1,h2,h3,h4,h5,h6,div,section,article,ul,ol,table,figcaption"


def parse_html(data: bytes, path: str) -> Parsed:
    lexbor = _need("selectolax.lexbor")
    tree = lexbor.LexborHTMLParser(data)
    title_node = tree.css_first("title")
    title = _clean(title_node.text()) if title_node is not None else None
    for sel in _HTML_DROP:
        for node in tree.css(sel):
            node.decompose()
    for node in tree.css("[role=navigation],[role=banner],[role=contentinfo],[aria-hidden=true],[hidden]"):
        node.decompose()
    root = tree.css_first("main") or tree.css_first("article") or tree.body
    b = _Builder()
    if root is None:
        raise ParseError("no HTML body")
    stack = [root]
    order: list[Any] = []
    while stack:  # document order without recursion (deep HTML)
        node = stack.pop()
        tag = node.tag
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            order.append(("h", int(tag[1]), node.text(separator=" ")))
        elif tag in _HTML_BLOCK and (tag != "li" or node.css_first("ul,ol,p,div") is None):
            order.append(("p", 0, node.text(separator=" " if tag not in ("pre",) else "")))
        elif tag == "br":
            continue
        elif node is not root and tag not in ("-text",) and node.css_first(_HTML_CONTAINERS) is None:
            order.append(("p", 0, node.text(separator=" ")))  # a div (or span, ...) of text only
        else:
            kids = [c for c in node.iter(include_text=True)]
            loose = " ".join(c.text_content or "" for c in kids if c.tag == "-text").strip()
            if loose and node is not root:
                order.append(("p", 0, loose))
            stack.extend(reversed([c for c in kids if c.tag != "-text"]))
    for kind, level, text in order:
        if kind == "h":
            b.heading(level, text)
        else:
            b.block(text)
    return b.done(title or None)


# --------------------------------------------------------------------------------------------- PDF
def parse_pdf(data: bytes, path: str) -> Parsed:
    pdfium = _need("pypdfium2")
    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as e:
        msg = str(e)
        if "password" in msg.lower():
            raise ParseError("encrypted PDF (a password is needed)") from e
        raise ParseError(f"not a readable PDF: {msg}") from e
    try:
        meta = pdf.get_metadata_dict(skip_empty=True)
        toc: list[tuple[int, int, str]] = []  # (page index, level, title)
        try:
            for item in pdf.get_toc(max_depth=8):
                dest, title = item.get_dest(), (item.get_title() or "").strip()
                index = dest.get_index() if dest is not None else None
                if index is not None and title:
                    toc.append((index, item.level, title))
        except Exception:  # noqa: BLE001 - a broken outline: pages without heading paths
            toc = []
        toc.sort(key=lambda t: t[0])  # stable: outline order within a page
        sections: list[Section] = []
        path_now: list[tuple[int, str]] = []
        k = 0
        for i in range(len(pdf)):
            while k < len(toc) and toc[k][0] <= i:
                _, level, t = toc[k]
                path_now = [(lv, x) for lv, x in path_now if lv < level] + [(level, t)]
                k += 1
            page = pdf[i]
            tp = page.get_textpage()
            try:
                text = _clean(tp.get_text_bounded())
            finally:
                tp.close()
                page.close()
            if text:
                sections.append(Section(text, tuple(x for _, x in path_now), i + 1))
        return Parsed(sections, (meta.get("Title") or "").strip() or None, {"pages": len(pdf)})
    finally:
        pdf.close()


# --------------------------------------------------------------------------------------------- DOCX
def parse_docx(data: bytes, path: str) -> Parsed:
    import io
    import zipfile

    docx = _need("docx")
    try:
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise ParseError(f"not a readable DOCX file: {e}") from e
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    b = _Builder()
    for el in document.element.body.iterchildren():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "p":
            p = Paragraph(el, document)
            style = (p.style.name if p.style is not None else "") or ""
            m = re.match(r"(?i)heading (\d)", style)
            if style.lower() == "title":
                b.heading(0, p.text)
            elif m:
                b.heading(int(m.group(1)), p.text)
            else:
                b.block(p.text)
        elif tag == "tbl":
            rows = []
            for row in Table(el, document).rows:
                cells: list[str] = []
                for c in row.cells:
                    t = _clean(c.text).replace("\n", " ")
                    if not cells or cells[-1] != t:  # merged cells repeat
                        cells.append(t)
                rows.append(" | ".join(cells))
            b.block("\n".join(rows))
    title = (document.core_properties.title or "").strip() or None
    return b.done(title)


# --------------------------------------------------------------------------------------------- registry
def _builtin(name: str, fn: Callable[[bytes, str], Parsed | str], dist: str | None) -> Parser:
    return Parser(name, fn, f"{name}:{REVISION}" + (f":{dist}={_version(dist)}" if dist else ""))


def _builtins() -> dict[str, Parser]:
    md = _builtin("markdown", parse_markdown, None)
    html = _builtin("html", parse_html, "selectolax")
    txt = _builtin("text", parse_text, None)
    return {
        ".pdf": _builtin("pdf", parse_pdf, "pypdfium2"),
        ".docx": _builtin("docx", parse_docx, "python-docx"),
        ".html": html,
        ".htm": html,
        ".xhtml": html,
        ".md": md,
        ".markdown": md,
        ".rst": _builtin("rst", parse_rst, None),
        ".txt": txt,
        ".text": txt,
    }


#: suffix -> parser (the built-ins; see :func:`resolve_parsers` for the user's and the entry points')
PARSERS: dict[str, Parser] = _builtins()
_MIME = {"application/pdf": ".pdf", "text/html": ".html", "application/xhtml+xml": ".html", "text/markdown": ".md",
         "text/x-rst": ".rst", "text/plain": ".txt",
         "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx"}  # fmt: skip


def _identity(fn: Callable[..., Any]) -> str:
    mod, qual = getattr(fn, "__module__", "?"), getattr(fn, "__qualname__", type(fn).__name__)
    version = getattr(fn, "version", None) or getattr(fn, "__version__", None)
    if version is None and mod and mod != "__main__":
        version = _version(mod.split(".")[0])
    return f"{mod}:{qual}" + (f":{version}" if version and version != "missing" else "")


def resolve_parsers(parsers: Mapping[str, Callable[..., Any] | str] | None = None) -> dict[str, Parser]:
    """The built-ins, then the ``embedrail.parsers`` entry points, then ``parsers`` (a suffix -> callable or
    ``"module:function"``); later ones win."""
    out = dict(PARSERS)
    try:
        eps: Iterable[Any] = _md.entry_points(group="embedrail.parsers")
    except Exception:  # noqa: BLE001 - broken distribution metadata: the built-ins still work
        eps = ()
    for ep in eps:
        fn = ep.load()
        out[_suffix(ep.name)] = Parser(ep.name, fn, f"ep:{ep.value}:{_version(ep.dist.name) if ep.dist else ''}")
    for suffix, fn in (parsers or {}).items():
        if isinstance(fn, str):
            fn = import_callable(fn, "parser")
        if not callable(fn):
            raise ConfigError(f"parser for {suffix!r} must be callable or 'module:function', got {fn!r}")
        out[_suffix(suffix)] = Parser(_suffix(suffix).lstrip("."), fn, _identity(fn))
    return out


def _suffix(s: str) -> str:
    s = s.strip().lower()
    return s if s.startswith(".") else f".{s}"


def parser_for(name: str, parsers: Mapping[str, Parser], mime: str | None = None) -> Parser | None:
    """The parser for a file name (its suffix, ``.tar.gz``-style double suffixes first), else its MIME type."""
    base = name.rsplit("/", 1)[-1].lower()
    parts = base.split(".")
    for i in range(1, len(parts)):
        p = parsers.get("." + ".".join(parts[i:]))
        if p is not None:
            return p
    if mime:
        alias = _MIME.get(mime.split(";")[0].strip().lower())
        if alias:
            return parsers.get(alias)
    return None


def import_callable(spec: str, what: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function (a clear error if it is not there)."""
    import importlib

    mod, sep, attr = spec.partition(":")
    if not sep or not mod or not attr:
        raise ConfigError(f"{what} must be 'module:function', got {spec!r}")
    try:
        obj: Any = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot import {what} {spec!r}: {e}") from e
    if not callable(obj):
        raise ConfigError(f"{what} {spec!r} is not callable")
    return obj
