"""IntentionGym's pure turn-reward rule, as a table (UserRL's figures depend on these numbers)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from userrl_plugins.intentiongym.rewards import turn_reward


@pytest.mark.parametrize(
    "importances, kwargs, expected",
    [
        ([3], {}, 1.0),  # highest importance
        ([2], {}, 0.7),
        ([1], {}, 0.4),
        ([], {}, 0.0),  # covers nothing
        ([3, 2], {}, 0.8),  # best is 3, one extra detail costs 0.2
        ([2, 1], {}, 0.5),
        ([2, 3], {}, 0.8),
        ([1, 3], {}, 0.8),  # order does not matter: the highest counts
        ([3, 2, 2, 1, 1], {}, 0.2),  # four extra details
        ([1, 1, 1], {}, 0.0),  # 0.4 - 0.4
        ([1, 1, 1, 1], {}, 0.0),  # floored at 0, never negative
        ([2, 2], {"multi_detail_penalty": 0.5}, 0.2),
        ([3], {"step_penalty": 0.1}, 0.9),
        ([], {"step_penalty": 0.1}, 0.0),  # step penalty cannot push below 0
        ([1, 1, 1, 1], {"step_penalty": 0.05}, 0.0),
        ([3], {"step_penalty": -0.5}, 1.0),  # clipped to 1
    ],
)
def test_turn_reward_table(importances, kwargs, expected):
    assert turn_reward(importances, **kwargs) == pytest.approx(expected)


def test_unknown_importance_is_rejected():
    with pytest.raises(ValueError, match="importance must be 1, 2 or 3"):
        turn_reward([4])


@given(
    st.lists(st.sampled_from([1, 2, 3]), max_size=8),
    st.floats(min_value=-2, max_value=2),
    st.floats(min_value=0, max_value=1),
)
def test_turn_reward_stays_in_unit_interval(importances, step_penalty, multi):
    value = turn_reward(importances, step_penalty=step_penalty, multi_detail_penalty=multi)
    assert 0.0 <= value <= 1.0


def test_rewards_are_userrls_floats_bit_for_bit():
    # UserRL's _calculate_reward (gyms/IntentionGym/intentiongym/env/intention_env.py):
    # max(0.0, base - multi_detail_penalty * (n - 1)), minus step_penalty, clipped to [0, 1].
    # 0.7 - 0.2 is 0.49999999999999994 there, and the Sum score is computed from these floats.
    assert turn_reward([2, 1]) == 0.7 - 0.2 == 0.49999999999999994
    assert turn_reward([3, 2, 1]) == 1.0 - 0.2 * 2 == 0.6
    assert turn_reward([3, 1, 1, 1]) == 1.0 - 0.2 * 3 == 0.3999999999999999


def test_a_repeated_detail_counts_again():
    # UserRL appends a detail once per index the judge gives, so [2] repeated is two details.
    assert turn_reward([2, 2]) == 0.7 - 0.2
