"""S4 and S4D: the five laws for every init and discretization, convolution == step == chunked at
length 4096, bidirectional, the eval-mode kernel cache, optimizer groups, errors."""

import time

import pytest
import torch

from ssmkit.layers import S4, S4D
from ssmkit.math import dplr
from tests.helpers import TOL, assert_rel, check_laws, rel_err

S4D_INITS = ["legs", "lin", "inv", "real"]
MEASURES = ["legs", "legt", "lagt", "fout"]


@pytest.fixture
def exact_conv(monkeypatch):
    """The laws on the direct-convolution backend: the FFT's round-off gives the future a ~1e-8 (not 0)
    gradient, which the exact causality law would flag; the FFT path is compared below."""
    monkeypatch.setenv("SSMKIT_BACKEND", "reference")


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("init", S4D_INITS)
def test_s4d_laws(init, discretization, exact_conv):
    layer = S4D(4, d_state=8, init=init, discretization=discretization)
    check_laws(layer, torch.randn(2, 12, 4))


@pytest.mark.parametrize("measure", MEASURES)
def test_s4_laws(measure, exact_conv):
    layer = S4(4, d_state=8, measure=measure, l_max=16)
    check_laws(layer, torch.randn(2, 12, 4))


def test_s4_laws_longer_than_l_max(exact_conv):
    # the full input (12) is longer than l_max (8): C~ is converted to length 16 for the kernel
    layer = S4(3, d_state=6, l_max=8, output="linear", activation="identity")
    check_laws(layer, torch.randn(2, 12, 3))


def test_laws_float64(exact_conv):
    for layer in (S4D(3, d_state=6, init="lin").double(), S4(3, d_state=6).double()):
        check_laws(layer, torch.randn(2, 10, 3, dtype=torch.float64), tol=1e-9)


def _modes(layer, x, chunks=(1000, 1500, 1596)):
    """Outputs and final states of one convolution call, of chunked calls and of stepping."""
    with torch.no_grad():
        y_conv, s_conv = layer(x, return_state=True)
        state, ys, start = None, [], 0
        for size in chunks:
            y, state = layer(x[:, start : start + size], state=state, return_state=True)
            ys.append(y)
            start += size
        step_state, steps = layer.init_state(x.shape[0]), []
        for t in range(x.shape[1]):
            y_t, step_state = layer.step(x[:, t], step_state)
            steps.append(y_t)
    key = layer.state_key
    return (y_conv, s_conv[key]), (torch.cat(ys, 1), state[key]), (torch.stack(steps, 1), step_state[key])


@pytest.mark.parametrize(
    "make",
    [pytest.param(lambda i=i, z=z: S4D(2, d_state=32, init=i, discretization=z), id=f"S4D-{i}-{z}")
     for i in S4D_INITS for z in ("zoh", "bilinear")]
    + [pytest.param(lambda m=m: S4(2, d_state=32, measure=m), id=f"S4-{m}") for m in MEASURES],
)
def test_conv_step_chunked_agree_at_4096(make):
    """Issue 2's done-when: relative error < 1e-4 (float32) between the three modes at L = 4096."""
    layer = make().eval()
    x = torch.randn(1, 4096, 2)
    t0 = time.perf_counter()
    (y, s), (y_chunk, s_chunk), (y_step, s_step) = _modes(layer, x)
    errors = {
        "chunked y": rel_err(y_chunk, y), "step y": rel_err(y_step, y),
        "chunked state": rel_err(s_chunk, s), "step state": rel_err(s_step, s),
    }
    print(f"{type(layer).__name__} {getattr(layer, 'init', getattr(layer, 'measure', ''))} "
          f"{layer.discretization}: "
          + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()) + f" ({time.perf_counter() - t0:.1f} s)")
    assert max(errors.values()) < 1e-4, errors


@pytest.mark.parametrize("cls", [S4D, S4])
def test_bidirectional_sees_the_future_and_has_no_state(cls, exact_conv):
    layer = cls(4, d_state=8, bidirectional=True)
    x = torch.randn(2, 10, 4)
    check_laws(layer, x, causal=False)
    with pytest.raises(RuntimeError, match="bidirectional=True"):
        layer(x, return_state=True)
    with pytest.raises(RuntimeError, match="bidirectional=True"):
        layer.init_state(2)


