"""Finding a model's tokenizer: never bytes for a model whose vocabulary is not bytes (issue 16 item 4)."""

from __future__ import annotations

import json

import pytest

from ssmkit.training.tokenizer import BPETokenizer, ByteTokenizer, TokenizerNotFound, load_tokenizer


def _config(d, vocab_size: int) -> None:
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps({"vocab_size": vocab_size, "layers": "mamba2"}))


def test_no_tokenizer_and_a_non_byte_vocabulary_is_an_error(tmp_path):
    _config(tmp_path, 4096)
    with pytest.raises(TokenizerNotFound, match="no tokenizer saved.*4096 ids"):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerNotFound, match="no tokenizer saved"):
        load_tokenizer(tmp_path / "nothing-here")  # no model, no tokenizer: nothing to fall back on
    with pytest.raises(FileNotFoundError):  # what the CLI reports as a user's error
        load_tokenizer(tmp_path, vocab_size=1000)


def test_a_byte_vocabulary_falls_back_to_bytes(tmp_path):
    _config(tmp_path, 256)
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)
    assert isinstance(load_tokenizer(tmp_path / "empty", vocab_size=256), ByteTokenizer)


def _bpe(tmp_path) -> BPETokenizer:
    pytest.importorskip("tokenizers")
    text = tmp_path / "text.txt"
    text.write_text("def add(a, b):\n    return a + b\n" * 50)
    return BPETokenizer.train([str(text)], vocab_size=300, min_frequency=2)


def test_a_transformers_tokenizer_json_is_found(tmp_path):
    tok = _bpe(tmp_path)
    d = tmp_path / "hf"
    _config(d, 512)
    tok._tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 2048}))  # transformers': no kind
    found = load_tokenizer(d)
    assert isinstance(found, BPETokenizer) and found.encode("def add") == tok.encode("def add")


def test_a_tokenizer_larger_than_the_model_is_refused(tmp_path):
    tok = _bpe(tmp_path)
    d = tmp_path / "model"
    _config(d, 256)
    tok.save(d)
    with pytest.raises(ValueError, match=f"the tokenizer has {tok.vocab_size} ids but the model only 256"):
        load_tokenizer(d)


def test_a_saved_tokenizer_config_without_its_json(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"kind": "bpe", "vocab_size": 300}))
    with pytest.raises(TokenizerNotFound, match="tokenizer.json is missing"):
        load_tokenizer(tmp_path)
