"""The ``transformers`` backends: rollout with HF ``generate`` and single-process torch training.

The embedded default (``rollout.backend: transformers``, ``actor.backend: transformers``):
CPU or one GPU (``trainer.device``), no extra dependencies. The rollout factory receives the
training backend as ``trainer=`` and samples from the very same model object.
"""

from __future__ import annotations

from typing import Any

from userrl_core import hookimpl

# torch and transformers are imported inside the factories: listing plugins stays fast.


def make_training_backend(*, config: Any, total_steps: int | None = None, **kwargs: Any) -> Any:
    """``total_steps`` (training steps in the run) sets the horizon of the LR schedule."""
    from userrl_plugins.backends.torch_policy import TorchPolicy

    return TorchPolicy.from_config(config, total_steps=total_steps)


def make_rollout_backend(*, config: Any, trainer: Any = None, **kwargs: Any) -> Any:
    """Share ``trainer``'s model and tokenizer when given; otherwise load ``model.path``."""
    from userrl_plugins.backends.torch_policy import load_causal_lm, load_tokenizer, resolve_device
    from userrl_plugins.backends.transformers_backend import TransformersRollout

    compute_dtype = None
    if trainer is not None and getattr(trainer, "model", None) is not None:
        model, tokenizer = trainer.model, trainer.tokenizer
        compute_dtype = getattr(trainer, "compute_dtype", None)
    else:
        from userrl_core.models import resolve_model_path

        model_dir = resolve_model_path(config.model.path)
        tokenizer_dir = resolve_model_path(config.model.tokenizer_path) if config.model.tokenizer_path else model_dir
        model = load_causal_lm(
            model_dir,
            dtype=config.model.dtype,
            device=resolve_device(config.trainer.device, config.trainer.gpu_ids),
            trust_remote_code=config.model.trust_remote_code,
        ).eval()
        tokenizer = load_tokenizer(
            tokenizer_dir, chat_template=config.model.chat_template, trust_remote_code=config.model.trust_remote_code
        )
    return TransformersRollout(
        model=model, tokenizer=tokenizer, generation_batch_size=config.rollout.generation_batch_size,
        compute_dtype=compute_dtype,
        batch_window_s=config.rollout.batch_window_ms / 1000.0,
    )


@hookimpl
def register_backends(register):
    register(
        "rollout", "transformers", make_rollout_backend,
        description="Hugging Face generate, batched and left-padded; CPU or one GPU; shares the training model.",
    )
    register(
        "training", "transformers", make_training_backend,
        description="Single-process torch PPO/GRPO updates (AdamW, micro-batch accumulation); CPU or one GPU.",
    )
