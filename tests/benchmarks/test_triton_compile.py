"""Every Triton kernel compiles for an H100/H200 (sm_90) on this machine without a GPU
(benchmarks/triton_compile.py, tiny shapes): what the interpreter cannot check (types a compiled
kernel must keep, tl.dot's shapes, resources) is checked here."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (pip install 'ssmkit[triton]')")

ROOT = Path(__file__).resolve().parents[2]
KERNELS = {"scan_fwd", "scan_bwd", "dt_cumsum", "chunk_cb", "chunk_outer", "state_pass", "chunk_scan",
           "state_pass_bwd", "chunk_dx", "chunk_dcb", "chunk_dbc", "conv_fwd", "conv_bwd", "conv_update",
           "selective_state_update", "mamba2_step"}


def test_every_kernel_compiles_for_sm90(tmp_path):
    out = tmp_path / "compile.md"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "benchmarks.triton_compile", "--small", "--out", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    rows = json.loads(out.with_suffix(".json").read_text())
    assert {r["kernel"] for r in rows} == KERNELS
    for r in rows:
        assert 0 < r["regs"] <= 255 and r["shared"] < 228 * 1024, r
