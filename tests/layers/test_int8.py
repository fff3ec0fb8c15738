"""Int8Linear / Int8Embedding: the rounding, the int8 kernel against the dequantized float path (the
reference) and the float layer, repacking after a change, and the embedding's rows."""

from __future__ import annotations

import pytest
import torch

from ssmkit.layers import int8
from ssmkit.layers.int8 import Int8Embedding, Int8Linear, quantize_rows
from tests.helpers import assert_rel


def test_quantize_rows_is_within_half_a_step():
    W = torch.randn(40, 64) * torch.logspace(-3, 1, 40)[:, None]  # rows of very different sizes
    q, scale = quantize_rows(W)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    err = (q.float() * scale[:, None] - W).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-7).all())


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 3, int8.MAX_INT8_ROWS])
def test_int8_kernel_matches_the_dequantized_reference(rows, bias):
    lin = torch.nn.Linear(96, 200, bias=bias)
    q = Int8Linear.from_linear(lin)
    x = torch.randn(rows, 96)
    with torch.no_grad():
        fast = q(x)
        ref = torch.nn.functional.linear(x, q.dequantize(), q.bias)
        full = lin(x)
    assert q._packed is not None and q._packed[1] is not None, "the int8 kernel did not run"
    assert_rel(fast, ref, 2e-2, "int8 kernel vs dequantized weight")  # the input's 8-bit rounding
    assert_rel(fast, full, 2e-2, "int8 kernel vs float layer")


def test_long_inputs_and_autograd_take_the_float_path_exactly():
    q = Int8Linear.from_linear(torch.nn.Linear(32, 48))
    x = torch.randn(2, int8.MAX_INT8_ROWS, 32)  # more rows than the int8 kernel takes
    with torch.no_grad():
        ref = torch.nn.functional.linear(x, q.dequantize(), q.bias)
        torch.testing.assert_close(q(x), ref)
    torch.testing.assert_close(q(x[:, :1]), ref[:, :1])  # grad mode: the float path, any length


def test_repacks_when_the_weight_changes():
    q = Int8Linear.from_linear(torch.nn.Linear(32, 16, bias=False))
    x = torch.randn(1, 32)
    with torch.no_grad():
        before = q(x)
        q.weight.neg_()
        after = q(x)
    assert_rel(after, -before, 1e-5, "negated weight")


def test_embedding_rows_are_the_dequantized_rows():
    emb = torch.nn.Embedding(50, 24)
    q = Int8Embedding.from_embedding(emb)
    ids = torch.tensor([[0, 7, 49], [3, 3, 1]])
    torch.testing.assert_close(q(ids), (q.weight.float() * q.weight_scale[:, None])[ids])
    assert_rel(q(ids), emb(ids).detach(), 1e-2, "int8 embedding vs float")
