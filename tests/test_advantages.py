"""grpo_multiturn advantages: hand tables, UserRL's edge cases, and a loop reference on random inputs."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from userrl_core.algorithms import advantages as adv
from userrl_core.algorithms import credits, scores

EPS = 1e-6


def reference_advantages(token_turn, turn_credits, traj_scores, group_ids, norm_by_std=True, eps=EPS):
    """Loop-based reference written the way UserRL's estimator reads: episode by episode."""
    token_turn = token_turn.tolist()
    turn_credits = turn_credits.tolist()
    traj_scores = [float(s) for s in traj_scores.tolist()]
    group_ids = group_ids.tolist()
    members = defaultdict(list)
    for e, g in enumerate(group_ids):
        members[g].append(traj_scores[e])
    stats = {}
    for g, values in members.items():
        if len(values) == 1:
            stats[g] = (0.0, 1.0)
        else:
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
            stats[g] = (mean, std)
    out = []
    for e, row in enumerate(token_turn):
        mean, std = stats[group_ids[e]]
        normalized = (traj_scores[e] - mean) / (std + eps) if norm_by_std else traj_scores[e] - mean
        token_values = [turn_credits[e][k] if k >= 0 else 0.0 for k in row]
        total = sum(token_values)
        nonzero = sum(1 for v in token_values if v != 0)
        if total != 0:
            scale = normalized * nonzero / total
            out.append([v * scale for v in token_values])
        else:
            out.append([0.0 for _ in token_values])
    return torch.tensor(out, dtype=torch.float64)


def assert_table(got, expected, atol=1e-12):
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), atol=atol, rtol=0)


def _advantages(token_turn, turn_credits, traj_scores, group_ids, **kwargs):
    return adv.grpo_multiturn_advantages(
        torch.tensor(token_turn),
        torch.tensor(turn_credits, dtype=torch.float64),
        torch.tensor(traj_scores, dtype=torch.float64),
        torch.tensor(group_ids),
        dtype=torch.float64,
        **kwargs,
    )


def test_equalized_pair_gets_plus_and_minus_normalised_score():
    # Scores 1 and 0: mean 0.5, unbiased std sqrt((0.25 + 0.25) / 1) = 0.7071068;
    # A = +-0.5 / (0.7071068 + 1e-6) = +-0.7071058. Equalized credits spread A evenly.
    token_turn = [[-1, 0, 0, -1, 1], [-1, 0, -1, -1, -1]]
    got = _advantages(token_turn, [[1.0, 1.0], [1.0, 0.0]], [1.0, 0.0], [0, 0])
    a = 0.5 / (math.sqrt(0.5) + EPS)
    expected = torch.tensor([[0, a, a, 0, a], [0, -a, 0, 0, 0]], dtype=torch.float64)
    assert torch.allclose(got, expected, atol=1e-12)


def test_rescaling_spreads_the_score_by_credit_and_keeps_the_token_mean():
    # Singleton group without std: A = score - 0 = 0.5.
    # Token credits [2, 2, 0, 1]: S = 5, N = 3 non-zero -> scale 0.5 * 3 / 5 = 0.3 -> [0.6, 0.6, 0, 0.3].
    # Mean over the non-zero tokens: (0.6 + 0.6 + 0.3) / 3 = 0.5 = A.
    got = _advantages([[0, 0, -1, 1]], [[2.0, 1.0]], [0.5], [4], norm_by_std=False)
    assert_table(got, [[0.6, 0.6, 0.0, 0.3]], atol=1e-12)


def test_single_member_group_uses_mean_zero_std_one():
    # UserRL: a lone episode keeps its raw score: 0.6 / (1 + 1e-6) = 0.5999994 (0.6 without std).
    with_std = _advantages([[0, 0]], [[1.0]], [0.6], [9])
    assert_table(with_std, [[0.6 / (1 + EPS)] * 2], atol=1e-12)
    without_std = _advantages([[0, 0]], [[1.0]], [0.6], [9], norm_by_std=False)
    assert_table(without_std, [[0.6, 0.6]], atol=1e-12)


