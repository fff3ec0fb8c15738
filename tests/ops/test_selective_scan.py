"""selective_scan: the sequential loop (oracle) vs the chunked log-space path, gradients, errors."""

import pytest
import torch

from ssmkit.ops.selective_scan import selective_scan, selective_scan_chunked, selective_scan_ref
from tests.helpers import assert_rel


def make(b=2, d=6, n=4, l=50, g=2, dtype=torch.float32, options=True):
    t = {
        "u": torch.randn(b, d, l, dtype=dtype),
        "delta": torch.randn(b, d, l, dtype=dtype) * 0.5,
        "A": -torch.rand(d, n, dtype=torch.float64 if dtype == torch.float64 else torch.float32) * 2 - 0.1,
        "B": torch.randn(b, g, n, l, dtype=dtype) if g else torch.randn(b, n, l, dtype=dtype),
        "C": torch.randn(b, g, n, l, dtype=dtype) if g else torch.randn(b, n, l, dtype=dtype),
    }
    if options:
        t.update(
            D=torch.randn(d, dtype=dtype),
            z=torch.randn(b, d, l, dtype=dtype),
            delta_bias=torch.randn(d, dtype=dtype) * 0.3,
            initial_state=torch.randn(b, d, n, dtype=t["A"].dtype),
        )
    return t


def normalized(t, softplus):
    B = t["B"] if t["B"].dim() == 4 else t["B"][:, None]
    C = t["C"] if t["C"].dim() == 4 else t["C"][:, None]
    return (
        t["u"],
        t["delta"],
        t["A"],
        B,
        C,
        t.get("D"),
        t.get("z"),
        t.get("delta_bias"),
        softplus,
        t.get("initial_state"),
        True,
    )


def run_with_grads(fn, t, softplus, **kw):
    t = {k: v.detach().clone().requires_grad_(True) for k, v in t.items()}
    out, h = fn(*normalized(t, softplus), **kw)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward(retain_graph=True)
    (h.pow(2).sum()).backward()
    return out.detach(), h.detach(), {k: v.grad for k, v in t.items()}


@pytest.mark.parametrize("g", [0, 1, 3])
@pytest.mark.parametrize("options", [False, True])
def test_chunked_matches_loop(g, options):
    t = make(g=g, options=options)
    softplus = options
    o1, h1, g1 = run_with_grads(selective_scan_ref, t, softplus)
    o2, h2, g2 = run_with_grads(selective_scan_chunked, t, softplus, chunk_size=16)
    assert_rel(o2, o1, 1e-5, "out")
    assert_rel(h2, h1, 1e-5, "final state")
    for k in g1:
        assert_rel(g2[k], g1[k], 1e-5, f"grad {k}")


def test_public_op_dispatch_and_3d_B():
    t = make(l=300, g=0)
    ref = selective_scan_ref(*normalized(t, True))
    out = selective_scan(
        t["u"],
        t["delta"],
        t["A"],
        t["B"],
        t["C"],
        D=t["D"],
        z=t["z"],
        delta_bias=t["delta_bias"],
        delta_softplus=True,
        initial_state=t["initial_state"],
        return_final_state=True,
        backend="reference",
    )  # l > 256: the chunked path
    assert_rel(out[0], ref[0], 1e-5, "out")
    assert_rel(out[1], ref[1], 1e-5, "state")
    assert out[0].dtype == t["u"].dtype and out[1].dtype == torch.float32


def test_chunked_equals_one_call_with_state_carried():
    t = make(options=False, l=40)
    h0 = torch.randn(2, 6, 4)
    full, hf = selective_scan(
        t["u"],
        t["delta"],
        t["A"],
        t["B"],
        t["C"],
        initial_state=h0,
        return_final_state=True,
        backend="reference",
    )
    y1, h1 = selective_scan(
        t["u"][..., :17],
        t["delta"][..., :17],
        t["A"],
        t["B"][..., :17],
        t["C"][..., :17],
        initial_state=h0,
        return_final_state=True,
        backend="reference",
    )
    y2, h2 = selective_scan(
        t["u"][..., 17:],
        t["delta"][..., 17:],
        t["A"],
        t["B"][..., 17:],
        t["C"][..., 17:],
        initial_state=h1,
        return_final_state=True,
        backend="reference",
    )
    assert_rel(torch.cat([y1, y2], -1), full, 1e-6, "chunked outputs")
    assert_rel(h2, hf, 1e-6, "chunked state")


def test_stable_with_strong_decay():
    t = make(options=False, l=64)
    t["A"] = t["A"] * 200  # exp(delta A) underflows to 0 within one step
    t["delta"] = t["delta"].abs() * 20
    o1, h1 = selective_scan_ref(*normalized(t, False))
    o2, h2 = selective_scan_chunked(*normalized(t, False), chunk_size=32)
    assert torch.isfinite(o2).all() and torch.isfinite(h2).all()
    assert_rel(o2, o1, 1e-5, "out")


def test_gradcheck_float64():
    t = make(b=1, d=2, n=2, l=5, g=1, dtype=torch.float64)
    names = list(t)
    inputs = tuple(t[k].requires_grad_(True) for k in names)

    def f(fn, *xs, **kw):
        return fn(*normalized(dict(zip(names, xs)), True), **kw)

    assert torch.autograd.gradcheck(lambda *xs: f(selective_scan_ref, *xs), inputs)
    assert torch.autograd.gradcheck(lambda *xs: f(selective_scan_chunked, *xs, chunk_size=2), inputs)


def test_dtypes_half_input_float32_state():
    t = make(options=False, dtype=torch.bfloat16)
    out, h = selective_scan(
        t["u"], t["delta"], t["A"], t["B"], t["C"], return_final_state=True, backend="reference"
    )
    assert out.dtype == torch.bfloat16 and h.dtype == torch.float32


def test_errors_name_arguments():
    t = make(options=False)
    u, dl, A, B, C = t["u"], t["delta"], t["A"], t["B"], t["C"]
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
