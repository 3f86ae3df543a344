"""Item 5: where one quickstart training step spends its time and memory.

Runs the CPU quickstart recipe (``recipes/quickstart.yaml``: SmolLM2-135M-Instruct, the
embedded ``local`` simulator, IntentionGym) through the real trainer into a temporary run
folder, with thin timing wrappers around the components (nothing else changes):

* generation: the engine's ``timing_s/generate`` (policy ``generate`` calls, wall time);
* simulator and judge: the summed duration of the simulator's ``reply`` and ``judge`` calls
  (they run concurrently, so each sum is the time those calls took, and ``environment steps``
  is the engine's wall time for all steps of all turns, ``timing_s/env``);
* old log-probs, update: ``compute_logprobs`` and ``update`` of the training backend;
* validation: the validation rollouts (``engine.run(..., validation=True)``);
* checkpoint: every checkpoint the trainer writes (HF weights, optimizer and trainer state),
  the best checkpoint after the first validation included.

Peak memory is the process's resident set size, sampled every 20 ms, per phase and overall.

Usage::

    python -m benchmarks.bench_quickstart_breakdown           # the recipe's 3 steps (plus validations)
    python -m benchmarks.bench_quickstart_breakdown --quick   # 1 step, tiny batch, 2 validation tasks
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import psutil

from benchmarks.common import recipe_arguments, print_table, write_results

PHASES = ("rollout", "generation", "environment steps", "simulator (reply)", "judge", "old log-probs", "update",
          "validation", "validation: generation", "validation: environment steps", "validation: simulator (reply)",
          "validation: judge", "checkpoint")


class PhaseMeter:
    """Wall time per phase (summed over calls) and the peak RSS seen while each phase ran."""

    def __init__(self, interval: float = 0.02) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.peak_rss: dict[str, int] = {}
        self.overall_peak = 0
        self.validating = False
        self._active: set[str] = set()
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)
        self._thread.start()

    def _sample(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._note(self._process.memory_info().rss)

    def _note(self, rss: int) -> None:
        self.overall_peak = max(self.overall_peak, rss)
        for phase in list(self._active):
            self.peak_rss[phase] = max(self.peak_rss.get(phase, 0), rss)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._active.add(name)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)
            self._note(self._process.memory_info().rss)
            self._active.discard(name)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class TimedSimulator:
    """Wraps the run's simulator: sums call durations by purpose (reply, judge)."""

    def __init__(self, inner: Any, meter: PhaseMeter) -> None:
        self.inner, self.meter, self.name = inner, meter, inner.name

    async def complete(self, request: Any) -> Any:
        started = time.perf_counter()
        try:
            return await self.inner.complete(request)
        finally:
            name = "judge" if request.purpose == "judge" else "simulator (reply)"
            if self.meter.validating:
                name = "validation: " + name
            self.meter.add(name, time.perf_counter() - started)

    def stats(self) -> dict[str, float]:
        return self.inner.stats()

    async def aclose(self) -> None:
        await self.inner.aclose()


def instrument(trainer: Any, components: Any, meter: PhaseMeter) -> None:
    """Replace methods on the instances with timing wrappers (same arguments, same results)."""
    training, engine = components.training, components.engine
    simulator = TimedSimulator(components.simulator, meter)
    engine.simulator = simulator
    components.simulator = simulator

    compute_logprobs, update, run = training.compute_logprobs, training.update, engine.run
    write_checkpoint = trainer._write_checkpoint

    def timed_logprobs(*args: Any, **kwargs: Any) -> Any:
        with meter.phase("old log-probs"):
            return compute_logprobs(*args, **kwargs)

    def timed_update(*args: Any, **kwargs: Any) -> Any:
        with meter.phase("update"):
            return update(*args, **kwargs)

    async def timed_run(*args: Any, validation: bool = False, **kwargs: Any) -> Any:
        name = "validation" if validation else "rollout"
        meter.validating = validation
        try:
            with meter.phase(name):
                result = await run(*args, validation=validation, **kwargs)
        finally:
            meter.validating = False
        prefix = "validation: " if validation else ""
        meter.add(prefix + "generation", result.metrics.get("timing_s/generate", 0.0))
        meter.add(prefix + "environment steps", result.metrics.get("timing_s/env", 0.0))
        return result

    def timed_checkpoint(*args: Any, **kwargs: Any) -> Any:
        with meter.phase("checkpoint"):
            return write_checkpoint(*args, **kwargs)

    training.compute_logprobs, training.update = timed_logprobs, timed_update
    engine.run, trainer._write_checkpoint = timed_run, timed_checkpoint


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = recipe_arguments("Quickstart step breakdown (item 5).", "recipes/quickstart.yaml",
                            ["data.train_batch_size=1", "actor.ppo_mini_batch_size=1", "data.val_max_tasks=2"], argv)
    overrides = args.overrides

    from userrl_core.config.compose import load_recipe
    from userrl_core.training.build import build_components
    from userrl_core.training.trainer import Trainer

    meter = PhaseMeter()
    with tempfile.TemporaryDirectory(prefix="userrl-bench-") as folder:
        config = load_recipe(args.recipe, overrides + ["trainer.report=false"])
        run_dir = Path(folder) / "run"
        run_dir.mkdir()
        started = time.perf_counter()
        with meter.phase("set-up (load model, plugins)"):
            components = build_components(config)
            trainer = Trainer(config, run_dir, components)
        instrument(trainer, components, meter)
        try:
            summary = asyncio.run(trainer.run(False))
        finally:
            trainer.recorder.close()
            asyncio.run(components.simulator.aclose())
        total = time.perf_counter() - started
        meter.close()
        metrics_lines = (run_dir / "metrics.jsonl").read_text().splitlines()

    steps = int(summary["steps"])
    train_total = sum(meter.seconds.get(name, 0.0) for name in ("rollout", "old log-probs", "update"))
    rows = []
    for name in ("set-up (load model, plugins)", *PHASES):
        if name not in meter.seconds:
            continue
        seconds = meter.seconds[name]
        peak = meter.peak_rss.get(name)
        rows.append([name, meter.calls[name], seconds, seconds / max(steps, 1),
                     f"{peak / 2**30:.2f}" if peak else "-"])
    print_table(
        f"Quickstart breakdown: {steps} training steps, total {total:.1f} s, peak RSS "
        f"{meter.overall_peak / 2**30:.2f} GiB",
        ["phase", "calls", "total s", "per step s", "peak RSS GiB"], rows,
    )
    print("generation and environment steps are parts of rollout (likewise under validation); simulator (reply) "
          "and judge are summed call durations inside environment steps (concurrent, so they overlap).")
    payload = {
        "settings": {"recipe": args.recipe, "overrides": overrides, "quick": args.quick},
        "steps": steps, "total_s": total, "train_phases_s": train_total,
        "phases": {name: {"calls": meter.calls[name], "seconds": meter.seconds[name],
                          "peak_rss_bytes": meter.peak_rss.get(name)} for name in meter.seconds},
        "peak_rss_bytes": meter.overall_peak,
        "metrics_lines": len(metrics_lines),
        "summary_status": summary["status"],
    }
    path = write_results("bench_quickstart_breakdown", payload)
    print(f"results: {path}")
    return payload


if __name__ == "__main__":
    main()
