"""Benchmark runner: `python -m benchmarks [NAME ...] [-- module options]`.

    .venv/bin/python -m benchmarks                      # every benchmark in SUITE, default options
    .venv/bin/python -m benchmarks ops_cpu --quick      # one benchmark; the rest of argv goes to it
    .venv/bin/python -m benchmarks --list

Each entry of SUITE names a module of this package with `main(argv)`; results files go under
benchmarks/results/ (gitignored). Add a benchmark by adding a line to SUITE.
"""

from __future__ import annotations

import importlib
import sys

SUITE = {
    "ops_cpu": "benchmarks.ops_cpu",  # fused CPU kernels vs loop, pscan, HF paths
    "model_cpu": "benchmarks.model_cpu",  # 24-layer Mamba-130M-shaped forward, HF vs our scan patched in
    "parallel_scan": "benchmarks.parallel_scan",
    "decode": "benchmarks.decode",
    "decode_paths": "benchmarks.decode_paths",  # one 130M token: whole-stack / per-block kernels / per part
    "attention_decode": "benchmarks.attention_decode",  # a KV-cache token: in place vs cat, matmuls vs SDPA
    "kernel_memory": "benchmarks.kernel_memory",  # S4D Vandermonde kernel vs the one-shot (d, n, L) einsum
    # ssmkit serve on loopback: batching, prefix cache, 1,000 sessions, SIGKILL
    "serve_load": "benchmarks.serve_load",
    "int8": "benchmarks.int8",  # int8 vs float32 weights on trained models: bits per byte, decode ms
    "llamacpp": "benchmarks.llamacpp",  # Mamba/Mamba-2 130M: ssmkit vs llama.cpp vs transformers
    "hf_families": "benchmarks.hf_families",  # transformers' SSM/hybrid families: their CPU path vs ssmkit
    "train_speed": "benchmarks.train_speed",  # small models' training step vs the FLOP floor, before/after
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help", "--list"):
        print(__doc__)
        print("benchmarks:", ", ".join(SUITE))
        return
    if argv and argv[0] in SUITE:
        importlib.import_module(SUITE[argv[0]]).main(argv[1:])
        return
    if argv:
        sys.exit(f"unknown benchmark {argv[0]!r}; choose from {', '.join(SUITE)}")
    for name, module in SUITE.items():
        print(f"\n=== {name} ===", flush=True)
        importlib.import_module(module).main([])


if __name__ == "__main__":
    main()
