"""Group-normalised multi-turn advantages: UserRL's ``grpo_multiturn`` estimator, vectorised.

The algorithm, for a batch of ``E`` episodes with ``K`` turn slots and ``T`` token positions:

1. **Turn credits** ``c[e, k]`` come from a turn-credit method (``Equalized``, ``R2G``, ``EM``,
   see :mod:`userrl_core.algorithms.credits`); **scores** ``s[e]`` from a trajectory-score
   method (``Sum``, ``R2G``, ``mean``, ``sum``, see :mod:`userrl_core.algorithms.scores`).
2. **Group baseline.** Episodes that share a group id (the ``rollout.n`` samples of one task)
   form a GRPO group. Each episode's normalised score is
   ``A[e] = (s[e] - mean_g) / (std_g + eps)`` (``norm_by_std=True``) or ``s[e] - mean_g``,
   where ``std_g`` is the unbiased (n - 1) standard deviation, as ``torch.std`` gives.
3. **Token credits.** Every token the policy sampled in turn ``k`` gets ``c[e, k]``; tokens
   the policy did not sample (prompt, user and tool replies, padding; ``token_turn == -1``)
   get 0 and stay 0.
4. **Rescaling.** Each episode's token credits are multiplied by ``A[e] * N[e] / S[e]``, where
   ``S[e]`` is the sum of its token credits and ``N[e]`` the number of its tokens with a
   non-zero credit. Afterwards the mean of the episode's non-zero token advantages is exactly
   ``A[e]``; the credits only decide how that advantage is spread over the turns.

UserRL behaviours kept, so that recipes written for UserRL give the same numbers:

- ``eps = 1e-6`` is added to the group std (not to the variance).
- A group with a single member uses mean 0 and std 1, so its episode's advantage is its raw
  score ``s / (1 + eps)`` (or ``s`` without std), not 0. This matters when excluded episodes
  (``algorithm.exclude_failed: episode``) leave one survivor in a group.
- An episode whose token credits sum to 0 gets advantage 0 on every token, whatever its score.
  With ``R2G`` credits an episode that earned no reward at all therefore gets no gradient,
  even when its group did better; with credits that cancel (+1, -1) likewise.
- The mean in step 4 is over tokens, so a long turn weighs more than a short one.
- A token mapped to a turn slot whose turn mask is 0 gets credit 0 (UserRL gives 0 to turns it
  has no record of).

What differs from UserRL, on purpose: no Python loop over episodes or tokens (gather, scatter
and segment sums instead); the statistics are computed in float64 (UserRL: float32, which
differs by ~1e-5 relative, ~1e-3 in near-tied groups, and gives an all-tied group a small
common advantage where float64 gives ~0; figures in docs/algorithms.md); episodes whose
simulator call failed never reach this function (the trainer drops them, or their whole group,
beforehand, and reports how many), where UserRL turned such failures into reward 0.
"""

from __future__ import annotations

import torch

__all__ = ["group_normalized_scores", "token_credits", "grpo_multiturn_advantages"]


