import os

import ssmkit  # noqa: F401  before torch: ssmkit asks torch's OpenMP runtime to wait passively

# isort: split
import pytest
import torch

# Two xdist workers on two cores: one thread each, or they fight.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
