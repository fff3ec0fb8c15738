"""Tokenizers: bytes (built in, no dependency) and BPE (the `tokenizers` package, imported lazily).

Both speak one small interface: `encode(str) -> list[int]`, `decode(list[int]) -> str`,
`vocab_size`, `save(dir)`. `load_tokenizer(dir)` is the one way to find the tokenizer of a model
directory (ssmkit's, or a transformers checkpoint's tokenizer.json): a model whose vocabulary is not
the byte vocabulary never falls back to bytes silently.
A byte tokenizer's ids are the UTF-8 bytes themselves (vocab 256), so bits per token = bits per byte.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable

from ssmkit._files import write_atomic, write_bytes_atomic

TOKENIZER_CONFIG = "tokenizer_config.json"
TOKENIZER_JSON = "tokenizer.json"


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255. Decoding replaces invalid sequences (a sample may cut a character)."""

    kind = "bytes"
    vocab_size = 256
    fingerprint = "bytes"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def save(self, directory: str | os.PathLike) -> None:
        _write_config(directory, self)


def _require_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ImportError("BPE needs the `tokenizers` package: pip install tokenizers") from None
    return tokenizers


class BPETokenizer:
    """Byte-level BPE trained on a corpus (Hugging Face `tokenizers`); saved as tokenizer.json."""

    kind = "bpe"

    def __init__(self, tokenizer):
        self._tok = tokenizer

    @classmethod
    def train(cls, files: list[str], vocab_size: int = 4096, min_frequency: int = 2) -> BPETokenizer:
        """Learn merges on `files`; the 256 byte symbols are always in the vocabulary."""
        tk = _require_tokenizers()
        tok = tk.Tokenizer(tk.models.BPE())
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train([os.fspath(f) for f in files], trainer)
        return cls(tok)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> BPETokenizer:
        tk = _require_tokenizers()
        return cls(tk.Tokenizer.from_file(os.fspath(path)))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    @property
    def fingerprint(self) -> str:
        """Short hash of the whole tokenizer (merges, vocabulary, normalization): names its token caches."""
        return hashlib.sha256(self._tok.to_str().encode()).hexdigest()[:12]

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def save(self, directory: str | os.PathLike) -> None:
        """tokenizer.json, then tokenizer_config.json naming its kind (each written atomically)."""
        write_atomic(os.path.join(directory, TOKENIZER_JSON), self._tok.save)
        _write_config(directory, self)


def _write_config(directory: str | os.PathLike, tok) -> None:
    text = json.dumps({"kind": tok.kind, "vocab_size": tok.vocab_size})
    write_bytes_atomic(os.path.join(directory, TOKENIZER_CONFIG), text.encode())


class TokenizerNotFound(FileNotFoundError):
    """No tokenizer is saved with a model whose vocabulary is not the byte vocabulary."""


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _saved_tokenizer(directory: str) -> ByteTokenizer | BPETokenizer | None:
    """What `directory` holds: ssmkit's tokenizer_config.json {"kind": ...}, else a tokenizer.json
    (the `tokenizers` format, also shipped by transformers checkpoints, whose tokenizer_config.json
    has no "kind"); None when neither."""
    cfg_path, json_path = os.path.join(directory, TOKENIZER_CONFIG), os.path.join(directory, TOKENIZER_JSON)
    saved = _read_json(cfg_path) if os.path.isfile(cfg_path) else None
    kind = saved.get("kind") if isinstance(saved, dict) else None
    if kind is None:
        kind = "bpe" if os.path.isfile(json_path) else None
    if kind is None:
        return None
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "bpe":
        if not os.path.isfile(json_path):
            raise TokenizerNotFound(f"{cfg_path} names a BPE tokenizer but {json_path} is missing")
        return BPETokenizer.from_file(json_path)
    raise ValueError(f"{cfg_path}: unknown tokenizer kind {kind!r}; expected 'bytes' or 'bpe'")


def _config_vocab_size(directory: str) -> int | None:
    """vocab_size of the model config.json in `directory` (ssmkit's or transformers'), if any."""
    raw = _read_json(os.path.join(directory, "config.json"))
    v = raw.get("vocab_size") if isinstance(raw, dict) else None
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def load_tokenizer(
    directory: str | os.PathLike, vocab_size: int | None = None
) -> ByteTokenizer | BPETokenizer:
    """The tokenizer saved in `directory` (a model directory, a tokenizer's, or a transformers
    checkpoint with a tokenizer.json), for a model of `vocab_size` ids (default: the vocab_size of
    the config.json in `directory`, if there is one).

    With no tokenizer saved, the byte tokenizer, but only for a model of exactly 256 ids: any other
    vocabulary raises TokenizerNotFound, naming the directory, instead of encoding text as bytes
    the model was never trained on. A tokenizer with more ids than the model has is refused too.
    """
    directory = os.fspath(directory)
    if vocab_size is None:
        vocab_size = _config_vocab_size(directory)
    tok = _saved_tokenizer(directory)
    if tok is None:
        if vocab_size == ByteTokenizer.vocab_size:
            return ByteTokenizer()
        why = f" and the model's vocabulary has {vocab_size} ids, not the 256 of bytes" if vocab_size else ""
        raise TokenizerNotFound(
            f"{directory}: no tokenizer saved ({TOKENIZER_JSON} or {TOKENIZER_CONFIG}){why}; copy the "
            f"tokenizer the model was trained with into {directory}"
        )
    if vocab_size is not None and tok.vocab_size > vocab_size:
        raise ValueError(
            f"{directory}: the tokenizer has {tok.vocab_size} ids but the model only {vocab_size}: "
            "they do not belong together"
        )
    return tok


def get_tokenizer(name: str, train_files: list[str] | None = None, vocab_size: int = 4096):
    """ "bytes" -> ByteTokenizer; "bpe" -> a BPE trained on `train_files`; a path -> load_tokenizer(path)."""
    if name == "bytes":
        return ByteTokenizer()
    if name == "bpe":
        if not train_files:
            raise ValueError("tokenizer='bpe' needs training files (the corpus' train split)")
        return BPETokenizer.train(train_files, vocab_size=vocab_size)
    if os.path.isdir(name):
        return load_tokenizer(name)
    if os.path.isfile(name) and name.endswith(".json"):
        return BPETokenizer.from_file(name)
    raise ValueError(f"tokenizer must be 'bytes', 'bpe' or a saved tokenizer's directory, got {name!r}")
