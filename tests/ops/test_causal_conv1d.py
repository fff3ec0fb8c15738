"""causal_conv1d: vs torch's conv1d, state carried, one-token update, packed sequences, errors."""

import pytest
import torch
import torch.nn.functional as F

from ssmkit.ops.causal_conv1d import causal_conv1d, causal_conv1d_ref, causal_conv1d_update
from tests.helpers import assert_rel


def torch_conv(x, w, bias, activation):
    y = F.conv1d(F.pad(x, (w.shape[1] - 1, 0)), w[:, None, :], bias, groups=w.shape[0])
    return F.silu(y) if activation == "silu" else y


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_torch_conv1d(k, activation, with_bias):
    x, w = torch.randn(2, 5, 13), torch.randn(5, k)
    bias = torch.randn(5) if with_bias else None
    y, s = causal_conv1d(x, w, bias, activation=activation, return_final_state=True, backend="reference")
    assert_rel(y, torch_conv(x, w, bias, activation), 1e-6, "y")
    assert s.shape == (2, 5, k - 1)
    assert torch.equal(s, x[..., x.shape[-1] - (k - 1) :])


def test_state_carried_and_update_equal_full():
    x, w, bias = torch.randn(2, 5, 13), torch.randn(5, 4), torch.randn(5)
    y, s = causal_conv1d(x, w, bias, activation="silu", return_final_state=True, backend="reference")
    y1, s1 = causal_conv1d(
        x[..., :6], w, bias, activation="silu", return_final_state=True, backend="reference"
    )
    y2, s2 = causal_conv1d(x[..., 6:], w, bias, s1, "silu", True, backend="reference")
    assert_rel(torch.cat([y1, y2], -1), y, 1e-6, "chunks")
    assert torch.equal(s2, s)
    state, ys = torch.zeros(2, 5, 3), []
    for t in range(13):
        before = state.clone()
        y_t, new = causal_conv1d_update(x[..., t], state, w, bias, "silu")
        assert torch.equal(state, before), "update modified its input state"
        ys.append(y_t)
        state = new
    assert_rel(torch.stack(ys, -1), y, 1e-6, "update")
    assert torch.equal(state, s)


def test_gradients_reach_initial_state_and_gradcheck():
    x = torch.randn(1, 3, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    s0 = torch.randn(1, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: causal_conv1d_ref(*a, "silu", True), (x, w, b, s0))


def test_packed_equals_separate():
    x, w, bias = torch.randn(1, 4, 12), torch.randn(4, 3), torch.randn(4)
    seq = torch.tensor([[0] * 5 + [1] * 1 + [2] * 6])
    s0 = torch.randn(1, 4, 2)
    y = causal_conv1d(x, w, bias, s0, "silu", seq_idx=seq)
    for a, e, st in ((0, 5, s0), (5, 6, None), (6, 12, None)):
        assert_rel(
            y[..., a:e], causal_conv1d(x[..., a:e], w, bias, st, "silu", backend="reference"), 1e-6, "seg"
        )


def test_errors_name_arguments():
    x, w = torch.randn(2, 5, 13), torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"weight must have shape \(5, kernel_size\)"):
        causal_conv1d(x, torch.randn(4, 4))
    with pytest.raises(ValueError, match="initial_state must have shape"):
        causal_conv1d(x, w, initial_state=torch.zeros(2, 5, 4))
    with pytest.raises(ValueError, match="activation must be one of"):
        causal_conv1d(x, w, activation="relu")
    with pytest.raises(ValueError, match="conv_state must have shape"):
        causal_conv1d_update(x[..., 0], torch.zeros(2, 5, 4), w)
    with pytest.raises(ValueError, match="x must have 3 dimensions"):
        causal_conv1d(x[0], w)
