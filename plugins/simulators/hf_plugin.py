"""Entry point of the ``hf`` simulator plugin (torch and the model load only when a run builds it)."""

from __future__ import annotations

from typing import Any

from userrl_core import hookimpl


def _build(*, config: Any, **kwargs: Any) -> Any:
    from .hf_simulator import build_hf_simulator

    return build_hf_simulator(config=config, **kwargs)


@hookimpl
def register_simulators(register: Any) -> None:
    register(
        "hf",
        _build,
        description="Offline chat-model simulator and judge for any environment (no key, no network): a "
        "transformers model in-process, SmolLM2-135M-Instruct by default, concurrent requests batched. Weak: "
        "it exists so every path runs for real.",
    )
