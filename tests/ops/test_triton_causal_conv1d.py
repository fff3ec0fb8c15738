"""causal_conv1d's triton tier under Triton's interpreter: forward and backward against the oracle
(tests.ops.harness; float32 to 1e-5, bfloat16 at its own precision), packed sequences, the update."""

import pytest
import torch

from ssmkit.ops.causal_conv1d import reference
from ssmkit.ops.causal_conv1d import triton as tier
from tests.helpers import TOL, assert_rel
from tests.ops.harness import check_tiers
from tests.ops.interpreter import interpret  # noqa: F401  (imports Triton for the interpreter, or skips)
from tests.ops.test_causal_conv1d import _case

pytestmark = pytest.mark.usefixtures("interpret")

CASES = [
    _case(2, 5, 70, 4),                                           # two position blocks, state, bias, silu
    _case(2, 5, 19, 3, activation=None, state=False),
    _case(2, 20, 19, 2, bias=False, layout="transposed"),         # two channel blocks, read in place
    _case(2, 3, 2, 4),                                            # l < k - 1: the state's tail survives
    _case(2, 5, 13, 1),                                           # no state at all: (b, d, 0)
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_the_oracle_float32(case):
    check_tiers(case, torch.float32, tol=1e-5, backends=("triton",))


def test_matches_the_oracle_bfloat16():
    check_tiers(_case(2, 5, 70, 4), torch.bfloat16, backends=("triton",))


@pytest.mark.parametrize("k", [2, 4])
def test_packed_sequences(k):
    """seq_idx: no tap reaches across a boundary, forward and backward (the tier called directly: the
    public op sends seq_idx to the reference)."""
    b, d, L = 2, 5, 23
    seq = torch.tensor([[0] * 3 + [1] * 12 + [2] * 8, [4] * 23])
    g = torch.Generator().manual_seed(k)
    shapes = ((b, d, L), (d, k), (d,), (b, d, k - 1))
    x, w, bias, s0 = (torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes)
    dy, ds = torch.randn(b, d, L, dtype=torch.float64), torch.randn(b, d, k - 1, dtype=torch.float64)
    results = []
    for fn, dtype in ((reference.causal_conv1d, torch.float64), (tier.causal_conv1d, torch.float32)):
        leaves = [t.to(dtype).requires_grad_() for t in (x, w, bias, s0)]
        y, final = fn(leaves[0], leaves[1], bias=leaves[2], initial_state=leaves[3], activation="silu",
                      return_final_state=True, seq_idx=seq)
        grads = torch.autograd.grad((y * dy.to(dtype)).sum() + (final * ds.to(dtype)).sum(), leaves)
        results.append((y, final, *grads))
    for name, got, want in zip(("y", "final", "dx", "dw", "dbias", "dstate"), results[1], results[0]):
        assert_rel(got, want, 1e-5, f"seq_idx k={k} {name}")


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_update_matches_the_oracle(k, dtype):
    g = torch.Generator().manual_seed(k)
    shapes = ((3, 300), (3, 300, k - 1), (300, k), (300,))
    x, state, w, bias = (torch.randn(*s, generator=g).to(dtype) for s in shapes)
    want = reference.causal_conv1d_update(x, state, w, bias=bias, activation="silu")
    got = tier.causal_conv1d_update(x, state, w, bias=bias, activation="silu")
    tol = 1e-5 if dtype == torch.float32 else TOL[dtype][0]
    for what, a, e in zip(("y", "state"), got, want):
        assert a.dtype == e.dtype
        assert_rel(a, e, tol, f"update k={k} {what}")
