"""Builders shared by the embed_core tests: a tiny random Qwen3 embedding model with a real
byte-level BPE tokenizer carrying Qwen's special tokens, saved to a directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:what is it",
    "Embeddings map text to vectors; similar texts map to nearby vectors.",
    "def parse(argv): return argparse.ArgumentParser().parse_args(argv)",
]


def _qwen_tokenizer(extra_text: list[str] = ()) -> object:  # type: ignore[assignment]
    """A byte-level BPE with Qwen's special tokens, trained on ``TRAIN_TEXT`` (+ ``extra_text``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420, special_tokens=QWEN_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator((TRAIN_TEXT + list(extra_text)) * 10, trainer)
    return tok


def build_tiny_qwen3_reranker(out: Path, *, seed: int = 0) -> Path:
    """Save a 2-layer random ``Qwen3ForCausalLM`` + a Qwen-like tokenizer in which "yes" and "no" are single
    tokens (as in Qwen3-Reranker), trained on the reranker's prompt so it tokenizes like a real vocabulary.
    The LM head is scaled up so P(yes) spreads over (0, 1) instead of sitting at 0.5."""
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    from embedrail.embed_core.rerank import QWEN3_RERANK_PREFIX, QWEN3_RERANK_SUFFIX, qwen3_rerank_prompt

    tok = _qwen_tokenizer([QWEN3_RERANK_PREFIX, QWEN3_RERANK_SUFFIX, qwen3_rerank_prompt("what is it", "a fox"),
                           *(["yes", "no"] * 20)])  # fmt: skip
    assert tok.token_to_id("yes") is not None and tok.token_to_id("no") is not None
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                            padding_side="left").save_pretrained(out)  # fmt: skip
    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                         tie_word_embeddings=False)  # fmt: skip
    model = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    model.save_pretrained(out)
    return out


def build_tiny_cross_encoder(out: Path, *, seed: int = 0, max_length: int = 128) -> Path:
    """Save a 2-layer random ``BertForSequenceClassification`` (one label) with the packaged MiniLM's
    WordPiece tokenizer: a plain transformers directory, which sentence-transformers' ``CrossEncoder`` loads."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from embedrail.embed_core import packaged_minilm_dir

    tok = AutoTokenizer.from_pretrained(str(packaged_minilm_dir()))
    torch.manual_seed(seed)
    # initializer_range 0.3 (not BERT's 0.02): the [CLS] state then depends on the pair and the scores
    # spread over (0, 1) instead of all sitting at 0.501
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=max_length, num_labels=1,
                        initializer_range=0.3)  # fmt: skip
    BertForSequenceClassification(config).eval().save_pretrained(out)
    tok.model_max_length = max_length
    tok.save_pretrained(out)
    return out


def build_tiny_splade(out: Path, *, seed: int = 0, max_length: int = 128) -> Path:
    """Save a 2-layer random ``BertForMaskedLM`` (a SPLADE model's architecture) with the packaged MiniLM's
    WordPiece tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from embedrail.embed_core import packaged_minilm_dir

    tok = AutoTokenizer.from_pretrained(str(packaged_minilm_dir()))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=max_length)  # fmt: skip
    BertForMaskedLM(config).eval().save_pretrained(out)
    tok.model_max_length = max_length
    tok.save_pretrained(out)
    return out


def build_tiny_qwen3(out: Path, *, eos_post_processor: bool = False, seed: int = 0) -> Path:
    """Save a 2-layer random Qwen3Model + a Qwen-like tokenizer to ``out``.

    The tokenizer's EOS is ``<|im_end|>`` and its pad ``<|endoftext|>`` (as in Qwen3-Embedding);
    with ``eos_post_processor`` the tokenizer itself appends ``<|endoftext|>`` to every input, as the
    updated Qwen3-Embedding tokenizers do.
    """
    import torch
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

    tok = _qwen_tokenizer()
    if eos_post_processor:
        eot = tok.token_to_id("<|endoftext|>")
        tok.post_processor = processors.TemplateProcessing(
            single="$A <|endoftext|>", pair="$A <|endoftext|> $B <|endoftext|>", special_tokens=[("<|endoftext|>", eot)]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
    )
    Qwen3Model(config).eval().save_pretrained(out)
    return out


def add_st_files(model_dir: Path, *, query_prompt: str | None = None, document_prompt: str | None = None) -> None:
    """Add sentence-transformers files (modules.json, last-token pooling, prompts) to a model dir."""
    (model_dir / "1_Pooling").mkdir(exist_ok=True)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (model_dir / "modules.json").write_text(json.dumps(modules))
    (model_dir / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 64, "pooling_mode_lasttoken": True})
    )
    prompts = {}
    if query_prompt is not None:
        prompts["query"] = query_prompt
    if document_prompt is not None:
        prompts["document"] = document_prompt
    (model_dir / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts}))
    (model_dir / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


def test_tiny_qwen3_builds(tiny_qwen3_dir: Path) -> None:
    config = json.loads((tiny_qwen3_dir / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["num_hidden_layers"] == 2
    tok = json.loads((tiny_qwen3_dir / "tokenizer.json").read_text())
    assert {t["content"] for t in tok["added_tokens"]} >= set(QWEN_SPECIALS)
