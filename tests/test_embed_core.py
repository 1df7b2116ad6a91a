"""embed_core on CPU with real models: the packaged MiniLM and a tiny random Qwen3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_embed_fixtures import add_st_files, build_tiny_qwen3, tiny_qwen3_dir  # noqa: F401

from embedrail.embed_core import QWEN3_DEFAULT_TASK, Embedder, EmbedderConfig, packaged_minilm_dir
from embedrail.embed_core.packed_bert import PackedBert
from embedrail.embed_core.pooling import pool, pool_packed
from embedrail.errors import ConfigError, InputError, ModelError

TEXTS = [
    "parse command line arguments",
    "The quick brown fox jumps over the lazy dog.",
    "Return the number of items in a container.",
    "x",
    "argparse makes it easy to write user-friendly command-line interfaces. " * 3,
    "The quick brown fox jumps over the lazy dog.",  # duplicate on purpose
]
LONG = "A very long document about embeddings and vector databases. " * 60  # > 256 word pieces


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def minilm() -> Embedder:
    return Embedder.load("minilm", device="cpu", dtype="float32")  # the reference precision: exact comparisons


# ------------------------------------------------------------------------------------------------
# MiniLM (the packaged default) against sentence-transformers
# ------------------------------------------------------------------------------------------------
def test_minilm_equals_sentence_transformers(minilm: Embedder) -> None:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(packaged_minilm_dir()), device="cpu")
    texts = [*TEXTS, LONG]
    expected = st.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    before = minilm.stats.truncated
    got = minilm.embed_documents(texts)
    assert got.shape == (len(texts), 384) and got.dtype == np.float32
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert _cos(got, expected).min() >= 0.99999
    assert minilm.stats.truncated - before == 1  # LONG was cut at 256 tokens
    # queries of a prefix-less model are the same vectors
    assert np.allclose(minilm.embed_queries(["parse command line arguments"])[0], got[0], atol=1e-6)


def test_minilm_description_and_fingerprint(minilm: Embedder) -> None:
    assert (minilm.model_id, minilm.dims, minilm.native_dims, minilm.max_tokens) == (
        "sentence-transformers/all-MiniLM-L6-v2", 384, 384, 256
    )
    assert minilm.metric == "cosine" and minilm.tokenizer is not None
    info = json.loads(json.dumps(minilm.embedding_info()))
    assert info["model"] == "minilm" and info["pooling"] == "mean" and info["dims"] == 384
    assert info["fingerprint"] == minilm.fingerprint and len(minilm.fingerprint) == 32
    again = Embedder.from_info(info, device="cpu", dtype="float32")  # what `search` does with index metadata
    assert again.fingerprint == minilm.fingerprint
    assert np.allclose(again.embed_documents(TEXTS[:2]), minilm.embed_documents(TEXTS[:2]), atol=1e-6)
    prefixed = Embedder.load("minilm", device="cpu", dtype="float32", document_prefix="passage: ", query_prefix="query: ")
    assert prefixed.fingerprint != minilm.fingerprint
    assert prefixed.format_document("a") == "passage: a" and prefixed.format_query("a") == "query: a"
    assert np.allclose(prefixed.embed_documents(["hello"]), minilm.embed_raw(["passage: hello"]), atol=1e-6)
    assert np.allclose(prefixed.embed_queries(["hello"]), minilm.embed_raw(["query: hello"]), atol=1e-6)
    longer = Embedder.load("minilm", device="cpu", max_tokens=512)  # above ST's 256, within 512 positions
    assert longer.max_tokens == 512 and longer.fingerprint != minilm.fingerprint
    with pytest.raises(ConfigError, match="exceeds"):
        Embedder.load("minilm", device="cpu", max_tokens=513)
    # a stored fingerprint that no longer matches is refused
    with pytest.raises(ModelError, match="fingerprint"):
        Embedder.from_info({**info, "fingerprint": "0" * 32}, device="cpu")


def test_minilm_dims_rules(minilm: Embedder) -> None:
    with pytest.raises(ModelError, match="matryoshka=True"):
        Embedder.load("minilm", dims=64, device="cpu")
    with pytest.raises(ModelError, match="larger"):
        Embedder.load("minilm", dims=512, device="cpu")
    forced = Embedder.load("minilm", dims=64, matryoshka=True, device="cpu", dtype="float32")
    full = minilm.embed_documents(TEXTS)
    cut = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    got = forced.embed_documents(TEXTS)
    assert got.shape == (len(TEXTS), 64) and np.allclose(got, cut, atol=1e-6)
    assert forced.fingerprint != minilm.fingerprint and forced.embedding_info()["matryoshka"] is True


def test_input_errors(minilm: Embedder) -> None:
    with pytest.raises(InputError, match=r"texts\[1\] is empty"):
        minilm.embed_documents(["ok", "  \n"])
    with pytest.raises(InputError, match=r"queries\[0\] is empty"):
        minilm.embed_queries([""])
    with pytest.raises(InputError, match="not a single str"):
        minilm.embed_documents("one string")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"texts\[2\] is a int"):
        minilm.embed_documents(["a", "b", 3])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="instruction"):
        minilm.embed_queries(["a"], instruction="Given a question")
    with pytest.raises(ConfigError, match="unknown"):
        Embedder.load("minilm", dimz=3)
    with pytest.raises(ModelError, match="does not exist"):
        Embedder.load("./no/such/model")
    with pytest.raises(ConfigError):
        EmbedderConfig(model="minilm", pooling="median").validate()
    assert minilm.embed_documents([]).shape == (0, 384)


def test_batching_order_and_oom_retry(minilm: Embedder) -> None:
    texts = [f"sentence number {i} " + "word " * (i % 13) for i in range(40)]
    expected = np.stack([minilm.embed_documents([t])[0] for t in texts[:5]])
    small = Embedder.load("minilm", device="cpu", batch_tokens=256, dtype="float32")  # budget below one text -> raised to 256
    before = small.stats.batches
    got = small.embed_documents(texts)
    assert small.stats.batches - before > 1  # several length-sorted batches ...
    assert np.allclose(got[:5], expected, atol=1e-5)  # ... and input order restored
    assert np.allclose(got, minilm.embed_documents(texts), atol=1e-5)

    # fault injection: the forward pass raises CUDA OOM whenever a batch holds more than 4 texts
    real_forward = small._forward

    def flaky(batch: list[list[int]]) -> np.ndarray:
        if len(batch) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(batch)

    small._forward = flaky  # type: ignore[method-assign]
    small._budget = 4096
    again = small.embed_documents(texts)
    assert small.stats.oom_retries >= 1 and small._budget < 4096
    assert np.allclose(again, got, atol=1e-5)

    def always(batch: list[list[int]]) -> np.ndarray:
        raise torch.OutOfMemoryError("CUDA out of memory")

    small._forward = always  # type: ignore[method-assign]
    with pytest.raises(ModelError, match="out of memory"):
        small.embed_documents(texts[:3])


def test_concurrent_calls_from_threads_equal_serial_ones(minilm: Embedder) -> None:
    """An Embedder called from several threads at once (serve's workers, each on a budget of one core)
    gives the vectors of serial calls, and its counters add up exactly; each thread's tally is its own."""
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"thread test {i}: " + "word " * (i % 13) for i in range(64)]
    serial = minilm.embed_raw(texts)
    before = minilm.stats.tokens
    serial_tokens = minilm.embed_raw(texts) is not None and minilm.stats.tokens - before

    def part(k: int) -> tuple[np.ndarray, int]:
        minilm.set_thread_budget(1)
        with minilm.stats.tally() as mine:
            out = minilm.embed_raw(texts[k::4])
        return out, mine.tokens

    before = minilm.stats.tokens
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(part, range(4)))
    for k, (out, _) in enumerate(parts):
        assert np.abs(out - serial[k::4]).max() <= 1e-5
    assert sum(t for _, t in parts) == minilm.stats.tokens - before == serial_tokens
    assert len({t for _, t in parts}) > 1  # per-thread tallies, not one shared count
    with pytest.raises(ConfigError, match="at least 1"):
        minilm.set_thread_budget(0)


