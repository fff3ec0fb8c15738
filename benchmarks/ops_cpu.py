"""CPU ops, side by side in one run: ssmkit's numba kernels against the sequential reference loop,
mamba.py's pscan and Hugging Face's CPU paths, forward and forward+backward, with peak memory and
the machine's own ceilings (fp32 matmul GFLOP/s, torch.exp G/s) measured in the same run.

    .venv/bin/python -m benchmarks ops_cpu            # b in {1, 8}, l in {512, 2048, 8192}
    .venv/bin/python -m benchmarks ops_cpu --quick    # b=1, l=2048 only
    options: --cap SECONDS (per cell, default 60), --out PATH (default benchmarks/results/ops_cpu.md),
             --paths a,b (only these peers beside ssmkit numba), --before COMMIT (adds "ssmkit before":
             ssmkit numba on ssmkit's src/ at COMMIT, in the same run, cell by cell)

Mamba-1 (selective scan, d=1536, n=16, float32, delta_softplus, D, z gate):
    ssmkit numba ssmkit.ops.selective_scan.numba (fused numba scan)
    loop         ssmkit.ops.selective_scan.reference (the sequential oracle)
    hf loop      transformers' mamba_selective_scan CPU fallback (a Python loop over the sequence)
    pscan        the same HF function with use_mambapy=True: mamba.py's pscan on (b, l, d, n) tensors
Mamba-2 (SSD, h=24, p=64, n=128, g=1, dt_softplus, D):
    ssmkit numba ssmkit.ops.ssd.numba (fused numba recurrence)
    loop         ssmkit.ops.ssd.reference (the sequential oracle)
    hf chunked   transformers' mamba2_chunk_scan torch path (chunk 256), the Mamba2Mixer torch_forward scan
Every cell runs in its own subprocess (time = median of up to 8 calls within 2 s, peak = the process's
resident high-water mark added by the calls); a cell over --cap seconds prints "skipped (>Ns)".
Cells run under glibc's default allocator settings, as a user's process does (exact_peak=False in
benchmarks/_cells.py): a fixed mmap threshold made every path page-fault all its temporaries on
every call, which slowed the sequential loop 5x (27 s instead of 5.4 s at b=1, l=2048) and
flattered every ratio against it. The peak then includes what glibc keeps of freed blocks.
Ratios are peer time / ssmkit numba time (higher = ssmkit faster) and peer memory / ssmkit memory.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from benchmarks._cells import run_cell

D_MODEL1, N1 = 1536, 16
H2, P2, N2 = 24, 64, 128
MAMBA1_PATHS = ("ssmkit numba", "loop", "hf loop", "pscan")
MAMBA2_PATHS = ("ssmkit numba", "loop", "hf chunked")
_HERE = "benchmarks.ops_cpu"  # the child processes import the cells from here


# ---- cell builders (run in the child process) -------------------------------------------------

def _mamba1_inputs(b, L, grad):
    g = torch.Generator().manual_seed(0)
    d, n = D_MODEL1, N1
    t = {
        "u": torch.randn(b, d, L, generator=g),
        "delta": torch.randn(b, d, L, generator=g).mul_(0.5).sub_(2.0),  # in place: no temporaries
        "A": torch.rand(d, n, generator=g).exp_().neg_(),
        "B": torch.randn(b, n, L, generator=g),
        "C": torch.randn(b, n, L, generator=g),
        "D": torch.randn(d, generator=g),
        "z": torch.randn(b, d, L, generator=g),
        "delta_bias": torch.randn(d, generator=g).mul_(0.1),
    }
    for v in t.values():
        v.requires_grad_(grad)
    return t


def mamba1_cell(path: str, b: int, L: int, backward: bool):
    def make(L):
        t = _mamba1_inputs(b, L, backward)
        if path in ("ssmkit numba", "loop"):
            from ssmkit.ops.selective_scan import numba, reference

            tier = numba if path == "ssmkit numba" else reference

            def fwd():
                B, C = t["B"][:, None], t["C"][:, None]  # (b, 1, n, l): one group
                return tier.selective_scan(t["u"], t["delta"], t["A"], B, C, D=t["D"], z=t["z"],
                                           delta_bias=t["delta_bias"], delta_softplus=True)
        else:
            from transformers.models.mamba import modeling_mamba as hf

            def fwd():
                return hf.mamba_selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"],
                                               delta_bias=t["delta_bias"], delta_softplus=True,
                                               use_mambapy=(path == "pscan"))
        return _runner(fwd, t, backward)

    make(64)()  # warm-up: numba loads its cached code, torch sets up its pools
    return make(L)


def _mamba2_inputs(b, L, grad):
    g = torch.Generator().manual_seed(0)
    t = {
        "x": torch.randn(b, L, H2, P2, generator=g),
        "dt": torch.randn(b, L, H2, generator=g).sub_(2.0),
        "A": -torch.exp(torch.rand(H2, generator=g)),
        "B": torch.randn(b, L, 1, N2, generator=g),
        "C": torch.randn(b, L, 1, N2, generator=g),
        "D": torch.randn(H2, generator=g),
        "dt_bias": torch.randn(H2, generator=g) * 0.1,
    }
    for v in t.values():
        v.requires_grad_(grad)
    return t


def mamba2_cell(path: str, b: int, L: int, backward: bool):
    def make(L):
        t = _mamba2_inputs(b, L, backward)
        lim = (0.0, float("inf"))
        if path in ("ssmkit numba", "loop"):
            from ssmkit.ops.ssd import numba, reference

            tier = numba if path == "ssmkit numba" else reference

            def fwd():
                return tier.ssd(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=256, D=t["D"],
                                dt_bias=t["dt_bias"], dt_softplus=True, dt_limit=lim)
        else:
            from transformers.models.mamba2 import modeling_mamba2 as hf

            def fwd():
                return hf.mamba2_chunk_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], 256, D=t["D"],
                                            dt_bias=t["dt_bias"], dt_softplus=True, dt_limit=lim)
        return _runner(fwd, t, backward)

    make(64)()
    return make(L)


def _runner(fwd, tensors, backward):
    def run():
        if backward:
            for v in tensors.values():
                v.grad = None
            out = fwd()
            out = out[0] if isinstance(out, tuple) else out
            out.float().sum().backward()
        else:
            with torch.no_grad():
                fwd()
    return run


# ---- ceilings (parent process) ------------------------------------------------------------------

def ceilings() -> dict:
    def best(f, reps=5):
        f()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        return min(ts)

    m = 2048
    a, bm = torch.randn(m, m), torch.randn(m, m)
    mm = 2 * m**3 / best(lambda: a @ bm) / 1e9
    x = torch.randn(1 << 24)
    y = torch.empty_like(x)  # written in place: the ceilings time exp, not the page faults of a new 64 MB
    texp = x.numel() / best(lambda: torch.exp(x, out=y)) / 1e9
    out = {"matmul_gflops": mm, "torch_exp_gps": texp}
    try:
        from ssmkit.ops._numba.numerics import exp_array

        xn, yn = x.numpy(), y.numpy()
        out["vexp_gps"] = xn.size / best(lambda: exp_array(xn, yn)) / 1e9
    except Exception:  # numba missing: no kernel ceiling to report
        pass
    return out


# ---- table --------------------------------------------------------------------------------------

def _fmt_t(r):
    return r["skipped"] if "skipped" in r else f"{r['t'] * 1e3:.0f} ms"


def _fmt_m(r):
    return "" if "skipped" in r else f"{max(r['peak_mb'], 0):.0f}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="b=1, l=2048 only")
    p.add_argument("--cap", type=float, default=60.0, help="seconds per cell before it is skipped")
    p.add_argument("--out", default="benchmarks/results/ops_cpu.md")
    p.add_argument("--only", choices=["mamba1", "mamba2"], default=None)
    p.add_argument("--paths", default=None, help="comma-separated peers to run (default: all)")
    p.add_argument("--before", default=None, help="a commit: also run ssmkit numba as of that commit")
    args = p.parse_args(argv)
    before_src = None
    if args.before:
        from benchmarks.train_speed import _extract

        before_src, full = _extract(args.before)
        print(f"ssmkit before = {full}", flush=True)

    grid = [(1, 2048)] if args.quick else [(b, L) for b in (1, 8) for L in (512, 2048, 8192)]
    ceil = ceilings()
    lines = [
        f"# ops_cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"Ceilings measured in this run: fp32 matmul {ceil['matmul_gflops']:.0f} GFLOP/s, "
        f"torch.exp {ceil['torch_exp_gps']:.2f} G/s"
        + (f", ssmkit vexp {ceil['vexp_gps']:.2f} G/s" if "vexp_gps" in ceil else ""),
        "",
    ]
    print("\n".join(lines), flush=True)
    sections = []
    if args.only in (None, "mamba1"):
        sections.append(("Mamba-1 selective scan (d=1536, n=16)", f"{_HERE}:mamba1_cell", MAMBA1_PATHS))
    if args.only in (None, "mamba2"):
        sections.append(("Mamba-2 SSD (h=24, p=64, n=128)", f"{_HERE}:mamba2_cell", MAMBA2_PATHS))
    for title, target, paths in sections:
        peers = [pa for pa in paths[1:] if args.paths is None or pa in args.paths.split(",")]
        paths = (paths[0],) + (("ssmkit before",) if before_src else ()) + tuple(peers)
        head = ["b", "l", "pass"] + [f"{pa} time" for pa in paths] + [f"{pa} MB" for pa in paths]
        head += [f"{pa} / ssmkit" for pa in paths[1:]] + [f"{pa} MB / ssmkit" for pa in paths[1:]]
        rows = [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        print("\n".join(rows), flush=True)
        achieved = []
        for b, L in grid:
            for backward in (False, True):
                res = {pa: _cell(target, pa, b, L, backward, args.cap, before_src) for pa in paths}
                ours = res[paths[0]]
                ratio, mratio = [], []
                for pa in paths[1:]:
                    r = res[pa]
                    ok = "skipped" not in r and "skipped" not in ours
                    ratio.append(f"{r['t'] / ours['t']:.1f}x" if ok else "-")
                    mratio.append(f"{r['peak_mb'] / max(ours['peak_mb'], 1):.1f}x" if ok else "-")
                cells = [str(b), str(L), "fwd+bwd" if backward else "fwd"]
                cells += [_fmt_t(res[pa]) for pa in paths] + [_fmt_m(res[pa]) for pa in paths]
                cells += ratio + mratio
                line = "| " + " | ".join(cells) + " |"
                rows.append(line)
                print(line, flush=True)
                if "skipped" not in ours:
                    achieved.append(_achieved(title, b, L, ours["t"], ceil, backward))
        rows += [""] + achieved
        print("\n".join(achieved), flush=True)
        lines += ["\n".join(rows), ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {out}")


def _cell(target, path, b, L, backward, cap, before_src):
    """One cell in its own process; "ssmkit before": ssmkit numba with the older src/ first on the path."""
    kw = {"path": "ssmkit numba" if path == "ssmkit before" else path, "b": b, "L": L, "backward": backward}
    if path != "ssmkit before":
        return run_cell(target, kw, cap, exact_peak=False)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(before_src)] + ([old] if old else []))
    try:
        return run_cell(target, kw, cap, exact_peak=False)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old


def _achieved(title, b, L, t, ceil, backward=False):
    """One line: ssmkit's rates against the ceilings of this run. Forward: exp/s (Mamba-1) or GFLOP/s
    (SSD). Forward+backward, against its floor: Mamba-1 needs two exps per state element (the forward's
    and the backward's recompute), so its floor is 2 exps at the vexp ceiling; SSD's ~18 flops per state
    element (forward 4; backward: recompute 3, walk 11) at the fp32 matmul peak."""
    if title.startswith("Mamba-1"):
        elems = b * L * D_MODEL1 * N1  # one exp and ~5 flops (dt*A, a*h + du*B, y += C*h) per state element
        vexp = ceil.get("vexp_gps", float("nan"))
        if backward:
            floor = 2 * elems / (vexp * 1e9)
            return f"- b={b} l={L} fwd+bwd: {t / floor:.1f}x its exp floor ({floor * 1e3:.0f} ms)"
        gexp = elems / t / 1e9
        return (f"- b={b} l={L} fwd: {gexp:.2f} G exp/s ({gexp / vexp:.0%} of the vexp ceiling, "
                f"{gexp / ceil['torch_exp_gps']:.1f}x torch.exp), {5 * gexp:.1f} GFLOP/s")
    flops = (18 if backward else 4) * b * L * H2 * P2 * N2  # fwd: a*S + x*B, y += S*C per state element
    floor = flops / (ceil["matmul_gflops"] * 1e9)
    return (f"- b={b} l={L} {'fwd+bwd' if backward else 'fwd'}: {flops / t / 1e9:.1f} GFLOP/s, "
            f"{t / floor:.1f}x its floor at the fp32 matmul peak ({floor * 1e3:.0f} ms)")


if __name__ == "__main__":
    main()
