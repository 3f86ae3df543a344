"""Trajectory-score methods: hand-computed tables, UserRL's 'Sum' (a rounded mean) to the bit, registration."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from userrl_core.algorithms import scores
from userrl_core.plugins import get_plugin_manager
from userrl_core.registry import Kind

# Four episodes, three slots. Row 2 has two turns (its padded 5.0 must be ignored); row 4 has none.
REWARDS = torch.tensor(
    [[0.2, 0.0, 1.0], [0.7, 0.1, 5.0], [1.0, 0.0, 0.0], [3.0, 3.0, 3.0]], dtype=torch.float64
)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=torch.float64)


def test_userrl_sum_is_the_mean_rounded_to_four_decimals():
    # (0.2 + 0 + 1) / 3 = 0.4; (0.7 + 0.1) / 2 = 0.4; (1 + 0 + 0) / 3 = 0.333333 -> 0.3333; no turns -> 0
    got = scores.userrl_sum(REWARDS, MASK)
    assert got.tolist() == pytest.approx([0.4, 0.4, 0.3333, 0.0], abs=1e-12)


@pytest.mark.parametrize(
    "rewards, expected",
    [
        # 0.1 / 16 is 0.00625000000000000035 in binary: Python's round gives 0.0063; rounding
        # 62.5 (= 0.00625 * 10**4 in floating point) half-to-even would give 0.0062.
        ([0.1] + [0.0] * 15, 0.0063),
        # 4.13 / 8 = 0.51625 (binary value just above): 0.5162 in UserRL; torch's sum + round gave 0.5163.
        ([0.98, 0.45, 0.67, 0.12, 0.01, 0.59, 0.76, 0.55], 0.5162),
        # A plain left-to-right sum gives 3.7899999999999996 (-> 0.4737); CPython 3.12's
        # compensated sum, which UserRL runs on, gives 3.79 (-> 0.4738).
        ([0.17, 0.08, 0.1, 0.93, 0.94, 0.36, 0.83, 0.38], 0.4738),
        # IntentionGym's 0.7 - 0.2 is 0.49999999999999994, not 0.5; kept as UserRL keeps it.
        ([0.49999999999999994, 0.0], 0.25),
    ],
)
def test_userrl_sum_is_userrls_exact_number(rewards, expected):
    k = 16
    padded = torch.zeros(2, k, dtype=torch.float64)
    mask = torch.zeros(2, k)
    padded[0, : len(rewards)] = torch.tensor(rewards, dtype=torch.float64)
    mask[0, : len(rewards)] = 1
    padded[1, 0] = 1.0  # a second episode, so the batch is vectorised over rows
    mask[1, 0] = 1
    assert scores.userrl_sum(padded, mask).tolist() == [expected, 1.0]


def _cpython_sum(values: list[float]) -> float:
    """CPython 3.12's ``sum`` over floats, transcribed from Python/bltinmodule.c ``builtin_sum_impl``
    (float fast path: Neumaier compensation, compensation added at the end when finite)."""
    if not values:
        return 0.0
    total, compensation = 0 + values[0], 0.0
    for x in values[1:]:
        added = total + x
        if abs(total) >= abs(x):
            compensation += (total - added) + x
        else:
            compensation += (x - added) + total
        total = added
    if compensation and math.isfinite(compensation):
        total += compensation
    return total


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.lists(st.floats(0, 1), min_size=0, max_size=16), min_size=1, max_size=6))
def test_userrl_sum_equals_python_round_of_python_sum(rows):
    k = max(len(r) for r in rows) or 1
    rewards = torch.zeros(len(rows), k, dtype=torch.float64)
    mask = torch.zeros(len(rows), k)
    for i, row in enumerate(rows):
        rewards[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
        mask[i, : len(row)] = 1.0
    got = scores.userrl_sum(rewards, mask).tolist()
    for i, row in enumerate(rows):
        # UserRL (verl/trainer/ppo/core_algos.py, compute_turn_credits):
        # round(sum(turn_rewards) / len(turn_rewards), 4) if turn_rewards else 0.0
        total = sum(row) if sys.version_info >= (3, 12) else _cpython_sum(row)
        assert got[i] == (round(total / len(row), 4) if row else 0.0)
        assert scores.python_float_sum(rewards[i : i + 1]).item() == _cpython_sum(row)


def test_mean_is_not_rounded():
    got = scores.mean_reward(REWARDS, MASK)
    assert got.tolist() == pytest.approx([0.4, 0.4, 1.0 / 3.0, 0.0], abs=1e-12)
    assert got[2].item() != pytest.approx(0.3333, abs=1e-6)


def test_sum_is_a_sum():
    # 0.2 + 0 + 1 = 1.2; 0.7 + 0.1 = 0.8; 1; no turns -> 0
    assert scores.sum_reward(REWARDS, MASK).tolist() == pytest.approx([1.2, 0.8, 1.0, 0.0], abs=1e-12)


@pytest.mark.parametrize(
    "gamma, expected",
    [
        # 0.2 + 0.8 * 0 + 0.64 * 1 = 0.84; 0.7 + 0.8 * 0.1 = 0.78; 1; 0
        (0.8, [0.84, 0.78, 1.0, 0.0]),
        # gamma 1 is the plain sum
        (1.0, [1.2, 0.8, 1.0, 0.0]),
        # gamma 0 keeps the first turn's reward only
        (0.0, [0.2, 0.7, 1.0, 0.0]),
    ],
)
def test_reward_to_go_score_table(gamma, expected):
    assert scores.reward_to_go_score(REWARDS, MASK, gamma=gamma).tolist() == pytest.approx(expected, abs=1e-12)


def test_float32_in_float32_out():
    got = scores.userrl_sum(REWARDS.float(), MASK)
    assert got.dtype == torch.float32


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.lists(st.floats(0, 1), min_size=0, max_size=6), min_size=1, max_size=5),
    gamma=st.floats(0.0, 1.0),
)
def test_scores_match_userrl_loop_definitions(rows, gamma):
    k = max(len(r) for r in rows) or 1
    rewards = torch.full((len(rows), k), -7.0, dtype=torch.float64)
    mask = torch.zeros(len(rows), k)
    for i, row in enumerate(rows):
        rewards[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
        mask[i, : len(row)] = 1.0
    userrl = scores.userrl_sum(rewards, mask)
    r2g = scores.reward_to_go_score(rewards, mask, gamma=gamma)
    for i, row in enumerate(rows):
        # UserRL: round(sum(turn_rewards) / len(turn_rewards), 4) if turn_rewards else 0.0
        assert userrl[i].item() == pytest.approx(round(sum(row) / len(row), 4) if row else 0.0, abs=1e-9)
        # UserRL: walk the turns backwards, score = r + gamma * score
        expected = 0.0
        for r in reversed(row):
            expected = r + gamma * expected
        assert r2g[i].item() == pytest.approx(expected, abs=1e-9)


def test_trajectory_score_methods_are_registered():
    registry = get_plugin_manager(fresh=True).registry
    rewards = torch.tensor([[0.4, 0.0, 1.0], [0.7, 0.5, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    for name, fn in {"Sum": scores.userrl_sum, "R2G": scores.reward_to_go_score,
                     "mean": scores.mean_reward, "sum": scores.sum_reward}.items():
        registered = registry.get(Kind.TRAJECTORY_SCORE, name)  # imported lazily on first call
        assert registered.__name__ == fn.__name__
        assert torch.equal(registered(rewards, mask, gamma=0.8), fn(rewards, mask, gamma=0.8))
    assert "MEAN" in registry.entry(Kind.TRAJECTORY_SCORE, "Sum").description
