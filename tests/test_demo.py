"""The demo corpus: the standard library's docs into embedded Chroma; "parse command line
arguments" finds argparse; a second run embeds nothing. (A few modules only, so it is quick.)"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from test_integration_support import cached_load

from embedrail.embed_core import Embedder

ROOT = Path(__file__).resolve().parent.parent
MODULES = "argparse,getopt,optparse,json,re,shlex,smtplib,gzip,zlib,csv,sqlite3,os"


def _demo():
    spec = importlib.util.spec_from_file_location("embedrail_demo", ROOT / "scripts" / "demo.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def test_demo_finds_argparse_and_second_run_embeds_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Embedder, "load", classmethod(cached_load))
    demo = _demo()
    args = ["--dir", str(tmp_path), "--modules", MODULES, "--max-chars", "1500", "--json"]
    assert demo.main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["report"]["documents"] == len(MODULES.split(",")) and first["report"]["embedded"] > 0
    by_query = {s["query"]: s for s in first["searches"]}
    assert by_query["parse command line arguments"]["docs"][0] == "argparse"
    assert all(s["found"] for s in first["searches"]), first["searches"]
    assert demo.main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["report"]["embedded"] == 0 and second["report"]["unchanged"] == first["report"]["chunks"]
    assert demo.main(args[:-1]) == 0  # the human output says so
    assert "nothing new to embed" in capsys.readouterr().out
