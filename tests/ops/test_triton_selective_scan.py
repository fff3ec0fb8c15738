"""selective_scan's triton tier under Triton's interpreter against the sequential oracle
(tests.ops.harness): outputs, final states and every gradient, the initial state's included; float32
to 1e-5, bfloat16 at its own precision. Lengths off the chunk grid (32), groups, every input layout."""

import pytest
import torch

from tests.ops.harness import check_tiers
from tests.ops.interpreter import interpret  # noqa: F401  (imports Triton for the interpreter, or skips)
from tests.ops.test_selective_scan import _case

pytestmark = pytest.mark.usefixtures("interpret")

CASES = [
    _case(2, 4, 37, 3, 0),                                    # B, C (b, n, l); two chunks, the last partial
    _case(2, 8, 20, 5, 2, layout="channels_last"),            # groups; channels-last u, delta, z
    _case(1, 6, 33, 4, 3, full=False, softplus=False),        # nothing optional; one channel per program
    _case(1, 4, 10, 2, 1, layout="slice"),                    # u, delta, z read from a wider projection
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_the_oracle_float32(case):
    check_tiers(case, torch.float32, tol=1e-5, backends=("triton",))


def test_matches_the_oracle_bfloat16():
    check_tiers(_case(2, 4, 37, 3, 1), torch.bfloat16, backends=("triton",))
