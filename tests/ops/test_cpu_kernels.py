"""The numba CPU kernels (selective scan, SSD, causal conv) against the reference ops: outputs, final
states and the gradients of every input, float32 and bfloat16 inputs, groups, softplus, seq_idx.
Outputs are allocated NaN-poisoned (SSMKIT_POISON=1) so an element a kernel forgot to write shows.
Lengths are not multiples of the checkpoint interval, so partial segments are covered."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ssmkit.ops import _dispatch
from tests.helpers import TOL, assert_rel

pytest.importorskip("numba")

from ssmkit.ops import _numba  # noqa: E402
from ssmkit.ops.causal_conv1d import cpu as conv_cpu  # noqa: E402
from ssmkit.ops.causal_conv1d import reference as conv_ref  # noqa: E402
from ssmkit.ops.selective_scan import cpu as ss_cpu  # noqa: E402
from ssmkit.ops.selective_scan import reference as ss_ref  # noqa: E402
from ssmkit.ops.ssd import cpu as ssd_cpu  # noqa: E402
from ssmkit.ops.ssd import reference as ssd_ref  # noqa: E402

F32 = TOL[torch.float32][0]
BF16 = TOL[torch.bfloat16][0]


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setenv("SSMKIT_POISON", "1")


def _grads(out, inputs, seed=1):
    """Gradients of a fixed random projection of the outputs w.r.t. the inputs that are tensors."""
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o.float() * torch.randn(o.shape, generator=gen)).sum() for o in out)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    return torch.autograd.grad(loss, leaves)


def _leaf(t, dtype=torch.float32):
    return t.to(dtype).requires_grad_(True)


def _compare(fn_cpu, fn_ref, args, names, tol, what):
    out_c = fn_cpu(*args)
    out_r = fn_ref(*args)
    for k, (a, e) in enumerate(zip(out_c, out_r)):
        assert_rel(a.float(), e.float(), tol, f"{what} output {k}")
    g_c, g_r = _grads(out_c, args), _grads(out_r, args)
    grad_names = [nm for nm, t in zip(names, args) if isinstance(t, torch.Tensor) and t.requires_grad]
    for nm, a, e in zip(grad_names, g_c, g_r):
        assert_rel(a.float(), e.float(), tol, f"{what} d{nm}")


def test_vexp_matches_exp():
    x = np.concatenate([np.linspace(-87, 88, 100_001), np.random.default_rng(0).normal(0, 3, 10_000)])
    x = x.astype(np.float32)
    got = _numba.exp_array(x).astype(np.float64)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - want) / want) < 4e-7  # fastmath-compiled; 1.2e-7 compiled strictly


def test_softplus_matches_torch():
    """The vectorizable softplus (vexp + a log1p polynomial) the inference kernel fuses in."""
    import numba

    @numba.njit(fastmath=True)
    def run(x, out):
        for i in range(x.size):
            out[i] = _numba.softplus(x[i])

    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-80, 80, 100_001), rng.normal(0, 4, 10_000),
                        -np.logspace(-8, 1.5, 2_000), np.logspace(-8, 1.5, 2_000)]).astype(np.float32)
    got = np.empty_like(x)
    run(x, got)
    want = torch.nn.functional.softplus(torch.from_numpy(x).double(), threshold=1e4).numpy()
    assert np.max(np.abs(got - want) / want) < 5e-7


def test_rows_views_every_projection_layout():
    """`rows` maps (b, d, l) tensors onto 2-D arrays without a copy where it can, and exactly."""
    proj = torch.randn(2, 9, 10)                                     # (b, l, 2d), d = 5
    for t in proj.transpose(1, 2).chunk(2, dim=1) + (torch.randn(2, 5, 9), torch.randn(2, 9, 5).mT[:, :, 2:]):
        arr, col0, cl = _numba.rows(t)
        b, d, L = t.shape
        got = (torch.from_numpy(arr[:, col0:col0 + d]).reshape(b, L, d).transpose(1, 2) if cl
               else torch.from_numpy(arr).reshape(b, d, L))
        assert torch.equal(got, t)
    assert np.shares_memory(_numba.rows(proj.transpose(1, 2)[:, 5:])[0], proj.numpy())  # the gate half


# ---- selective scan ----------------------------------------------------------------------------

def _ss_inputs(b, d, L, n, g, dtype, full=True, softplus=True):
    u = _leaf(torch.randn(b, d, L), dtype)
    raw = torch.randn(b, d, L) * 0.5 - 1.0 if softplus else torch.rand(b, d, L) * 0.3 + 0.01
    delta = _leaf(raw, dtype)
    A = _leaf(-torch.rand(d, n) * 2 - 0.1)
    B = _leaf(torch.randn(b, g, n, L), dtype)
    C = _leaf(torch.randn(b, g, n, L), dtype)
    D = _leaf(torch.randn(d)) if full else None
    z = _leaf(torch.randn(b, d, L), dtype) if full else None
    bias = _leaf(torch.randn(d) * 0.5) if full else None
    h0 = _leaf(torch.randn(b, d, n)) if full else None
    return u, delta, A, B, C, D, z, bias, h0


@pytest.mark.parametrize(
    "b,d,L,n,g,softplus,full",
    [(2, 6, 300, 5, 2, True, True), (1, 4, 131, 16, 1, False, False), (2, 4, 64, 3, 4, True, True)],
)
def test_selective_scan_float32(b, d, L, n, g, softplus, full):
    u, delta, A, B, C, D, z, bias, h0 = _ss_inputs(b, d, L, n, g, torch.float32, full, softplus)

    def run(fn):
        return lambda u, delta, A, B, C, D, z, bias, h0: fn(u, delta, A, B, C, D, z, bias, softplus, h0, True)

    _compare(run(ss_cpu.selective_scan), run(ss_ref.selective_scan), (u, delta, A, B, C, D, z, bias, h0),
             "u delta A B C D z delta_bias initial_state".split(), F32, "selective_scan")


def test_selective_scan_bfloat16_inputs():
    args = _ss_inputs(2, 4, 150, 8, 2, torch.bfloat16)

    def run(fn):
        return lambda u, delta, A, B, C, D, z, bias, h0: fn(u, delta, A, B, C, D, z, bias, True, h0, True)

    out = run(ss_cpu.selective_scan)(*args)
    assert out[0].dtype == torch.bfloat16 and out[1].dtype == torch.float32
    _compare(run(ss_cpu.selective_scan), run(ss_ref.selective_scan), args,
             "u delta A B C D z delta_bias initial_state".split(), BF16, "selective_scan bf16")


def _layout(t, how):
    """t (b, d, l) as contiguous, channels-last, or the second half of a wider channels-last buffer."""
    if how == "contiguous":
        return t.contiguous()
    if how == "channels_last":
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    b, d, L = t.shape
    wide = torch.randn(b, L, 2 * d, dtype=t.dtype)
    wide[:, :, d:] = t.transpose(1, 2)
    return wide.transpose(1, 2)[:, d:]


@pytest.mark.parametrize(
    "b,d,L,n,g,softplus,full,how",
    [(2, 150, 300, 5, 1, True, True, "slice"),          # blocks of 64, 64, 22 channels; tiles 128 + 128 + 44
     (1, 70, 131, 16, 2, False, False, "contiguous"),   # a group of 35 channels: one partial block each
     (2, 8, 64, 3, 4, True, True, "channels_last")],
)
def test_selective_scan_inference_kernel(b, d, L, n, g, softplus, full, how):
    """Without autograd the forward-only kernel runs (softplus and gate fused in, channels-last out)."""
    u, delta, A, B, C, D, z, bias, h0 = (t.detach() if t is not None else None
                                         for t in _ss_inputs(b, d, L, n, g, torch.float32, full, softplus))
    u, delta = _layout(u, how), _layout(delta, how)
    z = _layout(z, how) if z is not None else None
    with torch.no_grad():
        y, hT = ss_cpu.selective_scan(u, delta, A, B, C, D, z, bias, softplus, h0, True)
    y_r, hT_r = ss_ref.selective_scan(u, delta, A, B, C, D, z, bias, softplus, h0, True)
    assert y.stride(1) == 1 or d == 1  # channels-last, as out_proj reads it
    assert_rel(y, y_r, F32, "inference output")
    assert_rel(hT, hT_r, F32, "inference final state")


def test_inference_kernels_bfloat16_inputs():
    u, delta, A, B, C, D, z, bias, h0 = (t.detach() for t in _ss_inputs(2, 20, 90, 8, 2, torch.bfloat16))
    with torch.no_grad():
        y, hT = ss_cpu.selective_scan(u, delta, A, B, C, D, z, bias, True, h0, True)
        yc = conv_cpu.causal_conv1d(u, delta[0, :, :4].float(), None, None, "silu", False)
    assert y.dtype == torch.bfloat16 and hT.dtype == torch.float32 and yc.dtype == torch.bfloat16
    y_r, hT_r = ss_ref.selective_scan(u, delta, A, B, C, D, z, bias, True, h0, True)
    assert_rel(y.float(), y_r.float(), BF16, "bf16 inference output")
    assert_rel(hT, hT_r, BF16, "bf16 inference final state")
    yc_r = conv_ref.causal_conv1d(u, delta[0, :, :4].float(), None, None, "silu", False)
    assert_rel(yc.float(), yc_r.float(), BF16, "bf16 conv inference")


def test_selective_scan_only_state_grad():
    """A loss on the final state alone (dout is None in backward) still reaches u and h0."""
    u, delta, A, B, C, D, z, bias, h0 = _ss_inputs(1, 3, 70, 4, 1, torch.float32)
    _, hT = ss_cpu.selective_scan(u, delta, A, B, C, D, z, bias, True, h0, True)
    _, hT_r = ss_ref.selective_scan(u, delta, A, B, C, D, z, bias, True, h0, True)
    g = torch.autograd.grad(hT.sum(), (u, h0))
    g_r = torch.autograd.grad(hT_r.sum(), (u, h0))
    for a, e, nm in zip(g, g_r, ("u", "initial_state")):
        assert_rel(a, e, F32, f"d{nm} from the final state only")


# ---- SSD -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "b,L,h,p,n,g,Dshape,use_seq,limit,softplus",
    [(2, 150, 4, 6, 8, 2, "h", True, (0.0, float("inf")), True),
     (1, 70, 3, 5, 4, 1, "hp", False, (0.05, 1.5), True),
     (1, 70, 2, 3, 4, 2, "h", False, (0.0, float("inf")), False)],  # negative dt clamps to 0
)
def test_ssd_float32(b, L, h, p, n, g, Dshape, use_seq, limit, softplus):
    x = _leaf(torch.randn(b, L, h, p))
    dt = _leaf(torch.randn(b, L, h))
    A = _leaf(-torch.rand(h) - 0.3)
    B, C = _leaf(torch.randn(b, L, g, n)), _leaf(torch.randn(b, L, g, n))
    D = _leaf(torch.randn(h) if Dshape == "h" else torch.randn(h, p))
    z = _leaf(torch.randn(b, L, h, p))
    dt_bias = _leaf(torch.randn(h) * 0.5)
    S0 = _leaf(torch.randn(b, h, p, n))
    seq_idx = None
    if use_seq:
        seq_idx = torch.zeros(b, L, dtype=torch.long)
        seq_idx[0, 70:] = 1
        seq_idx[-1, 20:] = 1
        seq_idx[-1, 100:] = 2

    def run(fn):
        return lambda x, dt, A, B, C, D, z, dt_bias, S0: fn(
            x, dt, A, B, C, 64, D, z, dt_bias, softplus, limit, S0, seq_idx, True)

    _compare(run(ssd_cpu.ssd), run(ssd_ref.ssd), (x, dt, A, B, C, D, z, dt_bias, S0),
             "x dt A B C D z dt_bias initial_state".split(), F32, "ssd")


def test_ssd_bfloat16_inputs():
    b, L, h, p, n = 1, 90, 2, 4, 8
    args = (_leaf(torch.randn(b, L, h, p), torch.bfloat16), _leaf(torch.randn(b, L, h), torch.bfloat16),
            _leaf(-torch.rand(h) - 0.3), _leaf(torch.randn(b, L, 1, n), torch.bfloat16),
            _leaf(torch.randn(b, L, 1, n), torch.bfloat16))

    def run(fn):
        return lambda x, dt, A, B, C: fn(x, dt, A, B, C, 64, None, None, None, True, (0.0, float("inf")),
                                         None, None, True)

    out = run(ssd_cpu.ssd)(*args)
    assert out[0].dtype == torch.bfloat16 and out[1].dtype == torch.float32
    _compare(run(ssd_cpu.ssd), run(ssd_ref.ssd), args, "x dt A B C".split(), BF16, "ssd bf16")


# ---- causal conv ---------------------------------------------------------------------------------

@pytest.mark.parametrize("k,activation,with_state,dtype", [(4, "silu", True, torch.float32),
                                                           (3, None, False, torch.float32),
                                                           (4, "silu", True, torch.bfloat16)])
def test_causal_conv1d(k, activation, with_state, dtype):
    b, d, L = 2, 5, 41
    x = _leaf(torch.randn(b, d, L), dtype)
    w, bias = _leaf(torch.randn(d, k), dtype), _leaf(torch.randn(d), dtype)
    s0 = _leaf(torch.randn(b, d, k - 1), dtype) if with_state else None

    def run(fn):
        return lambda x, w, bias, s0: fn(x, w, bias, s0, activation, True)

    tol = F32 if dtype == torch.float32 else BF16
    _compare(run(conv_cpu.causal_conv1d), run(conv_ref.causal_conv1d), (x, w, bias, s0),
             "x weight bias initial_state".split(), tol, "causal_conv1d")


@pytest.mark.parametrize("k,activation,with_state,how,L", [(4, "silu", True, "slice", 300),
                                                          (3, None, False, "contiguous", 41),
                                                          (2, "silu", True, "channels_last", 129)])
def test_causal_conv1d_inference_kernel(k, activation, with_state, how, L):
    b, d = 2, 70
    x = _layout(torch.randn(b, d, L), how)
    w, bias = torch.randn(d, k), torch.randn(d)
    s0 = torch.randn(b, d, k - 1) if with_state else None
    with torch.no_grad():
        y, sT = conv_cpu.causal_conv1d(x, w, bias, s0, activation, True)
    y_r, sT_r = conv_ref.causal_conv1d(x, w, bias, s0, activation, True)
    assert y.stride(1) == 1
    assert_rel(y, y_r, F32, "conv inference output")
    assert torch.equal(sT, sT_r)


def _transposed(b, L, d):
    """(b, d, L) views of (b, L, 2d) projections, stride 1 along d: what a Mamba layer hands the ops."""
    proj = torch.randn(b, L, 2 * d).transpose(1, 2)
    return [h.detach().requires_grad_(True) for h in proj.chunk(2, dim=1)]


def test_as_array_copies_transposed_inputs_exactly():
    x = torch.randn(2, 37, 21).transpose(1, 2)                       # (2, 21, 37), stride 1 along 21
    a = _numba.as_array(x)
    assert a.flags["C_CONTIGUOUS"] and np.array_equal(a, x.contiguous().numpy())
    y = torch.randn(3, 4, 5)
    assert np.shares_memory(_numba.as_array(y), y.numpy())            # contiguous: a view, no copy


def test_kernels_take_transposed_inputs():
    b, d, L, n = 2, 19, 70, 4
    x, z = _transposed(b, L, d)
    assert not x.is_contiguous() and x.stride(1) == 1
    w, bias = _leaf(torch.randn(d, 4)), _leaf(torch.randn(d))
    conv = [lambda x, w, bias, fn=fn: fn(x, w, bias, None, "silu", True)
            for fn in (conv_cpu.causal_conv1d, conv_ref.causal_conv1d)]
    _compare(*conv, (x, w, bias), "x weight bias".split(), F32, "causal_conv1d transposed x")
    _, delta, A, B, C, D, _, dbias, h0 = _ss_inputs(b, d, L, n, 1, torch.float32)

    def run(fn):
        return lambda u, delta, A, B, C, D, z, bias, h0: fn(u, delta, A, B, C, D, z, bias, True, h0, True)
    _compare(run(ss_cpu.selective_scan), run(ss_ref.selective_scan), (x, delta, A, B, C, D, z, dbias, h0),
             "u delta A B C D z delta_bias h0".split(), F32, "selective_scan transposed u, z")


@pytest.mark.parametrize("L", [1, 2, 3])
def test_causal_conv1d_shorter_than_its_state(L):
    """l < k - 1: the final state is the tail of (state ‖ x), not of x alone."""
    x, w, bias, s0 = _leaf(torch.randn(2, 3, L)), _leaf(torch.randn(3, 4)), _leaf(torch.randn(3)), \
        _leaf(torch.randn(2, 3, 3))
    fns = [lambda x, w, bias, s0, fn=fn: fn(x, w, bias, s0, None, True)
           for fn in (conv_cpu.causal_conv1d, conv_ref.causal_conv1d)]
    _compare(*fns, (x, w, bias, s0), "x weight bias initial_state".split(), F32, f"conv l={L}")


def test_public_ops_run_the_cpu_backend():
    """Through the public functions (argument checks, B/C normalization) backend="cpu" == "reference"."""
    from ssmkit.ops.causal_conv1d import causal_conv1d
    from ssmkit.ops.selective_scan import selective_scan
    from ssmkit.ops.ssd import ssd

    u, delta, A, B, C, D, z, bias, h0 = _ss_inputs(1, 4, 50, 3, 1, torch.float32)
    B3, C3 = B[:, 0], C[:, 0]  # (b, n, l): the ungrouped form
    outs = [selective_scan(u, delta, A, B3, C3, D, z, bias, True, h0, True, backend=be)
            for be in ("cpu", "reference")]
    assert_rel(outs[0][0], outs[1][0], F32, "public selective_scan")
    x = torch.randn(1, 40, 2, 3)
    B2, C2 = torch.randn(1, 40, 1, 4), torch.randn(1, 40, 1, 4)
    args = (x, torch.randn(1, 40, 2), -torch.rand(2) - 0.2, B2, C2)
    ys = [ssd(*args, chunk_size=16, dt_softplus=True, backend=be) for be in ("cpu", "reference")]
    assert_rel(ys[0], ys[1], F32, "public ssd")
    xc, w = torch.randn(2, 3, 30), torch.randn(3, 4)
    ys = [causal_conv1d(xc, w, activation="silu", backend=be) for be in ("cpu", "reference")]
    assert_rel(ys[0], ys[1], F32, "public causal_conv1d")


# ---- dispatch ------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["selective_scan", "ssd", "causal_conv1d"])
def test_auto_picks_cpu_and_env_forces_reference(op, monkeypatch):
    x = torch.randn(2, 3)
    monkeypatch.delenv("SSMKIT_BACKEND", raising=False)
    assert _dispatch.unsupported_reason(op, "cpu", x) is None
    assert _dispatch.resolve(op, "auto", x)[0] == "cpu"
    monkeypatch.setenv("SSMKIT_BACKEND", "reference")
    assert _dispatch.resolve(op, "auto", x)[0] == "reference"


def test_float64_falls_back_with_one_warning(monkeypatch):
    monkeypatch.delenv("SSMKIT_BACKEND", raising=False)
    monkeypatch.setattr(_dispatch, "_warned", set())
    x = torch.randn(2, 3, dtype=torch.float64)
    assert "float64" in ss_cpu.unsupported_reason(x)
    with pytest.warns(RuntimeWarning, match="slow reference"):
        assert _dispatch.resolve("selective_scan", "auto", x)[0] == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _dispatch.resolve("selective_scan", "auto", x)[0] == "reference"
    with pytest.raises(RuntimeError, match="float64"):
        _dispatch.resolve("selective_scan", "cpu", x)