def test_packed_bert_path_equals_transformers_forward(minilm: Embedder) -> None:
    """The packed BERT path reads the safetensors itself (no transformers model is built): equal to
    the transformers forward pass on padded batches, and to a PackedBert built from that model."""
    assert isinstance(minilm._packed, PackedBert) and minilm._net is None
    texts = [*TEXTS, LONG, "a b c d e f g"]
    packed = minilm.embed_documents(texts)
    plain = Embedder.load("minilm", device="cpu", dtype="float32", packed=False)
    assert plain._packed is None and plain._net is not None
    assert _cos(packed, plain.embed_documents(texts)).min() >= 0.99999
    plain._packed = PackedBert.from_model(plain._net)
    assert np.abs(plain.embed_documents(texts) - packed).max() <= 1e-5


def test_bert_the_packed_path_does_not_cover_loads_through_transformers(tmp_path: Path) -> None:
    """A BERT with relative position embeddings: no packed path (the safetensors are not read
    directly), the transformers model runs it; ``packed=True`` is a clear error."""
    import shutil

    from transformers import BertConfig, BertModel

    from embedrail.embed_core.spec import resolve_model

    src = resolve_model("minilm").path
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, position_embedding_type="relative_key")  # fmt: skip
    BertModel(cfg).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / name, tmp_path / name)
    emb = Embedder.load(str(tmp_path), device="cpu")
    assert emb._packed is None and emb._net is not None
    assert emb.embed_documents(["relative positions"]).shape == (1, 32)
    with pytest.raises(ConfigError, match="packed"):
        Embedder.load(str(tmp_path), device="cpu", packed=True)


