"""Int8Linear / Int8Embedding: the rounding, the layer against the dequantized float path (the reference)
and the float layer, one int8 copy held, a change of the weight followed, autograd, the embedding's rows."""

from __future__ import annotations

import pytest
import torch

from ssmkit.layers.int8 import Int8Embedding, Int8Linear, quantize_rows
from ssmkit.ops.int8_linear.numba import MAX_ROWS
from tests.helpers import assert_rel


def test_quantize_rows_is_within_half_a_step():
    W = torch.randn(40, 64) * torch.logspace(-3, 1, 40)[:, None]  # rows of very different sizes
    q, scale = quantize_rows(W)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    err = (q.float() * scale[:, None] - W).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-7).all())


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 3, MAX_ROWS, MAX_ROWS + 1])
def test_int8_linear_matches_the_dequantized_reference_and_the_float_layer(rows, bias):
    lin = torch.nn.Linear(96, 200, bias=bias)
    q = Int8Linear.from_linear(lin)
    x = torch.randn(rows, 96)
    with torch.no_grad():
        out = q(x)
        ref = torch.nn.functional.linear(x, q.dequantize(), q.bias)
        full = lin(x)
    assert_rel(out, ref, 1e-5, "int8 layer vs dequantized weight")
    assert_rel(out, full, 2e-2, "int8 layer vs float layer")  # the weight's 8-bit rounding


def test_decoding_path_and_forced_reference_agree(monkeypatch):
    """A one-row forward takes numba's kernel through decode_fn; SSMKIT_BACKEND=reference takes the
    dequantized weight: the same outputs."""
    q = Int8Linear.from_linear(torch.nn.Linear(70, 45))
    x = torch.randn(1, 70)
    with torch.no_grad():
        fast = q(x)
        monkeypatch.setenv("SSMKIT_BACKEND", "reference")
        ref = q(x)
    assert_rel(fast, ref, 1e-5, "numba decode path vs forced reference")


def test_holds_one_int8_copy_of_the_weight_and_caches_nothing():
    q = Int8Linear.from_linear(torch.nn.Linear(32, 48))
    before = {k: type(v) for k, v in vars(q).items()}
    with torch.no_grad():
        q(torch.randn(1, 32))
        q(torch.randn(20, 32))
    assert {k: type(v) for k, v in vars(q).items()} == before, "the forward cached something"
    assert {k: t.dtype for k, t in q.state_dict().items()} == {
        "weight": torch.int8, "weight_scale": torch.float32, "bias": torch.float32
    }


def test_follows_a_change_of_the_weight():
    q = Int8Linear.from_linear(torch.nn.Linear(32, 16, bias=False))
    x = torch.randn(1, 32)
    with torch.no_grad():
        before = q(x)
        q.weight.neg_()
        after = q(x)
    assert_rel(after, -before, 1e-5, "negated weight")


def test_autograd_reaches_the_input_and_the_bias():
    q = Int8Linear.from_linear(torch.nn.Linear(32, 8))
    q.bias.requires_grad_(True)
    x = torch.randn(1, 32, requires_grad=True)
    q(x).sum().backward()
    torch.testing.assert_close(x.grad, q.dequantize().sum(0, keepdim=True))
    torch.testing.assert_close(q.bias.grad, torch.ones(8))


def test_embedding_rows_are_the_dequantized_rows():
    emb = torch.nn.Embedding(50, 24)
    q = Int8Embedding.from_embedding(emb)
    ids = torch.tensor([[0, 7, 49], [3, 3, 1]])
    torch.testing.assert_close(q(ids), (q.weight.float() * q.weight_scale[:, None])[ids])
    assert_rel(q(ids), emb(ids).detach(), 1e-2, "int8 embedding vs float")
