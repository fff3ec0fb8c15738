"""ssd: every tier against the recurrence (tests.ops.harness), with groups, D (h,) or (h, p), dt limits
and packed sequences; the recurrence against selective_scan; packed and chunked calls against
separate ones; gradcheck; errors."""

import importlib.util
import math

import pytest
import torch

from ssmkit._dtypes import acc_dtype
from ssmkit.ops import ssd
from ssmkit.ops.selective_scan import reference as selective_scan_reference
from ssmkit.ops.ssd import chunked, reference
from tests.helpers import assert_rel
from tests.ops.harness import Case, check_tiers

NUMBA = importlib.util.find_spec("numba") is not None
INF = math.inf
SEQ = torch.tensor([[0] * 10 + [1] * 3 + [2] * 24, [5] * 20 + [6] * 17])           # (2, 37)


def _case(b, L, h, p, n, g, *, D_hdim=False, seq_idx=None, limit=(0.0, INF), softplus=True, chunk=64,
          full=True):
    def make(dtype, gen):
        state = acc_dtype(dtype)

        def r(*shape, dt=dtype):
            return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dt)

        A = (-torch.rand(h, generator=gen) - 0.3).to(state)
        core = (r(b, L, h, p), r(b, L, h) * 0.5, A, r(b, L, g, n), r(b, L, g, n))
        kw = {"chunk_size": chunk, "dt_softplus": softplus, "dt_limit": limit, "seq_idx": seq_idx}
        if full:
            kw.update(D=r(h, p) if D_hdim else r(h), z=r(b, L, h, p), dt_bias=r(h) * 0.5,
                      initial_state=r(b, h, p, n, dt=state))
        return core, kw

    name = f"b={b} l={L} h={h} p={p} n={n} g={g} chunk={chunk}" + (" seq_idx" if seq_idx is not None else "")
    return Case("ssd", make, name=name + ("" if softplus else " no softplus") + (" D(h,p)" if D_hdim else ""))


