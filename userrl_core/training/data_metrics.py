"""The step's reward and advantage statistics, with verl's meaning under verl's names.

verl's ``compute_data_metrics`` (verl/trainer/ppo/metric_utils.py, and UserRL's copy of it)
reports, over the sequences a step trains on:

* ``critic/score/*``: each sequence's sum of ``token_level_scores``; in UserRL's multi-turn
  runs the turn rewards are the scores, so this is the episode's **sum of turn rewards**;
* ``critic/rewards/*``: each sequence's sum of ``token_level_rewards`` (the scores minus an
  in-reward KL penalty, which this trainer never applies: the KL term is a loss, as with
  verl's ``use_kl_loss``), so the same sums;
* ``critic/advantages/*`` and ``critic/returns/*``: over the tokens of ``response_mask`` (the
  tokens the policy sampled); GRPO's returns are its advantages (verl's
  ``compute_grpo_outcome_advantage`` returns the same tensor twice).

The number GRPO actually compares within a group, the trajectory score of the recipe's
``algorithm.trajectory_score`` (UserRL's ``Sum`` is the mean of the turn rewards, rounded), is
ours, under ``userrl/trajectory_score/*``. docs/metrics.md lists every metric.
"""

from __future__ import annotations

from typing import Sequence

import torch

from userrl_core.types import Episode


def _stats(prefix: str, values: torch.Tensor) -> dict[str, float]:
    if values.numel() == 0:
        return {}
    values = values.to(torch.float64)
    return {f"{prefix}/mean": float(values.mean()), f"{prefix}/max": float(values.max()),
            f"{prefix}/min": float(values.min())}


def trained_batch_metrics(episodes: Sequence[Episode], trajectory_scores: torch.Tensor,
                          advantages: torch.Tensor, policy_mask: torch.Tensor) -> dict[str, float]:
    """``critic/score|rewards|advantages|returns/*`` and ``userrl/trajectory_score/*`` for the
    ``episodes`` a step trains on. ``advantages`` and ``policy_mask`` are token tensors of the
    same shape; the mask is 1 on the tokens the policy sampled."""
    turn_sums = torch.tensor([float(sum(e.turn_rewards)) for e in episodes], dtype=torch.float64)
    sampled = advantages[policy_mask.bool()]
    return {
        **_stats("critic/score", turn_sums),
        **_stats("critic/rewards", turn_sums),
        **_stats("critic/advantages", sampled),
        **_stats("critic/returns", sampled),
        **_stats("userrl/trajectory_score", trajectory_scores.reshape(-1)),
    }