def test_credits_summing_to_zero_give_zero_advantage_whatever_the_score():
    # Episode 0: R2G credits of an episode without rewards are all 0 -> 0 everywhere although it
    # scored below its group. Episode 1: credits +1 and -1 cancel -> 0 as well.
    rewards = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    mask = torch.ones(2, 2, dtype=torch.float64)
    r2g = credits.reward_to_go(rewards, mask, gamma=0.9)
    got = adv.grpo_multiturn_advantages(
        torch.tensor([[0, 1, 1], [0, 0, 1]]), r2g, torch.tensor([0.0, 1.0]), torch.tensor([1, 1]), dtype=torch.float64
    )
    # Episode 1: scores 0 and 1 -> A = 0.5 / (0.7071068 + 1e-6); credits [1, 0] on tokens of turns
    # [0, 0, 1] -> S = 2, N = 2 -> the turn-0 tokens get A, the turn-1 token (credit 0) gets 0.
    a = 0.5 / (math.sqrt(0.5) + EPS)
    assert_table(got, [[0.0, 0.0, 0.0], [a, a, 0.0]])
    cancelled = _advantages([[0, 1]], [[1.0, -1.0]], [0.7], [0])
    assert_table(cancelled, [[0.0, 0.0]])


def test_equal_scores_give_zero_advantage():
    # std 0: (0.4 - 0.4) / (0 + 1e-6) = 0
    got = _advantages([[0, 1], [0, 0]], [[1.0, 1.0], [1.0, 0.0]], [0.4, 0.4], [2, 2])
    assert got.abs().max().item() == 0.0


def userrl_float32_normalisation(group_scores: list[float], eps: float = EPS) -> list[float]:
    """UserRL's group statistics, as verl/trainer/ppo/core_algos.py (compute_grpo_multiturn_advantage)
    computes them: ``torch.tensor(trajectory_scores)`` (float32 from Python floats), then
    ``torch.mean`` / ``torch.std`` over the group's stacked scores and ``(s - mean) / (std + eps)``."""
    t = torch.tensor(group_scores)
    assert t.dtype == torch.float32
    return ((t - torch.mean(t)) / (torch.std(t) + eps)).tolist()


