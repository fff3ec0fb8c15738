"""Synthetic sequence tasks of the SSM papers, as seeded generators.

Each returns (inputs, targets), both int64 (n, length); targets[i, t] is what the model should
output after reading inputs[i, :t+1], and IGNORE_INDEX (-100) where nothing is asked.

- selective_copying (Mamba, Gu & Dao 2023, sec. 3.1): `n_memorize` data tokens scattered among noise
  tokens (0) at random positions, then `n_memorize` marker tokens (1); at each marker the model
  outputs the data tokens in order. Needs content-aware selection (a fixed LTI kernel cannot).
- induction_heads (Olsson et al. 2022; Mamba sec. 4.1): random tokens containing once the pair
  (special, b); the sequence ends with special, and the model outputs b.
- associative_recall, multi-query (MQAR, Zoology, Arora et al. 2023): key-value pairs k1 v1 k2 v2 ...,
  then the keys again at random later positions among noise (0); at each queried key, its value.

Token ids: 0 = noise/padding, small ids = markers, the rest = data. Use `as_lm_batch` to feed a
causal LM whose `labels` are shifted inside the model (Hugging Face convention).
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
NOISE, MARKER = 0, 1


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def selective_copying(n: int, seq_len: int = 256, n_memorize: int = 16, vocab_size: int = 16, seed: int = 0):
    """inputs (n, seq_len + n_memorize): data tokens in [2, vocab_size) at random places, then markers."""
    if vocab_size < 3 or not 0 < n_memorize <= seq_len:
        raise ValueError(
            f"need vocab_size >= 3 and 0 < n_memorize <= seq_len, got {vocab_size}, {n_memorize}, {seq_len}"
        )
    g = _gen(seed)
    data = torch.randint(2, vocab_size, (n, n_memorize), generator=g)
    # positions: the first n_memorize of a random permutation, sorted (order of appearance)
    pos = torch.rand(n, seq_len, generator=g).argsort(dim=1)[:, :n_memorize].sort(dim=1).values
    inputs = torch.full((n, seq_len + n_memorize), NOISE, dtype=torch.long)
    inputs.scatter_(1, pos, data)
    inputs[:, seq_len:] = MARKER
    targets = torch.full_like(inputs, IGNORE_INDEX)
    targets[:, seq_len:] = data
    return inputs, targets


def induction_heads(n: int, seq_len: int = 256, vocab_size: int = 16, seed: int = 0):
    """inputs (n, seq_len): tokens in [2, vocab_size), one (MARKER, b) pair, MARKER at the end -> b."""
    if vocab_size < 3 or seq_len < 4:
        raise ValueError(f"need vocab_size >= 3 and seq_len >= 4, got {vocab_size}, {seq_len}")
    g = _gen(seed)
    inputs = torch.randint(2, vocab_size, (n, seq_len), generator=g)
    p = torch.randint(0, seq_len - 2, (n,), generator=g)  # the pair sits at p, p+1 <= seq_len - 2
    rows = torch.arange(n)
    answer = inputs[rows, p + 1].clone()
    inputs[rows, p] = MARKER
    inputs[:, -1] = MARKER
    targets = torch.full_like(inputs, IGNORE_INDEX)
    targets[:, -1] = answer
    return inputs, targets


def associative_recall(n: int, seq_len: int = 128, n_pairs: int = 8, vocab_size: int = 64, seed: int = 0):
    """MQAR. Keys in [1, vocab/2), values in [vocab/2, vocab); each key queried once after the pairs."""
    half = vocab_size // 2
    if n_pairs > half - 1 or seq_len < 2 * n_pairs + n_pairs:
        raise ValueError(
            f"need n_pairs <= vocab_size/2 - 1 and seq_len >= 3 * n_pairs, got n_pairs={n_pairs}, "
            f"vocab_size={vocab_size}, seq_len={seq_len}"
        )
    g = _gen(seed)
    keys = torch.rand(n, half - 1, generator=g).argsort(dim=1)[:, :n_pairs] + 1  # distinct per row
    values = torch.randint(half, vocab_size, (n, n_pairs), generator=g)
    inputs = torch.full((n, seq_len), NOISE, dtype=torch.long)
    inputs[:, 0 : 2 * n_pairs : 2] = keys
    inputs[:, 1 : 2 * n_pairs : 2] = values
    region = seq_len - 2 * n_pairs
    slots = torch.rand(n, region, generator=g).argsort(dim=1)[:, :n_pairs] + 2 * n_pairs  # query places
    order = torch.rand(n, n_pairs, generator=g).argsort(dim=1)  # which key goes where
    inputs.scatter_(1, slots, keys.gather(1, order))
    targets = torch.full_like(inputs, IGNORE_INDEX)
    targets.scatter_(1, slots, values.gather(1, order))
    return inputs, targets


def as_lm_batch(inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """For a causal LM that predicts labels[t+1] at position t: one dummy input column, labels shifted.

    input_ids (n, l+1) = inputs ‖ NOISE; labels (n, l+1) = IGNORE ‖ targets.
    """
    pad = torch.full_like(inputs[:, :1], NOISE)
    ignore = torch.full_like(targets[:, :1], IGNORE_INDEX)
    return {"input_ids": torch.cat([inputs, pad], 1), "labels": torch.cat([ignore, targets], 1)}


TASKS = {
    "selective_copying": selective_copying,
    "induction_heads": induction_heads,
    "associative_recall": associative_recall,
}