def test_bidirectional_is_forward_plus_reversed():
    """With identity activation and no output layer the two directions add: check by reversing x."""
    layer = S4D(3, d_state=8, bidirectional=True, activation="identity", output=None)
    x = torch.randn(2, 9, 3)
    fwd = S4D(3, d_state=8, activation="identity", output=None)
    bwd = S4D(3, d_state=8, activation="identity", output=None)
    with torch.no_grad():
        for f in (fwd, bwd):
            for name in ("log_dt", "log_A_real", "A_imag", "B"):
                getattr(f, name).copy_(getattr(layer, name))
        fwd.C.copy_(layer.C[:1])
        bwd.C.copy_(layer.C[1:])
        fwd.D.copy_(layer.D)
        bwd.D.zero_()
        expected = fwd(x) + bwd(x.flip(1)).flip(1)
        assert_rel(layer(x), expected, 1e-5, "bidirectional")


@pytest.mark.parametrize("cls", [S4D, S4])
def test_fft_path_matches_direct_convolution(cls, monkeypatch):
    layer = cls(4, d_state=8)
    x = torch.randn(2, 50, 4)
    y_fft = layer(x)
    monkeypatch.setenv("SSMKIT_BACKEND", "reference")
    assert_rel(y_fft, layer(x), 1e-5, "fft vs direct")


@pytest.mark.parametrize("cls", [S4D, S4])
def test_eval_cache_is_used_and_invalidated(cls):
    layer = cls(4, d_state=8).eval()
    x = torch.randn(2, 16, 4)
    with torch.no_grad():
        K1 = layer.cached_kernel(16)
        assert layer.cached_kernel(16) is K1, "eval mode with no grad must reuse the kernel"
        y1 = layer(x)
        layer.log_dt.add_(0.3)                                             # an optimizer-like update
        K2 = layer.cached_kernel(16)
        assert K2 is not K1 and rel_err(K2, K1) > 1e-3, "a parameter update must invalidate the cache"
        y2 = layer(x)
    layer.train()
    assert not layer._cache, "train() must clear the cache"
    assert rel_err(y2, y1) > 1e-3
    with torch.no_grad():
        fresh = layer._kernel(16, torch.float32)
        assert_rel(K2, fresh, 1e-6, "cached kernel after update")
    # in training mode and with gradients on nothing is cached: the kernel carries the graph
    assert layer.cached_kernel(16) is not layer.cached_kernel(16)
    assert layer.cached_kernel(16).requires_grad


def test_step_cache_follows_updates():
    layer = S4(3, d_state=6).eval()
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        layer.step(x[:, 0], layer.init_state(2))
        layer.B.mul_(2.0)
        y_step, _ = layer.step(x[:, 0], layer.init_state(2))
        y_conv = layer(x[:, :1])
    assert_rel(y_step, y_conv[:, 0], 1e-5, "step after update")


