"""Synthetic tasks: shapes, determinism by seed, and a perfect oracle that reads the answer from the input."""

from __future__ import annotations

import pytest
import torch

from ssmkit.training.tasks import (
    IGNORE_INDEX,
    MARKER,
    NOISE,
    as_lm_batch,
    associative_recall,
    induction_heads,
    selective_copying,
)


def _oracle_copy(inputs, seq_len):
    out = torch.full_like(inputs, IGNORE_INDEX)
    for i, row in enumerate(inputs):
        data = row[:seq_len][row[:seq_len] > MARKER]
        out[i, seq_len : seq_len + len(data)] = data
    return out


def _oracle_induction(inputs):
    out = torch.full_like(inputs, IGNORE_INDEX)
    for i, row in enumerate(inputs):
        p = (row[:-1] == MARKER).nonzero()[0, 0]
        out[i, -1] = row[p + 1]
    return out


def _oracle_mqar(inputs, n_pairs):
    out = torch.full_like(inputs, IGNORE_INDEX)
    for i, row in enumerate(inputs):
        table = {int(row[2 * j]): int(row[2 * j + 1]) for j in range(n_pairs)}
        for t in range(2 * n_pairs, row.shape[0]):
            if int(row[t]) in table:
                out[i, t] = table[int(row[t])]
    return out


def test_selective_copying():
    x, y = selective_copying(32, seq_len=40, n_memorize=6, vocab_size=10, seed=1)
    assert x.shape == y.shape == (32, 46) and x.dtype == y.dtype == torch.long
    assert ((x[:, :40] > MARKER).sum(1) == 6).all() and (x[:, 40:] == MARKER).all()
    assert (y[:, :40] == IGNORE_INDEX).all() and ((y[:, 40:] >= 2) & (y[:, 40:] < 10)).all()
    assert torch.equal(_oracle_copy(x, 40), y)
    x2, y2 = selective_copying(32, seq_len=40, n_memorize=6, vocab_size=10, seed=1)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, selective_copying(32, seq_len=40, n_memorize=6, vocab_size=10, seed=2)[0])


def test_induction_heads():
    x, y = induction_heads(64, seq_len=30, vocab_size=8, seed=3)
    assert x.shape == y.shape == (64, 30)
    assert ((x == MARKER).sum(1) == 2).all() and (x[:, -1] == MARKER).all()
    assert (y[:, :-1] == IGNORE_INDEX).all()
    assert torch.equal(_oracle_induction(x), y)
    assert torch.equal(x, induction_heads(64, seq_len=30, vocab_size=8, seed=3)[0])


def test_associative_recall():
    x, y = associative_recall(16, seq_len=48, n_pairs=6, vocab_size=32, seed=0)
    assert x.shape == y.shape == (16, 48)
    keys = x[:, 0:12:2]
    assert all(len(set(r.tolist())) == 6 for r in keys)  # distinct keys per row
    assert ((y != IGNORE_INDEX).sum(1) == 6).all()  # each key queried once
    assert (x[:, 12:][y[:, 12:] == IGNORE_INDEX] == NOISE).all()
    assert torch.equal(_oracle_mqar(x, 6), y)
    assert torch.equal(y, associative_recall(16, seq_len=48, n_pairs=6, vocab_size=32, seed=0)[1])
    with pytest.raises(ValueError, match="n_pairs"):
        associative_recall(2, seq_len=10, n_pairs=6, vocab_size=32)


def test_as_lm_batch_shifts_targets_for_hf_style_labels():
    x, y = induction_heads(4, seq_len=10, vocab_size=8, seed=0)
    b = as_lm_batch(x, y)
    assert b["input_ids"].shape == b["labels"].shape == (4, 11)
    # the model predicts labels[t+1] at position t: that must be targets[t]
    assert torch.equal(b["labels"][:, 1:], y) and torch.equal(b["input_ids"][:, :10], x)
