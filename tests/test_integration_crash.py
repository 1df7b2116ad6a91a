"""SIGKILL at random points of a run, several times, and the everyday drifts next to them (records deleted
from the stores behind embedrail's back, the target URLs spelt another way, a truncated snapshot), then
re-run: every target holds exactly the source's chunks with current fingerprints (no duplicates, no
missing, no stale)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_integration_support import assert_in_step, expected_records, minilm, sentences, write_jsonl
from util import LEDGERS, opened, with_name

from embedrail.integration.engine import SyncEngine, redact_url
from embedrail.integration.ledger import Ledger

ROOT = Path(__file__).resolve().parent.parent
CT = 24

CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from embedrail.embed_core import Embedder
from embedrail.integration.engine import SyncEngine
cfg = json.loads(sys.argv[2])
emb = Embedder.load("minilm", device="cpu")
print("READY", flush=True)
with SyncEngine(cfg["src"], cfg["targets"], ledger=cfg["ledger"], embedder=emb, chunk_tokens=cfg["ct"],
                batch_size=4, mode=cfg["mode"], progress=False) as e:
    r = e.run()
print("DONE", json.dumps(r.to_dict()), flush=True)
"""


def _corpus(version: int) -> list[dict[str, Any]]:
    docs = []
    for i in range(36):
        if version >= 1 and i % 9 == 0:
            continue  # deleted from the source
        n = 5 if not (version >= 2 and i % 4 == 1) else 2  # some documents shrink
        text = sentences(f"doc{i}", n)
        if version >= 1 and i % 5 == 2:
            text += f" Edited in version {version}."
        docs.append({"id": f"doc{i}", "text": text, "v": version if i % 7 == 3 else 0})
    return docs


def _ledger_progress(url: str, key: str) -> tuple[int, int]:
    led = Ledger(url)
    state = led.target(key)
    if state is None:
        return (0, 0)
    c = led.counts(key, state.pending_generation or state.generation)
    led.close()
    return (c["chunks"], c["pending_chunks"])


@pytest.mark.slow
@pytest.mark.parametrize("ledger_kind", LEDGERS)
def test_sigkill_at_random_points_then_rerun_repairs(tmp_path: Path, es_url: str, opensearch_url: str, pgvector_url: str,
                                                    weaviate_url: str, unique_name: str, ledger_url: str) -> None:  # fmt: skip
    rng = random.Random(int(os.environ.get("EMBEDRAIL_CRASH_SEED", "7")))
    src = tmp_path / "docs.jsonl"
    targets = [f"chroma://{tmp_path / 'chroma'}?collection={unique_name}", with_name(es_url, unique_name),
               with_name(opensearch_url, unique_name), with_name(pgvector_url, unique_name[:40]),
               f"qdrant://{tmp_path / 'qdrant'}?collection={unique_name}", with_name(weaviate_url, "T" + unique_name[1:])]  # fmt: skip
    ledger = ledger_url
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    kills = 0
    progress: list[tuple[int, int]] = []
    for version, mode in [(0, "incremental"), (1, "full"), (2, "incremental")]:
        docs = _corpus(version)
        write_jsonl(src, docs)
        cfg = {"src": str(src), "targets": targets, "ledger": ledger, "ct": CT, "mode": mode}
        with subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT), json.dumps(cfg)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:  # fmt: skip
            try:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                assert line.startswith("READY"), proc.stderr.read() if proc.stderr else line
                # wait until the child is writing (the ledger moves), then kill it a random moment later
                base = _ledger_progress(ledger, redact_url(targets[0]))
                deadline = time.time() + 90
                while proc.poll() is None and time.time() < deadline and _ledger_progress(ledger, redact_url(targets[0])) == base:
                    time.sleep(0.05)
                time.sleep(rng.uniform(0.0, 1.5))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    kills += 1
                proc.wait(timeout=60)
                progress.append(_ledger_progress(ledger, redact_url(targets[0])))
            finally:  # leaving the with block waits for the child: never let it run on
                if proc.poll() is None:
                    proc.kill()
    assert kills >= 2, "the runs finished before they could be killed: make the corpus bigger"
    print("ledger (chunks, in-flight intents) after each kill:", progress)
    emb = minilm()
    final = _corpus(2)
    # the everyday drifts next to the kills: records lost from every store, the server URLs spelt another
    # way; one run repairs all of it
    for t in targets:
        with opened(t) as store:
            assert store.delete(sorted(store.iter_ids())[::7]).ok
    write_jsonl(src, final)
    respelt = [t.replace("127.0.0.1", "localhost") for t in targets]
    with SyncEngine(str(src), respelt, ledger=ledger, embedder=emb, chunk_tokens=CT, progress=False) as e:
        r = e.run()
    assert r.ok, r.errors
    for t in targets:
        assert_in_step(t, emb, final, CT)
    # then a truncated snapshot: its deletes are refused on every target, nothing is lost
    write_jsonl(src, final[:3])
    with SyncEngine(str(src), respelt, ledger=ledger, embedder=emb, chunk_tokens=CT, progress=False) as e:
        r = e.run()
    assert not r.ok and set(r.refused_deletes) == {redact_url(t) for t in targets}, r.errors
    for t in targets:
        assert_in_step(t, emb, final, CT)
    write_jsonl(src, final)
    led = Ledger(ledger)
    want = expected_records(emb, final, CT)
    for t in targets:
        state = led.target(redact_url(t))
        assert state is not None and state.pending_generation is None
        assert led.chunk_map(redact_url(t), state.generation) == want  # no intents, nothing stale
    with SyncEngine(str(src), targets, ledger=ledger, embedder=emb, chunk_tokens=CT, progress=False) as e:
        assert e.run().embedded == 0
