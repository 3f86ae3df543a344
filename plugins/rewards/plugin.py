"""Built-in reward methods: UserRL's turn credits and trajectory scores, plus honest mean/sum.

Recipes pick them by name (``algorithm.turn_credit``, ``algorithm.trajectory_score``); another
plugin can add methods of its own through the same ``register_rewards`` hook.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from userrl_core import hookimpl


def _lazy(module: str, name: str) -> Callable[..., Any]:
    """The function ``userrl_core.algorithms.<module>.<name>``, imported on first call (the
    algorithms need torch; listing plugins should not pay for importing it)."""
    target: list[Callable[..., Any]] = []

    def call(*args: Any, **kwargs: Any) -> Any:
        if not target:
            target.append(getattr(importlib.import_module(f"userrl_core.algorithms.{module}"), name))
        return target[0](*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"userrl_core.algorithms.{module}.{name} (imported on first call)"
    return call


@hookimpl
def register_rewards(register):
    register(
        "turn_credit",
        "Equalized",
        _lazy("credits", "equalized"),
        description="Every turn gets credit 1 (UserRL Equalized).",
    )
    register(
        "turn_credit",
        "R2G",
        _lazy("credits", "reward_to_go"),
        description="Discounted reward-to-go per turn: c_k = r_k + gamma * c_(k+1) (UserRL R2G).",
    )
    register(
        "turn_credit",
        "EM",
        _lazy("credits", "exponential_map"),
        description="0.5 + 0.5 * (1 - e^(-2r)) / (1 - e^(-2)), rounded to 4 decimals (UserRL EM).",
    )
    register(
        "trajectory_score",
        "Sum",
        _lazy("scores", "userrl_sum"),
        description="UserRL's 'Sum': in fact the MEAN of the turn rewards, rounded to 4 decimals.",
    )
    register(
        "trajectory_score",
        "R2G",
        _lazy("scores", "reward_to_go_score"),
        description="Discounted return from the first turn: sum_k gamma^k r_k (UserRL R2G).",
    )
    register("trajectory_score", "mean", _lazy("scores", "mean_reward"), description="Mean of the turn rewards.")
    register("trajectory_score", "sum", _lazy("scores", "sum_reward"), description="Sum of the turn rewards.")
