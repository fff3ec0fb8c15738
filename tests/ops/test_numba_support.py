"""ssmkit.ops._numba, what the numba tiers share: the vectorizable exp and softplus against numpy and
torch, and the tensor -> array views and copies the kernels read. (The output buffers are tested with
the scan that needs them most, in test_parallel_scan.py.)"""

import subprocess
import sys

import numpy as np
import pytest
import torch

numba = pytest.importorskip("numba")

from ssmkit.ops import _numba  # noqa: E402
from ssmkit.ops._numba import arrays, njit, numerics, prange  # noqa: E402


def test_vexp_matches_exp():
    x = np.concatenate([np.linspace(-87, 88, 100_001), np.random.default_rng(0).normal(0, 3, 10_000)])
    x = x.astype(np.float32)
    got = numerics.exp_array(x).astype(np.float64)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - want) / want) < 4e-7  # fastmath-compiled; 1.2e-7 compiled strictly


def test_vexp2_neg_matches_exp2():
    """The scans' decay 2^x, x <= 0 (x = dt A log2(e)); below -126 it holds at 2^-126."""
    tail = -np.abs(np.random.default_rng(1).normal(0, 3, 10_000))
    x = np.concatenate([np.linspace(-126, 0, 100_001), tail])
    x = x.astype(np.float32)
    got = numerics.exp2_neg_array(x).astype(np.float64)
    want = np.exp2(x.astype(np.float64))
    assert np.max(np.abs(got - want) / want) < 4e-7
    assert numerics.exp2_neg_array(np.array([-200.0, -1e30], np.float32)).tolist() == [2.0 ** -126] * 2


def test_softplus_matches_torch():
    """The vectorizable softplus (vexp + a log1p polynomial) the inference kernel fuses in."""

    @njit(fastmath=True)
    def run(x, out):
        for i in range(x.size):
            out[i] = numerics.softplus(x[i])

    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-80, 80, 100_001), rng.normal(0, 4, 10_000),
                        -np.logspace(-8, 1.5, 2_000), np.logspace(-8, 1.5, 2_000)]).astype(np.float32)
    got = np.empty_like(x)
    run(x, got)
    want = torch.nn.functional.softplus(torch.from_numpy(x).double(), threshold=1e4).numpy()
    assert np.max(np.abs(got - want) / want) < 5e-7


def test_rows_views_every_projection_layout():
    """`rows` maps (b, d, l) tensors onto 2-D arrays without a copy where it can, and exactly."""
    proj = torch.randn(2, 9, 10)                                     # (b, l, 2d), d = 5
    for t in proj.transpose(1, 2).chunk(2, dim=1) + (torch.randn(2, 5, 9), torch.randn(2, 9, 5).mT[:, :, 2:]):
        arr, col0, cl = arrays.rows(t)
        b, d, L = t.shape
        got = (torch.from_numpy(arr[:, col0:col0 + d]).reshape(b, L, d).transpose(1, 2) if cl
               else torch.from_numpy(arr).reshape(b, d, L))
        assert torch.equal(got, t)
    assert np.shares_memory(arrays.rows(proj.transpose(1, 2)[:, 5:])[0], proj.numpy())  # the gate half


def test_as_array_copies_transposed_inputs_exactly():
    x = torch.randn(2, 37, 21).transpose(1, 2)                       # (2, 21, 37), stride 1 along 21
    a = arrays.as_array(x)
    assert a.flags["C_CONTIGUOUS"] and np.array_equal(a, x.contiguous().numpy())
    y = torch.randn(3, 4, 5)
    assert np.shares_memory(arrays.as_array(y), y.numpy())            # contiguous: a view, no copy


@njit(parallel=True)
def _thread_ids(out):
    for i in prange(out.size):
        out[i] = numba.get_thread_id()


def test_parallel_kernels_run_on_at_most_torchs_threads():
    """torch.set_num_threads is the one knob: a parallel kernel runs on min(numba's, torch's) threads,
    and numba's own setting is back after the call."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one core: numba has one thread whatever torch says")
    torch_before, numba_before = torch.get_num_threads(), numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        torch.set_num_threads(1)
        out = np.full(4096, -1, np.int64)
        _thread_ids(out)
        assert set(out.tolist()) == {0}  # the calling thread alone
        assert numba.get_num_threads() == 2 and _numba.num_threads() == 1
        assert torch.get_num_threads() == 1  # numba's OpenMP layer shares the count: put back
        torch.set_num_threads(2)
        assert _numba.num_threads() == 2
        _thread_ids(out)
        assert out.min() >= 0 and out.max() <= 1
    finally:
        torch.set_num_threads(torch_before)
        numba.set_num_threads(numba_before)


def test_a_fresh_process_keeps_torchs_thread_count():
    """The first query of numba's threads starts its pool, which resets OpenMP's thread count: torch's
    count is read before that, so `torch.set_num_threads(1)` still holds after a model's first call."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one core: numba has one thread whatever torch says")
    code = (
        "import torch\n"
        "torch.set_num_threads(1)\n"
        "from ssmkit import SSMConfig, SSMForCausalLM\n"
        "model = SSMForCausalLM(SSMConfig(d_model=16, n_layer=1, vocab_size=16, layers='mamba'))\n"
        "model(torch.randint(0, 16, (2, 32))).logits.sum().backward()\n"
        "print(torch.get_num_threads())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1", done.stdout
