"""Turn-credit methods: hand-computed tables, masking, and their registration by name."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from userrl_core.algorithms import credits
from userrl_core.plugins import get_plugin_manager
from userrl_core.registry import Kind

# Two episodes, three turn slots; the second episode has two turns. Its padded slot carries a
# reward of 5.0 on purpose: a padded slot must never leak into any credit.
REWARDS = torch.tensor([[0.2, 0.0, 1.0], [0.7, 0.1, 5.0]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.float64)


def test_equalized_gives_every_real_turn_one():
    expected = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
    assert credits.equalized(REWARDS, MASK, gamma=0.8).tolist() == expected


@pytest.mark.parametrize(
    "gamma, expected",
    [
        # gamma 0.8, episode 1: c2 = 1; c1 = 0 + 0.8 * 1 = 0.8; c0 = 0.2 + 0.8 * 0.8 = 0.84
        #            episode 2: c1 = 0.1; c0 = 0.7 + 0.8 * 0.1 = 0.78; padded slot 0
        (0.8, [[0.84, 0.8, 1.0], [0.78, 0.1, 0.0]]),
        # gamma 1: plain suffix sums: 0.2 + 0 + 1 = 1.2, 0 + 1 = 1, 1; 0.7 + 0.1 = 0.8, 0.1
        (1.0, [[1.2, 1.0, 1.0], [0.8, 0.1, 0.0]]),
        # gamma 0: each turn keeps only its own reward
        (0.0, [[0.2, 0.0, 1.0], [0.7, 0.1, 0.0]]),
        # gamma 0.5: c0 = 0.2 + 0.5 * (0 + 0.5 * 1) = 0.45; c1 = 0.5; 0.7 + 0.05 = 0.75
        (0.5, [[0.45, 0.5, 1.0], [0.75, 0.1, 0.0]]),
    ],
)
def test_reward_to_go_table(gamma, expected):
    got = credits.reward_to_go(REWARDS, MASK, gamma=gamma)
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize(
    "reward, expected",
    [
        (0.0, 0.5),  # 0.5 + 0.5 * (1 - 1) / (1 - e^-2) = 0.5
        (1.0, 1.0),  # 0.5 + 0.5 * (1 - e^-2) / (1 - e^-2) = 1.0
        # 1 - e^-1 = 0.632121; 1 - e^-2 = 0.864665; ratio 0.731059; 0.5 + 0.365529 = 0.865529 -> 0.8655
        (0.5, 0.8655),
        # 1 - e^-0.4 = 0.329680; / 0.864665 = 0.381281; 0.5 + 0.190640 = 0.690640 -> 0.6906
        (0.2, 0.6906),
        # 1 - e^-0.5 = 0.393469; / 0.864665 = 0.455054; 0.5 + 0.227527 = 0.727527 -> 0.7275
        (0.25, 0.7275),
        # 1 - e^-1.5 = 0.776870; / 0.864665 = 0.898464; 0.5 + 0.449232 = 0.949232 -> 0.9492
        (0.75, 0.9492),
    ],
)
def test_exponential_map_table(reward, expected):
    got = credits.exponential_map(torch.tensor([[reward]], dtype=torch.float64), torch.ones(1, 1))
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_exponential_map_masks_padding_and_rounds_to_four_decimals():
    got = credits.exponential_map(REWARDS, MASK)
    # 0.2 -> 0.6906, 0 -> 0.5, 1 -> 1.0; 0.7 -> 0.5 + 0.5 * (1 - 0.246597) / 0.864665 = 0.935661 -> 0.9357;
    # 0.1 -> 0.5 + 0.5 * (1 - 0.818731) / 0.864665 = 0.604820 -> 0.6048; padded slot 0
    expected = torch.tensor([[0.6906, 0.5, 1.0], [0.9357, 0.6048, 0.0]], dtype=torch.float64)
    assert torch.allclose(got, expected, atol=1e-12)
    assert torch.allclose(got * 1e4, torch.round(got * 1e4), atol=1e-6)


def test_credits_keep_float32_and_accept_bool_masks():
    rewards = REWARDS.float()
    got = credits.reward_to_go(rewards, MASK.bool(), gamma=0.8)
    assert got.dtype == torch.float32
    assert torch.allclose(got, torch.tensor([[0.84, 0.8, 1.0], [0.78, 0.1, 0.0]]), atol=1e-6)


def test_shape_mismatch_is_one_clear_error():
    with pytest.raises(ValueError, match=r"rewards and turn_mask must both be \[episodes, turns\]"):
        credits.equalized(REWARDS, MASK[:, :2])


def _loop_reward_to_go(rewards: list[float], gamma: float) -> list[float]:
    out, running = [], 0.0
    for r in reversed(rewards):
        running = r + gamma * running
        out.append(running)
    return out[::-1]


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.floats(-2, 2, allow_nan=False), min_size=0, max_size=6), min_size=1, max_size=5
    ),
    gamma=st.floats(0.0, 1.0),
)
def test_vectorised_credits_match_a_loop_over_turns(rows, gamma):
    k = max(len(r) for r in rows) or 1
    rewards = torch.full((len(rows), k), 9.0, dtype=torch.float64)  # padding holds junk on purpose
    mask = torch.zeros(len(rows), k, dtype=torch.float64)
    for i, row in enumerate(rows):
        rewards[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
        mask[i, : len(row)] = 1.0
    r2g = credits.reward_to_go(rewards, mask, gamma=gamma)
    em = credits.exponential_map(rewards, mask)
    for i, row in enumerate(rows):
        expected = _loop_reward_to_go(row, gamma) + [0.0] * (k - len(row))
        assert r2g[i].tolist() == pytest.approx(expected, abs=1e-9)
        em_expected = [
            round(0.5 + 0.5 * (1 - math.exp(-2 * r)) / (1 - math.exp(-2)), 4) for r in row
        ] + [0.0] * (k - len(row))
        assert em[i].tolist() == pytest.approx(em_expected, abs=1e-9)


def test_turn_credit_methods_are_registered_by_userrl_names():
    registry = get_plugin_manager(fresh=True).registry
    rewards = torch.tensor([[0.4, 0.0, 1.0], [0.7, 0.5, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    for name, fn in {"Equalized": credits.equalized, "R2G": credits.reward_to_go,
                     "EM": credits.exponential_map}.items():
        registered = registry.get(Kind.TURN_CREDIT, name)  # imported lazily on first call
        assert registered.__name__ == fn.__name__
        assert torch.equal(registered(rewards, mask, gamma=0.8), fn(rewards, mask, gamma=0.8))
    assert registry.entry(Kind.TURN_CREDIT, "EM").plugin == "rewards-core"
