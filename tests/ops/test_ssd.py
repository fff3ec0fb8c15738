"""ssd: the chunked algorithm vs the recurrence vs selective_scan; packed sequences; gradients; errors."""

import math

import pytest
import torch

from ssmkit.ops.selective_scan import selective_scan_ref
from ssmkit.ops.ssd import ssd, ssd_recurrent
from ssmkit.ops.ssd.reference import ssd as ssd_chunked
from tests.helpers import assert_rel

INF = math.inf


def make(b=2, l=37, h=4, p=3, g=2, n=5, dtype=torch.float32, D_hdim=False):
    return {
        "x": torch.randn(b, l, h, p, dtype=dtype),
        "dt": torch.randn(b, l, h, dtype=dtype) * 0.5,
        "A": -torch.rand(h, dtype=torch.float64 if dtype == torch.float64 else torch.float32) * 2 - 0.1,
        "B": torch.randn(b, l, g, n, dtype=dtype),
        "C": torch.randn(b, l, g, n, dtype=dtype),
        "D": torch.randn(h, p, dtype=dtype) if D_hdim else torch.randn(h, dtype=dtype),
        "z": torch.randn(b, l, h, p, dtype=dtype),
        "dt_bias": torch.randn(h, dtype=dtype) * 0.3,
        "initial_state": torch.randn(
            b, h, p, n, dtype=torch.float64 if dtype == torch.float64 else torch.float32
        ),
    }


def args(t, chunk, seq_idx=None, limit=(0.0, INF), softplus=True):
    return (
        t["x"],
        t["dt"],
        t["A"],
        t["B"],
        t["C"],
        chunk,
        t.get("D"),
        t.get("z"),
        t.get("dt_bias"),
        softplus,
        limit,
        t.get("initial_state"),
        seq_idx,
        True,
    )


def with_grads(fn, t, *a, **kw):
    t = {k: v.detach().clone().requires_grad_(True) for k, v in t.items()}
    out, s = fn(*args(t, *a, **kw))
    (out * torch.linspace(-1, 1, out.shape[1])[:, None, None]).sum().backward(retain_graph=True)
    s.pow(2).sum().backward()
    return out.detach(), s.detach(), {k: v.grad for k, v in t.items()}


SEQ = torch.tensor([[0] * 10 + [1] * 3 + [2] * 24, [5] * 20 + [6] * 17])


@pytest.mark.parametrize("chunk", [8, 16, 64])
@pytest.mark.parametrize("seq_idx", [None, SEQ])
@pytest.mark.parametrize("D_hdim", [False, True])
def test_chunked_matches_recurrence(chunk, seq_idx, D_hdim):
    t = make(D_hdim=D_hdim)
    o1, s1, g1 = with_grads(ssd_recurrent, t, chunk, seq_idx, limit=(0.05, 2.0))
    o2, s2, g2 = with_grads(ssd_chunked, t, chunk, seq_idx, limit=(0.05, 2.0))
    assert_rel(o2, o1, 1e-5, "out")
    assert_rel(s2, s1, 1e-5, "final state")
    for k in g1:
        assert torch.isfinite(g2[k]).all(), f"grad {k} not finite"
        assert_rel(g2[k], g1[k], 1e-5, f"grad {k}")


def test_matches_selective_scan_with_A_shared_in_a_head():
    t = make(dtype=torch.float64)
    b, l, h, p = t["x"].shape
    n, g = t["B"].shape[-1], t["B"].shape[2]
    out, s = ssd_recurrent(*args(t, 8))
    # one channel per (head, p), heads-major: channel c = head * p + j reads group head // (h // g)
    u = t["x"].reshape(b, l, h * p).transpose(1, 2)
    delta = t["dt"].repeat_interleave(p, dim=2).transpose(1, 2)
    A = t["A"].repeat_interleave(p)[:, None].expand(h * p, n)
    Bs, Cs = t["B"].permute(0, 2, 3, 1), t["C"].permute(0, 2, 3, 1)  # (b, g, n, l)
    y, hs = selective_scan_ref(
        u,
        delta,
        A,
        Bs,
        Cs,
        t["D"].repeat_interleave(p),
        t["z"].reshape(b, l, h * p).transpose(1, 2),
        t["dt_bias"].repeat_interleave(p),
        True,
        t["initial_state"].reshape(b, h * p, n),
        True,
    )
    assert_rel(out, y.transpose(1, 2).reshape(b, l, h, p), 1e-10, "out")
    assert_rel(s, hs.reshape(b, h, p, n), 1e-10, "state")
    assert g == 2


def test_packed_equals_separate():
    t = make()
    row = {k: (v[:1] if v.dim() >= 3 and k != "D" else v) for k, v in t.items()}
    out, s = ssd(*args(row, 8, SEQ[:1]), backend="reference")
    cuts = [0, 10, 13, 37]
    for i, (a, e) in enumerate(zip(cuts[:-1], cuts[1:])):
        seg = {k: (v[:, a:e] if k in ("x", "dt", "B", "C", "z") else v) for k, v in row.items()}
        if i > 0:
            seg["initial_state"] = None  # initial_state reaches only the first sequence
        o, st = ssd(*args(seg, 8), backend="reference")
        assert_rel(out[:, a:e], o, 1e-5, f"sequence {i}")
    assert_rel(s, st, 1e-5, "final state = the last sequence's")


def test_one_call_equals_chunks_with_state_carried():
    t = make()
    out, s = ssd(*args(t, 8), backend="reference")
    first = {k: (v[:, :20] if k in ("x", "dt", "B", "C", "z") else v) for k, v in t.items()}
    second = {k: (v[:, 20:] if k in ("x", "dt", "B", "C", "z") else v) for k, v in t.items()}
    o1, s1 = ssd(*args(first, 16), backend="reference")
    second["initial_state"] = s1
    o2, s2 = ssd(*args(second, 16), backend="reference")
    assert_rel(torch.cat([o1, o2], 1), out, 1e-5, "outputs")
    assert_rel(s2, s, 1e-5, "state")


def test_gradcheck_float64():
    t = make(b=1, l=6, h=2, p=2, g=1, n=2, dtype=torch.float64, D_hdim=True)
    seq = torch.tensor([[0, 0, 0, 1, 1, 1]])
    names = list(t)
    inputs = tuple(t[k].requires_grad_(True) for k in names)
    for fn in (ssd_chunked, ssd_recurrent):
        assert torch.autograd.gradcheck(lambda *xs, fn=fn: fn(*args(dict(zip(names, xs)), 4, seq)), inputs)


def test_public_op_defaults_and_dtypes():
    t = make(dtype=torch.bfloat16)
    out, s = ssd(t["x"], t["dt"].abs(), t["A"], t["B"], t["C"], return_final_state=True, backend="reference")
    assert out.dtype == torch.bfloat16 and s.dtype == torch.float32 and s.shape == (2, 4, 3, 5)


def test_errors_name_arguments():
    t = make()
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
