"""parallel_scan: the chunked scan and the numba kernels against the sequential loop (outputs, final
state, gradients to a, b and the initial state; real and complex; broadcast a), gradcheck, errors."""

import pytest
import torch

from ssmkit.ops import parallel_scan
from ssmkit.ops._dispatch import unsupported_reason
from ssmkit.ops.parallel_scan import chunked, cpu, reference
from tests.helpers import assert_rel

HAS_CPU = unsupported_reason("parallel_scan", "cpu", torch.zeros(1)) is None
TOL = {torch.float32: 1e-5, torch.complex64: 1e-5, torch.float64: 1e-12, torch.complex128: 1e-12}


def _inputs(dtype, a_shape, b_shape, h0=True):
    real = torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32
    a = torch.rand(a_shape, dtype=real) * 0.9 + 0.05             # |a| < 1: a stable recurrence
    if dtype.is_complex:
        a = a * torch.exp(1j * torch.randn(a_shape, dtype=real))
    b = torch.randn(b_shape, dtype=dtype)
    s = torch.randn(b_shape[:1] + b_shape[2:], dtype=dtype) if h0 else None
    return [t.requires_grad_(True) if t is not None else None for t in (a, b, s)]


def _run(fn, a, b, s):
    h, h_last = fn(a, b, s)
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(h.shape, dtype=h.dtype, generator=gen)
    w_last = torch.randn(h_last.shape, dtype=h.dtype, generator=gen)
    loss = (h * w.conj()).real.sum() + (h_last * w_last.conj()).real.sum()
    wrt = [t for t in (a, b, s) if t is not None]
    return (h, h_last, *torch.autograd.grad(loss, wrt))


PATHS = {
    "chunked": lambda a, b, s: chunked.parallel_scan(a, b, s, chunk=16),
    "cpu": cpu.parallel_scan,
    "public": lambda a, b, s: parallel_scan(a, b, s, return_final_state=True),
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64, torch.float64, torch.complex128])
@pytest.mark.parametrize(
    "a_shape,b_shape,h0",
    [((2, 75, 3, 5), (2, 75, 3, 5), True), ((1, 1, 3, 5), (2, 75, 3, 5), True),
     ((2, 1, 1, 5), (2, 75, 3, 5), False), ((3, 33, 7), (3, 33, 7), True)],
)
def test_matches_loop(path, dtype, a_shape, b_shape, h0):
    if path == "cpu" and not HAS_CPU:
        pytest.skip("numba missing")
    a, b, s = _inputs(dtype, a_shape, b_shape, h0)
    want = _run(reference.parallel_scan, a, b, s)
    got = _run(PATHS[path], a, b, s)
    names = ["h", "h_last", "grad a", "grad b", "grad initial_state"]
    for n, x, y in zip(names, got, want):
        assert_rel(x, y, TOL[dtype], f"{path} {n}")


