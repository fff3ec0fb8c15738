"""ListOps generated with the rules of the Long Range Arena generator (Tay et al. 2021, after Nangia &
Bowman 2018): nested [MAX, [MIN, [MED, [SM (sum mod 10) over digits 0-9, each node taking 2..max_args
arguments, depth <= max_depth, a node becoming a leaf with probability 1 - VALUE_P; trees are drawn until
their token count lies in [min_len, max_len]. The label is the value of the tree (10 classes).

Tokens: 0 pad, 1..10 the digits 0..9, 11..14 the operators, 15 the closing bracket.
"""

from __future__ import annotations

import random
import statistics

import torch

OPS = ("[MAX", "[MIN", "[MED", "[SM")
VALUE_P = 0.25                    # LRA: a node below max depth is an operator with this probability
PAD, CLOSE, VOCAB = 0, 15, 16


def _tree(rng: random.Random, depth: int, max_depth: int, max_args: int):
    """(tree, n_tokens); a tree is a digit or (op, [children])."""
    if depth < max_depth and rng.random() <= VALUE_P:
        args = [_tree(rng, depth + 1, max_depth, max_args) for _ in range(rng.randint(2, max_args))]
        return (rng.choice(OPS), [a for a, _ in args]), 2 + sum(n for _, n in args)
    return rng.randint(0, 9), 1


def value(tree) -> int:
    if isinstance(tree, int):
        return tree
    op, args = tree
    vals = [value(a) for a in args]
    if op == "[MAX":
        return max(vals)
    if op == "[MIN":
        return min(vals)
    if op == "[MED":
        return int(statistics.median(vals))      # LRA: int(np.median(...))
    return sum(vals) % 10


def tokens(tree) -> list[int]:
    if isinstance(tree, int):
        return [tree + 1]
    op, args = tree
    out = [11 + OPS.index(op)]
    for a in args:
        out += tokens(a)
    return out + [CLOSE]


def listops(n: int, min_len: int = 500, max_len: int = 2000, max_depth: int = 10, max_args: int = 10,
            seed: int = 0):
    """inputs (n, longest) int64 right-padded with PAD, mask (n, longest), labels (n,) in 0..9."""
    rng = random.Random(seed)
    seqs, labels = [], []
    while len(seqs) < n:
        tree, length = _tree(rng, 1, max_depth, max_args)
        if min_len <= length <= max_len:
            seqs.append(tokens(tree))
            labels.append(value(tree))
    longest = max(len(s) for s in seqs)
    inputs = torch.full((n, longest), PAD, dtype=torch.long)
    mask = torch.zeros(n, longest)
    for i, s in enumerate(seqs):
        inputs[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return inputs, mask, torch.tensor(labels)
