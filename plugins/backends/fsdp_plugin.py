"""The ``fsdp`` training backend: FSDP2 ranks on the recipe's GPUs (Ray) or on the CPU (gloo).

World size: the training GPUs (``trainer.gpu_ids`` or ``trainer.n_gpus_per_node`` ×
``trainer.nnodes``), or ``ray.cpu_ranks`` when training on the CPU. Ranks run as Ray actors
when ``ray.enabled`` (default: on GPU) and as local spawned processes otherwise. Whatever
starts here is stopped by ``close()``, and at interpreter exit if the run could not call it.
"""

from __future__ import annotations

import atexit
from typing import Any

from userrl_core import hookimpl
from userrl_core.config.sections import section_settings
from userrl_core.types import Requirements
from userrl_plugins.backends.ray_settings import RayConfig

# torch is imported inside the factory: listing plugins stays fast.

DESCRIPTION = (
    "FSDP2 (fully_shard per decoder layer, bf16 compute with fp32 reduction on GPU, param/optimizer/"
    "activation offload, DCP resume). Verified here: 2 CPU ranks over gloo, as local processes and as Ray "
    "actors, match single-process training. Not verified here: CUDA/NCCL on GPUs."
)


def ray_settings(config: Any) -> RayConfig:
    """The recipe's ``ray`` section (this plugin owns it)."""
    return section_settings(config, "ray", RayConfig)


def training_world(config: Any) -> tuple[int, bool]:
    """(ranks, on GPU) for a config."""
    trainer = config.trainer
    gpus = len(trainer.gpu_ids) if trainer.gpu_ids else trainer.n_gpus_per_node * trainer.nnodes
    on_gpu = trainer.device != "cpu" and gpus > 0
    return (gpus, True) if on_gpu else (ray_settings(config).cpu_ranks, False)


def make_training_backend(*, config: Any, total_steps: int | None = None, **kwargs: Any) -> Any:
    from userrl_core.errors import ConfigError
    from userrl_core.models import resolve_model_path
    from userrl_plugins.backends.fsdp_backend import FSDPTrainingBackend
    from userrl_plugins.backends.rank_processes import LocalRankGroup
    from userrl_plugins.backends.torch_policy import load_tokenizer

    model_dir = str(resolve_model_path(config.model.path))
    tokenizer_dir = str(resolve_model_path(config.model.tokenizer_path)) if config.model.tokenizer_path else model_dir
    world, on_gpu = training_world(config)
    if config.trainer.device != "cpu" and not on_gpu:
        # Without GPU ranks the world is ray.cpu_ranks, and every rank would try cuda:<rank>.
        raise ConfigError(
            f"trainer.device={config.trainer.device!r} with actor.backend=fsdp needs trainer.n_gpus_per_node "
            "(or trainer.gpu_ids) to say how many GPU ranks to start; it is 0"
        )
    enabled = ray_settings(config).enabled
    use_ray = enabled if enabled is not None else on_gpu
    if use_ray:
        from userrl_plugins.backends.ray_placement import RayRankGroup

        group: Any = RayRankGroup(config, model_dir, world=world, use_gpus=on_gpu, total_steps=total_steps)
    else:
        group = LocalRankGroup(config, model_dir, world=world, total_steps=total_steps)
    atexit.register(group.shutdown)
    tokenizer = load_tokenizer(tokenizer_dir, chat_template=config.model.chat_template,
                               trust_remote_code=config.model.trust_remote_code)
    return FSDPTrainingBackend(group, tokenizer, on_close=lambda: atexit.unregister(group.shutdown))


def _requirements(config: Any) -> Requirements:
    """Ray, when the ranks run as Ray actors (``ray.enabled``; by default on GPUs)."""
    _, on_gpu = training_world(config)
    enabled = ray_settings(config).enabled
    if (enabled if enabled is not None else on_gpu):
        return Requirements(modules={"ray": "pip install 'userrl[ray]'"}, why="the fsdp backend places GPU ranks with Ray")
    return Requirements()


make_training_backend.requirements = _requirements  # type: ignore[attr-defined]


@hookimpl
def register_settings(register: Any) -> None:
    register("ray", RayConfig, description="Ray cluster and placement of the fsdp backend's ranks.")


@hookimpl
def register_backends(register):
    register("training", "fsdp", make_training_backend, description=DESCRIPTION)
