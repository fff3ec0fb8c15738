"""S5: the five laws (zoh/bilinear, conj_sym on/off, blocks), bidirectional, irregular dt, HiPPO-N init."""

import math

import pytest
import torch

from ssmkit.layers import S5
from ssmkit.layers.s5 import hippo_n
from tests.helpers import assert_rel, check_chunking, check_laws, check_stepping


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("conj_sym", [True, False])
def test_laws(discretization, conj_sym):
    layer = S5(8, 16, blocks=2, discretization=discretization, conj_sym=conj_sym)
    check_laws(layer, torch.randn(2, 12, 8))


def test_laws_float64_half_glu_clip():
    layer = S5(6, 8, activation="half_glu", clip_eigs=True).double()
    check_laws(layer, torch.randn(2, 10, 6, dtype=torch.float64), tol=1e-9)


def test_bidirectional():
    layer = S5(8, 16, bidirectional=True)
    check_laws(layer, torch.randn(2, 12, 8), causal=False)
    with pytest.raises(RuntimeError, match="bidirectional=True"):
        layer.init_state(2)


def test_hippo_n_is_the_normal_part_of_legs():
    N = 8
    Lambda, V = hippo_n(N)
    n = torch.arange(N, dtype=torch.float64)
    r = (2 * n + 1).sqrt()
    S = -0.5 * torch.outer(r, r)
    S = torch.tril(S, -1) - torch.tril(S, -1).T - 0.5 * torch.eye(N, dtype=torch.float64)
    assert_rel(V @ torch.diag(Lambda) @ V.conj().T, S.to(torch.complex128), 1e-10, "V Lambda V^*")
    assert torch.allclose(Lambda.real, torch.full((N,), -0.5, dtype=torch.float64))
    # conjugate pairs at i and N-1-i, the first half with positive imaginary parts
    assert_rel(Lambda[: N // 2], Lambda.flip(0)[: N // 2].conj(), 1e-12, "pairs")
    assert (Lambda[: N // 2].imag > 0).all()


def test_conj_sym_equals_full_system():
    """With C on the dropped half set to the conjugate, the full system gives the same output."""
    torch.manual_seed(1)
    half = S5(4, 8, conj_sym=True, activation="identity").double()
    full = S5(4, 8, conj_sym=False, activation="identity").double()
    with torch.no_grad():
        for name in ("Lambda_re", "Lambda_im", "B", "C", "log_dt"):
            p = getattr(half, name)
            conj = p.clone()
            if name == "Lambda_im":
                conj = -conj
            if name in ("B", "C"):
                conj[..., 1] = -conj[..., 1]
            getattr(full, name).copy_(torch.cat([p, conj], dim=-2 if name == "C" else 0))
        full.D.copy_(half.D)
    x = torch.randn(2, 9, 4, dtype=torch.float64)
    assert_rel(full(x), half(x), 1e-10, "conj_sym vs full")


def test_irregular_dt():
    layer = S5(6, 8).double()
    x = torch.randn(2, 10, 6, dtype=torch.float64)
    y = layer(x)
    assert_rel(layer(x, dt=torch.ones(2, 10, dtype=torch.float64)), y, 1e-12, "dt of ones")
    assert_rel(layer(x, dt=torch.ones(2, 10, 1, dtype=torch.float64)), y, 1e-12, "dt (b, l, 1) of ones")
    # a constant dt of 2 is the same as learned steps twice as long
    with torch.no_grad():
        twice = S5(6, 8).double()
        twice.load_state_dict(layer.state_dict())
        twice.log_dt.add_(math.log(2.0))
    assert_rel(layer(x, dt=torch.full((2, 10), 2.0, dtype=torch.float64)), twice(x), 1e-10, "dt = 2")
    # a varying dt changes the output, and the chunking and stepping laws hold with it
    dt = torch.rand(2, 10, dtype=torch.float64) * 3
    assert rel_diff(layer(x, dt=dt), y) > 1e-3

    class WithDt(torch.nn.Module):
        """The layer with a fixed dt sequence fed alongside, so the laws' helpers can drive it."""

        def __init__(self):
            super().__init__()
            self.layer, self.pos = layer, 0

        def forward(self, x, state=None, return_state=False):
            start = 0 if state is None else int(state["t"][0])
            out = self.layer(x, state=None if state is None else {"x": state["x"]}, return_state=True,
                             dt=dt[:, start:start + x.shape[1]])
            new = {"x": out[1]["x"], "t": torch.full((x.shape[0],), start + x.shape[1])}
            return (out[0], new) if return_state else out[0]

        def init_state(self, batch_size, device=None, dtype=None):
            t = torch.zeros(batch_size, dtype=torch.long)
            return {**self.layer.init_state(batch_size, dtype=dtype), "t": t}

        def step(self, x_t, state):
            y, new = self.forward(x_t.unsqueeze(1), state, return_state=True)
            return y.squeeze(1), new

    check_chunking(WithDt(), x, splits=(0.3, 0.7), tol=1e-10)
    check_stepping(WithDt(), x, tol=1e-10)
    y_s, st = layer.step(x[:, 0], layer.init_state(2, dtype=torch.float64), dt=dt[:, 0])
    assert_rel(y_s, layer(x[:, :1], dt=dt[:, :1])[:, 0], 1e-12, "step with dt")


def rel_diff(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_errors():
    with pytest.raises(ValueError, match="d_state must be a multiple of 2 \\* blocks = 4"):
        S5(4, 6, blocks=2)
    with pytest.raises(ValueError, match="discretization"):
        S5(4, 8, discretization="euler")
    layer = S5(4, 8)
    with pytest.raises(ValueError, match=r"dt must have shape \(2, 5\)"):
        layer(torch.randn(2, 5, 4), dt=torch.ones(2, 4))
    with pytest.raises(ValueError, match="d_model=4"):
        layer(torch.randn(2, 5, 3))
