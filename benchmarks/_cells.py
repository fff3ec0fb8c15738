"""Run one benchmark cell in a fresh subprocess: its time and its peak memory, with a time cap.

A cell is a Python callable named "module:function" returning a `run()` closure (inputs built,
one small warm-up done). The child process measures
    time: the median of a few calls of run() (one call if the first takes over 2 s; or a fixed
          number of calls when the caller asks),
    peak: the resident high-water mark after the calls minus the resident memory before them
          (VmHWM reset at the start where Linux allows, else ru_maxrss): what the calls needed
          beyond their inputs (tracemalloc does not see torch's allocations, the process
          high-water mark does; cells build their inputs in place so no temporary hides the peak),
and prints them as one JSON line. The parent kills a child that runs past the cap.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from ssmkit.ops import empty_cache


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakRSS:
    """`with PeakRSS() as m: ...` -> m.mb: how far the block raised this process's resident memory
    above what it held at entry (MiB).

    ru_maxrss alone is not enough: Linux carries it over fork and exec, so a child of a parent that
    once held 2.7 GB reported every smaller peak as 0. Where /proc allows (Linux), the high-water
    mark is reset to the current RSS at entry (clear_refs 5) and read back from VmHWM; elsewhere
    ru_maxrss is the fallback.
    """

    def __enter__(self):
        empty_cache()       # buffers the kernels keep from earlier calls would hide the block's own peak
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.exact = _status_kb("VmHWM") is not None
        except OSError:
            self.exact = False
        self.base = _status_kb("VmRSS") if self.exact else self._peak()
        return self

    def _peak(self) -> int:
        return _status_kb("VmHWM") if self.exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def __exit__(self, *exc):
        self.mb = max(0, self._peak() - self.base) / 1024


def measure(run, budget_s: float = 2.0, max_calls: int = 8, min_calls: int = 1) -> dict:
    times = []
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        while len(times) < max_calls:
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
            if len(times) >= min_calls and time.perf_counter() - t0 > budget_s:
                break
    return {"t": statistics.median(times), "calls": len(times), "peak_mb": mem.mb}


def run_cell(target: str, kwargs: dict, cap_s: float, calls: int | None = None,
             exact_peak: bool = True) -> dict:
    """{"t", "calls", "peak_mb"} or {"skipped": reason}; target = "module:function"; `calls`: exactly
    that many calls whatever they take (default: as many as fit in 2 s, at least 1, at most 8).

    exact_peak: a fixed mmap threshold, so glibc maps every large block and unmaps it on free and the
    resident high-water mark follows live memory (its adaptive threshold would reuse the heap left by
    earlier temporaries and hide a cell's peak). The price is a page fault per 4 KiB of every large
    temporary on every call, which no user pays: timing-first cells (a whole model) turn it off."""
    cmd = [sys.executable, "-m", "benchmarks._cells", target, json.dumps(kwargs), str(calls or 0)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072") if exact_peak else None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=cap_s, env=env)
    except subprocess.TimeoutExpired:
        return {"skipped": f"skipped (>{cap_s:.0f}s)"}
    if proc.returncode < 0:  # killed: by the kernel's OOM killer when memory ran out
        return {"skipped": f"killed by signal {-proc.returncode} (out of memory?)"}
    if proc.returncode != 0:
        lines = [x for x in proc.stderr.strip().splitlines() if not x.startswith("[transformers]")]
        return {"skipped": f"error: {(lines or ['?'])[-1][:80]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child(target: str, kwargs_json: str, calls: int) -> None:
    module, fn = target.split(":")
    run = getattr(importlib.import_module(module), fn)(**json.loads(kwargs_json))
    print(json.dumps(measure(run) if calls == 0 else measure(run, max_calls=calls, min_calls=calls)))


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
