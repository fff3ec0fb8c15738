"""parallel_scan: every tier against the sequential loop (tests.ops.harness: outputs, final state,
gradients to a, b and the initial state; real and complex; broadcast a), the numba tier's thread
blocks and reused output buffers, gradcheck, errors."""

import importlib.util

import pytest
import torch

from ssmkit.ops import parallel_scan
from ssmkit.ops.parallel_scan import chunked, reference
from tests.helpers import assert_rel
from tests.ops.harness import Case, check_tiers

HAS_NUMBA = importlib.util.find_spec("numba") is not None
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
    h, h_last = fn(a, b, initial_state=s, return_final_state=True)
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(h.shape, dtype=h.dtype, generator=gen)
    w_last = torch.randn(h_last.shape, dtype=h.dtype, generator=gen)
    loss = (h * w.conj()).real.sum() + (h_last * w_last.conj()).real.sum()
    wrt = [t for t in (a, b, s) if t is not None]
    return (h, h_last, *torch.autograd.grad(loss, wrt))


def _case(a_shape, b_shape, h0=True):
    def make(dtype, gen):
        real = torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32
        a = torch.rand(a_shape, generator=gen, dtype=real) * 0.9 + 0.05          # |a| < 1: stable
        if dtype.is_complex:
            a = a * torch.exp(1j * torch.randn(a_shape, generator=gen, dtype=real))
        a = a.to(dtype)
        b = torch.randn(b_shape, generator=gen, dtype=dtype)
        s = torch.randn(b_shape[:1] + b_shape[2:], generator=gen, dtype=dtype) if h0 else None
        return (a, b), {"initial_state": s}

    return Case("parallel_scan", make, name=f"a={a_shape} b={b_shape} h0={h0}")


CASES = [_case((2, 75, 3, 5), (2, 75, 3, 5)), _case((1, 1, 3, 5), (2, 75, 3, 5)),
         _case((2, 1, 1, 5), (2, 75, 3, 5), h0=False), _case((3, 33, 7), (3, 33, 7))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64, torch.float64, torch.complex128])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_every_tier_matches_the_oracle(case, dtype):
    checked = check_tiers(case, dtype, tol=TOL[dtype])
    assert set(checked) >= {"reference", "chunked"} | ({"numba"} if HAS_NUMBA else set())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_on_the_pytorch_tiers(dtype):
    assert set(check_tiers(_case((2, 40, 3), (2, 40, 3)), dtype)) >= {"reference", "chunked"}


@pytest.mark.parametrize("chunk", [1, 2, 16, 75, 100])
def test_chunked_with_any_chunk_matches_the_loop(chunk):
    a, b, s = _inputs(torch.float64, (2, 75, 3), (2, 75, 3))
    want = _run(reference.parallel_scan, a, b, s)
    got = _run(lambda a, b, **kw: chunked.parallel_scan(a, b, chunk=chunk, **kw), a, b, s)
    for n, x, y in zip(["h", "h_last", "grad a", "grad b", "grad initial_state"], got, want):
        assert_rel(x, y, 1e-12, f"chunk={chunk} {n}")


