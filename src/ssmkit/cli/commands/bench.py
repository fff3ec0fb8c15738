"""`ssmkit bench`: the benchmark suite of a source checkout (python -m benchmarks)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

NAME, ORDER = "bench", 60
HELP = "run the benchmark suite (python -m benchmarks)"
DESCRIPTION = "Run the speed/memory benchmarks; extra arguments go to python -m benchmarks."


def add_arguments(p) -> None:
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for python -m benchmarks")


def run(args) -> int:
    from ssmkit.cli.errors import UsageError

    if not os.path.isfile(os.path.join(os.getcwd(), "benchmarks", "__main__.py")):
        raise UsageError(
            "bench: no benchmark suite here (run from the ssmkit repository, which has benchmarks/)"
        )
    return subprocess.call([sys.executable, "-m", "benchmarks", *args.bench_args])
