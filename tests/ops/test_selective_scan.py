"""selective_scan: every tier against the sequential oracle (tests.ops.harness); the oracle's own
properties (chunks with the state carried, strong decay, gradcheck); the numba tier's inference kernel
on every input layout; errors."""

import importlib.util

import pytest
import torch

from ssmkit._dtypes import acc_dtype
from ssmkit.ops import selective_scan
from ssmkit.ops.selective_scan import chunked, reference
from tests.helpers import TOL, assert_rel
from tests.ops.harness import Case, check_tiers

NUMBA = importlib.util.find_spec("numba") is not None
F32, BF16 = TOL[torch.float32][0], TOL[torch.bfloat16][0]


def _case(b, d, L, n, g, *, full=True, softplus=True, layout="contiguous", name=""):
    """g=0: B, C as (b, n, l) (one group, the 3-D form); layout: how u, delta and z lie in memory."""

    def make(dtype, gen):
        state = acc_dtype(dtype)

        def r(*shape, dt=dtype):
            return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dt)

        positive = (torch.rand(b, d, L, generator=gen) * 0.3 + 0.01).to(dtype)
        raw = r(b, d, L) * 0.5 - 1.0 if softplus else positive
        u, delta = _layout(r(b, d, L), layout), _layout(raw, layout)
        A = -torch.rand(d, n, generator=gen).to(state) * 2 - 0.1
        B, C = (r(b, n, L), r(b, n, L)) if g == 0 else (r(b, g, n, L), r(b, g, n, L))
        kw = {"delta_softplus": softplus}
        if full:
            kw.update(D=r(d), z=_layout(r(b, d, L), layout), delta_bias=r(d) * 0.5,
                      initial_state=r(b, d, n, dt=state))
        return (u, delta, A, B, C), kw

    return Case("selective_scan", make, name=name or f"b={b} d={d} l={L} n={n} g={g} {layout}")


def _layout(t, how):
    """t (b, d, l) contiguous, channels-last, or the second half of a wider channels-last projection."""
    if how == "contiguous":
        return t.contiguous()
    if how == "channels_last":
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    b, d, L = t.shape
    wide = torch.zeros(b, L, 2 * d, dtype=t.dtype)
    wide[:, :, d:] = t.transpose(1, 2)
    return wide.transpose(1, 2)[:, d:]


# lengths off the chunk (64) and checkpoint (32) grids: partial chunks and segments
CASES = [
    _case(2, 6, 300, 5, 2),
    _case(1, 4, 131, 16, 1, full=False, softplus=False),
    _case(2, 4, 64, 3, 4),
    _case(2, 6, 50, 4, 0),                                    # B, C (b, n, l)
    _case(1, 130, 140, 5, 1, layout="slice"),                 # inference: blocks of 64, 64, 2 channels
    _case(1, 70, 131, 16, 2, full=False, softplus=False, layout="channels_last"),
    _case(2, 260, 70, 4, 2, layout="channels_last"),          # backward: blocks of 128, 2, 128, 2 channels
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_every_tier_matches_the_oracle_float32(case):
    checked = check_tiers(case, torch.float32)
    assert set(checked) >= {"reference", "chunked"} | ({"numba"} if NUMBA else set())


def test_every_tier_matches_the_oracle_bfloat16():
    checked = check_tiers(_case(2, 20, 90, 8, 2), torch.bfloat16)
    assert set(checked) >= {"reference", "chunked"} | ({"numba"} if NUMBA else set())


def test_every_tier_matches_the_oracle_float64():
    assert set(check_tiers(_case(2, 6, 70, 4, 3), torch.float64)) >= {"reference", "chunked"}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_auto_takes_the_loop_up_to_chunked_above_and_chunks_beyond(monkeypatch):
    """Where numba cannot run (float64), "auto" runs the loop on inputs of at most CHUNKED_ABOVE steps
    and the chunked form on longer ones; both agree with the loop asked for by name."""
    from ssmkit.ops.selective_scan import CHUNKED_ABOVE

    loops = []
    loop = reference.selective_scan
    monkeypatch.setattr(reference, "selective_scan", lambda *a, **k: loops.append(1) or loop(*a, **k))
    for L, ran_loop in ((CHUNKED_ABOVE, True), (CHUNKED_ABOVE + 1, False)):
        (u, delta, A, B, C), kw = _case(1, 3, L, 4, 1).make(torch.float64, torch.Generator().manual_seed(0))
        loops.clear()
        got = selective_scan(u, delta, A, B, C, **kw)
        assert bool(loops) == ran_loop, f"l={L}: the loop ran {len(loops)} times"
        assert_rel(got, loop(u, delta, A, B, C, **kw), 1e-12, f"l={L}")


# ---- the oracle and the chunked form ------------------------------------------------------------

def _inputs(b=2, d=6, n=4, l=50, g=2, dtype=torch.float32):
    state = acc_dtype(dtype)
    u, delta = torch.randn(b, d, l, dtype=dtype), torch.randn(b, d, l, dtype=dtype) * 0.5
    A = -torch.rand(d, n, dtype=state) * 2 - 0.1
    return u, delta, A, torch.randn(b, g, n, l, dtype=dtype), torch.randn(b, g, n, l, dtype=dtype)


def test_one_call_equals_chunks_with_state_carried():
    u, delta, A, B, C = _inputs(l=40)
    h0 = torch.randn(2, 6, 4)
    full, hf = selective_scan(u, delta, A, B, C, initial_state=h0, return_final_state=True,
                              backend="reference")
    y1, h1 = selective_scan(u[..., :17], delta[..., :17], A, B[..., :17], C[..., :17], initial_state=h0,
                            return_final_state=True, backend="reference")
    y2, h2 = selective_scan(u[..., 17:], delta[..., 17:], A, B[..., 17:], C[..., 17:], initial_state=h1,
                            return_final_state=True, backend="reference")
    assert_rel(torch.cat([y1, y2], -1), full, 1e-6, "chunked outputs")
    assert_rel(h2, hf, 1e-6, "chunked state")


def test_chunked_is_stable_with_strong_decay():
    u, delta, A, B, C = _inputs(l=64)
    A, delta = A * 200, delta.abs() * 20                          # exp(delta A) underflows within a step
    y1, h1 = reference.selective_scan(u, delta, A, B, C, return_final_state=True)
    y2, h2 = chunked.selective_scan(u, delta, A, B, C, return_final_state=True, chunk_size=32)
    assert torch.isfinite(y2).all() and torch.isfinite(h2).all()
    assert_rel(y2, y1, 1e-5, "out")


@pytest.mark.parametrize("tier", [reference, chunked])
def test_gradcheck_float64(tier):
    u, delta, A, B, C = _inputs(b=1, d=2, n=2, l=5, g=1, dtype=torch.float64)
    D, z, bias, h0 = torch.randn(2), torch.randn(1, 2, 5), torch.randn(2), torch.randn(1, 2, 2)
    inputs = tuple(t.double().requires_grad_(True) for t in (u, delta, A, B, C, D, z, bias, h0))
    extra = {"chunk_size": 2} if tier is chunked else {}

    def f(u, delta, A, B, C, D, z, bias, h0):
        return tier.selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True,
                                   initial_state=h0, return_final_state=True, **extra)

    assert torch.autograd.gradcheck(f, inputs)


