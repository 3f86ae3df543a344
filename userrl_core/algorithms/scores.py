"""Trajectory-score methods: one number per episode, compared within its GRPO group.

Every method has the signature of ``userrl_core.types.TrajectoryScoreFn``::

    fn(rewards: Tensor[E, K], turn_mask: Tensor[E, K], *, gamma: float = 1.0, **kwargs) -> Tensor[E]

``rewards`` and ``turn_mask`` are as for turn credits (see :mod:`userrl_core.algorithms.credits`).
An episode without a single real turn scores 0 under every method.

- ``Sum`` (UserRL's name, kept for its recipes): **the mean** of the turn rewards, rounded to
  4 decimals. UserRL's ``compute_turn_credits`` computes
  ``round(sum(turn_rewards) / len(turn_rewards), 4)`` under the name "Sum"; a recipe that says
  ``Sum`` gets exactly that number here, so results carry over. Use ``mean`` or ``sum`` when you
  mean what the word says.
- ``R2G``: the discounted return from the first turn, ``sum_k gamma^k r_k`` (UserRL's ``R2G``).
- ``mean``: the mean of the turn rewards, not rounded.
- ``sum``: the sum of the turn rewards.
"""

from __future__ import annotations

import torch

from userrl_core.algorithms.credits import USERRL_DECIMALS, _float_inputs, discounted_reward_to_go

__all__ = ["userrl_sum", "reward_to_go_score", "mean_reward", "sum_reward"]


def _turn_counts(mask: torch.Tensor) -> torch.Tensor:
    return mask.sum(dim=-1)


def mean_reward(rewards: torch.Tensor, turn_mask: torch.Tensor, *, gamma: float = 1.0, **kwargs) -> torch.Tensor:
    """Mean of the real turns' rewards (0 for an episode without turns)."""
    r, mask, out_dtype = _float_inputs(rewards, turn_mask)
    counts = _turn_counts(mask)
    mean = r.sum(dim=-1) / counts.clamp(min=1.0)
    return mean.to(out_dtype)


def sum_reward(rewards: torch.Tensor, turn_mask: torch.Tensor, *, gamma: float = 1.0, **kwargs) -> torch.Tensor:
    """Sum of the real turns' rewards."""
    r, _, out_dtype = _float_inputs(rewards, turn_mask)
    return r.sum(dim=-1).to(out_dtype)


def userrl_sum(rewards: torch.Tensor, turn_mask: torch.Tensor, *, gamma: float = 1.0, **kwargs) -> torch.Tensor:
    """UserRL's ``Sum``: the *mean* of the turn rewards rounded to 4 decimals (see module docstring)."""
    r, mask, out_dtype = _float_inputs(rewards, turn_mask)
    mean = r.sum(dim=-1) / _turn_counts(mask).clamp(min=1.0)
    return torch.round(mean, decimals=USERRL_DECIMALS).to(out_dtype)


def reward_to_go_score(rewards: torch.Tensor, turn_mask: torch.Tensor, *, gamma: float = 1.0, **kwargs) -> torch.Tensor:
    """UserRL's ``R2G`` score: the discounted return seen from the first turn, ``sum_k gamma^k r_k``."""
    r, mask, out_dtype = _float_inputs(rewards, turn_mask)
    if r.shape[-1] == 0:
        return torch.zeros(r.shape[0], dtype=out_dtype, device=r.device)
    return discounted_reward_to_go(r, mask, gamma)[:, 0].to(out_dtype)
