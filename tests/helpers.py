"""Shared test tools: tolerances by dtype, relative error, and the five laws of the mixer protocol.

Every sequence layer's tests call `check_laws(layer, x)` (or the single laws), so one definition of
"chunking", "stepping", "causality", "gradient to state" and "plain state" serves all layers.
"""

from __future__ import annotations

import io

import torch

# (rtol, atol) by dtype, after the Mamba kernels' tests.
TOL = {
    torch.float64: (1e-9, 1e-10),
    torch.float32: (6e-4, 2e-3),
    torch.bfloat16: (3e-2, 5e-2),
    torch.float16: (3e-3, 5e-3),
}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64 (complex allowed)."""
    a, e = actual.detach().to(torch.complex128 if actual.is_complex() else torch.float64), expected.detach()
    e = e.to(a.dtype)
    return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()


def assert_rel(actual, expected, tol: float, what: str = "") -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    err = rel_err(actual, expected)
    assert err < tol, f"{what}: relative error {err:.3e} >= {tol:.1e}"


def assert_close_dtype(actual, expected, dtype=None, what: str = "") -> None:
    rtol, atol = TOL[dtype or expected.dtype]
    torch.testing.assert_close(
        actual, expected.to(actual.dtype), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}"
    )


# ---- the five laws ------------------------------------------------------------------------------

def _states_close(s1: dict, s2: dict, tol: float, what: str) -> None:
    assert s1.keys() == s2.keys(), f"{what}: state keys {sorted(s1)} != {sorted(s2)}"
    for k in s1:
        if s1[k].is_floating_point() or s1[k].is_complex():
            assert_rel(s1[k], s2[k], tol, f"{what} state[{k!r}]")
        else:
            assert torch.equal(s1[k], s2[k]), f"{what} state[{k!r}] differs"


def check_chunking(layer, x, splits=(0.5,), tol=1e-4) -> None:
    """Law 1: layer(x1‖x2‖…) equals the chunks in turn with the state carried over."""
    y_full, s_full = layer(x, return_state=True)
    L = x.shape[1]
    cuts = [0] + [max(1, int(L * f)) for f in splits] + [L]
    state, ys = None, []
    for a, b in zip(cuts[:-1], cuts[1:]):
        y, state = layer(x[:, a:b], state=state, return_state=True)
        ys.append(y)
    assert_rel(torch.cat(ys, 1), y_full, tol, "chunking: outputs")
    _states_close(state, s_full, tol, "chunking: final")


def check_stepping(layer, x, tol=1e-4) -> None:
    """Law 2: feeding x one token at a time through step (and step_) equals layer(x), outputs and final
    state."""
    y_full, s_full = layer(x, return_state=True)
    state = layer.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    ys = []
    for t in range(x.shape[1]):
        y_t, state = layer.step(x[:, t], state)
        ys.append(y_t)
    assert_rel(torch.stack(ys, 1), y_full, tol, "stepping: outputs")
    _states_close(state, s_full, tol, "stepping: final")
    if not hasattr(layer, "step_"):  # a test's wrapper module, not a Mixer
        return
    state = layer.init_state(x.shape[0], device=x.device, dtype=x.dtype)  # step_: the state written
    ys = [layer.step_(x[:, t], state) for t in range(x.shape[1])]
    assert_rel(torch.stack(ys, 1), y_full, tol, "step_: outputs")
    _states_close(state, s_full, tol, "step_: final")


def check_causality(layer, x, t: int | None = None) -> None:
    """Law 3: d y[:, t] / d x[:, t+1:] == 0 (and the past does matter)."""
    x = x.detach().clone().requires_grad_(True)
    t = x.shape[1] // 2 if t is None else t
    y = layer(x)
    y[:, t].pow(2).sum().backward()
    g = x.grad
    assert g[:, t + 1 :].abs().max().item() == 0.0, "causality: output at t depends on inputs after t"
    assert g[:, : t + 1].abs().max().item() > 0.0, "causality: output at t depends on no input at all"


def check_bidirectional(layer, x, t: int | None = None) -> None:
    """A bidirectional layer's output at t depends on inputs after t."""
    x = x.detach().clone().requires_grad_(True)
    t = x.shape[1] // 2 if t is None else t
    layer(x)[:, t].pow(2).sum().backward()
    assert x.grad[:, t + 1 :].abs().max().item() > 0.0, "bidirectional: output ignores the future"


def check_grad_to_state(layer, x) -> None:
    """Law 4: gradients reach the initial state, as well as the inputs and the parameters."""
    half = x.shape[1] // 2
    with torch.no_grad():
        _, state = layer(x[:, :half], return_state=True)
    state = {
        k: (v.detach().clone().requires_grad_(True) if v.is_floating_point() or v.is_complex() else v)
        for k, v in state.items()
    }
    x2 = x[:, half:].detach().clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    y = layer(x2, state=state)
    y.pow(2).sum().backward()
    grads = {k: v.grad for k, v in state.items() if v.requires_grad}
    assert grads, "grad to state: the state has no floating-point tensor"
    for k, g in grads.items():
        assert g is not None, f"grad to state: no gradient reached state[{k!r}]"
        assert torch.isfinite(g).all(), f"grad to state: non-finite gradient in state[{k!r}]"
    assert sum(g.abs().sum().item() for g in grads.values()) > 0, "grad to state: all gradients are zero"
    assert x2.grad is not None and x2.grad.abs().sum() > 0, "grad to state: no gradient to the input"
    with_grad = [n for n, p in layer.named_parameters() if p.requires_grad and p.grad is not None]
    assert with_grad, "grad to state: no parameter received a gradient"


def check_state_plain(layer, x, tol=1e-4) -> None:
    """Law 5: the state is a dict of tensors, batch first: it can be indexed, moved, saved and loaded."""
    assert x.shape[0] >= 2, "check_state_plain needs a batch of at least 2"
    half = x.shape[1] // 2
    _, state = layer(x[:, :half], return_state=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    for k, v in state.items():
        assert v.shape[0] == x.shape[0], f"state[{k!r}] is not batch-first: {tuple(v.shape)}"
    buf = io.BytesIO()
    torch.save({k: v.detach() for k, v in state.items()}, buf)
    buf.seek(0)
    loaded = torch.load(buf)
    loaded = {k: v.to("cpu") for k, v in loaded.items()}
    y_batch = layer(x[:, half:], state=loaded)
    row = {k: v[1:2] for k, v in loaded.items()}
    y_row = layer(x[1:2, half:], state=row)
    assert_rel(y_row, y_batch[1:2], tol, "plain state: one row of the batch")


def check_laws(layer, x, tol=1e-4, causal=True) -> None:
    """All five laws (for a bidirectional layer: only that it sees the future)."""
    layer.eval()
    if not causal:
        check_bidirectional(layer, x)
        return
    with torch.no_grad():
        check_chunking(layer, x, tol=tol)
        check_stepping(layer, x, tol=tol)
        check_state_plain(layer, x, tol=tol)
    check_causality(layer, x)
    check_grad_to_state(layer, x)
