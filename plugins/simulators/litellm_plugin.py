"""Entry point of the ``litellm`` simulator plugin (LiteLLM is imported only when a run builds it)."""

from __future__ import annotations

from typing import Any

from userrl_core import hookimpl


def _build(*, config: Any, **kwargs: Any) -> Any:
    from .litellm_simulator import build_litellm_simulator

    return build_litellm_simulator(config=config, **kwargs)


@hookimpl
def register_simulators(register: Any) -> None:
    register(
        "litellm",
        _build,
        description="Any LiteLLM model as the simulated user and judge: DashScope (qwen-plus, qwen-turbo, "
        "qwen-max) or a local SGLang/vLLM OpenAI-compatible server.",
    )