def test_half_inputs_keep_their_dtype_and_the_state_is_float32():
    u, delta, A, B, C = _inputs(dtype=torch.bfloat16)
    for backend in ("auto", "reference", "chunked"):
        out, h = selective_scan(u, delta, A, B, C, return_final_state=True, backend=backend)
        assert out.dtype == torch.bfloat16 and h.dtype == torch.float32


# ---- the numba tier's kernels ---------------------------------------------------------------------

@pytest.mark.skipif(not NUMBA, reason="numba is not installed")
def test_numba_inference_writes_channels_last():
    """Without autograd the forward-only kernel runs and writes channels-last, as out_proj reads it."""
    from ssmkit.ops.selective_scan import numba

    (u, delta, A, B, C), kw = _case(2, 70, 131, 16, 2).make(torch.float32, torch.Generator().manual_seed(0))
    with torch.no_grad():
        y, hT = numba.selective_scan(u, delta, A, B, C, **kw, return_final_state=True)
    y_r, hT_r = reference.selective_scan(u, delta, A, B, C, **kw, return_final_state=True)
    assert y.stride(1) == 1
    assert_rel(y, y_r, F32, "inference output")
    assert_rel(hT, hT_r, F32, "inference final state")


@pytest.mark.skipif(not NUMBA, reason="numba is not installed")
def test_numba_gradient_from_the_final_state_only():
    """A loss on the final state alone (dout is None in the backward) still reaches u and h0."""
    from ssmkit.ops.selective_scan import numba

    (u, delta, A, B, C), kw = _case(1, 3, 70, 4, 1).make(torch.float32, torch.Generator().manual_seed(0))
    u, h0 = u.requires_grad_(True), kw["initial_state"].requires_grad_(True)
    _, hT = numba.selective_scan(u, delta, A, B, C, **kw, return_final_state=True)
    _, hT_r = reference.selective_scan(u, delta, A, B, C, **kw, return_final_state=True)
    g = torch.autograd.grad(hT.sum(), (u, h0))
    g_r = torch.autograd.grad(hT_r.sum(), (u, h0))
    for a, e, nm in zip(g, g_r, ("u", "initial_state")):
        assert_rel(a, e, F32, f"d{nm} from the final state only")


# ---- errors -------------------------------------------------------------------------------------

def test_errors_name_arguments():
    u, dl, A, B, C = _inputs()
    with pytest.raises(TypeError, match="A must be real"):
        selective_scan(u, dl, A.to(torch.complex64), B, C)
    with pytest.raises(TypeError, match="A must have dtype"):
        selective_scan(u, dl, A.half(), B, C)
    with pytest.raises(ValueError, match=r"A must have shape \(d=6"):
        selective_scan(u, dl, A[:3], B, C)
    with pytest.raises(ValueError, match="groups=4 must divide d=6"):
        selective_scan(u, dl, A, torch.randn(2, 4, 4, 50), torch.randn(2, 4, 4, 50))
    with pytest.raises(ValueError, match="delta must have shape"):
        selective_scan(u, dl[..., :3], A, B, C)
    with pytest.raises(ValueError, match="initial_state must have shape"):
        selective_scan(u, dl, A, B, C, initial_state=torch.zeros(2, 6, 3))
    with pytest.raises(ValueError, match="backend must be one of"):
        selective_scan(u, dl, A, B, C, backend="gpu")
    with pytest.raises(TypeError, match="positional"):
        selective_scan(u, dl, A, B, C, None)                      # everything after C is keyword-only
