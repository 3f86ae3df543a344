"""Building a run's pieces apart from running them: the plugins, the simulator, the two
backends and the rollout engine a validated config names, and the recipe's system prompt
applied to the tasks. ``userrl run`` (the trainer) and ``userrl eval`` build them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from userrl_core.config import RunConfig, check_plugin_names
from userrl_core.plugins import PluginManager, get_plugin_manager
from userrl_core.registry import Kind
from userrl_core.rollout import RolloutEngine
from userrl_core.types import Task


@dataclass
class Components:
    """What one run is made of, built by :func:`build_components`."""

    config: RunConfig
    plugins: PluginManager
    simulator: Any
    training: Any
    rollout: Any
    engine: RolloutEngine


def apply_system_prompt(tasks: list[Task], system_prompt: str | None) -> list[Task]:
    """Replace (or add) each task's system message when the recipe gives one."""
    if system_prompt is None:
        return tasks
    out = []
    for task in tasks:
        rest = [m for m in task.prompt if m.get("role") != "system"]
        out.append(replace(task, prompt=[{"role": "system", "content": system_prompt}, *rest]))
    return out


def build_components(config: RunConfig, plugins: PluginManager | None = None,
                     total_steps: int | None = None) -> Components:
    """Plugins, simulator, backends and rollout engine for a validated config. ``total_steps``
    is the run's length, the horizon of the learning-rate schedule."""
    plugins = plugins or get_plugin_manager()
    registry = plugins.registry
    check_plugin_names(config, registry)
    sim_config = config.simulator
    if sim_config.seed is None:
        sim_config = sim_config.model_copy(update={"seed": config.trainer.seed})
    simulator = registry.get(Kind.SIMULATOR, sim_config.name, key_path="simulator.name")(config=sim_config)
    training = registry.get(Kind.TRAINING_BACKEND, config.actor.backend, key_path="actor.backend")(
        config=config, total_steps=total_steps
    )
    rollout = registry.get(Kind.ROLLOUT_BACKEND, config.rollout.backend, key_path="rollout.backend")(
        config=config, trainer=training
    )
    engine = RolloutEngine(rollout, registry, simulator, config)
    return Components(config, plugins, simulator, training, rollout, engine)
