"""``pydoc:``: the Python standard library's own documentation as a source (offline, deterministic,
present everywhere; the demo corpus)."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import re
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

from embedrail.errors import ConfigError
from embedrail.integration.documents import Document
from embedrail.integration.sources.base import Source

__all__ = ["PydocSource"]

PYDOC_SKIP = frozenset(
    {
        "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "lib2to3", "pydoc_data",
        "ensurepip", "msilib", "msvcrt", "nt", "winreg", "winsound",
    }
)  # fmt: skip
_ADDR = re.compile(r" at 0x[0-9a-fA-F]+")


class PydocSource(Source):
    """The standard library's own documentation: offline, deterministic, present everywhere.

    One document per top-level public module (``per="module"``, id = module name) with the module
    docstring followed by the signature and first paragraph of each public class/function, cut at
    ``max_chars``; or one document per public member (``per="member"``, id = ``module.member``)
    with its full docstring, which gives a few thousand documents.
    """

    def __init__(
        self,
        *,
        max_chars: int | None = None,
        modules: Iterable[str] | str | None = None,
        per: str = "module",
        limit: int | None = None,
        **opts: Any,
    ) -> None:
        opts.setdefault("name", "pydoc:")
        super().__init__(**opts)
        self.max_chars = int(max_chars) if max_chars not in (None, "") else None
        if isinstance(modules, str):
            modules = [m for m in modules.split(",") if m]
        self.modules = sorted(modules) if modules else None
        if per not in ("module", "member"):
            raise ConfigError(f"pydoc: per must be 'module' or 'member', got {per!r}")
        self.per = per
        self.limit = int(limit) if limit not in (None, "") else None

    def module_names(self) -> list[str]:
        if self.modules is not None:
            return list(self.modules)
        return sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in PYDOC_SKIP)

    def _rows(self) -> Iterator[tuple[str, Any]]:
        count = 0
        for name in self.module_names():
            mod = _quiet_import(name)
            if mod is None:
                continue
            docs = [_module_doc(name, mod, self.max_chars)] if self.per == "module" else _member_docs(name, mod, self.max_chars)
            for doc in docs:
                if not doc.text.strip():
                    continue
                if self.limit is not None and count >= self.limit:
                    return
                count += 1
                yield f"pydoc:{doc.id}", doc


def _quiet_import(name: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                return importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - platform-specific modules simply do not exist here
            return None


def _clean(doc: str | None) -> str:
    return _ADDR.sub("", inspect.cleandoc(doc)) if doc else ""


def _first_paragraph(doc: str | None) -> str:
    text = _clean(doc)
    return text.split("\n\n", 1)[0].strip()


class _Elided:
    def __repr__(self) -> str:
        return "..."


_SIMPLE = (int, float, bool, type(None), complex)


def _signature(obj: Any) -> str:
    """The signature with only simple literal defaults shown: a default such as ``os.environ``
    would otherwise put the machine's environment (secrets!) into the text, differently per run."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    params = []
    for p in sig.parameters.values():
        d = p.default
        simple = d is inspect.Parameter.empty or isinstance(d, _SIMPLE) or (
            isinstance(d, str | bytes) and len(d) <= 40 and not d.startswith("/" if isinstance(d, str) else b"/")  # no machine paths
        )
        params.append(p if simple else p.replace(default=_Elided()))
    try:
        text = str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))
    except ValueError:
        return "(...)"
    return _ADDR.sub("", text)


def _public_members(name: str, mod: Any) -> list[tuple[str, Any]]:
    names = getattr(mod, "__all__", None)
    if not isinstance(names, list | tuple):
        names = [n for n in dir(mod) if not n.startswith("_")]
    out = []
    for n in sorted({str(x) for x in names}):
        obj = getattr(mod, n, None)
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        owner = getattr(obj, "__module__", None) or ""
        if owner != name and not owner.startswith(name + ".") and not owner.startswith("_"):
            continue
        out.append((n, obj))
    return out


def _cap(text: str, max_chars: int | None) -> str:
    if max_chars is None or len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    sp = cut.rfind(" ", max(0, max_chars - 80))
    return cut[:sp] if sp > 0 else cut


def _module_doc(name: str, mod: Any, max_chars: int | None) -> Document:
    parts = [f"Module {name}", _clean(mod.__doc__)]
    for n, obj in _public_members(name, mod):
        kind = "class" if inspect.isclass(obj) else "def"
        summary = _first_paragraph(getattr(obj, "__doc__", None))
        parts.append(f"{kind} {n}{_signature(obj)}" + (f": {summary}" if summary else ""))
        if max_chars is not None and sum(len(p) for p in parts) > max_chars:
            break
    text = _cap("\n\n".join(p for p in parts if p), max_chars)
    return Document(name, text, {"module": name, "kind": "module"}, location=f"pydoc:{name}")


def _member_docs(name: str, mod: Any, max_chars: int | None) -> list[Document]:
    docs = [_module_doc(name, mod, max_chars)]
    for n, obj in _public_members(name, mod):
        kind = "class" if inspect.isclass(obj) else "function"
        body = _clean(getattr(obj, "__doc__", None))
        if not body:
            continue
        text = _cap(f"{name}.{n}{_signature(obj)}\n\n{body}", max_chars)
        docs.append(Document(f"{name}.{n}", text, {"module": name, "kind": kind}, location=f"pydoc:{name}.{n}"))
    return docs