@pytest.mark.parametrize("cls", [S4D, S4])
def test_param_groups_cover_every_parameter_once(cls):
    """The layer hands the optimizer its SSM group (own lr, no decay); the rest follows the general
    rules: C and the output matrix decay, D does not."""
    from ssmkit.training.optim import build_optimizer

    layer = cls(4, d_state=8, lr=1e-3)
    opt = build_optimizer(layer, lr=1e-2, weight_decay=0.1)
    groups = opt.param_groups
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in layer.parameters()), "each parameter exactly once"
    names = {id(p): n for n, p in layer.named_parameters()}
    by_name = {names[id(p)]: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    for name in ("log_dt", "log_A_real", "B") + (("P",) if cls is S4 else ()):
        assert by_name[name] == (1e-3, 0.0), name
    assert by_name["C"] == (1e-2, 0.1) and by_name["output_linear.weight"] == (1e-2, 0.1)
    assert by_name["D"] == (1e-2, 0.0)


def test_half_precision_input_is_upcast():
    layer = S4D(4, d_state=8).eval()
    x = torch.randn(2, 20, 4)
    y = layer(x.bfloat16())
    assert y.dtype == torch.bfloat16
    rtol, _ = TOL[torch.bfloat16]
    assert rel_err(y.float(), layer(x.bfloat16().float())) < rtol


def test_state_is_complex_or_real():
    assert S4D(3, d_state=8).init_state(2)["x"].shape == (2, 3, 4)
    assert S4D(3, d_state=8).init_state(2)["x"].dtype == torch.complex64
    assert S4D(3, d_state=8, init="real").init_state(2)["x"].dtype == torch.float32
    assert S4D(3, d_state=8, init="real").init_state(2)["x"].shape == (2, 3, 8)
    assert S4(3, d_state=8).init_state(2, dtype=torch.float64)["x_dplr"].dtype == torch.complex128


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="init must be one of"):
        S4D(4, init="legx")
    with pytest.raises(ValueError, match="measure must be one of"):
        S4(4, measure="chebyshev")
    with pytest.raises(ValueError, match="discretization must be one of"):
        S4D(4, discretization="euler")
    with pytest.raises(ValueError, match="d_model must be a positive int"):
        S4D(0)
    with pytest.raises(ValueError, match="d_state must be even"):
        S4(4, d_state=7)
    with pytest.raises(ValueError, match="dt_min"):
        S4D(4, dt_min=0.1, dt_max=0.01)
    layer = S4D(4, d_state=8)
    with pytest.raises(ValueError, match="d_model=4"):
        layer(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match=r"state\['x'\] must have shape \(2, 4, 4\)"):
        layer(torch.randn(2, 5, 4), state={"x": torch.zeros(2, 4, 5, dtype=torch.complex64)})
    with pytest.raises(ValueError, match="x_t must have shape"):
        layer.step(torch.randn(2, 5), layer.init_state(2))


@pytest.mark.parametrize("make", [lambda: S4D(3, d_state=8), lambda: S4D(3, d_state=8, init="real"),
                                  lambda: S4(3, d_state=8, l_max=8)], ids=["S4D", "S4D-real", "S4"])
def test_every_parameter_gets_a_gradient(make):
    layer = make()
    x = torch.randn(2, 11, 3)                                              # longer than l_max for S4
    layer(x).pow(2).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: no finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient"


@pytest.mark.parametrize("cls", [S4D, S4])
def test_float32_kernel_option(cls, exact_conv):
    """kernel_dtype=float32 (for devices where float64 is slow) keeps every law at short lengths."""
    layer = cls(3, d_state=8, kernel_dtype=torch.float32, **({"l_max": 16} if cls is S4 else {}))
    check_laws(layer, torch.randn(2, 12, 3))
    with pytest.raises(ValueError, match="kernel_dtype must be one of"):
        cls(3, kernel_dtype=torch.float16)


@pytest.mark.parametrize("measure", MEASURES)
def test_s4_woodbury_step_matches_dense_bilinear(measure):
    """Chain of trust: the O(N r) step equals the dense bilinear system of ssmkit.math.kernels.dplr_to_dense
    (on the full conjugate-symmetric state), and so do Bd and the recurrent C = C~ (I - Ad^l_max)^-1."""
    from ssmkit.math.kernels import c_from_c_tilde, dplr_to_dense

    layer = S4(3, d_state=8, measure=measure, l_max=32).double()
    with torch.no_grad():
        Lambda, P, B, Ct, dt = layer._params(torch.float64)
        Ad, Bd, Ct_full = dplr_to_dense(Lambda, P, B, Ct[0], dt, "bilinear")   # (H, N, N), (H, N), (H, N)
        rec = layer._recurrence(torch.float64)
        x = torch.randn(5, 3, 4, dtype=torch.complex128)
        x_full = torch.cat([x, x.conj()], -1)
        u = torch.randn(5, 3, dtype=torch.float64)
        want = torch.einsum("hmn,bhn->bhm", Ad, x_full) + Bd * u[..., None]
        assert_rel(dplr.bilinear_step(rec, x, u), want[..., :4], 1e-10, "step vs dense")
        C = c_from_c_tilde(Ct_full, Ad, 32)
        assert_rel(rec["C_true"], C[:, :4], 1e-8, "C from C~")
        x_real = dplr.to_real(x)
        assert_rel(dplr.from_real(torch.einsum("hmn,bhn->bhm", rec["M"], x_real)),
                   torch.einsum("hmn,bhn->bhm", Ad, x_full)[..., :4], 1e-10, "real matrix M")
