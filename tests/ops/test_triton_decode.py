"""The fused decoding steps (ssmkit.ops._triton.decode) under Triton's interpreter: a Mamba or Mamba-2
layer built with backend="triton" steps through them, and must equal the same layer's unfused step on
the reference ops (outputs and both states), and its own forward (the stepping law, forward on the
triton tiers). When the layers take the fused path."""

import math

import pytest
import torch

from ssmkit.layers import Mamba, Mamba2
from ssmkit.ops._triton import decode
from tests.helpers import TOL, assert_rel, check_stepping
from tests.ops.interpreter import interpret  # noqa: F401  (imports Triton for the interpreter, or skips)

pytestmark = pytest.mark.usefixtures("interpret")

MAMBA2 = {
    "plain": dict(d_state=8, headdim=8, ngroups=1),
    "groups, gate, D (h, p), dt limits": dict(d_state=6, headdim=4, ngroups=2, rmsnorm=False, D_has_hdim=True,
                                             dt_limit=(0.02, 0.3)),
}


def _twins(cls, dtype=torch.float32, **kw):
    """The same layer (same weights, cast to dtype) on the reference ops and on the triton tiers."""
    ref = cls(16, backend="reference", **kw).to(dtype).eval()
    fused = cls(16, backend="triton", **kw).to(dtype).eval()
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _random_state(layer, b, gen):
    return {k: torch.randn(v.shape, generator=gen).to(v.dtype) for k, v in layer.init_state(b).items()}


def _check_step(ref, fused, dtype):
    gen = torch.Generator().manual_seed(1)
    state, tol = _random_state(ref, 3, gen), 1e-5 if dtype == torch.float32 else TOL[dtype][0]
    x = torch.randn(3, 16, generator=gen).to(dtype)
    with torch.no_grad():
        want, want_state = ref.step(x, state)
        got, got_state = fused.step(x, state)
    assert_rel(got, want, tol, "step output")
    for k in want_state:
        assert got_state[k].dtype == want_state[k].dtype, k
        assert_rel(got_state[k], want_state[k], tol, f"state[{k!r}]")


@pytest.mark.parametrize("kw", MAMBA2.values(), ids=MAMBA2.keys())
def test_mamba2_step_equals_the_unfused_step(kw):
    _check_step(*_twins(Mamba2, **kw), torch.float32)


def test_mamba_step_equals_the_unfused_step():
    _check_step(*_twins(Mamba, d_state=5), torch.float32)


@pytest.mark.parametrize("cls", [Mamba, Mamba2])
def test_bfloat16_step(cls):
    kw = MAMBA2["plain"] if cls is Mamba2 else {}
    _check_step(*_twins(cls, torch.bfloat16, **kw), torch.bfloat16)


@pytest.mark.parametrize("cls", [Mamba, Mamba2])
def test_stepping_law_on_triton(cls):
    """Forward on the triton tiers (chunked scan / SSD, conv) == token by token through the fused step."""
    kw = {"d_state": 4}
    if cls is Mamba2:
        kw = dict(MAMBA2["groups, gate, D (h, p), dt limits"], headdim=8, chunk_size=4)
    layer = cls(16, backend="triton", **kw).eval()
    with torch.no_grad():
        check_stepping(layer, torch.randn(1, 7, 16), tol=1e-5)


def test_layers_take_the_fused_path_only_on_triton():
    x = torch.randn(2, 4)
    assert decode.fused_step("ssd", "triton", x)
    assert not decode.fused_step("ssd", "auto", x)                 # "auto" picks triton for CUDA tensors only
    assert not decode.fused_step("selective_scan", "reference", x)
    assert math.isfinite(decode.selective_state_update(
        torch.zeros(2, 4, 3), x, x, -torch.ones(4, 3), torch.ones(2, 3), torch.ones(2, 3))[0].sum().item())
