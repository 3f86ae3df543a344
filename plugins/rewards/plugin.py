"""Built-in reward methods: UserRL's turn credits and trajectory scores, plus honest mean/sum.

Recipes pick them by name (``algorithm.turn_credit``, ``algorithm.trajectory_score``); another
plugin can add methods of its own through the same ``register_rewards`` hook.
"""

from __future__ import annotations

from userrl_core import hookimpl
from userrl_core.algorithms import credits, scores


@hookimpl
def register_rewards(register):
    register(
        "turn_credit",
        "Equalized",
        credits.equalized,
        description="Every turn gets credit 1 (UserRL Equalized).",
    )
    register(
        "turn_credit",
        "R2G",
        credits.reward_to_go,
        description="Discounted reward-to-go per turn: c_k = r_k + gamma * c_(k+1) (UserRL R2G).",
    )
    register(
        "turn_credit",
        "EM",
        credits.exponential_map,
        description="0.5 + 0.5 * (1 - e^(-2r)) / (1 - e^(-2)), rounded to 4 decimals (UserRL EM).",
    )
    register(
        "trajectory_score",
        "Sum",
        scores.userrl_sum,
        description="UserRL's 'Sum': in fact the MEAN of the turn rewards, rounded to 4 decimals.",
    )
    register(
        "trajectory_score",
        "R2G",
        scores.reward_to_go_score,
        description="Discounted return from the first turn: sum_k gamma^k r_k (UserRL R2G).",
    )
    register("trajectory_score", "mean", scores.mean_reward, description="Mean of the turn rewards.")
    register("trajectory_score", "sum", scores.sum_reward, description="Sum of the turn rewards.")
