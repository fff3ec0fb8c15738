"""causal_conv1d's triton tier under Triton's interpreter: forward and backward against the oracle
(tests.ops.harness; float32 to 1e-5, bfloat16 at its own precision), packed sequences, the update."""

import pytest
import torch

from ssmkit.ops.causal_conv1d import reference
from ssmkit.ops.causal_conv1d import triton as tier
from tests.helpers import TOL, assert_rel
from tests.ops.harness import Case, check_tiers
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
    """seq_idx: no tap reaches across a boundary, forward and backward, the state's gradient included."""
    seq = torch.tensor([[0] * 3 + [1] * 12 + [2] * 8, [4] * 23])

    def make(dtype, gen):
        def r(*shape):
            return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

        kw = {"bias": r(5), "initial_state": r(2, 5, k - 1), "activation": "silu", "seq_idx": seq}
        return (r(2, 5, 23), r(5, k)), kw

    check_tiers(Case("causal_conv1d", make, name=f"seq_idx k={k}"), torch.float32, tol=1e-5,
                backends=("triton",))


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
