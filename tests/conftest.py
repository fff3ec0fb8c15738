import os

# Before torch loads OpenMP: idle workers sleep instead of spinning. Test workers and the processes the
# tests start share 2 cores, where a spinning pool takes the cores the others need (a small Mamba's
# training step 0.74 s spinning vs 0.16 s passive at load ~8, measured; see README, CPU threads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# Two xdist workers on two cores: one thread each, or they fight.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
