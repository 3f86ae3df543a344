"""Building a run's pieces apart from running them: the plugins, the simulator, the two
backends and the rollout engine a validated config names. ``userrl run`` (the trainer) and
``userrl eval`` build them the same way.

The simulator is built only when an environment of the run needs one: environments whose
factory says ``needs_simulator = False`` never call it, so a run of only such environments
builds none (``simulator.name: none`` says so explicitly, and is refused when an environment
does need one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from userrl_core.config import RunConfig, check_plugin_names
from userrl_core.errors import ConfigError
from userrl_core.plugins import PluginManager, get_plugin_manager
from userrl_core.registry import Kind, Registry
from userrl_core.rollout import RolloutEngine
from userrl_core.types import NO_SIMULATOR

if TYPE_CHECKING:
    from userrl_core.types import RolloutBackend, Simulator, TrainingBackend

log = logging.getLogger("userrl")


@dataclass
class Components:
    """What one run is made of, built by :func:`build_components`."""

    config: RunConfig
    plugins: PluginManager
    simulator: "Simulator | None"  # None when no environment of the run needs one
    training: "TrainingBackend"
    rollout: "RolloutBackend"
    engine: RolloutEngine

    def simulator_stats(self) -> dict[str, float]:
        """The simulator's cumulative counters (empty without a simulator)."""
        return {} if self.simulator is None else self.simulator.stats()

    def close(self) -> None:
        """Close both backends once each (they may be one object)."""
        for backend in {id(b): b for b in (self.rollout, self.training)}.values():
            backend.close()


def needs_simulator(registry: Registry, env_names: Iterable[str]) -> list[str]:
    """The environments among ``env_names`` that need a simulator (all, unless their factory
    declares ``needs_simulator = False``)."""
    return sorted(name for name in set(env_names)
                  if getattr(registry.get(Kind.ENVIRONMENT, name), "needs_simulator", True) is not False)


def report_metrics(registry: Registry, env_names: Iterable[str]) -> dict[str, str]:
    """``{metric: label}`` the environments among ``env_names`` ask to be shown (their factories'
    ``report_metrics``), in name order; the first label of a metric wins."""
    shown: dict[str, str] = {}
    for name in sorted(set(env_names)):
        entry = registry.entry_or_none(Kind.ENVIRONMENT, name)
        declared = getattr(getattr(entry, "obj", None), "report_metrics", None)
        for metric, label in (declared or {}).items() if isinstance(declared, dict) else ():
            shown.setdefault(str(metric), str(label))
    return shown


def build_simulator(config: RunConfig, registry: Registry, env_names: Iterable[str] | None) -> "Simulator | None":
    """The run's simulator, or None when ``env_names`` (the environments of the run's tasks; None:
    unknown, assume one is needed) need none."""
    sim_config = config.simulator
    needing = None if env_names is None else needs_simulator(registry, env_names)
    if sim_config.name == NO_SIMULATOR:
        if needing is None or needing:
            who = f"environment(s) {', '.join(needing)}" if needing else "this command"
            raise ConfigError(
                f"simulator.name: {NO_SIMULATOR!r}, but {who} need a simulator (an environment that never calls one "
                "declares needs_simulator = False on its factory); name a simulator (`userrl plugins list`)"
            )
        return None
    if needing is not None and not needing:
        log.info("no environment of this run needs a simulator: simulator %r is not built", sim_config.name)
        return None
    if sim_config.seed is None:
        sim_config = sim_config.model_copy(update={"seed": config.trainer.seed})
    return registry.get(Kind.SIMULATOR, sim_config.name, key_path="simulator.name")(config=sim_config)


def build_components(config: RunConfig, plugins: PluginManager | None = None,
                     total_steps: int | None = None, env_names: Iterable[str] | None = None) -> Components:
    """Plugins, simulator, backends and rollout engine for a validated config. ``total_steps``
    is the run's length, the horizon of the learning-rate schedule; ``env_names`` are the
    environments of the tasks that will run (they decide whether a simulator is built)."""
    plugins = plugins or get_plugin_manager()
    registry = plugins.registry
    check_plugin_names(config, registry)
    simulator = build_simulator(config, registry, env_names)
    training = registry.get(Kind.TRAINING_BACKEND, config.actor.backend, key_path="actor.backend")(
        config=config, total_steps=total_steps
    )
    rollout = registry.get(Kind.ROLLOUT_BACKEND, config.rollout.backend, key_path="rollout.backend")(
        config=config, trainer=training
    )
    engine = RolloutEngine(rollout, registry, simulator, config)
    return Components(config, plugins, simulator, training, rollout, engine)
