"""Cold start: how long a new process takes until the packaged model has embedded its first text
(what every CLI run and every Airflow task pays once). Not a test.

Each case runs in a fresh interpreter (``python -c``), ``--repeat`` times; the median wall time
from spawning the process to its first vector ("ready"; the process exit, where torch tears itself
down for ~0.5 s, is shown apart) is reported with its ratio to the named baseline
"sentence-transformers" (``SentenceTransformer(dir).encode``, how its users load the same model).

- ``embedrail packed``: ``open_embedder("minilm")`` — the default; the BERT weights are read straight
  from the safetensors into the packed forward pass, no transformers model is built.
- ``embedrail transformers``: ``packed=False`` — the transformers BertModel, for comparison.

The interpreter is started with ``PYTHONDONTWRITEBYTECODE=1`` (as some machines set it): without
bytecode compiled at install time every start recompiles torch and transformers.

    .venv/bin/python benchmarks/cold_start.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "sentence-transformers": (
        "from sentence_transformers import SentenceTransformer\n"
        "from embedrail.embed_core.spec import resolve_model\n"
        "m = SentenceTransformer(str(resolve_model('minilm').path), device='cpu')\n"
        "m.encode(['hello world'])\n"
    ),
    "embedrail packed": (
        "from embedrail.embed_core import open_embedder\nopen_embedder('minilm', device='cpu').embed_documents(['hello world'])\n"
    ),
    "embedrail transformers": (
        "from embedrail.embed_core import open_embedder\n"
        "open_embedder('minilm', device='cpu', packed=False).embed_documents(['hello world'])\n"
    ),
}


def run(code: str) -> tuple[float, float]:
    """(seconds from spawning the process to its first vector, seconds until it has exited)."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", TOKENIZERS_PARALLELISM="false")
    code += "import time\nprint('READY', time.time())\n"
    started = time.time()
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env, capture_output=True, text=True)
    ended = time.time()
    ready = next(float(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("READY"))
    return ready - started, ended - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    run("import torch\n")  # page cache warm for every case alike
    results = {}
    for name, code in CASES.items():
        runs = [run(code) for _ in range(args.repeat)]
        results[name] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
    base = results["sentence-transformers"][0]
    print(f"{'case':<26}{'ready (s)':>11}{'exited (s)':>12}{'ready vs sentence-transformers':>33}")
    for name, (ready, exited) in results.items():
        print(f"{name:<26}{ready:>11.2f}{exited:>12.2f}{base / ready:>32.2f}x")


if __name__ == "__main__":
    main()
