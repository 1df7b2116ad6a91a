"""SPLADE sparse vectors from embed_core: a tiny random ``BertForMaskedLM`` against sentence-transformers'
``SparseEncoder`` (``MLMTransformer`` + ``SpladePooling``, max pooling, log1p(relu)) as the independent
reference, padding and batching included; ``top_k``; the identity; errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_embed_fixtures import build_tiny_splade

from embedrail.errors import ConfigError, ModelError

TEXTS = ["The fox is a canid.", "", "Paris is the capital of France and its largest city by far. " * 6,
         "cgi.parse_header splits a Content-Type header", "ünïcödé — text ✓", "a"]  # fmt: skip


@pytest.fixture(scope="module")
def splade_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_splade(tmp_path_factory.mktemp("tiny-splade"))


def _dense(pairs: list[tuple[list[int], list[float]]], vocab: int) -> np.ndarray:
    out = np.zeros((len(pairs), vocab), dtype=np.float32)
    for row, (idx, val) in zip(out, pairs, strict=True):
        row[idx] = val
    return out


def test_splade_matches_sentence_transformers_sparse_encoder(splade_dir: Path) -> None:
    from sentence_transformers import SparseEncoder as StSparse
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling

    from embedrail.embed_core.sparse import open_sparse_encoder

    enc = open_sparse_encoder(str(splade_dir), device="cpu", dtype="float32", batch_size=4)
    got = enc.encode(TEXTS)
    mlm = MLMTransformer(str(splade_dir), max_seq_length=enc.max_tokens)
    ref_model = StSparse(modules=[mlm, SpladePooling(pooling_strategy="max", activation_function="relu")], device="cpu")
    ref = ref_model.encode(TEXTS, batch_size=1, convert_to_tensor=True).to_dense().numpy()  # one text per batch: no padding
    mine = _dense(got, enc.vocab_size)
    assert mine.shape == ref.shape
    np.testing.assert_allclose(mine, ref, rtol=1e-4, atol=1e-5)
    assert all(idx == sorted(idx) and all(v > 0 for v in val) for idx, val in got)
    assert len(got[0][0]) > 10  # a random MLM head activates many entries: the comparison is not of empties
    # the duck type the connectors call; one text alone equals the same text in a padded batch
    idx, val = enc.document(TEXTS[2])
    assert idx == got[2][0] and np.allclose(val, got[2][1], rtol=1e-5)
    assert enc.query(TEXTS[0])[0] == got[0][0]
    assert enc.identity["name"] == "splade" and enc.identity["hash"]


def test_top_k_keeps_the_largest_weights(splade_dir: Path) -> None:
    from embedrail.embed_core.sparse import open_sparse_encoder

    full = open_sparse_encoder(str(splade_dir), device="cpu", dtype="float32").encode(TEXTS[:1])[0]
    enc = open_sparse_encoder(str(splade_dir), device="cpu", dtype="float32", top_k=5)
    idx, val = enc.encode(TEXTS[:1])[0]
    want = sorted(np.argsort(-np.asarray(full[1]))[:5])
    assert idx == [full[0][i] for i in want] and len(val) == 5
    assert enc.identity != open_sparse_encoder(str(splade_dir), device="cpu").identity  # top_k is part of it


def test_bad_arguments_and_models(splade_dir: Path, tmp_path: Path) -> None:
    from test_embed_fixtures import build_tiny_cross_encoder

    from embedrail.embed_core.sparse import open_sparse_encoder

    with pytest.raises(ConfigError, match="top_k"):
        open_sparse_encoder(str(splade_dir), device="cpu", top_k=0)
    with pytest.raises(ConfigError, match="max_tokens"):
        open_sparse_encoder(str(splade_dir), device="cpu", max_tokens=100_000)
    with pytest.raises(ConfigError, match="list of texts"):
        open_sparse_encoder(str(splade_dir), device="cpu").encode("one string")
    with pytest.raises(ModelError, match="not a masked language model"):
        open_sparse_encoder(str(build_tiny_cross_encoder(tmp_path / "ce")), device="cpu")
