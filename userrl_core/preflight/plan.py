"""The execution plan that ``userrl run RECIPE --dry-run`` prints: what a run would do, worked
out from the validated config alone (no model is loaded).

Three parts:

- **devices**: where training runs, how many GPUs the recipe asks for and how many this
  machine has;
- **batch geometry**: tasks and episodes per step, steps per epoch, total steps, PPO
  mini-batches and gradient accumulation (``userrl_core.training.geometry``, the same numbers
  the trainer runs with);
- **plugins**: the plugin, distribution and version each name in the recipe resolves to.

The per-GPU memory estimate has its own slot (:attr:`ExecutionPlan.memory`), filled by
``userrl_core.preflight.memory_estimate`` when that module is present.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from userrl_core.config.compose import plugin_references
from userrl_core.config.schema import RunConfig
from userrl_core.preflight.memory_estimate import estimate_for_config, format_estimate
from userrl_core.preflight.requirements_check import find_missing
from userrl_core.training.geometry import BatchGeometry, plan_geometry


@dataclass
class DevicePlan:
    requested: str  # trainer.device
    resolved: str  # cpu | cuda
    gpus_requested: int  # trainer.n_gpus_per_node * trainer.nnodes
    gpus_available: int
    gpu_names: list[str] = field(default_factory=list)
    gpu_ids: list[int] | None = None


@dataclass
class PluginUse:
    key: str  # the recipe key that names it
    kind: str
    name: str
    plugin: str | None
    distribution: str | None
    version: str | None
    status: str  # ok | unavailable | unknown
    hint: str | None = None  # how to install what an unavailable plugin misses


@dataclass
class ExecutionPlan:
    devices: DevicePlan
    geometry: BatchGeometry
    plugins: list[PluginUse]
    simulator_key_env: str | None
    simulator_key_set: bool | None
    warnings: list[str] = field(default_factory=list)
    # Per-GPU memory estimate as a text block: the slot for userrl_core.preflight.memory_estimate
    # (build_plan fills it; format_plan prints it under "memory per GPU").
    memory: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_devices(config: RunConfig) -> DevicePlan:
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    names = [torch.cuda.get_device_name(i) for i in range(available)]
    requested = config.trainer.device
    if requested == "auto":
        resolved = "cuda" if available and config.trainer.n_gpus_per_node > 0 else "cpu"
    else:
        resolved = requested
    return DevicePlan(
        requested=requested,
        resolved=resolved,
        gpus_requested=config.trainer.n_gpus_per_node * config.trainer.nnodes,
        gpus_available=available,
        gpu_names=names,
        gpu_ids=config.trainer.gpu_ids,
    )


def plan_plugins(config: RunConfig, manager: Any) -> list[PluginUse]:
    """The plugin each name resolves to (``manager`` is a loaded PluginManager)."""
    uses = []
    for kind, name, key in plugin_references(config):
        entry = next((e for e in manager.registry.entries() if e.kind == kind and e.name == name), None)
        if entry is None:
            uses.append(PluginUse(key, kind.label, name, None, None, None, "unknown"))
            continue
        info = manager.plugins.get(entry.plugin)
        uses.append(PluginUse(
            key=key,
            kind=kind.label,
            name=name,
            plugin=entry.plugin,
            distribution=info.distribution if info else None,
            version=info.version if info else None,
            status="unavailable" if entry.unavailable_hint else "ok",
            hint=entry.unavailable_hint,
        ))
    return uses


def build_plan(config: RunConfig, manager: Any, num_train_tasks: int | None = None) -> ExecutionPlan:
    devices = plan_devices(config)
    geometry, warnings = plan_geometry(config, num_train_tasks)
    if config.trainer.device == "cuda" and devices.gpus_available == 0:
        warnings.append("trainer.device is 'cuda' but no CUDA device is visible")
    key_env = config.simulator.api_key_env
    key_set = bool(os.environ.get(key_env)) if key_env else None
    # What a real run would refuse to start without (GPUs, extras, model files, API key).
    warnings += [f"missing: {m}" for m in find_missing(config)]
    return ExecutionPlan(
        devices=devices,
        geometry=geometry,
        plugins=plan_plugins(config, manager),
        simulator_key_env=key_env,
        simulator_key_set=key_set,
        warnings=warnings,
        memory=format_estimate(*estimate_for_config(config)),
    )


def format_plan(plan: ExecutionPlan) -> str:
    """The plan as the readable text block ``--dry-run`` prints."""
    d, g = plan.devices, plan.geometry
    lines = ["Execution plan", "", "devices:"]
    lines.append(f"  trainer.device: {d.requested} -> {d.resolved}")
    lines.append(f"  GPUs requested: {d.gpus_requested}" + (f" (ids {d.gpu_ids})" if d.gpu_ids else ""))
    available = ", ".join(f"{i}: {n}" for i, n in enumerate(d.gpu_names)) or "none"
    lines.append(f"  GPUs available: {d.gpus_available} ({available})")
    lines += ["", "batch geometry:"]
    unknown = "unknown (train files not read)"
    lines.append(f"  train tasks: {g.train_tasks if g.train_tasks is not None else unknown}")
    lines.append(f"  tasks per step: {g.tasks_per_step} x {g.samples_per_task} samples = "
                 f"{g.episodes_per_step} episodes per step")
    lines.append(f"  steps per epoch: {g.steps_per_epoch if g.steps_per_epoch is not None else unknown}")
    lines.append(f"  epochs: {g.total_epochs}, total steps: {g.total_steps if g.total_steps is not None else unknown}")
    lines.append(f"  data-parallel ranks: {g.data_parallel_size}")
    lines.append(f"  PPO mini-batch: {g.mini_batch_tasks} tasks = {g.mini_batch_episodes} episodes; "
                 f"{g.optimizer_steps_per_step} optimizer step(s) per training step")
    lines.append(f"  micro-batch per GPU: {g.micro_batch_per_gpu} episodes; "
                 f"gradient accumulation: {g.grad_accumulation}")
    lines += ["", "plugins:"]
    for use in plan.plugins:
        where = f"{use.plugin} ({use.distribution} {use.version})" if use.plugin else "not registered"
        lines.append(f"  {use.key} = {use.name}: {use.kind} from {where} [{use.status}]")
        if use.hint:
            lines.append(f"      unavailable here: {use.hint}")
    if plan.simulator_key_env:
        state = "set" if plan.simulator_key_set else "NOT SET"
        lines += ["", f"simulator API key: from ${plan.simulator_key_env} ({state})"]
    if plan.memory:
        lines += ["", "memory per GPU (estimate):"] + [f"  {line}" for line in plan.memory.splitlines()]
    if plan.warnings:
        lines += ["", "warnings:"] + [f"  - {w}" for w in plan.warnings]
    return "\n".join(lines)
