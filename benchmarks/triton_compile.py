"""Compile every ssmkit Triton kernel for an H100/H200 (sm_90) without a GPU, and report what each one
needs: registers per thread, spills (local memory), shared memory.

    python -m benchmarks.triton_compile             # the training shapes of benchmarks/gpu.py
    python -m benchmarks.triton_compile --small     # tiny shapes (the test runs this)
    python -m benchmarks.triton_compile --only ssd  # the workloads whose name contains "ssd"

Triton compiles through its own LLVM and the ptxas it ships; only loading and launching need a GPU. A
stand-in driver names the target (compute capability 9.0), every launch becomes a compile-only warm-up,
and the ops run as usual on CPU tensors (their outputs are never computed: only the compiled kernels
matter). Kernels specialize on dtypes and on which integer arguments are divisible by 16, so shapes
smaller than the training ones with the same divisibility compile the same code. Registers and local
memory come from the cuobjdump shipped with Triton. Results: benchmarks/results/triton_compile.md
(and .json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from functools import partial

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("benchmarks.triton_compile compiles for a GPU: unset TRITON_INTERPRET")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

CAPABILITY = 90                                           # H100 / H200


class CompileOnlyDriver:
    """What Triton's JIT asks of a driver before it launches: the target, a device and a stream."""

    def get_current_target(self):
        return GPUTarget("cuda", CAPABILITY, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")

    def is_active(self):
        return True


def resources(kernel) -> dict:
    """Registers, stack and local memory (spills) of a compiled kernel, from its cubin."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    found = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", out))
    return {"regs": int(found["REG"]), "stack": int(found["STACK"]), "local": int(found["LOCAL"]),
            "shared": kernel.metadata.shared, "warps": kernel.metadata.num_warps}


def compiled_kernels(run) -> list:
    """(kernel name, CompiledKernel) of every launch that `run()` makes, compiled instead of launched."""
    seen, original = [], JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = original(self, *args, grid=grid, warmup=True, **kwargs)
        seen.append((self.fn.__name__, kernel))
        return kernel

    JITFunction.run = compile_only
    try:
        run()
    finally:
        JITFunction.run = original
    return seen


def workloads(small: bool):
    """(name, function) pairs that call every kernel: the ops' forward and backward, the decode steps."""
    from ssmkit.ops._triton import decode
    from ssmkit.ops.causal_conv1d import triton as conv
    from ssmkit.ops.selective_scan import triton as scan
    from ssmkit.ops.ssd import triton as ssd

    b, L = (1, 40) if small else (2, 2048)
    d, n, H, P, N, T = (16, 4, 2, 8, 8, 16) if small else (1536, 16, 24, 64, 128, 256)
    bf = partial(torch.randn, dtype=torch.bfloat16)

    def backward(out, inputs):
        out = out if isinstance(out, tuple) else (out,)
        torch.autograd.grad(sum(o.float().sum() for o in out), [t for t in inputs if t.requires_grad])

    def leaves(*tensors):
        return [t.requires_grad_() for t in tensors]

    def run_scan(channels_last):
        u = bf(b, L, d).transpose(1, 2) if channels_last else bf(b, d, L)
        ins = leaves(u, bf(b, d, L), -torch.rand(d, n), bf(b, 1, n, L), bf(b, 1, n, L), torch.randn(d),
                     bf(b, d, L), torch.randn(d), torch.randn(b, d, n))
        out = scan.selective_scan(*ins[:5], D=ins[5], z=ins[6], delta_bias=ins[7], delta_softplus=True,
                                  initial_state=ins[8], return_final_state=True)
        backward(out, ins)

    def run_ssd(dtype, seq):
        r = partial(torch.randn, dtype=dtype)
        ins = leaves(r(b, L, H, P), r(b, L, H), -torch.rand(H), r(b, L, 1, N), r(b, L, 1, N), torch.randn(H),
                     r(b, L, H, P), torch.randn(H), torch.randn(b, H, P, N))
        seq_idx = torch.zeros(b, L, dtype=torch.int32) if seq else None
        out = ssd.ssd(*ins[:5], chunk_size=T, D=ins[5], z=ins[6], dt_bias=ins[7], dt_softplus=True,
                      initial_state=ins[8], seq_idx=seq_idx, return_final_state=True)
        backward(out, ins)

    def run_conv():
        ins = leaves(bf(b, d, L), bf(d, 4), bf(d), bf(b, d, 3))
        backward(conv.causal_conv1d(ins[0], ins[1], bias=ins[2], initial_state=ins[3], activation="silu",
                                    return_final_state=True), ins)
        conv.causal_conv1d_update(bf(b, d), bf(b, d, 3), bf(d, 4), bias=bf(d), activation="silu")

    def run_decode():
        decode.selective_state_update(torch.randn(b, d, n), bf(b, d), bf(b, d), -torch.rand(d, n), bf(b, n),
                                      bf(b, n), D=torch.randn(d), z=bf(b, d), delta_bias=torch.randn(d),
                                      delta_softplus=True)
        conv_dim = H * P + 2 * N
        decode.mamba2_step(bf(b, conv_dim), bf(b, H), bf(b, conv_dim, 3), torch.randn(b, H, P, N),
                           bf(conv_dim, 4), bf(conv_dim), torch.randn(H), -torch.rand(H), torch.randn(H),
                           None, ngroups=1)

    return [("selective_scan bf16", partial(run_scan, False)),
            ("selective_scan bf16 channels-last", partial(run_scan, True)),
            ("ssd bf16", partial(run_ssd, torch.bfloat16, False)),
            ("ssd fp32 seq_idx", partial(run_ssd, torch.float32, True)),
            ("causal_conv1d bf16", run_conv),
            ("decode steps", run_decode)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="tiny shapes")
    p.add_argument("--only", default="", help="workloads whose name contains this")
    p.add_argument("--out", default="benchmarks/results/triton_compile.md")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    driver.set_active(CompileOnlyDriver())
    rows, done = [], set()
    for name, run in workloads(args.small):
        if args.only not in name:
            continue
        for kernel_name, kernel in compiled_kernels(run):
            if kernel.hash not in done:                   # the backward's rerun of a forward kernel
                done.add(kernel.hash)
                rows.append({"workload": name, "kernel": kernel_name, **resources(kernel)})
                print(rows[-1], flush=True)
    keys = list(rows[0])
    title = f"# ssmkit's Triton kernels compiled for sm_{CAPABILITY} (Triton {triton.__version__}, no GPU)"
    lines = [title, "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(rows, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