@pytest.mark.parametrize("batch", [1, 3])
def test_cpu_blocks_split_across_threads(batch):
    """Several threads split M into wide blocks (the last one short), and outputs of 4 MiB or more
    are advised onto huge pages: both still match the loop."""
    if not HAS_CPU:
        pytest.skip("numba missing")
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        for M, L in ((601, 9), (1 << 16, 64 // batch)):                # 601: blocks 301 + 300
            a, b, s = _inputs(torch.float32, (batch, L, M), (batch, L, M))
            want = _run(reference.parallel_scan, a, b, s)
            got = _run(cpu.parallel_scan, a, b, s)
            for n, x, y in zip(["h", "h_last", "grad a", "grad b", "grad initial_state"], got, want):
                assert_rel(x, y, TOL[torch.float32], f"M={M} {n}")
    finally:
        numba.set_num_threads(before)


def test_out_tensor_is_a_plain_empty_tensor(monkeypatch):
    from ssmkit.ops._numba import out_tensor

    monkeypatch.setenv("SSMKIT_POISON", "1")
    t = out_tensor((5, 1 << 20), torch.complex64)                    # 40 MiB: advised onto huge pages
    assert t.shape == (5, 1 << 20) and t.dtype == torch.complex64 and t.is_contiguous()
    assert torch.isnan(t).all()
    t.fill_(2)
    assert (t == 2).all()


def test_out_tensor_reuses_a_buffer_only_once_it_is_free(monkeypatch):
    """Outputs of 16 MiB or more come from a cache of freed buffers: never one still referenced by a
    tensor, a view or a numpy array; idle ones stay within SSMKIT_CPU_CACHE_MB and empty_cache()
    releases them."""
    from ssmkit.ops import _numba, empty_cache

    monkeypatch.delenv("SSMKIT_CPU_CACHE_MB", raising=False)
    empty_cache()
    shape = (4, 1 << 20)                                            # 16 MiB of float32
    t = _numba.out_tensor(shape)
    ptr = t.data_ptr()
    view, arr = t[1:3], t.numpy()
    del t
    live = [_numba.out_tensor(shape)]
    assert live[0].data_ptr() != ptr                                # the first is still referenced
    del view
    live.append(_numba.out_tensor(shape))
    assert live[1].data_ptr() != ptr                                # the numpy array holds it
    del arr
    assert _numba._cache.idle_bytes() == 16 << 20
    t = _numba.out_tensor((2, 1 << 20), torch.complex64)            # same size, another dtype: reused
    assert t.data_ptr() == ptr and t.dtype == torch.complex64 and t.shape == (2, 1 << 20)
    assert _numba._cache.idle_bytes() == 0
    del t, live
    assert _numba._cache.idle_bytes() == 3 * (16 << 20)
    monkeypatch.setenv("SSMKIT_CPU_CACHE_MB", "40")                 # two of 16 MiB fit, not three
    _numba.out_tensor(shape)
    assert _numba._cache.idle_bytes() == 2 * (16 << 20)
    empty_cache()
    assert _numba._cache.idle_bytes() == 0
    monkeypatch.setenv("SSMKIT_CPU_CACHE_MB", "0")                  # off: plain torch.empty
    _numba.out_tensor(shape)
    assert _numba._cache.idle_bytes() == 0
    monkeypatch.setenv("SSMKIT_CPU_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="SSMKIT_CPU_CACHE_MB must be a number of MiB, got 'lots'"):
        _numba.out_tensor(shape)


def test_cpu_outputs_from_reused_buffers_leave_earlier_outputs_alone(monkeypatch):
    """A second call takes the buffers freed by a first one, and only those: outputs still held
    (h of the first call) keep their values, and the results match the loop with every buffer
    NaN-poisoned."""
    if not HAS_CPU:
        pytest.skip("numba missing")
    from ssmkit.ops import empty_cache

    monkeypatch.setenv("SSMKIT_POISON", "1")
    empty_cache()
    shape = (1, 64, 1 << 16)                                        # 16 MiB: cached outputs
    a, b, s = _inputs(torch.float32, shape, shape)
    kept = _run(cpu.parallel_scan, a, b, s)[0]
    copy = kept.clone()
    for _ in range(2):                                              # the 2nd reuses the 1st's buffers
        a, b, s = _inputs(torch.float32, shape, shape)
        want = _run(reference.parallel_scan, a, b, s)
        got = _run(cpu.parallel_scan, a, b, s)
        for n, x, y in zip(["h", "h_last", "grad a", "grad b", "grad initial_state"], got, want):
            assert_rel(x, y, TOL[torch.float32], n)
        del got
    assert torch.equal(kept, copy)
    empty_cache()


def test_reference_backend_long_input_is_chunked_and_exact():
    a, b, s = _inputs(torch.float64, (2, 300, 4), (2, 300, 4))
    want = _run(reference.parallel_scan, a, b, s)
    got = _run(lambda a, b, s: parallel_scan(a, b, s, return_final_state=True, backend="reference"), a, b, s)
    for x, y in zip(got, want):
        assert_rel(x, y, 1e-12, "reference backend")


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("path", ["reference", "chunked", "cpu"])
def test_gradcheck(dtype, path):
    if path == "cpu" and not HAS_CPU:
        pytest.skip("numba missing")
    fn = {
        "reference": reference.parallel_scan,
        "chunked": lambda a, b, s: chunked.parallel_scan(a, b, s, chunk=2),
        "cpu": cpu.parallel_scan,
    }[path]
    a, b, s = _inputs(dtype, (2, 5, 3), (2, 5, 3))
    assert torch.autograd.gradcheck(lambda a, b, s: fn(a, b, s), (a, b, s))
    a1, b1, s1 = _inputs(dtype, (1, 1, 3), (2, 5, 3))
    assert torch.autograd.gradcheck(lambda a, b, s: fn(a, b, s)[0], (a1, b1, s1))


def test_no_initial_state_equals_zeros():
    a, b, _ = _inputs(torch.float32, (2, 20, 4), (2, 20, 4), h0=False)
    h = parallel_scan(a, b)
    h0 = parallel_scan(a, b, torch.zeros(2, 4))
    assert torch.equal(h, h0)


def test_errors():
    b = torch.randn(2, 10, 4)
    with pytest.raises(ValueError, match="a must broadcast"):
        parallel_scan(torch.rand(2, 3, 4), b)
    with pytest.raises(ValueError, match="a must have 3 dimensions"):
        parallel_scan(torch.rand(10, 4), b)
    with pytest.raises(TypeError, match="a must have dtype"):
        parallel_scan(torch.rand(2, 10, 4, dtype=torch.float64), b)
    with pytest.raises(ValueError, match=r"initial_state must have shape \(2, 4\)"):
        parallel_scan(torch.rand(2, 10, 4), b, torch.zeros(2, 10))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        parallel_scan(torch.rand(4), torch.randn(4))
    with pytest.raises(RuntimeError, match="backend='cpu' cannot run"):
        parallel_scan(torch.rand(2, 10, 4).half(), b.half(), backend="cpu")
