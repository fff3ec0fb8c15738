"""Tokenizers: bytes (built in, no dependency) and BPE (the `tokenizers` package, imported lazily).

Both speak one small interface: `encode(str) -> list[int]`, `decode(list[int]) -> str`,
`vocab_size`, `save(dir)`; `load_tokenizer(dir)` reads back whichever was saved.
A byte tokenizer's ids are the UTF-8 bytes themselves (vocab 256), so bits per token = bits per byte.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

TOKENIZER_CONFIG = "tokenizer_config.json"
TOKENIZER_JSON = "tokenizer.json"


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255. Decoding replaces invalid sequences (a sample may cut a character)."""

    kind = "bytes"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def save(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, TOKENIZER_CONFIG), "w") as f:
            json.dump({"kind": self.kind, "vocab_size": self.vocab_size}, f)


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

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def save(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        self._tok.save(os.path.join(directory, TOKENIZER_JSON))
        with open(os.path.join(directory, TOKENIZER_CONFIG), "w") as f:
            json.dump({"kind": self.kind, "vocab_size": self.vocab_size}, f)


def load_tokenizer(directory: str | os.PathLike) -> ByteTokenizer | BPETokenizer:
    """The tokenizer saved in `directory`; bytes when none was saved (the default)."""
    cfg_path = os.path.join(directory, TOKENIZER_CONFIG)
    kind = "bytes"
    if os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            kind = json.load(f).get("kind", "bytes")
    elif os.path.isfile(os.path.join(directory, TOKENIZER_JSON)):
        kind = "bpe"
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "bpe":
        return BPETokenizer.from_file(os.path.join(directory, TOKENIZER_JSON))
    raise ValueError(f"{cfg_path}: unknown tokenizer kind {kind!r}; expected 'bytes' or 'bpe'")


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
