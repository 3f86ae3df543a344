"""Shared pieces of the benchmark scripts: machine description, repeats, JSON results, tables.

Every script measures, prints a table and writes ``benchmarks/results/<name>.json`` with the
machine, the exact command, the raw samples and their medians, so docs/benchmarks.md can be
checked against what was measured.
"""

from __future__ import annotations

import argparse

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS_DIR_ENV = "USERRL_BENCH_RESULTS_DIR"  # elsewhere than results/ (the smoke tests use a temp folder)


def machine() -> dict[str, Any]:
    """CPU, core count, load and library versions: what a reader needs to compare numbers."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    try:
        info["load_average_1m_5m_15m"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not on every platform
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def repeat(fn: Callable[[], float], times: int) -> list[float]:
    """Call ``fn`` ``times`` times and return what it measured each time."""
    return [float(fn()) for _ in range(times)]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def write_results(name: str, payload: dict[str, Any], *, file_stem: str | None = None) -> Path:
    """Write ``payload`` (plus machine and command) to ``results/<file_stem or name>.json``."""
    folder = Path(os.environ.get(RESULTS_DIR_ENV) or RESULTS_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "command": "python -m benchmarks." + name + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""),
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
        **payload,
    }
    path = folder / f"{file_stem or name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain Markdown table on stdout (pastes straight into docs/benchmarks.md)."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print(f"\n{title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    print()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or abs(value) >= 100:
            return f"{value:.1f}"
        if abs(value) >= 1:
            return f"{value:.3g}" if abs(value) < 10 else f"{value:.2f}"
        return f"{value:.3f}"
    return str(value)


QUICK_RUN = ["trainer.total_training_steps=1", "trainer.test_freq=1", "trainer.save_freq=1", "rollout.max_turns=2",
             "rollout.max_new_tokens=16"]
"""Overrides every recipe benchmark's ``--quick`` smoke run shares (one short step)."""


def recipe_arguments(description: str, recipe: str, quick: list[str], argv: list[str] | None) -> argparse.Namespace:
    """Parse ``[--quick] [--recipe R] [overrides ...]`` for a benchmark that runs a recipe through
    the trainer; ``overrides`` gains ``QUICK_RUN`` + ``quick`` with ``--quick``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 short step, few tasks")
    parser.add_argument("--recipe", default=recipe)
    parser.add_argument("overrides", nargs="*", help="recipe overrides, as for `userrl run`")
    args = parser.parse_args(argv)
    args.overrides = list(args.overrides) + (QUICK_RUN + quick if args.quick else [])
    return args
