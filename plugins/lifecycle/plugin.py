"""Built-in lifecycle plugin: the stability guard (``guard.*`` in a recipe; docs/guard.md).

The guard only asks (``run.request_stop`` / ``run.request_rollback`` / ``run.warn``); the
trainer acts on the request after the hook returns and logs every decision.
"""

from __future__ import annotations

from typing import Any

from userrl_core import hookimpl
from userrl_plugins.lifecycle import guard
from userrl_plugins.lifecycle.settings import RENAMED, GuardConfig


@hookimpl
def register_settings(register: Any) -> None:
    register("guard", GuardConfig, description="The stability guard: its rules, thresholds and actions (docs/guard.md).",
             renamed=RENAMED)


@hookimpl
def on_run_start(run: Any) -> None:
    guard.on_run_start(run)


@hookimpl
def on_validation_end(run: Any, step: int, metrics: dict[str, float]) -> None:
    guard.on_validation_end(run, step, metrics)


@hookimpl
def on_step_end(run: Any, step: int, metrics: dict[str, float]) -> None:
    guard.on_step_end(run, step, metrics)


@hookimpl
def on_checkpoint_saved(run: Any, step: int, path: Any, is_best: bool) -> None:
    guard.on_checkpoint_saved(run, step, path, is_best)
