"""ssd's triton tier under Triton's interpreter against the recurrence (tests.ops.harness): outputs,
final states and every gradient, the initial state's included; float32 to 1e-5, bfloat16 at its own
precision. Chunks cut short, groups, D (h,) and (h, p), dt limits, packed sequences, no softplus."""

import pytest
import torch

from tests.ops.harness import check_tiers
from tests.ops.interpreter import interpret  # noqa: F401  (imports Triton for the interpreter, or skips)
from tests.ops.test_ssd import _case

pytestmark = pytest.mark.usefixtures("interpret")

SEQ = torch.tensor([[0] * 5 + [1] * 8 + [2] * 8, [3] * 16 + [4] * 5])       # resets in and on a chunk edge

CASES = [
    _case(2, 21, 4, 8, 6, 2, chunk=8, seq_idx=SEQ, limit=(0.05, 2.0)),
    _case(1, 16, 2, 4, 4, 1, chunk=16, D_hdim=True),              # one chunk exactly
    _case(1, 20, 2, 4, 4, 2, chunk=8, softplus=False),            # negative dt clamps to 0
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_the_oracle_float32(case):
    check_tiers(case, torch.float32, tol=1e-5, backends=("triton",))


def test_matches_the_oracle_bfloat16():
    check_tiers(_case(1, 20, 2, 8, 6, 1, chunk=8), torch.bfloat16, backends=("triton",))