def group_normalized_scores(
    scores: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Per-episode ``(s - group mean) / (group std + eps)`` (float64, shape ``[E]``).

    Groups are the distinct values of ``group_ids`` (any integers, in any order). Single-member
    groups use mean 0 and std 1, as UserRL does.
    """
    if scores.dim() != 1 or group_ids.shape != scores.shape:
        raise ValueError(
            f"scores and group_ids must both be [episodes]; got {tuple(scores.shape)} and {tuple(group_ids.shape)}"
        )
    s = scores.to(torch.float64)
    bad = (~torch.isfinite(s)).nonzero().flatten()
    if bad.numel():
        raise ValueError(f"trajectory scores must be finite; episode(s) {bad.tolist()} are not")
    if s.numel() == 0:
        return s
    _, member_of = torch.unique(group_ids, return_inverse=True)
    n_groups = int(member_of.max()) + 1
    zeros = torch.zeros(n_groups, dtype=torch.float64, device=s.device)
    count = zeros.index_add(0, member_of, torch.ones_like(s))
    mean = zeros.index_add(0, member_of, s) / count
    squares = zeros.index_add(0, member_of, (s - mean[member_of]) ** 2)
    std = torch.sqrt(squares / (count - 1).clamp(min=1))
    single = count == 1
    mean = torch.where(single, 0.0, mean)
    std = torch.where(single, 1.0, std)
    centred = s - mean[member_of]
    return centred / (std[member_of] + eps) if norm_by_std else centred


def _check_shapes(token_turn: torch.Tensor, turn_credits: torch.Tensor) -> None:
    if token_turn.dim() != 2 or turn_credits.dim() != 2 or token_turn.shape[0] != turn_credits.shape[0]:
        raise ValueError(
            f"token_turn must be [episodes, tokens] and turn_credits [episodes, turns] with the same "
            f"episodes; got {tuple(token_turn.shape)} and {tuple(turn_credits.shape)}"
        )
    n_turns = turn_credits.shape[1]
    if token_turn.numel():
        low, high = torch.aminmax(token_turn)
        if low < -1 or high >= n_turns:
            raise ValueError(
                f"token_turn holds turn indices in [{int(low)}, {int(high)}] but turn_credits has "
                f"{n_turns} turn slots (valid: -1 for non-policy tokens, 0..{n_turns - 1})"
            )


def token_credits(token_turn: torch.Tensor, turn_credits: torch.Tensor) -> torch.Tensor:
    """Spread turn credits ``[E, K]`` onto tokens ``[E, T]`` (float64; 0 where ``token_turn`` is -1)."""
    _check_shapes(token_turn, turn_credits)
    n_turns = turn_credits.shape[1]
    credits = turn_credits.to(torch.float64)
    if not torch.isfinite(credits).all():
        raise ValueError("turn credits must be finite")
    sampled = token_turn >= 0
    if n_turns == 0:
        return torch.zeros(token_turn.shape, dtype=torch.float64, device=token_turn.device)
    gathered = torch.gather(credits, 1, token_turn.clamp(min=0).long())
    return torch.where(sampled, gathered, 0.0)


def grpo_multiturn_advantages(
    token_turn: torch.Tensor,
    turn_credits: torch.Tensor,
    scores: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    norm_by_std: bool = True,
    eps: float = 1e-6,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Token advantages ``[E, T]`` of UserRL's ``grpo_multiturn`` (see the module docstring).

    :param token_turn: ``[E, T]`` index of the agent turn that sampled each token, -1 for tokens
        the policy did not sample (prompt, environment replies, padding).
    :param turn_credits: ``[E, K]`` credits from a turn-credit method.
    :param scores: ``[E]`` trajectory scores.
    :param group_ids: ``[E]`` GRPO group of each episode (episodes of one task share it).
    :param norm_by_std: divide by the group std (+ ``eps``); off gives Dr.GRPO-style centring.
    :param dtype: dtype of the result (the statistics are computed in float64).
    :returns: advantages, 0 wherever ``token_turn`` is -1.
    """
    if scores.shape != (token_turn.shape[0],):
        raise ValueError(f"scores must be [{token_turn.shape[0]}] (one per episode); got {tuple(scores.shape)}")
    _check_shapes(token_turn, turn_credits)
    credits = turn_credits.to(torch.float64)
    if not torch.isfinite(credits).all():
        raise ValueError("turn credits must be finite")
    normalized = group_normalized_scores(scores, group_ids, norm_by_std=norm_by_std, eps=eps)
    # Everything per episode is computed in turn space ([E, K], small); the token tensor is read
    # twice (turn token counts, final lookup), which is what bounds this function's speed.
    slot = token_turn.long() + 1  # slot 0 collects the tokens the policy did not sample
    n_episodes, n_turns = credits.shape
    counts = torch.zeros(n_episodes, n_turns + 1, dtype=torch.float64, device=credits.device)
    counts.scatter_add_(1, slot, torch.ones(1, dtype=torch.float64, device=credits.device).expand(slot.shape))
    counts = counts[:, 1:]
    total = (credits * counts).sum(dim=1)
    nonzero = (counts * (credits != 0)).sum(dim=1)
    has_credit = total != 0
    scale = torch.where(has_credit, normalized * nonzero / torch.where(has_credit, total, 1.0), 0.0)
    per_turn = torch.zeros(n_episodes, n_turns + 1, dtype=dtype, device=credits.device)
    per_turn[:, 1:] = (credits * scale.unsqueeze(1)).to(dtype)
    return torch.gather(per_turn, 1, slot)
