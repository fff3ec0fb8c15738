"""Token arrays on disk (numpy memmap) and the batches a training run reads from them.

A corpus is tokenized once, file by file, into a flat binary array (uint8 when the vocabulary fits
in a byte, uint16 up to 65,536 ids, else uint32) plus a JSON sidecar; runs then map it from disk,
so a corpus larger than memory streams.

Batches are a pure function of (seed, step, micro-step): the global batch's window offsets come
from a generator seeded by those three numbers. "Data position" is therefore just the step, a
resumed run reads exactly the batches the killed one would have, and under DDP rank r reads only
rows [r*b/w, (r+1)*b/w) of each global batch (its shard), so 1 process and w processes see the
same global batch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from ssmkit._files import write_atomic, write_bytes_atomic

META_SUFFIX = ".json"


def token_dtype(vocab_size: int) -> np.dtype:
    if vocab_size <= 256:
        return np.dtype(np.uint8)
    if vocab_size <= 65536:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def token_dir(cache_dir: str, corpus, tokenizer) -> str:
    """Where a corpus' token arrays for one tokenizer live: cache_dir/<corpus>-<its fingerprint>-
    <tokenizer kind><vocabulary>-<tokenizer fingerprint> (training and `ssmkit eval` share them)."""
    tok = f"{tokenizer.kind}{tokenizer.vocab_size}-{tokenizer.fingerprint}"
    return os.path.join(cache_dir, f"{corpus.name}-{corpus.fingerprint}-{tok}")


def write_tokens(files: list[str], tokenizer, path: str, fingerprint: str = "") -> dict:
    """Tokenize `files` in order into the flat array `path` (+ `path`.json metadata); atomic.

    Reuses an existing array whose metadata matches (same fingerprint and tokenizer). Returns the
    metadata: n_tokens, n_bytes (UTF-8 bytes of the text, for bits per byte), dtype, vocab_size.
    """
    meta_path = path + META_SUFFIX
    key = {
        "fingerprint": fingerprint,
        "tokenizer": tokenizer.kind,
        "tokenizer_fingerprint": getattr(tokenizer, "fingerprint", tokenizer.kind),
        "vocab_size": tokenizer.vocab_size,
        "n_files": len(files),
    }
    if fingerprint and os.path.isfile(meta_path) and os.path.isfile(path):
        with open(meta_path) as f:
            meta = json.load(f)
        if all(meta.get(k) == v for k, v in key.items()):
            return meta
    dtype = token_dtype(tokenizer.vocab_size)
    counts = {"n_tokens": 0, "n_bytes": 0}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as out:
            for file in files:
                with open(file, encoding="utf-8", errors="replace") as fh:
                    text = fh.read()
                raw = text.encode("utf-8")
                ids = np.frombuffer(raw, np.uint8) if tokenizer.kind == "bytes" else tokenizer.encode(text)
                arr = np.asarray(ids, dtype=dtype)
                out.write(arr.tobytes())
                counts["n_tokens"] += arr.size
                counts["n_bytes"] += len(raw)

    write_atomic(path, write)  # a killed run's temporary file is removed by the next one
    meta = {**key, **counts, "dtype": dtype.name}
    write_bytes_atomic(meta_path, json.dumps(meta).encode())
    return meta


@dataclass
class TokenArray:
    """A memory-mapped flat token array and its metadata."""

    tokens: np.ndarray  # (n_tokens,) memmap
    n_bytes: int

    @classmethod
    def open(cls, path: str) -> TokenArray:
        with open(path + META_SUFFIX) as f:
            meta = json.load(f)
        tokens = np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r", shape=(meta["n_tokens"],))
        return cls(tokens, meta["n_bytes"])

    @classmethod
    def from_ids(cls, ids, n_bytes: int | None = None) -> TokenArray:
        """In memory, for tests and small data."""
        arr = np.asarray(ids)
        return cls(arr, int(arr.size if n_bytes is None else n_bytes))

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def bytes_per_token(self) -> float:
        return self.n_bytes / max(1, len(self))

    def windows(self, offsets: np.ndarray, seq_len: int) -> torch.Tensor:
        """Rows tokens[o : o + seq_len] for each offset -> int64 (len(offsets), seq_len)."""
        idx = offsets[:, None] + np.arange(seq_len)[None, :]
        return torch.from_numpy(np.asarray(self.tokens[idx], dtype=np.int64))


class LMBatches:
    """Random windows of `seq_len` tokens; batch k is a pure function of (seed, step, micro).

    `batch_size` is the global batch (all ranks, one micro-step); rank r of w gets its slice.
    """

    def __init__(
        self,
        data: TokenArray,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if len(data) <= seq_len:
            raise ValueError(
                f"the token array has {len(data)} tokens, fewer than seq_len + 1 = {seq_len + 1}"
            )
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} must be divisible by the world size {world_size}")
        self.data, self.seq_len, self.batch_size, self.seed = data, seq_len, batch_size, seed
        self.rank, self.world_size = rank, world_size

    def global_offsets(self, step: int, micro: int = 0) -> np.ndarray:
        rng = np.random.Generator(np.random.PCG64([self.seed, step, micro]))
        return rng.integers(0, len(self.data) - self.seq_len, size=self.batch_size)

    def get(self, step: int, micro: int = 0) -> dict[str, torch.Tensor]:
        per = self.batch_size // self.world_size
        offsets = self.global_offsets(step, micro)[self.rank * per : (self.rank + 1) * per]
        ids = self.data.windows(offsets, self.seq_len)  # (per, seq_len)
        return {"input_ids": ids, "labels": ids}


def eval_windows(data: TokenArray, seq_len: int, max_windows: int) -> torch.Tensor:
    """Up to `max_windows` non-overlapping windows spread evenly over the array -> (n, seq_len)."""
    n_fit = (len(data) - 1) // seq_len
    if n_fit < 1:
        raise ValueError(f"the validation array has {len(data)} tokens, fewer than seq_len={seq_len}")
    picks = np.linspace(0, n_fit - 1, num=min(n_fit, max_windows)).astype(np.int64)
    return data.windows(picks * seq_len, seq_len)


def unigram_bits_per_token(train: TokenArray, val: TokenArray, vocab_size: int) -> float:
    """Cross-entropy (bits) on `val` of the train split's token frequencies (add-one smoothed).

    The baseline a model must beat: it knows how often each token occurs, and nothing of context.
    """
    counts = np.zeros(vocab_size, dtype=np.float64)
    chunk = 1 << 24
    for i in range(0, len(train), chunk):
        counts += np.bincount(np.asarray(train.tokens[i : i + chunk]), minlength=vocab_size)[:vocab_size]
    p = (counts + 1.0) / (counts.sum() + vocab_size)
    val_counts = np.zeros(vocab_size, dtype=np.float64)
    for i in range(0, len(val), chunk):
        val_counts += np.bincount(np.asarray(val.tokens[i : i + chunk]), minlength=vocab_size)[:vocab_size]
    return float(-(val_counts * np.log2(p)).sum() / val_counts.sum())