@pytest.mark.parametrize("batch", [1, 3])
def test_numba_blocks_split_across_threads(batch):
    """Several threads split M into wide blocks (the last one short), and outputs of 4 MiB or more
    are advised onto huge pages: both still match the loop."""
    if not HAS_NUMBA:
        pytest.skip("numba is not installed")
    import numba

    from ssmkit.ops.parallel_scan import numba as tier

    before, torch_before = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(2)  # the kernels run on at most torch's threads
    try:
        for M, L in ((601, 9), (1 << 16, 64 // batch)):                # 601: blocks 301 + 300
            a, b, s = _inputs(torch.float32, (batch, L, M), (batch, L, M))
            want = _run(reference.parallel_scan, a, b, s)
            got = _run(tier.parallel_scan, a, b, s)
            for n, x, y in zip(["h", "h_last", "grad a", "grad b", "grad initial_state"], got, want):
                assert_rel(x, y, TOL[torch.float32], f"M={M} {n}")
    finally:
        numba.set_num_threads(before)
        torch.set_num_threads(torch_before)


def test_out_tensor_is_a_plain_empty_tensor(monkeypatch):
    from ssmkit.ops._numba.buffers import out_tensor

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
    from ssmkit.ops import empty_cache
    from ssmkit.ops._numba import buffers as _numba

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


def test_numba_outputs_from_reused_buffers_leave_earlier_outputs_alone(monkeypatch):
    """A second call takes the buffers freed by a first one, and only those: outputs still held
    (h of the first call) keep their values, and the results match the loop with every buffer
    NaN-poisoned."""
    if not HAS_NUMBA:
        pytest.skip("numba is not installed")
    from ssmkit.ops import empty_cache
    from ssmkit.ops.parallel_scan import numba as tier

    monkeypatch.setenv("SSMKIT_POISON", "1")
    empty_cache()
    shape = (1, 64, 1 << 16)                                        # 16 MiB: cached outputs
    a, b, s = _inputs(torch.float32, shape, shape)
    kept = _run(tier.parallel_scan, a, b, s)[0]
    copy = kept.clone()
    for _ in range(2):                                              # the 2nd reuses the 1st's buffers
        a, b, s = _inputs(torch.float32, shape, shape)
        want = _run(reference.parallel_scan, a, b, s)
        got = _run(tier.parallel_scan, a, b, s)
        for n, x, y in zip(["h", "h_last", "grad a", "grad b", "grad initial_state"], got, want):
            assert_rel(x, y, TOL[torch.float32], n)
        del got
    assert torch.equal(kept, copy)
    empty_cache()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_auto_takes_the_loop_up_to_chunk_and_chunks_beyond(monkeypatch):
    """Where numba cannot run (float16), "auto" runs the loop on inputs of at most chunked.CHUNK steps
    and the chunked scan on longer ones."""
    loops = []
    loop = reference.parallel_scan
    monkeypatch.setattr(reference, "parallel_scan", lambda *a, **k: loops.append(1) or loop(*a, **k))
    for L, ran_loop in ((chunked.CHUNK, True), (chunked.CHUNK + 1, False)):
        a, b, _ = _inputs(torch.float32, (2, L, 4), (2, L, 4), h0=False)
        loops.clear()
        got = parallel_scan(a.half(), b.half())
        assert bool(loops) == ran_loop, f"L={L}: the loop ran {len(loops)} times"
        assert_rel(got, loop(a.half(), b.half()), 3e-3, f"L={L}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("backend", ["reference", "chunked", "numba"])
def test_gradcheck(dtype, backend):
    if backend == "numba" and not HAS_NUMBA:
        pytest.skip("numba is not installed")

    def fn(a, b, s):
        return parallel_scan(a, b, initial_state=s, return_final_state=True, backend=backend)

    a, b, s = _inputs(dtype, (2, 5, 3), (2, 5, 3))
    assert torch.autograd.gradcheck(fn, (a, b, s))
    a1, b1, s1 = _inputs(dtype, (1, 1, 3), (2, 5, 3))
    assert torch.autograd.gradcheck(lambda a, b, s: fn(a, b, s)[0], (a1, b1, s1))


def test_no_initial_state_equals_zeros():
    a, b, _ = _inputs(torch.float32, (2, 20, 4), (2, 20, 4), h0=False)
    h = parallel_scan(a, b)
    h0 = parallel_scan(a, b, initial_state=torch.zeros(2, 4))
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
        parallel_scan(torch.rand(2, 10, 4), b, initial_state=torch.zeros(2, 10))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        parallel_scan(torch.rand(4), torch.randn(4))
    with pytest.raises(RuntimeError, match=r"backend='cpu' \(numba\) cannot run these inputs: .*float16"):
        parallel_scan(torch.rand(2, 10, 4).half(), b.half(), backend="cpu")
    with pytest.raises(TypeError, match="positional"):
        parallel_scan(torch.rand(2, 10, 4), b, None)                 # initial_state is keyword-only
