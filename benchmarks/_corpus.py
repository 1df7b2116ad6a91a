"""The synthetic corpus the scale and CPU-side benchmarks write: documents of ~40 words drawn from a small
vocabulary, each one chunk, the same for the same ``n`` on every machine."""

from __future__ import annotations

import json
import random
from pathlib import Path

__all__ = ["write_corpus"]

WORDS = ("river stone lamp harbor signal copper meadow engine lantern orbit cedar glacier pepper violet anchor "
         "falcon quartz ribbon summit thunder walnut yarrow zephyr basalt canyon delta ember fjord grove").split()  # fmt: skip


def write_corpus(path: Path, n: int, edit: int = 0, seed: int = 0) -> None:
    """n documents; the first ``edit`` of every hundred get another text (1 % edited = edit 1)."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            r = random.Random(i)
            text = " ".join(r.choice(WORDS) for _ in range(40)) + f" number {i}."
            if edit and i % 100 < edit:
                text += f" Edited {rng.random():.6f}."
            f.write(json.dumps({"id": f"doc-{i:08d}", "text": text, "group": i % 7}) + "\n")
