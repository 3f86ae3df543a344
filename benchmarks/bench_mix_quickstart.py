"""The mixed-gym CPU quickstart (``recipes/mix_quickstart.yaml``): wall time, per-gym validation
reward at step 0 and at the last step, and time per training step split by gym.

Runs the recipe through the real trainer into a temporary run folder, with thin timing
wrappers (nothing else changes):

* generation per gym: each policy ``generate`` turn of the engine is timed and its wall time
  split over the gyms by their share of the tokens sampled in that turn (episodes of all gyms
  share one batch);
* environment per gym: the summed duration of that gym's ``step()`` calls (they run
  concurrently, so sums can exceed the wall time of a turn); it includes the simulator calls made
  inside the step;
* simulator per gym: the summed duration of the simulator calls made inside that gym's steps
  (attributed through a context variable set by the step wrapper);
* environment own = environment − simulator (parsing, search backend, waiting for a
  concurrency slot).

Usage::

    python -m benchmarks.bench_mix_quickstart            # the recipe as shipped
    python -m benchmarks.bench_mix_quickstart --quick    # 1 step, 2 tasks, 4 validation tasks
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.common import recipe_arguments, print_table, write_results

_CURRENT_GYM: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_gym", default=None)
_VAL = re.compile(r"^val-core/(?P<source>.+)/reward/mean@\d+$")


class GymClock:
    """Seconds per (phase, gym), training rollouts and validation kept apart."""

    def __init__(self) -> None:
        self.seconds: dict[tuple[str, str, str], float] = defaultdict(float)
        self.validating = False

    def add(self, phase: str, gym: str, seconds: float) -> None:
        self.seconds[("validation" if self.validating else "train", phase, gym)] += seconds


class TimedSimulator:
    def __init__(self, inner: Any, clock: GymClock) -> None:
        self.inner, self.clock, self.name = inner, clock, inner.name

    async def complete(self, request: Any) -> Any:
        started = time.perf_counter()
        try:
            return await self.inner.complete(request)
        finally:
            self.clock.add("simulator", _CURRENT_GYM.get() or "(none)", time.perf_counter() - started)

    def stats(self) -> dict[str, float]:
        return self.inner.stats()

    async def aclose(self) -> None:
        await self.inner.aclose()


def instrument(components: Any, clock: GymClock) -> None:
    engine = components.engine
    simulator = TimedSimulator(components.simulator, clock)
    engine.simulator = components.simulator = simulator

    create, generate, run = engine._create, engine._generate, engine.run

    def timed_create(tasks, n, seed, *rest, **kwargs):  # the engine's further arguments pass through
        live = create(tasks, n, seed, *rest, **kwargs)
        for state in live:
            gym, step = state.episode.task.env_name, state.env.step

            async def timed_step(action, _step=step, _gym=gym):
                token = _CURRENT_GYM.set(_gym)
                started = time.perf_counter()
                try:
                    return await _step(action)
                finally:
                    clock.add("environment", _gym, time.perf_counter() - started)
                    _CURRENT_GYM.reset(token)

            state.env.step = timed_step
        return live

    async def timed_generate(active, *args, **kwargs):
        started = time.perf_counter()
        outputs = await generate(active, *args, **kwargs)
        elapsed = time.perf_counter() - started
        tokens: dict[str, int] = defaultdict(int)
        for state, (ids, _) in zip(active, outputs):
            tokens[state.episode.task.env_name] += len(ids)
        total = sum(tokens.values()) or 1
        for gym, count in tokens.items():
            clock.add("generation", gym, elapsed * count / total)
        return outputs

    async def timed_run(*args, validation: bool = False, **kwargs):
        clock.validating = validation
        try:
            return await run(*args, validation=validation, **kwargs)
        finally:
            clock.validating = False

    engine._create, engine._generate, engine.run = timed_create, timed_generate, timed_run


def main(argv: list[str] | None = None) -> dict[str, Any]:
    quick = ["data.train_batch_size=2", "actor.ppo_mini_batch_size=2", "data.val_max_tasks=4", "simulator.max_tokens=16"]
    args = recipe_arguments("Mixed-gym quickstart: per-gym rewards and time split.", "recipes/mix_quickstart.yaml",
                            quick, argv)
    overrides = args.overrides

    from userrl_core.config.compose import load_recipe
    from userrl_core.training.build import needs_simulator
    from userrl_core.training.trainer import Trainer

    clock = GymClock()
    with tempfile.TemporaryDirectory(prefix="userrl-bench-") as folder:
        config = load_recipe(args.recipe, overrides + ["trainer.report=false"])
        run_dir = Path(folder) / "run"
        run_dir.mkdir()
        started = time.perf_counter()
        trainer = Trainer(config, run_dir)  # loads the tasks, then builds the components, as `userrl run` does
        setup_s = time.perf_counter() - started
        instrument(trainer.c, clock)
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

    gyms = sorted({gym for (_, _, gym) in clock.seconds})
    split_rows = []
    for gym in gyms:
        generation = clock.seconds.get(("train", "generation", gym), 0.0)
        environment = clock.seconds.get(("train", "environment", gym), 0.0)
        simulator = clock.seconds.get(("train", "simulator", gym), 0.0)
        split_rows.append([gym, generation / max(steps, 1), simulator / max(steps, 1),
                           max(environment - simulator, 0.0) / max(steps, 1), environment / max(steps, 1)])
    print_table(f"Training rollout time per step by gym (s; {steps} steps, mean)",
                ["gym", "generation", "simulator", "environment own", "environment incl. simulator"], split_rows)
    print(f"total {total:.1f} s (set-up {setup_s:.1f} s), time per step {step_times}, environments needing a "
          f"simulator: {needing}")
    payload = {
        "settings": {"recipe": args.recipe, "overrides": overrides, "quick": args.quick},
        "steps": steps, "total_s": total, "setup_s": setup_s, "time_per_step_s": step_times,
        "validation": {"first_step": first_step, "last_step": last_step,
                       "rows": {r[0]: r[1:] for r in rewards}},
        "seconds_by_gym": {"/".join(k): v for k, v in sorted(clock.seconds.items())},
        "tasks": tasks,
        "summary_status": summary["status"],
    }
    path = write_results("bench_mix_quickstart", payload, file_stem="bench_mix_quickstart" + ("_quick" if args.quick else ""))
    print(f"results: {path}")
    return payload


if __name__ == "__main__":
    main()
