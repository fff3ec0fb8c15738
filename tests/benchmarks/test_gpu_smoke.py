"""benchmarks/gpu.py end to end at tiny shapes (--smoke): on CPU through Triton's interpreter, every
section runs and every ssmkit row produces a time."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# not imported here: Triton must first be imported with TRITON_INTERPRET=1 (tests/ops/interpreter.py)
pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (pip install 'ssmkit[triton]')")

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_benchmark_smoke(tmp_path):
    out = tmp_path / "gpu_smoke.md"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SSMKIT_BACKEND")}
    run = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--smoke", "--out", str(out)], cwd=ROOT,
                         env={**env, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["environment"]["interpreter"] is True
    rows = result["rows"]
    assert {r["section"] for r in rows} == {"copy", "scan", "ssd", "conv", "step", "train", "decode"}
    for r in rows:
        if r["impl"].startswith("ssmkit"):
            assert r["ms"] is not None and r["ms"] > 0, r
    assert "| section |" in out.read_text()
