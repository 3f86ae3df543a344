"""Turn-credit methods: how much of an episode's advantage each agent turn receives.

Every method has the signature of ``userrl_core.types.TurnCreditFn``::

    fn(rewards: Tensor[E, K], turn_mask: Tensor[E, K], *, gamma: float = 1.0, **kwargs) -> Tensor[E, K]

``rewards[e, k]`` is the reward the environment gave agent turn ``k`` of episode ``e``;
``turn_mask[e, k]`` is 1 for a real turn and 0 for padding (episodes have different numbers
of turns). The result is a float tensor of the rewards' dtype, 0 wherever the mask is 0.

The credits are relative weights: :func:`userrl_core.algorithms.advantages.grpo_multiturn_advantages`
rescales them so that their token-weighted mean equals the episode's normalised score. Only
their ratios (and whether they sum to 0) matter.

The three methods and their numbers are UserRL's (``compute_turn_credits`` in its verl fork):

- ``Equalized``: every real turn gets 1.
- ``R2G``: discounted reward-to-go, ``c_k = r_k + gamma * c_{k+1}`` (last turn: ``c = r``).
- ``EM``: an exponential map of the turn reward onto [0.5, 1] for rewards in [0, 1],
  ``0.5 + 0.5 * (1 - exp(-2 r)) / (1 - exp(-2))``, rounded to 4 decimals as UserRL does.
"""

from __future__ import annotations

import math

import torch

__all__ = ["equalized", "reward_to_go", "exponential_map", "discounted_reward_to_go"]

# UserRL maps EM rewards with curvature k = 2: 0.5 + 0.5 * (1 - e^(-k r)) / (1 - e^(-k)).
EM_CURVATURE = 2.0
# UserRL rounds EM credits and its "Sum" score to 4 decimals; kept so recipes reproduce its numbers.
USERRL_DECIMALS = 4


def _float_inputs(rewards: torch.Tensor, turn_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    """Check shapes and return (rewards, mask) as float64 plus the dtype to hand results back in."""
    if rewards.dim() != 2 or turn_mask.shape != rewards.shape:
        raise ValueError(
            f"rewards and turn_mask must both be [episodes, turns]; got {tuple(rewards.shape)} "
            f"and {tuple(turn_mask.shape)}"
        )
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.get_default_dtype()
    mask = (turn_mask != 0).to(torch.float64)
    return rewards.to(torch.float64) * mask, mask, out_dtype


def discounted_reward_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """``g_k = r_k + gamma * g_{k+1}`` along the last axis, 0 where ``mask`` is 0 (float64 in, float64 out).

    Vectorised as a matrix product with the upper-triangular discount matrix
    ``D[k, j] = gamma^(j-k)`` for ``j >= k``, so there is no loop over turns. Padded turns carry
    reward 0, so they add nothing to earlier turns' returns.
    """
    k = rewards.shape[-1]
    idx = torch.arange(k, dtype=torch.float64, device=rewards.device)
    offset = idx.unsqueeze(0) - idx.unsqueeze(1)  # offset[k, j] = j - k
    upper = offset >= 0
    # 0 ** 0 = 1 in torch, which gives gamma = 0 its meaning (each turn keeps only its own reward).
    discount = torch.where(upper, torch.pow(torch.tensor(float(gamma), dtype=torch.float64), offset.clamp(min=0)), 0.0)
    return (rewards * mask) @ discount.T * mask


def equalized(rewards: torch.Tensor, turn_mask: torch.Tensor, *, gamma: float = 1.0, **kwargs) -> torch.Tensor:
    """UserRL ``Equalized``: credit 1 for every real turn, whatever its reward."""
    _, mask, out_dtype = _float_inputs(rewards, turn_mask)
    return mask.to(out_dtype)


def reward_to_go(rewards: torch.Tensor, turn_mask: torch.Tensor, *, gamma: float = 1.0, **kwargs) -> torch.Tensor:
    """UserRL ``R2G``: discounted reward-to-go per turn, ``c_k = sum_{j>=k} gamma^(j-k) r_j``."""
    r, mask, out_dtype = _float_inputs(rewards, turn_mask)
    return discounted_reward_to_go(r, mask, gamma).to(out_dtype)


def exponential_map(rewards: torch.Tensor, turn_mask: torch.Tensor, *, gamma: float = 1.0, **kwargs) -> torch.Tensor:
    """UserRL ``EM``: ``round(0.5 + 0.5 * (1 - e^(-2r)) / (1 - e^(-2)), 4)`` per real turn.

    A reward of 0 maps to 0.5 and 1 to 1.0, so a turn with no reward still gets half the credit
    of a fully rewarded one. Rewards outside [0, 1] extrapolate the same curve (UserRL does not
    clip either).
    """
    r, mask, out_dtype = _float_inputs(rewards, turn_mask)
    mapped = 0.5 + 0.5 * (-torch.expm1(-EM_CURVATURE * r)) / (-math.expm1(-EM_CURVATURE))
    return (torch.round(mapped, decimals=USERRL_DECIMALS) * mask).to(out_dtype)
