"""Trajectory-score methods: one number per episode, compared within its GRPO group.

Every method has the signature of ``userrl_core.types.TrajectoryScoreFn``::

    fn(rewards: Tensor[E, K], turn_mask: Tensor[E, K], *, gamma: float = 1.0, **kwargs) -> Tensor[E]

``rewards`` and ``turn_mask`` are as for turn credits (see :mod:`userrl_core.algorithms.credits`).
An episode without a single real turn scores 0 under every method.

- ``Sum`` (UserRL's name, kept for its recipes): **the mean** of the turn rewards, rounded to
  4 decimals. UserRL's ``compute_turn_credits`` computes
  ``round(sum(turn_rewards) / len(turn_rewards), 4)`` under the name "Sum"; a recipe that says
  ``Sum`` gets exactly that number here, bit for bit, so results carry over. Use ``mean`` or
  ``sum`` when you mean what the word says.

  Exactly means: the turn rewards are added in turn order the way CPython's ``sum`` adds floats
  on the Python UserRL runs on (3.12, whose ``sum`` compensates rounding errors with Neumaier's
  method; a plain left-to-right sum differs in the last bit often enough to move the rounded
  score by 1e-4 in about 1% of random episodes of up to 16 turns), divided by the turn count
  in float64, and rounded with Python's ``round(x, 4)`` (the exact binary value rounded
  correctly; ``torch.round`` on ``x * 10**4`` rounds 0.1 / 16 = 0.00625000000000000035 down to
  0.0062, UserRL gets 0.0063).
  The sum is vectorised over episodes (one pass per turn slot); the rounding is one Python
  ``round`` per episode. Exact needs float64 rewards (the trainer passes float64); float32 input
  has already lost the rewards' last bits.
- ``R2G``: the discounted return from the first turn, ``sum_k gamma^k r_k`` (UserRL's ``R2G``).
- ``mean``: the mean of the turn rewards, not rounded.
- ``sum``: the sum of the turn rewards.
"""

from __future__ import annotations

import torch

from userrl_core.algorithms.credits import USERRL_DECIMALS, _float_inputs, discounted_reward_to_go

__all__ = ["userrl_sum", "reward_to_go_score", "mean_reward", "sum_reward", "python_float_sum"]


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


def python_float_sum(values: torch.Tensor) -> torch.Tensor:
    """Row sums ``[E]`` of ``values [E, K]`` (float64) exactly as CPython 3.12+ ``sum`` adds a list of floats.

    Neumaier's compensated summation, in column order: ``t = s + x``; the rounding error of that
    addition, ``(s - t) + x`` or ``(x - t) + s`` (whichever operand is larger in magnitude comes
    first), is accumulated in ``c``; at the end ``s + c`` when ``c`` is finite and non-zero.
    Zeros (padded turn slots) leave both ``s`` and ``c`` unchanged, so padding anywhere in a row
    does not change its sum.
    """
    total = torch.zeros(values.shape[0], dtype=torch.float64, device=values.device)
    compensation = torch.zeros_like(total)
    for column in values.to(torch.float64).unbind(dim=-1):
        added = total + column
        compensation += torch.where(
            total.abs() >= column.abs(), (total - added) + column, (column - added) + total
        )
        total = added
    usable = (compensation != 0) & torch.isfinite(compensation)
    return torch.where(usable, total + compensation, total)


def userrl_sum(rewards: torch.Tensor, turn_mask: torch.Tensor, *, gamma: float = 1.0, **kwargs) -> torch.Tensor:
    """UserRL's ``Sum``: ``round(sum(turn_rewards) / len(turn_rewards), 4)``, bit for bit (see the module docstring)."""
    r, mask, out_dtype = _float_inputs(rewards, turn_mask)
    mean = python_float_sum(r) / _turn_counts(mask).clamp(min=1.0)
    rounded = [round(value, USERRL_DECIMALS) for value in mean.tolist()]
    return torch.tensor(rounded, dtype=torch.float64, device=r.device).reshape(mean.shape).to(out_dtype)


def reward_to_go_score(rewards: torch.Tensor, turn_mask: torch.Tensor, *, gamma: float = 1.0, **kwargs) -> torch.Tensor:
    """UserRL's ``R2G`` score: the discounted return seen from the first turn, ``sum_k gamma^k r_k``."""
    r, mask, out_dtype = _float_inputs(rewards, turn_mask)
    if r.shape[-1] == 0:
        return torch.zeros(r.shape[0], dtype=out_dtype, device=r.device)
    return discounted_reward_to_go(r, mask, gamma)[:, 0].to(out_dtype)
