"""The ``embedrail`` CLI: JSON shapes, flag-less search after a reindex, status, one-line errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_integration_support import cached_load, sentences, write_jsonl
from util import with_name

from embedrail.embed_core import Embedder
from embedrail.integration.cli import main

ROOT = Path(__file__).resolve().parent.parent
REPORT_KEYS = {"documents", "chunks", "embedded", "unchanged", "upserted", "deleted", "failed", "model", "dims", "seconds"}


@pytest.fixture(autouse=True)
def _load_model_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI loads the model per command; memoise it so the suite loads it once."""
    monkeypatch.setattr(Embedder, "load", classmethod(cached_load))


@pytest.fixture
def setup(tmp_path: Path, unique_name: str) -> dict[str, Any]:
    docs = [
        {"id": "rivers", "text": "Rivers carry water from mountains to the sea; salmon swim upstream to spawn.", "kind": "nature"},
        {"id": "compilers", "text": "A compiler translates source code into machine code, optimising loops.", "kind": "cs"},
        {"id": "bread", "text": "Knead the dough, let it rise overnight, then bake the bread in a hot oven.", "kind": "food"},
        {"id": "long", "text": sentences("long", 30), "kind": "filler"},
    ]
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    return {
        "src": str(src),
        "target": f"chroma://{tmp_path / 'chroma'}?collection={unique_name}",
        "ledger": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        "docs": docs,
    }


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def reindex(capsys: pytest.CaptureFixture[str], s: dict[str, Any], *extra: str) -> tuple[int, dict[str, Any], str]:
    code, out, err = cli(capsys, "reindex", "--source", s["src"], "--target", s["target"], "--ledger", s["ledger"], "--json", *extra)
    return code, json.loads(out), err


@pytest.mark.parametrize("store", ["chroma", "qdrant"])
def test_reindex_json_report_and_flagless_search(capsys: pytest.CaptureFixture[str], setup: dict[str, Any], store: str) -> None:
    if store == "qdrant":  # qdrant-client's embedded mode
        setup["target"] = f"qdrant://{Path(setup['src']).parent / 'qdrant'}?collection=docs"
    code, rep, _ = reindex(capsys, setup)
    assert code == 0 and REPORT_KEYS <= set(rep)
    assert rep["documents"] == 4 and rep["chunks"] > 4 and rep["embedded"] == rep["chunks"] and rep["unchanged"] == 0
    (key,) = rep["upserted"]
    assert rep["upserted"][key] == rep["chunks"] and rep["deleted"] == {key: 0} and rep["failed"] == {key: 0}
    assert rep["model"] == "sentence-transformers/all-MiniLM-L6-v2" and rep["dims"] == 384 and rep["seconds"] >= 0
    code, rep2, _ = reindex(capsys, setup)
    assert code == 0 and rep2["embedded"] == 0 and rep2["unchanged"] == rep["chunks"] and rep2["upserted"] == {key: 0}
    # search needs no --model/--dims: the index records them
    code, out, _ = cli(capsys, "search", "--target", setup["target"], "--json", "-k", "3", "how", "is", "bread", "baked")
    hits = json.loads(out)
    assert code == 0 and len(hits) == 3 and set(hits[0]) == {"id", "score", "text", "metadata"}
    assert hits[0]["id"] == "bread#0" and hits[0]["metadata"]["kind"] == "food" and hits[0]["score"] >= hits[1]["score"]
    code, out, _ = cli(capsys, "search", "--target", setup["target"], "--filter", "kind=cs", "-k", "2", "water")
    assert code == 0 and "compilers" in out and "rivers" not in out
    # hybrid search: Chroma has no keyword search to fuse with kNN -> one clear line; Qdrant's sparse vectors do
    code, out, err = cli(capsys, "search", "--target", setup["target"], "--hybrid", "--json", "-k", "1", "bread")
    if store == "chroma":
        assert code != 0 and "no keyword search" in err and "Traceback" not in err
    else:
        assert code == 0 and json.loads(out)[0]["id"] == "bread#0"
    code, out, _ = cli(capsys, "status", "--target", setup["target"], "--ledger", setup["ledger"], "--verify", "--json")
    st = json.loads(out)
    assert code == 0 and st["in_sync"] and st["store_count"] == rep["chunks"] and st["ledger"]["chunks"] == rep["chunks"]
    assert st["drift"]["missing_in_store"] == st["drift"]["unknown_in_store"] == st["drift"]["stale_fingerprints"] == 0