@pytest.mark.slow  # ~25 s on 2 cores: in `make test`, not in `make test-fast`
def test_cpu_bf16_keeps_the_vectors(minilm: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU default: bf16 matrix products where the CPU has native bf16, fp32 residual stream and
    LayerNorms. On real text (2,000 stdlib docstrings) every vector stays within cos 0.9999 of fp32."""
    from test_connectors_dataset import dataset

    from embedrail.embed_core.device import choose_placement, cpu_fast_bf16

    auto = choose_placement("cpu")
    assert auto.dtype == torch.float32 and auto.compute == (torch.bfloat16 if cpu_fast_bf16() else torch.float32)
    assert choose_placement("cpu", "float32").compute == torch.float32  # --dtype float32 forces fp32
    monkeypatch.setenv("EMBEDRAIL_CPU_BF16", "1")  # on a CPU without native bf16 the same numbers, slower
    bf16 = Embedder.load("minilm", device="cpu")
    assert bf16.placement.compute == torch.bfloat16 and bf16.fingerprint == minilm.fingerprint  # precision is not identity
    texts, _ = dataset(2000)
    assert _cos(bf16.embed_documents(texts), minilm.embed_documents(texts)).min() >= 0.9999
    forced = Embedder.load("minilm", device="cpu", dtype="bfloat16")  # weights in bf16 too
    assert _cos(forced.embed_documents(texts[:200]), minilm.embed_documents(texts[:200])).min() >= 0.9999


def test_packed_qwen3_path_equals_the_padded_one(qwen: Embedder, tiny_qwen3_dir: Path) -> None:  # noqa: F811
    """The padding-free decoder path (RoPE per token, GQA, causal attention per text) against the
    transformers forward on left-padded batches: texts of very different lengths in one batch."""
    from embedrail.embed_core.packed_qwen3 import PackedQwen3

    assert isinstance(qwen._packed, PackedQwen3)
    texts = [*QTEXTS, "x", " ".join(["a longer text with many words"] * 12)]
    packed = qwen.embed_documents(texts)
    padded = Embedder.load(str(tiny_qwen3_dir), device="cpu", packed=False)
    assert padded._packed is None
    assert np.abs(packed - padded.embed_documents(texts)).max() <= 1e-4
    short = texts[:-1]  # the long one is truncated at max_tokens; the reference is not
    assert np.abs(packed[:-1] - _reference_last_token(tiny_qwen3_dir, short)).max() <= 1e-4


@pytest.mark.parametrize("mode", ["mean", "cls", "lasttoken", "max", "mean_sqrt_len_tokens", "weightedmean"])
def test_pool_packed_equals_padded_pooling(mode: str) -> None:
    torch.manual_seed(0)
    lengths = [5, 3, 1, 4]
    rows = [torch.randn(n, 8) for n in lengths]
    packed = torch.cat(rows)
    lengths_t = torch.tensor(lengths)
    segment = torch.repeat_interleave(torch.arange(len(lengths)), lengths_t)
    positions = torch.cat([torch.arange(n) for n in lengths])
    for side in ("right", "left"):
        padded = torch.zeros(len(lengths), max(lengths), 8)
        mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
        for i, r in enumerate(rows):
            sl = slice(0, len(r)) if side == "right" else slice(max(lengths) - len(r), max(lengths))
            padded[i, sl], mask[i, sl] = r, 1
        assert torch.allclose(pool(padded, mask, mode), pool_packed(packed, lengths_t, segment, positions, mode), atol=1e-6)


def test_streaming_iterator(minilm: Embedder) -> None:
    texts = [f"streamed text {i}" for i in range(11)]
    seen: list[int] = []
    parts = list(minilm.iter_embed_documents((t for t in texts), progress=seen.append, chunk_size=4))
    assert [p.shape[0] for p in parts] == [4, 4, 3] and seen == [4, 4, 3]
    assert np.allclose(np.concatenate(parts), minilm.embed_documents(texts), atol=1e-5)
    with pytest.raises(InputError, match=r"texts\[5\] is empty"):
        list(minilm.iter_embed_documents(["a", "b", "c", "d", "e", " "], chunk_size=4))


def test_count_tokens_and_split_text(minilm: Embedder) -> None:
    assert minilm.count_tokens(["hello world"]) == [4]  # [CLS] hello world [SEP]
    assert minilm.count_tokens([LONG])[0] > 256  # untruncated count
    text = (
        "Embedding models turn text into vectors.\n\nA chunker must keep chunks under the model limit. "
        "Token-aware splitting uses the tokenizer's offsets, so every chunk is an exact substring.\n"
        "Overlap repeats a few tokens between neighbours."
    )
    chunks = minilm.split_text(text, max_tokens=12)
    assert len(chunks) > 2 and all(c in text for c in chunks)
    assert all(n - 2 <= 12 for n in minilm.count_tokens(chunks))
    assert chunks[0] == "Embedding models turn text into vectors."  # cut at the paragraph break
    overlapped = minilm.split_text(text, max_tokens=16, overlap=4)
    assert len(overlapped) >= len(chunks) and all(c in text for c in overlapped)
    assert minilm.split_text(LONG) and all(n <= 256 for n in minilm.count_tokens(minilm.split_text(LONG)))
    assert minilm.split_text("short text") == ["short text"] and minilm.split_text("  ") == []
    with pytest.raises(ConfigError):
        minilm.split_text(text, max_tokens=4, overlap=4)


def _tokenised_once_equals_tokenised_twice(emb: Embedder, docs: list[str], max_tokens: int | None) -> None:
    """Chunks that ``split_text`` cut are embedded from the ids the split computed (tokenise once): the
    model input must be exactly what tokenising the chunk text again gives, and so must the vectors."""
    emb._split_ids.clear()
    chunks = [c for d in docs for c in emb.split_text(d, max_tokens=max_tokens)]
    assert len(chunks) > len(docs) and all(c in emb._split_ids for c in chunks)
    real, calls = emb._tok_trunc, []

    class Counting:  # the tokenizer, counting what is tokenised again
        def encode_batch(self, texts: list[str], **kw: Any) -> Any:
            calls.extend(texts)
            return real.encode_batch(texts, **kw)

    emb._tok_trunc = Counting()
    try:
        once, _ = emb._encode(chunks)  # takes the split's ids (and empties the cache)
    finally:
        emb._tok_trunc = real
    assert calls == [] and not emb._split_ids
    twice, _ = emb._encode(chunks)  # tokenises the texts again
    assert once == twice
    emb.split_text(docs[0], max_tokens=max_tokens)
    assert np.array_equal(emb.embed_documents(chunks[:4]), emb.embed_documents(chunks[:4]))


def test_split_chunks_are_tokenised_once_minilm(minilm: Embedder) -> None:
    docs = [LONG, "Ünïcödé   text, with  odd   spacing\n\nand a second paragraph. " * 20, "short one"]
    _tokenised_once_equals_tokenised_twice(minilm, docs, None)
    _tokenised_once_equals_tokenised_twice(minilm, docs, 24)


# ------------------------------------------------------------------------------------------------
# Qwen3 path on a tiny random model
# ------------------------------------------------------------------------------------------------
QTEXTS = [
    "The quick brown fox",
    "lazy dog.",
    "Embeddings map text to vectors; similar texts map to nearby vectors. The quick brown fox jumps.",
    "what is it",
]


def _reference_last_token(model_dir: Path, texts: list[str]) -> np.ndarray:
    """Independent reference: each text alone, no padding, <|endoftext|> appended, last state."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    net = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager").eval()
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    rows = []
    with torch.no_grad():
        for text in texts:
            ids = tok(text, add_special_tokens=True)["input_ids"]
            if ids[-1] != eot:
                ids = ids + [eot]
            hidden = net(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
            rows.append(torch.nn.functional.normalize(hidden, dim=0).numpy())
    return np.stack(rows)


def _official_recipe(model_dir: Path, texts: list[str]) -> np.ndarray:
    """The Qwen3-Embedding model-card recipe: left-padded batch, EOS added, last column pooled."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    net = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    ids = [x + [eot] for x in tok(texts, add_special_tokens=True)["input_ids"]]
    batch = tok.pad({"input_ids": ids}, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = net(**batch).last_hidden_state
    assert bool(batch["attention_mask"][:, -1].all())
    return torch.nn.functional.normalize(hidden[:, -1], dim=1).numpy()


@pytest.fixture(scope="module")
def qwen(tiny_qwen3_dir: Path) -> Embedder:  # noqa: F811
    return Embedder.load(str(tiny_qwen3_dir), device="cpu")


def test_qwen3_spec_from_architecture(qwen: Embedder) -> None:
    info = qwen.embedding_info()
    assert (info["pooling"], info["append_eos"], info["matryoshka"], info["native_dims"]) == ("lasttoken", True, True, 64)
    assert qwen.padding_side == "left" and qwen.tokenizer.padding_side == "left"
    assert qwen.query_instruction == QWEN3_DEFAULT_TASK and qwen.document_prefix == ""
    assert qwen.eos_token_id == qwen.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert qwen.eos_token_id != qwen.tokenizer.eos_token_id  # <|im_end|> is the chat EOS, not the pooled token


def test_qwen3_eos_appended_and_batch_equals_single(qwen: Embedder, tiny_qwen3_dir: Path) -> None:  # noqa: F811
    ids, _ = qwen._encode(QTEXTS)
    assert all(x[-1] == qwen.eos_token_id and x.count(qwen.eos_token_id) == 1 for x in ids)
    batch = qwen.embed_documents(QTEXTS)
    single = np.stack([qwen.embed_documents([t])[0] for t in QTEXTS])
    assert np.allclose(batch, single, atol=1e-5)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    assert np.allclose(batch, _reference_last_token(tiny_qwen3_dir, QTEXTS), atol=1e-5)
    assert _cos(batch, _official_recipe(tiny_qwen3_dir, QTEXTS)).min() >= 0.9999


def test_qwen3_tokenizer_that_appends_eos_itself(qwen: Embedder, tmp_path: Path) -> None:
    model_dir = build_tiny_qwen3(tmp_path / "q", eos_post_processor=True)
    other = Embedder.load(str(model_dir), device="cpu")
    ids, _ = other._encode(QTEXTS)
    assert all(x.count(other.eos_token_id) == 1 and x[-1] == other.eos_token_id for x in ids)  # not doubled
    assert other.count_tokens(QTEXTS) == qwen.count_tokens(QTEXTS)
    assert np.allclose(other.embed_documents(QTEXTS), qwen.embed_documents(QTEXTS), atol=1e-6)  # same seed


def test_qwen3_query_instruction(qwen: Embedder, tiny_qwen3_dir: Path) -> None:  # noqa: F811
    expected = f"Instruct: {QWEN3_DEFAULT_TASK}\nQuery:what is it"
    assert qwen.format_query("what is it") == expected
    assert qwen.format_document("what is it") == "what is it"
    assert np.allclose(qwen.embed_queries(["what is it"]), _reference_last_token(tiny_qwen3_dir, [expected]), atol=1e-5)
    custom = "Instruct: Given a question, find code\nQuery:parse args"
    assert qwen.format_query("parse args", instruction="Given a question, find code") == custom
    assert np.allclose(
        qwen.embed_queries(["parse args"], instruction="Given a question, find code"), qwen.embed_raw([custom]), atol=1e-6
    )
    assert not np.allclose(qwen.embed_queries(["what is it"]), qwen.embed_documents(["what is it"]), atol=1e-3)


def test_qwen3_mrl_and_fingerprint(qwen: Embedder, tiny_qwen3_dir: Path) -> None:  # noqa: F811
    small = Embedder.load(str(tiny_qwen3_dir), dims=32, device="cpu")
    full = qwen.embed_documents(QTEXTS)
    got = small.embed_documents(QTEXTS)
    assert got.shape == (len(QTEXTS), 32) and np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.allclose(got, full[:, :32] / np.linalg.norm(full[:, :32], axis=1, keepdims=True), atol=1e-6)
    assert small.fingerprint != qwen.fingerprint and small.native_dims == 64 and small.dims == 32
    with pytest.raises(ModelError, match="smallest Matryoshka"):
        Embedder.load(str(tiny_qwen3_dir), dims=16, device="cpu")
    prefixed = Embedder.load(str(tiny_qwen3_dir), device="cpu", document_prefix="doc: ")
    assert len({qwen.fingerprint, small.fingerprint, prefixed.fingerprint}) == 3
    again = Embedder.from_info(json.loads(json.dumps(small.embedding_info())), device="cpu")
    assert again.fingerprint == small.fingerprint and again.dims == 32


def test_embedding_info_at_is_the_model_loaded_at_those_dims(qwen: Embedder, tiny_qwen3_dir: Path, minilm: Embedder) -> None:  # noqa: F811
    """One pass at the widest dims serves every narrower index: the truncated vectors and the description
    (fingerprint included) equal those of the model loaded at the narrower dims."""
    from embedrail.embed_core import info_at_dims, truncate_and_normalize

    mid = Embedder.load(str(tiny_qwen3_dir), dims=48, device="cpu")
    small = Embedder.load(str(tiny_qwen3_dir), dims=32, device="cpu")
    assert qwen.embedding_info_at(32) == small.embedding_info() == mid.embedding_info_at(32)
    assert qwen.embedding_info_at(48) == mid.embedding_info() and qwen.embedding_info_at(64) == qwen.embedding_info()
    assert info_at_dims(json.loads(json.dumps(qwen.embedding_info())), 32)["fingerprint"] == small.fingerprint
    cut = truncate_and_normalize(mid.embed_documents(QTEXTS), 32)
    assert np.allclose(cut, small.embed_documents(QTEXTS), atol=1e-6)
    with pytest.raises(ModelError, match="smallest Matryoshka dimension 32"):
        qwen.embedding_info_at(16)
    with pytest.raises(ModelError, match="cannot be made"):
        mid.embedding_info_at(64)
    with pytest.raises(ModelError, match="not known to be Matryoshka"):
        minilm.embedding_info_at(128)


def test_qwen3_truncation_counter(tiny_qwen3_dir: Path) -> None:  # noqa: F811
    short = Embedder.load(str(tiny_qwen3_dir), device="cpu", max_tokens=16)
    long_text = "The quick brown fox jumps over the lazy dog. " * 10
    ids, truncated = short._encode([long_text, "lazy dog."])
    assert truncated == 1 and len(ids[0]) == 16 and ids[0][-1] == short.eos_token_id
    short.embed_documents([long_text, "lazy dog."])
    assert short.stats.truncated == 1 and short.stats.texts == 2
    with pytest.raises(ConfigError, match="exceeds"):
        Embedder.load(str(tiny_qwen3_dir), device="cpu", max_tokens=100_000)


def test_st_files_take_precedence(tmp_path: Path) -> None:
    model_dir = build_tiny_qwen3(tmp_path / "st")
    add_st_files(
        model_dir,
        query_prompt="Instruct: Find code for the question\nQuery:",
        document_prompt="",
    )
    emb = Embedder.load(str(model_dir), device="cpu")
    assert emb.max_tokens == 128  # sentence_bert_config.json
    assert emb.query_instruction == "Find code for the question"
    assert emb.format_query("q") == "Instruct: Find code for the question\nQuery:q"


def test_packed_batch_attention_buckets_cover_every_token_once() -> None:
    """Attention runs per run of similar lengths: every token lands in exactly one bucket, at its
    row and position; a run never pads more than max(slack, waste * width) per text."""
    from embedrail.embed_core.packing import PackedBatch

    lengths = [200, 190, 180, 100, 97, 5, 3, 3, 40]  # sorted, then one longer text at the end
    pb = PackedBatch.build([[7] * n for n in lengths], torch.device("cpu"))
    buckets = pb.buckets(waste=0.15, slack=8)
    assert [(b.rows, b.width) for b in buckets] == [(3, 200), (2, 100), (3, 5), (1, 40)]
    assert buckets[0].start == 0 and buckets[-1].end == pb.total
    assert all(a.end == b.start for a, b in zip(buckets, buckets[1:], strict=False))
    for b in buckets:
        seg = pb.lengths[pb.segment[b.start : b.end]]
        assert int(seg.max()) == b.width
        if b.scatter is None:
            assert b.end - b.start == b.rows * b.width
        else:
            local = pb.positions[b.start : b.end]
            assert torch.equal(b.scatter % b.width, local) and int(b.key_mask.sum()) == b.end - b.start


def test_explicit_cpu_attention_equals_sdpa_on_padded_blocks() -> None:
    """Narrow blocks on CPU skip SDPA's fused kernel (two batched products and an fp32 softmax instead):
    the real query rows equal SDPA's with the same key mask, in fp32 and within bf16 rounding."""
    from embedrail.embed_core.packed_bert import _additive, _explicit_attention

    g = torch.Generator().manual_seed(0)
    rows, heads, width, d = 5, 4, 9, 8
    q, k, v = (torch.randn(rows, heads, width, d, generator=g) for _ in range(3))
    lengths = torch.tensor([9, 7, 9, 3, 8])
    key_mask = (torch.arange(width)[None, :] < lengths[:, None]).view(rows, 1, 1, width)
    real = key_mask.view(rows, width)  # query rows of real tokens (padded rows are dropped after attention)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=key_mask).transpose(1, 2)[real]
    got = _explicit_attention(q, k, v, _additive(key_mask), d**-0.5).transpose(1, 2)[real]
    assert torch.allclose(got, ref, atol=1e-5)
    half = _explicit_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), _additive(key_mask), d**-0.5)
    assert half.dtype == torch.bfloat16 and (half.float().transpose(1, 2)[real] - ref).abs().max() < 0.05
    assert torch.allclose(_explicit_attention(q, k, v, None, d**-0.5),
                          torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-5)  # fmt: skip


def test_split_chunks_are_tokenised_once_qwen3(qwen: Embedder) -> None:
    """Byte-level BPE: a chunk's own encoding differs from the document's tokens at its edges; the ids
    kept are the chunk's own, so the model input is the same as tokenising the chunk text."""
    docs = [LONG, "  leading spaces, a tab\there, ünïcode, and code: def f(x):\n    return x ** 2\n" * 12, "short one"]
    _tokenised_once_equals_tokenised_twice(qwen, docs, 20)
