"""The mixed-gym CPU quickstart (``recipes/mix_quickstart.yaml``): wall time, per-gym validation
reward at step 0 and at the last step, and time per training step split by gym.

Runs the recipe through the real trainer into a temporary run folder, unchanged, and reads the
time split from the run's own metrics (docs/metrics.md), so it measures either rollout mode:

* ``timing_s/by_source/<data_source>/generate``: seconds that source's episodes waited for the
  policy's generate;
* ``.../simulator``: seconds they had a simulator call running (user replies, judges, graders);
* ``.../env_own``: seconds in their environments' own code (``reset``/``step`` less the
  simulator calls).

These are summed episode-seconds (episodes overlap, in async mode at their own pace), so they
exceed the rollout's wall time. The table gives both, per training step (mean over steps): the
raw sums, and the rollout's wall time (``timing_s/rollout``) split by each (gym, phase)'s share of
that step's summed episode-seconds.

Usage::

    python -m benchmarks.bench_mix_quickstart            # the recipe as shipped
    python -m benchmarks.bench_mix_quickstart --quick    # 1 step, 2 tasks, 4 validation tasks
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.common import recipe_arguments, print_table, write_results

_VAL = re.compile(r"^val-core/(?P<source>.+)/reward/mean@\d+$")
_BY_SOURCE = re.compile(r"^timing_s/by_source/(?P<source>.+)/(?P<phase>generate|simulator|env_own)$")
PHASES = ("generate", "simulator", "env_own")
REPOSITORY = Path(__file__).resolve().parents[1]


def without_machine_paths(value: Any) -> Any:
    """``value`` with every absolute path in its strings written relative to the repository (a
    path elsewhere keeps only its file name), so a results file says nothing of this machine."""
    if isinstance(value, dict):
        return {key: without_machine_paths(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_machine_paths(item) for item in value]
    if isinstance(value, str) and Path(value).is_absolute():
        path = Path(value)
        try:
            return str(path.relative_to(REPOSITORY))
        except ValueError:
            return path.name
    return value


def time_split(lines: list[dict[str, Any]]) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], int]:
    """Per data source and phase, the mean over training steps of (the summed episode-seconds,
    the step's rollout wall time times that (source, phase)'s share of the step's sum); and the
    number of training steps read."""
    raw: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(PHASES, 0.0))
    wall: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(PHASES, 0.0))
    steps = 0
    for line in lines:
        parts = [(m["source"], m["phase"], float(v)) for k, v in line.items() if (m := _BY_SOURCE.match(k))]
        if not parts or "timing_s/rollout" not in line:
            continue
        steps += 1
        total = sum(v for _, _, v in parts)
        for source, phase, seconds in parts:
            raw[source][phase] += seconds
            wall[source][phase] += line["timing_s/rollout"] * seconds / total if total > 0 else 0.0
    mean = lambda table: {s: {p: v / max(steps, 1) for p, v in phases.items()} for s, phases in sorted(table.items())}
    return mean(raw), mean(wall), steps


def main(argv: list[str] | None = None) -> dict[str, Any]:
    quick = ["data.train_batch_size=2", "actor.ppo_mini_batch_size=2", "data.val_max_tasks=4", "simulator.max_tokens=16"]
    args = recipe_arguments("Mixed-gym quickstart: per-gym rewards and time split.", "recipes/mix_quickstart.yaml",
                            quick, argv)
    overrides = args.overrides

    from userrl_core.config.compose import load_recipe
    from userrl_core.training.build import needs_simulator
    from userrl_core.training.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="userrl-bench-") as folder:
        config = load_recipe(args.recipe, overrides + ["trainer.report=false"])
        run_dir = Path(folder) / "run"
        run_dir.mkdir()
        started = time.perf_counter()
        trainer = Trainer(config, run_dir)  # loads the tasks, then builds the components, as `userrl run` does
        setup_s = time.perf_counter() - started
        try:
            summary = asyncio.run(trainer.run(False))
        finally:
            trainer.recorder.close()
            asyncio.run(trainer.c.simulator.aclose())
        total = time.perf_counter() - started
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        needing = needs_simulator(trainer.registry, {t.env_name for t in trainer.val_tasks})
        tasks = summary.get("tasks", {})

    steps = int(summary["steps"])
    step_times = [line.get("perf/time_per_step") for line in lines if line.get("perf/time_per_step")]
    validations = [line for line in lines if any(_VAL.match(k) for k in line)
                   or any(k.endswith("/failed_episodes") and k.startswith("val-aux/") for k in line)]
    sources = sorted({k.split("/")[1] for line in validations for k in line
                      if k.startswith(("val-core/", "val-aux/")) and k.endswith(("reward/mean@1", "failed_episodes"))
                      and k.split("/")[1] != "simulator"})
    rewards = []
    for source in sources:
        row = [source]
        for line in (validations[0], validations[-1]) if validations else ():
            value = line.get(f"val-core/{source}/reward/mean@1")
            failed = line.get(f"val-aux/{source}/failed_episodes", 0.0)
            row.append("all failed" if value is None else f"{value:.4f}")
            row.append(int(failed))
        rewards.append(row)
    first_step = validations[0]["step"] if validations else None
    last_step = validations[-1]["step"] if validations else None
    print_table(f"Validation per data source (greedy, 1 sample per task): step {first_step} and step {last_step}",
                ["data source", f"step {first_step}", "failed", f"step {last_step}", "failed"], rewards)

    raw, wall, timed_steps = time_split(lines)
    split_rows = [[source] + [wall[source][p] for p in PHASES] + [raw[source][p] for p in PHASES] for source in raw]
    print_table(f"Training rollout time per step by gym (s; mean of {timed_steps} steps): the rollout's wall time "
                "split by share of episode-seconds, then the summed episode-seconds",
                ["data source", "generate", "simulator", "env own", "Σ generate", "Σ simulator", "Σ env own"],
                split_rows)
    print(f"total {total:.1f} s (set-up {setup_s:.1f} s), time per step {step_times}, environments needing a "
          f"simulator: {needing}")
    payload = without_machine_paths({
        "settings": {"recipe": args.recipe, "overrides": overrides, "quick": args.quick},
        "steps": steps, "total_s": total, "setup_s": setup_s, "time_per_step_s": step_times,
        "validation": {"first_step": first_step, "last_step": last_step,
                       "rows": {r[0]: r[1:] for r in rewards}},
        "rollout_s_per_step_by_source": wall,
        "episode_s_per_step_by_source": raw,
        "tasks": tasks,
        "summary_status": summary["status"],
    })
    path = write_results("bench_mix_quickstart", payload, file_stem="bench_mix_quickstart" + ("_quick" if args.quick else ""))
    print(f"results: {path}")
    return payload


if __name__ == "__main__":
    main()
