"""causal_conv1d: every tier against the oracle (tests.ops.harness), the oracle against torch's conv1d,
the state carried and the one-token update, packed sequences, the numba inference kernel's layout,
errors."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from ssmkit.ops.causal_conv1d import causal_conv1d, causal_conv1d_update, reference
from tests.helpers import TOL, assert_rel
from tests.ops.harness import Case, check_tiers

NUMBA = importlib.util.find_spec("numba") is not None


def _case(b, d, L, k, *, activation="silu", state=True, bias=True, layout="contiguous"):
    def make(dtype, gen):
        def r(*shape):
            return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

        x = r(b, d, L)
        if layout == "transposed":                                # half of a (b, l, 2d) projection
            x = torch.cat([r(b, L, d), x.transpose(1, 2)], dim=-1).transpose(1, 2)[:, d:]
        elif layout == "channels_last":
            x = x.transpose(1, 2).contiguous().transpose(1, 2)
        kw = {"bias": r(d) if bias else None, "initial_state": r(b, d, k - 1) if state else None,
              "activation": activation}
        return (x, r(d, k)), kw

    name = f"b={b} d={d} l={L} k={k} {activation} {'state' if state else 'no state'} {layout}"
    return Case("causal_conv1d", make, name=name)


CASES = [
    _case(2, 5, 41, 4),
    _case(2, 5, 41, 3, activation=None, state=False),
    _case(2, 70, 300, 4, layout="transposed"),                   # inference: channel blocks, tiles
    _case(2, 70, 129, 2, bias=False, layout="channels_last"),
    _case(2, 5, 13, 1),                                           # no state at all: (b, d, 0)
    *[_case(2, 3, L, 4) for L in (1, 2, 3)],                      # l < k - 1: the state's tail survives
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_every_tier_matches_the_oracle_float32(case):
    checked = check_tiers(case, torch.float32)
    assert set(checked) >= {"reference"} | ({"numba"} if NUMBA else set())


def test_every_tier_matches_the_oracle_bfloat16():
    checked = check_tiers(_case(2, 20, 90, 4), torch.bfloat16)
    assert set(checked) >= {"reference"} | ({"numba"} if NUMBA else set())


def _torch_conv(x, w, bias, activation):
    y = F.conv1d(F.pad(x, (w.shape[1] - 1, 0)), w[:, None, :], bias, groups=w.shape[0])
    return F.silu(y) if activation == "silu" else y


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_oracle_matches_torch_conv1d(k, activation, with_bias):
    x, w = torch.randn(2, 5, 13), torch.randn(5, k)
    bias = torch.randn(5) if with_bias else None
    y, s = causal_conv1d(x, w, bias=bias, activation=activation, return_final_state=True, backend="reference")
    assert_rel(y, _torch_conv(x, w, bias, activation), 1e-6, "y")
    assert s.shape == (2, 5, k - 1)
    assert torch.equal(s, x[..., x.shape[-1] - (k - 1) :])


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_state_carried_and_update_equal_full(backend):
    if backend == "numba" and not NUMBA:
        pytest.skip("numba is not installed")
    x, w, bias = torch.randn(2, 5, 13), torch.randn(5, 4), torch.randn(5)
    kw = {"bias": bias, "activation": "silu", "return_final_state": True, "backend": backend}
    y, s = causal_conv1d(x, w, **kw)
    y1, s1 = causal_conv1d(x[..., :6], w, **kw)
    y2, s2 = causal_conv1d(x[..., 6:], w, initial_state=s1, **kw)
    assert_rel(torch.cat([y1, y2], -1), y, 1e-6, "chunks")
    assert torch.equal(s2, s)
    state, ys = torch.zeros(2, 5, 3), []
    for t in range(13):
        before = state.clone()
        y_t, new = causal_conv1d_update(x[..., t], state, w, bias=bias, activation="silu")
        assert torch.equal(state, before), "update modified its input state"
        ys.append(y_t)
        state = new
    assert_rel(torch.stack(ys, -1), y, 1e-6, "update")
    assert torch.equal(state, s)


def test_oracle_gradcheck_reaches_initial_state():
    x, w, b, s0 = (torch.randn(*shape, dtype=torch.float64, requires_grad=True)
                   for shape in ((1, 3, 6), (3, 3), (3,), (1, 3, 2)))

    def f(x, w, b, s0):
        return reference.causal_conv1d(x, w, bias=b, initial_state=s0, activation="silu",
                                       return_final_state=True)

    assert torch.autograd.gradcheck(f, (x, w, b, s0))


def test_packed_equals_separate():
    x, w, bias = torch.randn(1, 4, 12), torch.randn(4, 3), torch.randn(4)
    seq = torch.tensor([[0] * 5 + [1] * 1 + [2] * 6])
    s0 = torch.randn(1, 4, 2)
    y = causal_conv1d(x, w, bias=bias, initial_state=s0, activation="silu", seq_idx=seq)
    for a, e, st in ((0, 5, s0), (5, 6, None), (6, 12, None)):
        alone = causal_conv1d(x[..., a:e], w, bias=bias, initial_state=st, activation="silu",
                              backend="reference")
        assert_rel(y[..., a:e], alone, 1e-6, "seg")
    with pytest.raises(ValueError, match="seq_idx runs on the reference and triton tiers only"):
        causal_conv1d(x, w, seq_idx=seq, backend="numba")


@pytest.mark.skipif(not NUMBA, reason="numba is not installed")
def test_numba_inference_writes_channels_last():
    """Without autograd the forward-only kernel runs, bias and activation fused, output channels-last."""
    from ssmkit.ops.causal_conv1d import numba

    case = _case(2, 70, 300, 4, layout="transposed")
    (x, w), kw = case.make(torch.float32, torch.Generator().manual_seed(0))
    with torch.no_grad():
        y, sT = numba.causal_conv1d(x, w, **kw, return_final_state=True)
    y_r, sT_r = reference.causal_conv1d(x, w, **kw, return_final_state=True)
    assert y.stride(1) == 1
    assert_rel(y, y_r, TOL[torch.float32][0], "inference output")
    assert torch.equal(sT, sT_r)


@pytest.mark.skipif(not NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("L", [2, 300])
def test_numba_training_keeps_the_projection_layout(L):
    """In a layer, x is a slice of in_proj's output and y's gradient comes channels-last: the numba
    Function's output and x's gradient stay channels-last, and every gradient equals the oracle's."""
    gen = torch.Generator().manual_seed(L)
    b, d, k = 2, 70, 4
    proj = torch.randn(b, L, 2 * d, generator=gen, requires_grad=True)
    w, bias, s0 = (torch.randn(*shape, generator=gen, requires_grad=True)
                   for shape in ((d, k), (d,), (b, d, k - 1)))
    dy = torch.randn(b, L, d, generator=gen).transpose(1, 2)               # channels-last
    outs, grads = {}, {}
    for backend in ("reference", "numba"):
        x = proj[:, :, d:].transpose(1, 2)
        y = causal_conv1d(x, w, bias=bias, initial_state=s0, activation="silu", backend=backend)
        outs[backend] = y
        grads[backend] = torch.autograd.grad(y, (proj, w, bias, s0), dy)
    assert outs["numba"].stride(1) == 1
    assert_rel(outs["numba"], outs["reference"], TOL[torch.float32][0], "y")
    for name, g, g_r in zip(("proj", "w", "bias", "initial_state"), grads["numba"], grads["reference"]):
        assert_rel(g, g_r, TOL[torch.float32][0], name)


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
    with pytest.raises(TypeError, match="positional"):
        causal_conv1d(x, w, None)                                  # everything after weight is keyword-only