def test_dry_run_and_human_output(capsys: pytest.CaptureFixture[str], setup: dict[str, Any]) -> None:
    code, out, _ = cli(capsys, "reindex", "--source", setup["src"], "--target", setup["target"], "--ledger", setup["ledger"], "--dry-run")
    assert code == 0 and "would embed" in out and "plan new=" in out
    code, out, err = cli(capsys, "search", "--target", setup["target"], "anything")
    assert code == 2 and "no such index" in err and "Traceback" not in err


@pytest.mark.slow  # waits out retries or slow writes: `make test` only
def test_target_down_gives_nonzero_exit_and_report(capsys: pytest.CaptureFixture[str], setup: dict[str, Any]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = f"es://127.0.0.1:{port}/idx"
    code, out, err = cli(capsys, "reindex", "--source", setup["src"], "--target", setup["target"], "--target", dead,
                         "--ledger", setup["ledger"], "--json")  # fmt: skip
    rep = json.loads(out)
    assert code == 1 and not rep["ok"] and f"es://127.0.0.1:{port}/idx" in rep["errors"]
    assert rep["upserted"][next(k for k in rep["upserted"] if k.startswith("chroma"))] == rep["chunks"]
    assert "re-run to catch up" in err and "Traceback" not in err


def test_model_change_is_refused_in_incremental_mode(capsys: pytest.CaptureFixture[str], setup: dict[str, Any]) -> None:
    from embedrail.embed_core import packaged_minilm_dir

    assert reindex(capsys, setup)[0] == 0
    other = str(packaged_minilm_dir())  # the same weights as a local model dir: another fingerprint
    code, out, err = cli(capsys, "reindex", "--source", setup["src"], "--target", setup["target"], "--ledger", setup["ledger"], "--model", other)
    assert code == 2 and "--mode full" in err and len(err.strip().splitlines()) == 1
    code, rep, _ = reindex(capsys, setup, "--model", other, "--mode", "full")
    assert code == 0 and rep["embedded"] == rep["chunks"] and rep["mode"] == "full"
    code, rep, _ = reindex(capsys, setup, "--model", other)
    assert code == 0 and rep["embedded"] == 0


def test_dims_above_store_limit_is_one_line_error(capsys: pytest.CaptureFixture[str], setup: dict[str, Any], es_url: str, unique_name: str) -> None:
    target = with_name(es_url, unique_name)
    code, out, err = cli(capsys, "reindex", "--source", setup["src"], "--target", target, "--ledger", setup["ledger"], "--dims", "100000")
    assert code == 2 and "at most" in err and "--dims" in err and len(err.strip().splitlines()) == 1


def test_user_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cases = [
        ["reindex", "--source", str(tmp_path / "missing.jsonl"), "--target", f"chroma://{tmp_path}?collection=abc"],
        ["reindex", "--source", "pydoc:", "--target", "nosuchstore://x/y"],
        ["reindex", "--source", "pydoc:?bogus=1", "--target", f"chroma://{tmp_path}?collection=abc"],
    ]
    for args in cases:
        p = subprocess.run([sys.executable, "-m", "embedrail.integration.cli", *args], env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, (args, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("embedrail: error:") and "Traceback" not in p.stderr, p.stderr


def test_reindex_and_search_with_a_remote_embedding_server(capsys: pytest.CaptureFixture[str], setup: dict[str, Any]) -> None:
    from embedrail.embed_core.serve import BackgroundServer

    emb = cached_load(Embedder, "minilm")
    with BackgroundServer(emb) as url:
        model = f"{url}/v1#{emb.model}"
        code, rep, _ = reindex(capsys, setup, "--model", model)
        assert code == 0 and rep["embedded"] == rep["chunks"] > 0
        code, rep, _ = reindex(capsys, setup)  # the index records the remote model: no flag needed
        assert code == 0 and rep["embedded"] == 0
        code, out, _ = cli(capsys, "search", "--target", setup["target"], "--json", "-k", "1", "baking bread")
        assert code == 0 and json.loads(out)[0]["id"] == "bread#0"