def test_float64_statistics_against_userrls_float32_as_docs_algorithms_md_says():
    # The figures of docs/algorithms.md ("The statistics are computed in float64 ..."), re-measured
    # on 400 random groups of 8 Sum scores of IntentionGym-like turn rewards.
    gen = torch.Generator().manual_seed(0)
    alphabet = torch.tensor([0.0, 0.2, 0.4, 0.49999999999999994, 0.6, 0.7, 0.8, 1.0], dtype=torch.float64)
    n_groups = 400
    turns = torch.randint(1, 9, (n_groups * 8,), generator=gen)
    picks = alphabet[torch.randint(0, len(alphabet), (n_groups * 8, 8), generator=gen)]
    mask = (torch.arange(8).unsqueeze(0) < turns.unsqueeze(1)).double()
    all_scores = scores.userrl_sum(picks * mask, mask)
    all_ours = adv.group_normalized_scores(all_scores, torch.arange(n_groups * 8) // 8)
    rel = []
    for g in range(n_groups):
        group = all_scores[g * 8:(g + 1) * 8]
        if group.max() == group.min():
            continue
        theirs = userrl_float32_normalisation(group.tolist())
        rel += [abs(a - b) / abs(a) for a, b in zip(all_ours[g * 8:(g + 1) * 8].tolist(), theirs) if abs(a) > 1e-3]
    rel.sort()
    assert rel[len(rel) // 2] < 1e-6  # typical: ~2e-7
    assert rel[int(0.99 * len(rel))] < 1e-4  # 99th percentile: ~1e-5
    assert 1e-7 < rel[-1] < 1e-2  # not identical, never far off
    # Near-tied: seven equal scores and one 1e-4 higher differ by ~1e-3 relative.
    near = [0.3333] * 7 + [0.3334]
    ours = adv.group_normalized_scores(torch.tensor(near, dtype=torch.float64), torch.zeros(8)).tolist()
    theirs = userrl_float32_normalisation(near)
    assert 5e-4 < abs(ours[0] - theirs[0]) / abs(ours[0]) < 5e-3
    # Tied: float64 gives ~0; UserRL's float32 group mean is not exactly 0.1, so every episode
    # of the group gets about -0.0074 (in std units) there.
    tied = [0.1] * 8
    assert max(abs(a) for a in adv.group_normalized_scores(torch.tensor(tied, dtype=torch.float64), torch.zeros(8))) < 1e-9
    assert all(-0.008 < a < -0.007 for a in userrl_float32_normalisation(tied))


def test_groups_are_any_integers_in_any_order():
    # Group 42: scores 1 and 3 -> mean 2, std sqrt(2) -> A = -+1 / (1.4142136 + 1e-6)
    # Group 7: scores 0, 0, 3 -> mean 1, std sqrt((1 + 1 + 4) / 2) = sqrt(3)
    #          -> A = -1 / (1.7320508 + 1e-6) for the two zeros, 2 / (1.7320508 + 1e-6) for the 3
    got = _advantages([[0]] * 5, [[1.0]] * 5, [0.0, 1.0, 0.0, 3.0, 3.0], [7, 42, 7, 42, 7])
    s2, s3 = math.sqrt(2) + EPS, math.sqrt(3) + EPS
    assert got[:, 0].tolist() == pytest.approx([-1 / s3, -1 / s2, -1 / s3, 1 / s2, 2 / s3], abs=1e-12)


def test_turn_slot_without_a_turn_gets_no_credit():
    # A token tagged with turn 1 of an episode whose turn mask stops at turn 0: Equalized gives
    # slot 1 a credit of 0, so that token gets advantage 0 and the rest carry the episode's A.
    mask = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    eq = credits.equalized(torch.zeros(1, 2, dtype=torch.float64), mask)
    got = adv.grpo_multiturn_advantages(
        torch.tensor([[0, 0, 1]]), eq, torch.tensor([0.3], dtype=torch.float64), torch.tensor([0]), dtype=torch.float64
    )
    assert_table(got, [[0.3 / (1 + EPS), 0.3 / (1 + EPS), 0.0]], atol=1e-12)


def test_full_userrl_pipeline_r2g_credits_and_sum_score():
    # Two episodes of one task, gamma 0.8.
    # Ep 0 rewards [0, 0, 1]: R2G credits [0.64, 0.8, 1]; UserRL "Sum" = round(1 / 3, 4) = 0.3333
    # Ep 1 rewards [0.5, 0]:  R2G credits [0.5, 0];      UserRL "Sum" = round(0.5 / 2, 4) = 0.25
    # mean 0.29165, std |0.3333 - 0.25| / sqrt(2) = 0.0589020 -> A = +-0.04165 / 0.0589030 = +-0.7070946
    # Ep 0 tokens: turn 0 x2, turn 1 x1, turn 2 x2 -> S = 2 * 0.64 + 0.8 + 2 * 1 = 4.08, N = 5
    #   scale = 0.7070946 * 5 / 4.08 = 0.8665375 -> 0.5545840, 0.6932300, 0.8665375
    # Ep 1 tokens: turn 0 x3 (credit 0.5), turn 1 x1 (credit 0) -> S = 1.5, N = 3, scale = -0.7070946 * 2
    #   -> -0.7070946 on the turn-0 tokens, 0 on the turn-1 token
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.float64)
    c = credits.reward_to_go(rewards, mask, gamma=0.8)
    s = scores.userrl_sum(rewards, mask)
    token_turn = torch.tensor([[-1, 0, 0, -1, 1, 2, 2], [-1, 0, 0, 0, -1, 1, -1]])
    got = adv.grpo_multiturn_advantages(token_turn, c, s, torch.tensor([0, 0]), dtype=torch.float64)
    a = 0.04165 / (0.04165 * 2 / math.sqrt(2) + EPS)
    scale = a * 5 / 4.08
    expected = [
        [0, 0.64 * scale, 0.64 * scale, 0, 0.8 * scale, scale, scale],
        [0, -a, -a, -a, 0, 0, 0],
    ]
    assert_table(got, expected, atol=1e-9)
    assert a == pytest.approx(0.7070946, abs=1e-6)


def test_default_dtype_is_float32_and_bad_inputs_are_named():
    got = adv.grpo_multiturn_advantages(
        torch.tensor([[0]]), torch.ones(1, 1), torch.tensor([1.0]), torch.tensor([0])
    )
    assert got.dtype == torch.float32
    with pytest.raises(ValueError, match="turn_credits has 1 turn slots"):
        adv.grpo_multiturn_advantages(torch.tensor([[0, 1]]), torch.ones(1, 1), torch.tensor([1.0]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"episode\(s\) \[1\]"):
        adv.grpo_multiturn_advantages(
            torch.tensor([[0], [0]]), torch.ones(2, 1), torch.tensor([1.0, float("nan")]), torch.tensor([0, 0])
        )
    with pytest.raises(ValueError, match="scores must be"):
        adv.grpo_multiturn_advantages(
            torch.tensor([[0]]), torch.ones(1, 1), torch.tensor([1.0, 2.0]), torch.tensor([0])
        )


@st.composite
def batches(draw):
    n_episodes = draw(st.integers(1, 8))
    n_turns = draw(st.integers(1, 4))
    n_tokens = draw(st.integers(1, 12))
    token_turn = draw(
        st.lists(
            st.lists(st.integers(-1, n_turns - 1), min_size=n_tokens, max_size=n_tokens),
            min_size=n_episodes,
            max_size=n_episodes,
        )
    )
    credit_values = st.one_of(st.just(0.0), st.floats(-2, 2, allow_nan=False, allow_subnormal=False))
    turn_credits = draw(
        st.lists(
            st.lists(credit_values, min_size=n_turns, max_size=n_turns), min_size=n_episodes, max_size=n_episodes
        )
    )
    traj = draw(st.lists(st.floats(-3, 3, allow_subnormal=False), min_size=n_episodes, max_size=n_episodes))
    groups = draw(st.lists(st.integers(0, 3), min_size=n_episodes, max_size=n_episodes))
    return (
        torch.tensor(token_turn),
        torch.tensor(turn_credits, dtype=torch.float64),
        torch.tensor(traj, dtype=torch.float64),
        torch.tensor(groups),
    )


@settings(max_examples=100, deadline=None)
@given(batch=batches(), norm_by_std=st.booleans())
def test_matches_loop_reference(batch, norm_by_std):
    token_turn, turn_credits, traj, groups = batch
    got = adv.grpo_multiturn_advantages(
        token_turn, turn_credits, traj, groups, norm_by_std=norm_by_std, dtype=torch.float64
    )
    expected = reference_advantages(token_turn, turn_credits, traj, groups, norm_by_std=norm_by_std)
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-6)


@settings(max_examples=100, deadline=None)
@given(batch=batches())
def test_token_mean_of_nonzero_advantages_is_the_normalised_score(batch):
    token_turn, turn_credits, traj, groups = batch
    got = adv.grpo_multiturn_advantages(token_turn, turn_credits, traj, groups, dtype=torch.float64)
    normalized = adv.group_normalized_scores(traj, groups)
    per_token = adv.token_credits(token_turn, turn_credits)
    for e in range(got.shape[0]):
        if per_token[e].sum() == 0:
            assert got[e].abs().max().item() == 0.0
            continue
        nonzero = per_token[e] != 0
        assert got[e][nonzero].mean().item() == pytest.approx(normalized[e].item(), rel=1e-6, abs=1e-6)
        assert got[e][token_turn[e] < 0].abs().sum().item() == 0.0


@settings(max_examples=60, deadline=None)
@given(batch=batches(), pad=st.integers(1, 5), extra_turns=st.integers(1, 3))
def test_padding_tokens_and_turn_slots_change_nothing(batch, pad, extra_turns):
    token_turn, turn_credits, traj, groups = batch
    base = adv.grpo_multiturn_advantages(token_turn, turn_credits, traj, groups, dtype=torch.float64)
    padded_tokens = torch.cat([token_turn, torch.full((token_turn.shape[0], pad), -1)], dim=1)
    padded_credits = torch.cat([turn_credits, torch.zeros(turn_credits.shape[0], extra_turns, dtype=torch.float64)], 1)
    got = adv.grpo_multiturn_advantages(padded_tokens, padded_credits, traj, groups, dtype=torch.float64)
    assert torch.allclose(got[:, : token_turn.shape[1]], base, atol=1e-12, rtol=1e-12)
    assert got[:, token_turn.shape[1] :].abs().max().item() == 0.0


@settings(max_examples=60, deadline=None)
@given(batch=batches(), seed=st.integers(0, 10_000))
def test_episode_order_does_not_matter(batch, seed):
    token_turn, turn_credits, traj, groups = batch
    perm = torch.randperm(token_turn.shape[0], generator=torch.Generator().manual_seed(seed))
    base = adv.grpo_multiturn_advantages(token_turn, turn_credits, traj, groups, dtype=torch.float64)
    shuffled = adv.grpo_multiturn_advantages(
        token_turn[perm], turn_credits[perm], traj[perm], groups[perm], dtype=torch.float64
    )
    assert torch.allclose(shuffled, base[perm], atol=1e-9)


def test_large_batch_is_fast_and_matches_reference_on_a_sample():
    # 512 episodes x 2048 tokens: vectorised, so well under a second on a CPU.
    gen = torch.Generator().manual_seed(0)
    e, k, t = 512, 8, 2048
    token_turn = torch.randint(-1, k, (e, t), generator=gen)
    turn_credits = torch.rand(e, k, generator=gen, dtype=torch.float64)
    traj = torch.rand(e, generator=gen, dtype=torch.float64)
    groups = torch.arange(e) // 8
    import time

    start = time.perf_counter()
    got = adv.grpo_multiturn_advantages(token_turn, turn_credits, traj, groups, dtype=torch.float64)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0
    sample = slice(0, 16)  # two whole groups
    expected = reference_advantages(token_turn[sample], turn_credits[sample], traj[sample], groups[sample])
    assert torch.allclose(got[sample], expected, atol=1e-9)
