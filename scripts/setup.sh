#!/usr/bin/env bash
# Create .venv and install ssmkit with its dev extras. Idempotent: reinstalls only when pyproject.toml changed.
# torch==2.13.0 goes in first: on a CPU-only machine that takes the CPU build (never the multi-GB CUDA one);
# the package's own "torch>=2.1" is then already satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.ssmkit-installed
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
        "$VENV/bin/python" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
    fi
    "$VENV/bin/python" -m pip install -q -e ".[dev]"
    touch "$STAMP"
fi
