"""The ``sglang`` rollout backend plugin (``pip install 'userrl[sglang]'``, CUDA only).

Lists as unavailable where the ``sglang`` module is missing. The engine is started with
``mem_fraction_static = rollout.gpu_memory_utilization`` and ``enable_memory_saver`` (needed
for releasing memory during training); the training backend's ``before_training`` callbacks
get the rollout's ``release_memory``.
"""

from __future__ import annotations

from typing import Any

from userrl_core import hookimpl
from userrl_plugins.backends.sglang_backend import SGLangRollout

USERRL_REQUIRES = {"sglang": "pip install 'userrl[sglang]' (needs CUDA)"}

DESCRIPTION = (
    "Colocated SGLang engine (hybrid engine): async per-episode generation, memory released during training, "
    "weights pushed in buckets after each update. Verified here: the adapter's logic against a recording "
    "double on CPU. Not verified here: a real SGLang engine on a GPU."
)


def make_rollout_backend(*, config: Any, trainer: Any = None, **kwargs: Any) -> SGLangRollout:
    import sglang

    from userrl_core.models import resolve_model_path

    model_dir = str(resolve_model_path(config.model.path))
    engine = sglang.Engine(
        model_path=model_dir,
        mem_fraction_static=config.rollout.gpu_memory_utilization,
        tp_size=config.rollout.tensor_model_parallel_size,
        enable_memory_saver=True,
        random_seed=config.trainer.seed,
        trust_remote_code=config.model.trust_remote_code,
    )
    tokenizer = trainer.tokenizer if trainer is not None else None
    rollout = SGLangRollout(engine, tokenizer)
    callbacks = getattr(trainer, "before_training", None)
    if callbacks is not None:
        callbacks.append(rollout.release_memory)
    return rollout


@hookimpl
def register_backends(register):
    register("rollout", "sglang", make_rollout_backend, description=DESCRIPTION)
