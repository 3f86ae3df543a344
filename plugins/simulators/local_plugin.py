"""Entry point of the ``local`` simulator plugin (torch and the model load only when a run builds it)."""

from __future__ import annotations

from typing import Any

from userrl_core import hookimpl

from .local_settings import RENAMED, LocalSimulatorSettings


def _build(*, config: Any, **kwargs: Any) -> Any:
    from .local_simulator import build_local_simulator

    return build_local_simulator(config=config, **kwargs)


_build.settings_model = LocalSimulatorSettings  # type: ignore[attr-defined]  # owns simulator.local
_build.settings_renamed = RENAMED  # type: ignore[attr-defined]


@hookimpl
def register_simulators(register: Any) -> None:
    register(
        "local",
        _build,
        description="Offline simulator and judge (no key, no network): all-MiniLM-L6-v2 similarity between the "
        "question and each missing detail; replies from the detail's example options.",
    )
