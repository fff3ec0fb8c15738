"""benchmarks._cells: a cell's peak memory is its own, whatever its parent holds."""

import ctypes
import sys

import pytest
import torch

from benchmarks._cells import PeakRSS, run_cell

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")


def alloc_cell(mb: int):
    """A cell whose calls hold `mb` MiB at once (touched, so resident)."""
    def run():
        x = torch.ones(mb * 2**20 // 4)
        return x.sum()
    return run


def test_peak_rss_sees_an_allocation_inside_the_block():
    # earlier tests leave freed memory resident in glibc's heap, which a new 64 MiB tensor may reuse
    # without raising the RSS: hand it back to the OS first
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)                 # glibc's; absent on musl
    if trim is not None:
        trim(0)
    with PeakRSS() as mem:
        x = torch.ones(64 * 2**20 // 4)
    assert 60 <= mem.mb <= 200, mem.mb
    del x


def test_a_cell_reports_its_own_peak_under_a_bigger_parent():
    parent = torch.ones(400 * 2**20 // 4)         # the parent holds 400 MiB; ru_maxrss would carry it over
    r = run_cell("tests.benchmarks.test_bench_cells:alloc_cell", {"mb": 64}, cap_s=120)
    assert "skipped" not in r, r
    assert 60 <= r["peak_mb"] <= 200, r
    del parent