# lengths off the chunk and checkpoint (64) grids; resets inside and on chunk boundaries
SEQ150 = torch.zeros(2, 150, dtype=torch.long)
SEQ150[0, 70:], SEQ150[1, 20:], SEQ150[1, 100:] = 1, 1, 2
CASES = [
    _case(2, 150, 4, 6, 8, 2, seq_idx=SEQ150),
    _case(1, 70, 3, 5, 4, 1, D_hdim=True, limit=(0.05, 1.5)),
    _case(1, 70, 2, 3, 4, 2, softplus=False),                 # negative dt clamps to 0
    _case(2, 37, 4, 3, 5, 2, chunk=8, seq_idx=SEQ, limit=(0.05, 2.0)),
    _case(2, 37, 4, 3, 5, 2, chunk=16, D_hdim=True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_every_tier_matches_the_oracle_float32(case):
    checked = check_tiers(case, torch.float32)
    assert set(checked) >= {"reference", "chunked"} | ({"numba"} if NUMBA else set())


def test_every_tier_matches_the_oracle_bfloat16():
    checked = check_tiers(_case(1, 90, 2, 4, 8, 1, full=False), torch.bfloat16)
    assert set(checked) >= {"reference", "chunked"} | ({"numba"} if NUMBA else set())


def test_every_tier_matches_the_oracle_float64():
    checked = check_tiers(_case(2, 37, 4, 3, 5, 2, chunk=8, seq_idx=SEQ), torch.float64)
    assert set(checked) >= {"reference", "chunked"}


def _inputs(b=2, l=37, h=4, p=3, g=2, n=5, dtype=torch.float32, D_hdim=False):
    state = acc_dtype(dtype)
    return {
        "x": torch.randn(b, l, h, p, dtype=dtype),
        "dt": torch.randn(b, l, h, dtype=dtype) * 0.5,
        "A": -torch.rand(h, dtype=state) * 2 - 0.1,
        "B": torch.randn(b, l, g, n, dtype=dtype),
        "C": torch.randn(b, l, g, n, dtype=dtype),
        "D": torch.randn(h, p, dtype=dtype) if D_hdim else torch.randn(h, dtype=dtype),
        "z": torch.randn(b, l, h, p, dtype=dtype),
        "dt_bias": torch.randn(h, dtype=dtype) * 0.3,
        "initial_state": torch.randn(b, h, p, n, dtype=state),
    }


def _call(fn, t, **kw):
    """fn(x, dt, A, B, C, D=..., ...) on the dict t, dt_softplus and the final state on."""
    core = [t[k] for k in ("x", "dt", "A", "B", "C")]
    rest = {k: t.get(k) for k in ("D", "z", "dt_bias", "initial_state")}
    return fn(*core, **rest, dt_softplus=True, return_final_state=True, **kw)


def test_recurrence_matches_selective_scan_with_A_shared_in_a_head():
    t = _inputs(dtype=torch.float64)
    b, l, h, p = t["x"].shape
    n = t["B"].shape[-1]
    out, s = _call(reference.ssd, t)
    # one channel per (head, p), heads-major: channel c = head * p + j reads group head // (h // g)
    y, hs = selective_scan_reference.selective_scan(
        t["x"].reshape(b, l, h * p).transpose(1, 2),
        t["dt"].repeat_interleave(p, dim=2).transpose(1, 2),
        t["A"].repeat_interleave(p)[:, None].expand(h * p, n),
        t["B"].permute(0, 2, 3, 1),                                  # (b, g, n, l)
        t["C"].permute(0, 2, 3, 1),
        D=t["D"].repeat_interleave(p),
        z=t["z"].reshape(b, l, h * p).transpose(1, 2),
        delta_bias=t["dt_bias"].repeat_interleave(p),
        delta_softplus=True,
        initial_state=t["initial_state"].reshape(b, h * p, n),
        return_final_state=True,
    )
    assert_rel(out, y.transpose(1, 2).reshape(b, l, h, p), 1e-10, "out")
    assert_rel(s, hs.reshape(b, h, p, n), 1e-10, "state")


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_packed_equals_separate(backend):
    t = _inputs()
    row = {k: (v[:1] if v.dim() >= 3 and k != "D" else v) for k, v in t.items()}
    out, s = _call(ssd, row, seq_idx=SEQ[:1], chunk_size=8, backend=backend)
    cuts = [0, 10, 13, 37]
    for i, (a, e) in enumerate(zip(cuts[:-1], cuts[1:])):
        seg = {k: (v[:, a:e] if k in ("x", "dt", "B", "C", "z") else v) for k, v in row.items()}
        if i > 0:
            seg["initial_state"] = None                                # initial_state reaches only the first
        o, st = _call(ssd, seg, chunk_size=8, backend=backend)
        assert_rel(out[:, a:e], o, 1e-5, f"sequence {i}")
    assert_rel(s, st, 1e-5, "final state = the last sequence's")


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_one_call_equals_chunks_with_state_carried(backend):
    t = _inputs()
    out, s = _call(ssd, t, chunk_size=8, backend=backend)
    first = {k: (v[:, :20] if k in ("x", "dt", "B", "C", "z") else v) for k, v in t.items()}
    second = {k: (v[:, 20:] if k in ("x", "dt", "B", "C", "z") else v) for k, v in t.items()}
    o1, s1 = _call(ssd, first, chunk_size=16, backend=backend)
    second["initial_state"] = s1
    o2, s2 = _call(ssd, second, chunk_size=16, backend=backend)
    assert_rel(torch.cat([o1, o2], 1), out, 1e-5, "outputs")
    assert_rel(s2, s, 1e-5, "state")


@pytest.mark.parametrize("tier", [reference, chunked])
def test_gradcheck_float64(tier):
    t = _inputs(b=1, l=6, h=2, p=2, g=1, n=2, dtype=torch.float64, D_hdim=True)
    seq = torch.tensor([[0, 0, 0, 1, 1, 1]])
    names = list(t)

    def f(*xs):
        return _call(tier.ssd, dict(zip(names, xs)), chunk_size=4, seq_idx=seq)

    assert torch.autograd.gradcheck(f, tuple(t[k].requires_grad_(True) for k in names))


def test_half_inputs_keep_their_dtype_and_the_state_is_float32():
    t = _inputs(dtype=torch.bfloat16)
    for backend in ("auto", "reference", "chunked"):
        out, s = ssd(t["x"], t["dt"].abs(), t["A"], t["B"], t["C"], return_final_state=True, backend=backend)
        assert out.dtype == torch.bfloat16 and s.dtype == torch.float32 and s.shape == (2, 4, 3, 5)


def test_errors_name_arguments():
    t = _inputs()
    x, dt, A, B, C = t["x"], t["dt"], t["A"], t["B"], t["C"]
    with pytest.raises(ValueError, match="groups=3 .* must divide heads=4"):
        ssd(x, dt, A, torch.randn(2, 37, 3, 5), torch.randn(2, 37, 3, 5))
    with pytest.raises(TypeError, match="A must be real"):
        ssd(x, dt, A.to(torch.complex64), B, C)
    with pytest.raises(ValueError, match=r"D must have shape \(4,\) or \(4, 3\)"):
        ssd(x, dt, A, B, C, D=torch.ones(3))
    with pytest.raises(ValueError, match="seq_idx must be nondecreasing"):
        ssd(x, dt, A, B, C, seq_idx=SEQ.flip(1))
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        ssd(x, dt, A, B, C, chunk_size=0)
    with pytest.raises(ValueError, match="dt must have shape"):
        ssd(x, dt[:, :3], A, B, C)
    with pytest.raises(TypeError, match="positional"):
        ssd(x, dt, A, B, C, 64)                                        # everything after C is keyword-only
