"""IntentionGym's turn reward, as a pure function (the figures UserRL reports depend on it).

A question is rewarded for the most important detail it uncovers: 1.0 for importance 3, 0.7 for
2, 0.4 for 1. Each further detail uncovered by the same question costs ``multi_detail_penalty``
(0.2), because focused questions are the goal; that subtotal is floored at 0. The optional
``step_penalty`` is then subtracted for every question, and the result clipped to [0, 1]
(UserRL's ``normalize_rewards``, on by default there). Each repeat of a detail in the list
counts as one more detail (UserRL counts a judge's repeated index that way); the environment's
``duplicate_indices: ignore`` removes repeats before calling this.
"""

from __future__ import annotations

from collections.abc import Iterable

IMPORTANCE_REWARD: dict[int, float] = {3: 1.0, 2: 0.7, 1: 0.4}
DEFAULT_MULTI_DETAIL_PENALTY = 0.2


def turn_reward(
    covered_importances: Iterable[int],
    *,
    step_penalty: float = 0.0,
    multi_detail_penalty: float = DEFAULT_MULTI_DETAIL_PENALTY,
) -> float:
    """Reward of one question given the importances (1-3) of the details it newly covered
    (one entry per covered index the judge gave)."""
    importances = list(covered_importances)
    for value in importances:
        if value not in IMPORTANCE_REWARD:
            raise ValueError(f"importance must be 1, 2 or 3, got {value!r}")
    if importances:
        base = IMPORTANCE_REWARD[max(importances)]
        base = max(0.0, base - multi_detail_penalty * (len(importances) - 1))
    else:
        base = 0.0
    # Not rounded: UserRL's float arithmetic, bit for bit (0.7 - 0.2 is 0.49999999999999994 there
    # too), because the Sum trajectory score rounds the turns' mean and a last-bit difference
    # can decide a rounding tie.
    return max(0.0, min(1.0, base - step_penalty))
