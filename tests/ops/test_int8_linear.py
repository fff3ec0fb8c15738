"""ssmkit.ops.int8_linear: the numba matrix-vector kernel against the reference (the dequantized
weight and F.linear) on fresh random int8 weights, scales, inputs and biases: several shapes and
row counts, odd sizes (not multiples of the kernel's four output rows or its vector lanes), the
serial and the parallel driver, outputs poisoned with NaN first; which tier "auto" takes; errors."""

from __future__ import annotations

import subprocess
import sys

import numba
import pytest
import torch

from ssmkit.ops import _dispatch
from ssmkit.ops.int8_linear import decode_fn, int8_linear
from ssmkit.ops.int8_linear import numba as tier
from ssmkit.ops.int8_linear.reference import dequantize
from tests.helpers import assert_rel


def _inputs(lead, n_in, n_out, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, n_in, generator=g)
    weight = torch.randint(-127, 128, (n_out, n_in), generator=g, dtype=torch.int8)
    scale = torch.rand(n_out, generator=g) * 0.02 + 1e-3
    b = torch.randn(n_out, generator=g) if bias else None
    return x, weight, scale, b


@pytest.fixture(autouse=True)
def _poisoned(monkeypatch):
    monkeypatch.setenv("SSMKIT_POISON", "1")


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(
    "lead, n_in, n_out",
    [((1,), 96, 200), ((3,), 64, 7), ((2, 5), 33, 129), ((tier.MAX_ROWS,), 17, 5), ((1,), 1, 1),
     ((4,), 768, 3)],
)
def test_numba_matches_the_reference(lead, n_in, n_out, bias):
    x, weight, scale, b = _inputs(lead, n_in, n_out, bias)
    with torch.no_grad():
        fast = int8_linear(x, weight, scale, bias=b, backend="numba")
        ref = int8_linear(x, weight, scale, bias=b, backend="reference")
    assert fast.shape == (*lead, n_out)
    assert_rel(fast, ref, 1e-5, "numba vs dequantized reference")
    exact = torch.nn.functional.linear(x.double(), dequantize(weight, scale, torch.float64),
                                       None if b is None else b.double())
    assert_rel(ref.double(), exact, 1e-5, "reference vs float64")


@pytest.mark.parametrize("n_jobs", [1, 2, 3, 7])
def test_parallel_driver_matches_the_serial_one(n_jobs):
    """One contiguous range of output rows per job: the last range partial, some ranges empty."""
    x, weight, scale, b = _inputs((2,), 50, 1001, True, seed=1)
    serial, parallel = torch.full((2, 1001), float("nan")), torch.full((2, 1001), float("nan"))
    args = (x.numpy(), weight.numpy(), scale.numpy(), b.numpy())
    tier._gemv_serial(*args, serial.numpy())
    tier._gemv_parallel(*args, parallel.numpy(), n_jobs)
    torch.testing.assert_close(parallel, serial, rtol=1e-6, atol=1e-6)


def test_auto_runs_the_parallel_driver_above_its_size(monkeypatch):
    x, weight, scale, b = _inputs((3,), 70, 203, True, seed=3)
    monkeypatch.setattr(tier, "PARALLEL_ABOVE", 0)
    monkeypatch.setattr(tier, "num_threads", lambda: 2)
    with torch.no_grad():
        fast = int8_linear(x, weight, scale, bias=b, backend="numba")
    assert_rel(fast, int8_linear(x, weight, scale, bias=b, backend="reference"), 1e-5, "parallel")


def test_a_fresh_process_keeps_torchs_thread_count():
    """The kernel's first thread query (numba.num_threads, which starts numba's pool, resetting
    OpenMP's thread count) leaves torch.set_num_threads(1) in force."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one core: numba has one thread whatever torch says")
    code = (
        "import torch\n"
        "torch.set_num_threads(1)\n"
        "from ssmkit.layers.int8 import Int8Linear\n"
        "from ssmkit.ops.int8_linear import numba as tier\n"
        "tier.PARALLEL_ABOVE = 0\n"
        "with torch.no_grad():\n"
        "    Int8Linear.from_linear(torch.nn.Linear(8, 8))(torch.randn(1, 8))\n"
        "print(torch.get_num_threads())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1", done.stdout


def test_non_contiguous_input():
    x, weight, scale, b = _inputs((4,), 40, 24, True, seed=2)
    x = torch.randn(40, 4).t()  # (4, 40), stride 1 along the rows
    with torch.no_grad():
        fast = int8_linear(x, weight, scale, bias=b, backend="numba")
    assert_rel(fast, int8_linear(x, weight, scale, bias=b, backend="reference"), 1e-5, "transposed x")


def test_auto_takes_numba_for_decoding_only():
    x, weight, scale, b = _inputs((1,), 16, 8, True)
    with torch.no_grad():
        assert _dispatch.resolve("int8_linear", "auto", x, weight, scale, b).name == "numba"
        many = torch.randn(tier.MAX_ROWS + 1, 16)
        assert _dispatch.resolve("int8_linear", "auto", many, weight, scale, b).name == "reference"
    x.requires_grad_(True)
    assert _dispatch.resolve("int8_linear", "auto", x, weight, scale, b).name == "reference"
    assert _dispatch.resolve("int8_linear", "auto", x.detach().double(), weight, scale, b).name == "reference"


def test_decode_fn_is_the_tier_auto_takes(monkeypatch):
    """decode_fn (the checked-once callers' entry) hands out the numba function exactly where "auto"
    runs the numba tier, SSMKIT_BACKEND included, and that function is the tier's."""
    x, weight, scale, b = _inputs((2,), 16, 8, True)
    cases = [x, torch.randn(tier.MAX_ROWS + 1, 16), x.double(), x[0, 0]]
    with torch.no_grad():
        for xs in cases[:3]:
            auto = _dispatch.resolve("int8_linear", "auto", xs, weight, scale, b)
            assert (decode_fn(xs, b) is not None) == (auto.name == "numba"), tuple(xs.shape)
        assert decode_fn(cases[3], b) is None
        assert decode_fn(x, b) is tier.int8_linear
    assert decode_fn(x.requires_grad_(True), b) is None
    monkeypatch.setenv("SSMKIT_BACKEND", "reference")
    with torch.no_grad():
        assert decode_fn(x, b) is None


def test_gradients_flow_through_the_reference():
    x, weight, scale, b = _inputs((3,), 12, 5, True)
    x.requires_grad_(True)
    b.requires_grad_(True)
    int8_linear(x, weight, scale, bias=b).sum().backward()
    torch.testing.assert_close(x.grad, dequantize(weight, scale).sum(0).expand(3, 12))
    torch.testing.assert_close(b.grad, torch.full((5,), 3.0))


def test_bad_inputs_name_the_argument():
    x, weight, scale, _ = _inputs((2,), 12, 5, False)
    with pytest.raises(TypeError, match="weight must have dtype"):
        int8_linear(x, weight.float(), scale)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 12\)"):
        int8_linear(x[:, :7], weight, scale)
    with pytest.raises(ValueError, match="scale must have shape"):
        int8_linear(x, weight, scale[:4])
    with pytest.raises(ValueError, match="bias must have shape"):
        int8_linear(x, weight, scale, bias=torch.zeros(6))
