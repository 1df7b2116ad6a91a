"""BM25-style sparse vectors, for stores that rank keywords through sparse vectors (Qdrant).

A record's text becomes ``{hash(term): bm25_tf(term)}``: the term frequency saturated and normalised by the
text's length as BM25 does (``tf·(k1+1) / (tf + k1·(1 - b + b·len/avg_len))``); the store multiplies in the
inverse document frequency at query time from its own statistics (Qdrant's ``Modifier.IDF``), so adding
documents never rewrites old vectors. A query is its distinct terms, weight 1 each.

Terms: words lowercased, English stop words dropped; an identifier (``cgi.parse_header``,
``ArgumentParser``) gives itself and its parts, split on ``.``, ``_`` and case changes, so that
``parse header`` finds it. No stemming. Terms are hashed to 31-bit indices (CRC-32): two terms that
collide share a weight, rare at the vocabulary sizes of one index.

The encoder's ``identity`` is recorded in the index's metadata: queries and writes use the index's
own, so a later default never mixes two encodings in one index (a rebuild takes the new one).
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from typing import Any

__all__ = ["BM25_IDENTITY", "LEARNED", "Bm25Sparse", "check_learned", "learned_encoder", "sparse_encoder", "terms"]

_TOKEN = re.compile(r"\w+(?:[.'’]\w+)*")
_PARTS = re.compile(r"[._'’]+")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
STOP_WORDS = frozenset(
    "a about above after again against all am an and any are as at be because been before being below between both "
    "but by can could did do does doing down during each few for from further had has have having he her here hers "
    "him his how i if in into is it its itself just me more most my no nor not now of off on once only or other our "
    "out over own same she should so some such than that the their theirs them then there these they this those "
    "through to too under until up very was we were what when where which while who whom why will with would you "
    "your yours".split()
)


def terms(text: str) -> list[str]:
    """The terms of ``text`` in order (see the module doc)."""
    out: list[str] = []
    for tok in _TOKEN.findall(text):
        parts = [p for p in _PARTS.split(tok) if p]
        subs: list[str] = []
        for p in parts:
            subs += (_CAMEL.findall(p) or [p]) if p.isascii() else [p]
        subs = [s.lower() for s in subs]
        low = tok.lower()
        if len(subs) > 1:
            out.append(low)
            out += [s for s in subs if s not in STOP_WORDS]
        elif low not in STOP_WORDS:
            out.append(low)
    return out


def _index(term: str) -> int:
    return zlib.crc32(term.encode("utf-8")) & 0x7FFFFFFF


class Bm25Sparse:
    """The BM25 document side as a sparse vector (the IDF is the store's)."""

    NAME = "bm25"
    VERSION = 1

    def __init__(self, k1: float = 1.2, b: float = 0.75, avg_len: float = 128.0) -> None:
        self.k1, self.b, self.avg_len = float(k1), float(b), float(avg_len)

    @property
    def identity(self) -> dict[str, Any]:
        return {"name": self.NAME, "version": self.VERSION, "k1": self.k1, "b": self.b, "avg_len": self.avg_len}

    def document(self, text: str) -> tuple[list[int], list[float]]:
        counts = Counter(terms(text))
        if not counts:
            return [], []
        norm = self.k1 * (1 - self.b + self.b * sum(counts.values()) / self.avg_len)
        weights: dict[int, float] = {}
        for term, tf in counts.items():
            i = _index(term)
            weights[i] = weights.get(i, 0.0) + tf * (self.k1 + 1) / (tf + norm)
        idx = sorted(weights)
        return idx, [weights[i] for i in idx]

    def query(self, text: str) -> tuple[list[int], list[float]]:
        idx = sorted({_index(t) for t in terms(text)})
        return idx, [1.0] * len(idx)


BM25_IDENTITY = Bm25Sparse().identity


def sparse_encoder(identity: Any) -> Bm25Sparse:
    """The encoder an index records (its metadata's ``sparse``)."""
    if not isinstance(identity, dict) or identity.get("name") != Bm25Sparse.NAME or identity.get("version") != Bm25Sparse.VERSION:
        from embedrail.errors import ConfigError

        raise ConfigError(f"this index's sparse vectors were written by an encoder this embedrail does not know ({identity!r}); "
                          "upgrade embedrail, or rebuild the index (--mode full)")  # fmt: skip
    return Bm25Sparse(identity.get("k1", 1.2), identity.get("b", 0.75), identity.get("avg_len", 128.0))


LEARNED = "splade"  # the name learned sparse vectors (a model's: ``sparse_encoder=``) go under


def learned_encoder(encoder: Any) -> Any:
    """``encoder`` if it has what a store calls on a learned sparse encoder (``identity``, ``documents``,
    ``query``), else a ``ConfigError``."""
    if not all(hasattr(encoder, a) for a in ("identity", "documents", "query")):
        from embedrail.errors import ConfigError

        raise ConfigError("sparse_encoder must have identity, documents(texts) and query(text) "
                          "(e.g. embedrail.embed_core.sparse.open_sparse_encoder(MODEL))")  # fmt: skip
    return encoder


def check_learned(url: str, encoder: Any, recorded: dict[str, Any]) -> Any:
    """The store's learned encoder when it is the one an index records (model files and settings; the path
    it is loaded from may differ), else a ``ConfigError`` that says what to do."""
    same = encoder is not None and all(encoder.identity.get(k) == recorded.get(k) for k in ("name", "hash", "max_tokens", "top_k"))
    if not same:
        from embedrail.errors import ConfigError

        have = f"this store's encoder is {encoder.identity}" if encoder is not None else "this store has no encoder"
        raise ConfigError(f"{url}: the index's sparse vectors come from the model {recorded.get('model')} ({recorded}; "
                          f"{have}): open it with that model (sparse_encoder=..., the target's ?sparse_model=), or "
                          "rebuild it with --mode full")  # fmt: skip
    return encoder
