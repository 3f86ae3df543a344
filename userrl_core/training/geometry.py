"""Batch geometry: how a recipe's batch keys turn into steps, episodes and optimizer steps.

Computed the way verl does it: ``data.train_batch_size`` tasks per step, each sampled
``rollout.n`` times; steps per epoch with ``data.drop_last``; ``trainer.total_training_steps``
overriding the epochs; ``actor.ppo_mini_batch_size`` counting tasks, multiplied by ``rollout.n``
and split over the data-parallel ranks. The trainer sizes its run with it and the dry-run plan
prints it, so the two cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from userrl_core.config.schema import RunConfig
from userrl_core.errors import ConfigError


@dataclass
class BatchGeometry:
    """The shape of one run: per step, per epoch, per optimizer step."""

    train_tasks: int | None  # after data.train_max_tasks; None when the files were not read
    tasks_per_step: int
    samples_per_task: int
    episodes_per_step: int
    steps_per_epoch: int | None
    total_epochs: int
    total_steps: int | None
    data_parallel_size: int
    mini_batch_tasks: int
    mini_batch_episodes: int
    optimizer_steps_per_step: int
    micro_batch_per_gpu: int
    grad_accumulation: int


def plan_geometry(config: RunConfig, num_train_tasks: int | None) -> tuple[BatchGeometry, list[str]]:
    """Batch geometry as verl computes it, plus warnings for shapes that do not divide."""
    warnings: list[str] = []
    data, rollout, actor, trainer = config.data, config.rollout, config.actor, config.trainer
    if num_train_tasks is not None and data.train_max_tasks is not None:
        num_train_tasks = min(num_train_tasks, data.train_max_tasks)
    tasks = data.train_batch_size
    steps_per_epoch = None
    total_steps = trainer.total_training_steps
    if num_train_tasks is not None:
        if tasks > num_train_tasks:
            raise ConfigError(
                f"data.train_batch_size ({tasks}) is larger than the {num_train_tasks} train tasks "
                f"({', '.join(data.train_files)}): lower it, or add tasks"
            )
        steps_per_epoch = num_train_tasks // tasks if data.drop_last else math.ceil(num_train_tasks / tasks)
        if total_steps is None:  # as in verl, trainer.total_training_steps overrides the epochs
            total_steps = steps_per_epoch * trainer.total_epochs

    world = max(trainer.n_gpus_per_node * trainer.nnodes, 1)
    mini_tasks = actor.ppo_mini_batch_size
    mini_episodes = mini_tasks * rollout.n
    if tasks % mini_tasks:
        warnings.append(
            f"data.train_batch_size ({tasks}) is not a multiple of actor.ppo_mini_batch_size ({mini_tasks}): "
            "the last mini-batch of each step is smaller"
        )
    per_rank = mini_episodes // world
    if mini_episodes % world or per_rank == 0:
        warnings.append(
            f"a mini-batch of {mini_episodes} episodes does not split evenly over {world} data-parallel ranks"
        )
    micro = actor.ppo_micro_batch_size_per_gpu
    if per_rank and per_rank % micro:
        warnings.append(
            f"{per_rank} episodes per rank per mini-batch is not a multiple of "
            f"actor.ppo_micro_batch_size_per_gpu ({micro})"
        )
    geometry = BatchGeometry(
        train_tasks=num_train_tasks,
        tasks_per_step=tasks,
        samples_per_task=rollout.n,
        episodes_per_step=tasks * rollout.n,
        steps_per_epoch=steps_per_epoch,
        total_epochs=trainer.total_epochs,
        total_steps=total_steps,
        data_parallel_size=world,
        mini_batch_tasks=mini_tasks,
        mini_batch_episodes=mini_episodes,
        optimizer_steps_per_step=math.ceil(tasks / mini_tasks) * actor.ppo_epochs,
        micro_batch_per_gpu=micro,
        grad_accumulation=max(math.ceil(per_rank / micro), 1),
    )
    return geometry, warnings
