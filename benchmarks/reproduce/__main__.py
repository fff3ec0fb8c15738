"""python -m benchmarks.reproduce [names ...] [--full] [--tiny] [--out DIR] [--threads N]

Runs the named entries (default: all, in order), writes docs/results/<name>.json for each as soon as it
finishes, then regenerates docs/results.md from every JSON present. --tiny is the smoke configuration
(a few steps; for tests), --full the configuration closer to the papers.
"""

from __future__ import annotations

import os

# Before torch and numba load their OpenMP runtimes: idle OpenMP workers sleep instead of spinning. With
# the default (spin), numba's pool spun beside each 1-thread training step on this 2-core machine: an
# H3 step of the selective-copying task took 1.0 CPU s for its first ~40 steps, 0.04 s with this set
# (or with NUMBA_NUM_THREADS=1), measured.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from benchmarks.reproduce import harness as H  # noqa: E402
from benchmarks.reproduce import report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reproduce", description=__doc__.split("\n\n")[1])
    p.add_argument("names", nargs="*", metavar="name",
                   help=f"entries to run (default: all): {', '.join(report.ENTRIES)}")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="the configuration closer to the paper")
    size.add_argument("--tiny", action="store_true", help="smoke configuration (a few steps)")
    p.add_argument("--out", default=H.RESULTS_DIR,
                   help="directory of the JSON results (default: docs/results; only then docs/results.md)")
    p.add_argument("--no-report", action="store_true", help="do not rewrite docs/results.md")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's, one per core); 1 to run entries side by side")
    args = p.parse_args(argv)
    if args.threads:
        # numba (loaded later, by the first kernel) on as many threads: with its default (every core) a
        # Mamba step put torch's count back up to 2 after --threads 1 (measured)
        os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
        torch.set_num_threads(args.threads)
    names = args.names or report.ENTRIES
    unknown = [n for n in names if n not in report.ENTRIES]
    if unknown:
        p.error(f"unknown entries {unknown}; known: {report.ENTRIES}")
    which = "full" if args.full else "tiny" if args.tiny else "small"
    H.PAUSES = H.PauseClock()
    t0 = time.perf_counter()
    for name in names:
        module = importlib.import_module(f"benchmarks.reproduce.{name}")
        H.log(f"{name}: {which} configuration")
        load_before = round(os.getloadavg()[0], 1)
        extra = {"out_dir": args.out} if name == "scaling" else {}          # its plot goes beside the JSON
        result = module.run(module.CONFIGS[which], full=args.full, seed=args.seed, **extra)
        result["hardware"]["load_avg_1min_before"] = load_before
        result.update(report.judge(name, result))
        H.log(f"{name}: done in {result['wall_s']:.0f} s -> {H.save(result, args.out)}")
    if not args.no_report:
        path = report.write(args.out) if os.path.abspath(args.out) == os.path.abspath(H.RESULTS_DIR) else None
        if path:
            H.log(f"report: {path}")
    H.log(f"all done in {(time.perf_counter() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
