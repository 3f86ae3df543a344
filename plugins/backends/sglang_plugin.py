"""The ``sglang`` rollout backend plugin (``pip install 'userrl[sglang]'``, CUDA only).

Lists as unavailable where the ``sglang`` module is missing. It needs the ``fsdp`` training
backend: every training rank starts its own engine inside its own process, on its own GPU and
ports (``userrl_plugins.backends.sglang_backend``), and the training backend's ``before_training``
callbacks get the rollout's ``release_memory``.
"""

from __future__ import annotations

from typing import Any

from userrl_core import hookimpl
from userrl_core.errors import ConfigError
from userrl_core.types import Requirements
from userrl_plugins.backends.sglang_backend import SGLangRollout

USERRL_REQUIRES = {"sglang": "pip install 'userrl[sglang]' (needs CUDA)"}

DESCRIPTION = (
    "Colocated SGLang engines, one per training rank on that rank's GPU (hybrid engine): requests routed to the "
    "least-busy engine, memory released during training, weights pushed per rank in buckets after each update. "
    "Verified here: the adapter in 2 CPU ranks against a double that keeps the real engine's contract. "
    "Not verified here: a real SGLang engine on a GPU."
)

ENGINE_BASE_PORT = 30000  # rank r's engine listens from 30000 + 10 r (as UserRL's verl fork: 30000 + rank)


def make_rollout_backend(*, config: Any, trainer: Any = None, engine_factory: str = "sglang:Engine",
                         **kwargs: Any) -> SGLangRollout:
    """``engine_factory`` names the engine class (``module:attribute``); the tests pass the double."""
    from userrl_core.models import resolve_model_path

    if trainer is None or not hasattr(trainer, "start_engines"):
        raise ConfigError(
            f"rollout.backend: sglang runs one engine inside each training rank and needs actor.backend: fsdp "
            f"(got actor.backend: {config.actor.backend})"
        )
    if config.rollout.tensor_model_parallel_size != 1:
        raise ConfigError(
            f"rollout.tensor_model_parallel_size: {config.rollout.tensor_model_parallel_size} is not supported by "
            "rollout.backend: sglang, which runs one engine per training rank on that rank's own GPU (use 1)"
        )
    model_dir = str(resolve_model_path(config.model.path))
    placed = trainer.start_engines({"factory": engine_factory, "config": config, "model_dir": model_dir,
                                    "base_port": ENGINE_BASE_PORT})
    rollout = SGLangRollout(trainer, trainer.tokenizer, world=len(placed))
    rollout.placement = placed
    trainer.before_training.append(rollout.release_memory)
    return rollout


def _requirements(config: Any) -> Requirements:
    # the engine's memory is released and resumed through torch_memory_saver, which sglang does not require
    hint = "pip install 'userrl[sglang]' (needs a CUDA machine)"
    return Requirements(modules={"sglang": hint, "torch_memory_saver": hint},
                        gpu_memory_fraction=config.rollout.gpu_memory_utilization,
                        why="a colocated SGLang engine per training GPU")


make_rollout_backend.requirements = _requirements  # type: ignore[attr-defined]


@hookimpl
def register_backends(register):
    register("rollout", "sglang", make_rollout_backend, description=DESCRIPTION)
