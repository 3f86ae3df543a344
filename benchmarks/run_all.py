"""Run every benchmark, one fresh process each, and print their tables (``make bench``).

Each script writes its JSON to ``benchmarks/results/``. ``--quick`` passes the smoke-run flag
on; ``--only NAME ...`` picks scripts. The exit status is non-zero when a script fails.

Usage::

    python -m benchmarks.run_all
    python -m benchmarks.run_all --quick
    python -m benchmarks.run_all --only bench_credit_assignment bench_generation
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

BENCHMARKS = (
    "bench_rollout_efficiency",
    "bench_idle_gaps",
    "bench_credit_assignment",
    "bench_trainer_overhead",
    "bench_generation",
    "bench_quickstart_breakdown",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the userrl benchmarks.")
    parser.add_argument("--quick", action="store_true", help="smoke-run sizes")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    args = parser.parse_args(argv)
    failed = []
    for name in args.only or BENCHMARKS:
        command = [sys.executable, "-m", f"benchmarks.{name}"] + (["--quick"] if args.quick else [])
        print(f"\n=== {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        code = subprocess.call(command)
        print(f"=== {name}: exit {code} in {time.perf_counter() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
