"""The diagonal (S4D) Vandermonde kernel: time and peak memory of ssmkit.math.kernels.vandermonde_kernel
against the one-shot einsum that builds the (d, n, L) Vandermonde matrix, side by side in one run; and
every fast kernel's error against the dense reference.

    .venv/bin/python -m benchmarks.kernel_memory            # d=256, n=64, L=16384, complex64
    .venv/bin/python -m benchmarks.kernel_memory --quick    # small shapes, a smoke run

Each cell runs in a fresh subprocess (benchmarks/_cells.py: median time, growth of peak resident
memory over the inputs, fixed glibc mmap threshold so freed blocks do not hide or inflate a peak).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._cells import run_cell

PATHS = ("ssmkit", "one-shot einsum")


def cell(path: str, d: int, n: int, L: int, backward: bool):
    """A run() closure for one path (built in the child process)."""
    from ssmkit.math.kernels import vandermonde_kernel

    g = torch.Generator().manual_seed(0)
    dtA = torch.complex(torch.rand(d, n, generator=g).mul_(-0.1), torch.randn(d, n, generator=g))
    BC = torch.randn(d, n, dtype=torch.complex64, generator=g)
    dtA.requires_grad_(backward)
    BC.requires_grad_(backward)

    def kernel(dtA, BC, L):
        if path == "ssmkit":
            return vandermonde_kernel(dtA, BC, L, conj_sym=True)
        l = torch.arange(L, dtype=torch.float32)
        return 2 * torch.einsum("dn,dnl->dl", BC, torch.exp(dtA[..., None] * l)).real

    def run(d=d, L=L):
        K = kernel(dtA[:d], BC[:d], L)
        if backward:
            K.square().sum().backward()
            dtA.grad = BC.grad = None

    run(1, 64)  # a small warm-up: the measured peak is the full call's
    return run


def kernel_errors() -> list[tuple[str, str, float]]:
    """Max relative error (over channels) of each fast kernel vs dense_kernel, float64, N=16, L=64."""
    import torch

    from ssmkit.math import discretize
    from ssmkit.math.hippo import MEASURES, dplr
    from ssmkit.math.kernels import c_from_c_tilde, dense_kernel, diag_kernel, dplr_kernel, dplr_to_dense

    g = torch.Generator().manual_seed(0)
    dt = torch.logspace(-3, -0.5, 4, dtype=torch.float64)
    N, L, rows = 16, 64, []

    def rel(a, b):
        return ((a - b).abs().amax(-1) / b.abs().amax(-1)).max().item()

    for m in MEASURES:
        r = 2 if m == "legt" else 1
        Lambda, P, B, _ = dplr(m, N, rank=r)
        Lambda = torch.complex(Lambda.real.clamp(max=-1e-4), Lambda.imag)   # as the S4 layer keeps it
        C = torch.randn(4, N // 2, dtype=torch.complex128, generator=g)
        for disc in ("zoh", "bilinear"):
            K = diag_kernel(Lambda, B, C, dt, L, discretization=disc, conj_sym=True)
            Ad, Bd = getattr(discretize, disc)(Lambda.expand(4, -1), B, dt, diagonal=True)
            ref = 2 * dense_kernel(torch.diag_embed(Ad), Bd, C, L).real
            rows.append((m, f"vandermonde/{disc}", rel(K, ref)))
        Lp, Pp, Bp = Lambda[None], P[:, None], B.expand(4, -1)
        K = dplr_kernel(Lp, Pp, Bp, C, dt, L)
        Ad, Bd, Ct = dplr_to_dense(Lp, Pp, Bp, C, dt)
        rows.append((m, "dplr/bilinear", rel(K, dense_kernel(Ad, Bd, c_from_c_tilde(Ct, Ad, L), L).real)))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes")
    ap.add_argument("--cap", type=float, default=300.0, help="seconds before a cell is skipped")
    args = ap.parse_args(argv)
    d, n, L = (16, 16, 1024) if args.quick else (256, 64, 16384)
    naive = d * n * L * 8
    print(f"vandermonde kernel, d={d} n={n} L={L}, complex64, conj_sym (float32 kernel)")
    print(f"naive (d, n, L) complex64 Vandermonde tensor {naive / 2**20:.1f} MiB; kernel (d, L) float32 "
          f"{d * L * 4 / 2**20:.1f} MiB")
    print(f"{'pass':20s} {'path':16s} {'time s':>9s} {'peak MiB':>10s} {'peak/naive':>11s} "
          f"{'time vs einsum':>15s}")
    for backward in (False, True):
        rows = {p: run_cell("benchmarks.kernel_memory:cell", dict(path=p, d=d, n=n, L=L, backward=backward),
                            args.cap) for p in PATHS}
        ref = rows["one-shot einsum"].get("t")
        for p, r in rows.items():
            what = "forward + backward" if backward else "forward"
            if "skipped" in r:
                print(f"{what:20s} {p:16s} {r['skipped']}")
                continue
            ratio = f"{ref / r['t']:14.1f}x" if ref else "-"
            share = r["peak_mb"] * 2**20 / naive
            print(f"{what:20s} {p:16s} {r['t']:9.3f} {r['peak_mb']:10.1f} {share:10.1%} {ratio:>15s}")
    print("\nmax relative error vs dense_kernel (float64, N=16, L=64, 4 step sizes 1e-3..0.3):")
    for m, kind, err in kernel_errors():
        print(f"  {m:5s} {kind:22s} {err:.2e}")


if __name__ == "__main__":
    main()
