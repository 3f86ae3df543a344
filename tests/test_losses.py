"""PPO losses: surrogate table, aggregation modes, KL estimators, entropy and log-probs, a real update."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from userrl_core.algorithms import losses

# One sequence of four tokens (see test_policy_loss_table for the arithmetic).
OLD = torch.tensor([[-1.0, -1.0, -1.0, -3.0]], dtype=torch.float64)
NEW = torch.tensor([[-1.0, -0.5, -1.5, -1.0]], dtype=torch.float64)
ADV = torch.tensor([[1.0, 1.0, -2.0, -1.0]], dtype=torch.float64)
FULL = torch.ones(1, 4, dtype=torch.float64)


def test_policy_loss_table():
    # token 1: ratio e^0 = 1,            A = 1:  max(-1, -1) = -1                      (no clip)
    # token 2: ratio e^0.5 = 1.648721,   A = 1:  max(-1.648721, -1.2) = -1.2           (clipped)
    # token 3: ratio e^-0.5 = 0.606531,  A = -2: max(1.213061, 2 * 0.8 = 1.6) = 1.6    (clipped)
    #          dual clip: min(1.6, 2 * 3 = 6) = 1.6
    # token 4: ratio e^2 = 7.389056,     A = -1: max(7.389056, 1.2) = 7.389056         (not clipped)
    #          dual clip: min(7.389056, 1 * 3 = 3) = 3                                  (dual clip acts)
    # token-mean: (-1 - 1.2 + 1.6 + 3) / 4 = 0.6; clipfrac 2 / 4; lower 1 / 4
    # ppo_kl = mean(old - new) = (0 - 0.5 + 0.5 - 2) / 4 = -0.5
    loss, metrics = losses.policy_loss(NEW, OLD, ADV, FULL, clip_low=0.2, clip_high=0.2)
    assert loss.item() == pytest.approx(0.6, abs=1e-12)
    assert metrics == pytest.approx({"pg_clipfrac": 0.5, "pg_clipfrac_lower": 0.25, "ppo_kl": -0.5}, abs=1e-12)


def test_policy_loss_without_dual_clip_and_with_asymmetric_clip():
    # Without the dual clip token 4 keeps 7.389056: (-1 - 1.2 + 1.6 + 7.389056) / 4 = 1.697264
    loss, _ = losses.policy_loss(NEW, OLD, ADV, FULL, clip_low=0.2, clip_high=0.2, clip_ratio_c=None)
    assert loss.item() == pytest.approx((-1 - 1.2 + 1.6 + math.exp(2)) / 4, abs=1e-12)
    # clip_high 0.28 (DAPO's clip-higher): token 2 -> -1.28; clip_low 0.1: token 3 -> 2 * 0.9 = 1.8
    # (-1 - 1.28 + 1.8 + 3) / 4 = 0.63
    loss, _ = losses.policy_loss(NEW, OLD, ADV, FULL, clip_low=0.1, clip_high=0.28)
    assert loss.item() == pytest.approx(0.63, abs=1e-12)


def test_policy_loss_ignores_masked_tokens():
    # Mask out token 4: (-1 - 1.2 + 1.6) / 3 = -0.2; clipfrac 2 / 3; ppo_kl (0 - 0.5 + 0.5) / 3 = 0
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    loss, metrics = losses.policy_loss(NEW, OLD, ADV, mask, clip_low=0.2, clip_high=0.2)
    assert loss.item() == pytest.approx(-0.2, abs=1e-12)
    assert metrics["pg_clipfrac"] == pytest.approx(2 / 3)
    assert metrics["ppo_kl"] == pytest.approx(0.0, abs=1e-12)


def test_policy_gradient_at_ratio_one_is_minus_advantage():
    # At ratio 1 (on-policy first step) d loss / d logprob_t = -A_t / n_tokens under token-mean.
    logprobs = OLD.clone().requires_grad_(True)
    loss, metrics = losses.policy_loss(logprobs, OLD, ADV, FULL, clip_low=0.2, clip_high=0.2)
    loss.backward()
    assert torch.allclose(logprobs.grad, -ADV / 4)
    assert metrics["pg_clipfrac"] == 0.0 and metrics["ppo_kl"] == 0.0


VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", 7 / 3),  # (1 + 2 + 4) / 3 tokens
        ("seq-mean-token-sum", 3.5),  # (1 + 2) and 4, over 2 sequences (the empty row does not count)
        ("seq-mean-token-mean", 2.75),  # (1.5 + 4) / 2
    ],
)
def test_aggregate_table(mode, expected):
    assert losses.aggregate(VALUES, MASK, mode).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", losses.AGG_MODES)
def test_micro_batches_with_a_denominator_add_up_to_the_mini_batch(mode):
    gen = torch.Generator().manual_seed(1)
    values = torch.randn(6, 5, generator=gen)
    mask = (torch.rand(6, 5, generator=gen) > 0.4).float()
    mask[2] = 0.0
    whole = losses.aggregate(values, mask, mode)
    count = mask.sum() if mode == "token-mean" else (mask.sum(1) > 0).sum()
    parts = sum(
        losses.aggregate(values[i : i + 2], mask[i : i + 2], mode, denominator=float(count)) for i in range(0, 6, 2)
    )
    assert parts.item() == pytest.approx(whole.item(), abs=1e-6)


def test_aggregate_errors_and_empty_mask():
    assert losses.aggregate(VALUES, torch.zeros_like(VALUES)).item() == 0.0
    with pytest.raises(ValueError, match="unknown loss aggregation mode 'tokens'"):
        losses.aggregate(VALUES, MASK, "tokens")
    with pytest.raises(ValueError, match="same shape"):
        losses.aggregate(VALUES, MASK[:, :2])


@pytest.mark.parametrize(
    "kind, logprob, ref, expected",
    [
        ("kl", -1.0, -2.0, 1.0),  # -1 - (-2)
        ("mse", -1.0, -2.0, 0.5),  # 0.5 * 1^2
        ("low_var_kl", -1.0, -2.0, math.exp(-1) + 1 - 1),  # d = ref - lp = -1: e^-1 - (-1) - 1 = 0.367879
        ("low_var_kl", -2.0, -1.0, math.exp(1) - 1 - 1),  # d = 1: e - 1 - 1 = 0.718282
        ("low_var_kl", -1.5, -1.5, 0.0),
        ("low_var_kl", -20.0, 0.0, 10.0),  # d = 20: e^20 - 21 is clamped to 10 as verl does
    ],
)
def test_kl_penalty_table(kind, logprob, ref, expected):
    as_tensor = lambda x: torch.tensor([[x]], dtype=torch.float64)  # noqa: E731
    got = losses.kl_penalty(as_tensor(logprob), as_tensor(ref), kind)
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_kl_penalty_unknown_kind():
    with pytest.raises(ValueError, match="unknown KL estimator 'k9'"):
        losses.kl_penalty(OLD, OLD, "k9")


def test_low_var_kl_is_an_unbiased_estimate_of_the_true_kl():
    # Sample tokens from the policy; the mean of k3 approaches KL(policy || reference). The
    # logits are mild so that no token's k3 reaches the clamp at 10 (which would bias it).
    gen = torch.Generator().manual_seed(0)
    policy = torch.log_softmax(0.5 * torch.randn(8, generator=gen, dtype=torch.float64), 0)
    reference = torch.log_softmax(0.5 * torch.randn(8, generator=gen, dtype=torch.float64), 0)
    assert losses.kl_penalty(policy, reference, "low_var_kl").max() < 10
    true_kl = (policy.exp() * (policy - reference)).sum().item()
    tokens = torch.multinomial(policy.exp(), 200_000, replacement=True, generator=gen)
    estimate = losses.kl_penalty(policy[tokens], reference[tokens], "low_var_kl").mean().item()
    assert estimate == pytest.approx(true_kl, rel=0.03)


def test_entropy_table_and_agreement_with_torch_distributions():
    # uniform over 4: ln 4 = 1.386294; one dominant logit: ~0; [ln 3, 0] -> p = (0.75, 0.25):
    # -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.215762 + 0.346574 = 0.562335
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0], [math.log(3), 0.0, -1e9, -1e9]]])
    got = losses.entropy_from_logits(logits)
    assert got.shape == (1, 3)
    assert got[0].tolist() == pytest.approx([math.log(4), 0.0, 0.562335], abs=1e-5)
    random_logits = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(3))
    expected = torch.distributions.Categorical(logits=random_logits).entropy()
    assert torch.allclose(losses.entropy_from_logits(random_logits), expected, atol=1e-5)


def test_token_logprobs_table_and_agreement_with_log_softmax():
    # logits [0, 0]: ln 0.5 = -0.693147; [ln 3, 0] label 0: ln 0.75 = -0.287682, label 1: ln 0.25 = -1.386294
    logits = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0], [math.log(3), 0.0]]])
    got = losses.token_logprobs(logits, torch.tensor([[1, 0, 1]]))
    assert got[0].tolist() == pytest.approx([math.log(0.5), math.log(0.75), math.log(0.25)], abs=1e-6)
    random_logits = torch.randn(2, 7, 13, generator=torch.Generator().manual_seed(4))
    labels = torch.randint(0, 13, (2, 7), generator=torch.Generator().manual_seed(5))
    expected = torch.log_softmax(random_logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(losses.token_logprobs(random_logits, labels), expected, atol=1e-5)
    with pytest.raises(ValueError, match="labels must have shape"):
        losses.token_logprobs(random_logits, labels[:, :3])


def test_bfloat16_logits_are_computed_in_float32():
    logits = torch.randn(2, 3, 17, generator=torch.Generator().manual_seed(6))
    labels = torch.randint(0, 17, (2, 3), generator=torch.Generator().manual_seed(7))
    low = losses.token_logprobs(logits.bfloat16(), labels)
    assert low.dtype == torch.float32
    expected = torch.log_softmax(logits.bfloat16().float(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(low, expected, atol=1e-5)
    assert losses.entropy_from_logits(logits.bfloat16()).dtype == torch.float32


@pytest.mark.parametrize("rows_per_chunk", [1, 3, 16, 1024])
def test_chunked_gradients_match_the_direct_computation(monkeypatch, rows_per_chunk):
    # Blocks smaller than a sequence (1, 3), spanning several sequences (16) or everything (1024),
    # on the shifted, non-contiguous view the backend passes; values and gradients must match.
    monkeypatch.setattr(losses, "ROWS_PER_CHUNK", rows_per_chunk)
    base = torch.randn(3, 8, 9, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    labels = torch.randint(0, 9, (3, 7), generator=torch.Generator().manual_seed(9))
    weights = torch.randn(3, 7, generator=torch.Generator().manual_seed(10), dtype=torch.float64)

    chunked = base.clone().requires_grad_(True)
    shifted = chunked[:, :-1]
    assert not shifted.is_contiguous()
    value = (losses.entropy_from_logits(shifted) * weights).sum()
    value = value + (losses.token_logprobs(shifted, labels) * weights).sum()
    value.backward()

    direct = base.clone().requires_grad_(True)
    log_p = torch.log_softmax(direct[:, :-1], -1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    picked = log_p.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    expected = (entropy * weights).sum() + (picked * weights).sum()
    expected.backward()

    assert value.item() == pytest.approx(expected.item(), abs=1e-9)
    assert torch.allclose(chunked.grad, direct.grad, atol=1e-9)


def test_two_dimensional_logits_and_empty_inputs():
    logits = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]])
    assert losses.token_logprobs(logits, torch.tensor([0, 0])).tolist() == pytest.approx(
        [math.log(0.5), math.log(0.75)], abs=1e-6
    )
    assert losses.entropy_from_logits(torch.zeros(2, 0, 5)).shape == (2, 0)


def test_actor_loss_composes_pg_entropy_and_kl():
    ref = OLD + 0.25
    entropy = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    loss, metrics = losses.actor_loss(
        NEW, OLD, ADV, FULL, clip_low=0.2, clip_high=0.2,
        entropy=entropy, entropy_coeff=0.01, ref_logprobs=ref, kl_type="kl", kl_coef=0.1,
    )
    # pg 0.6 (table above); entropy mean 2.5; kl = mean(new - ref) = mean([-0.25, 0.25, -0.75, 1.75]) = 0.25
    # 0.6 - 0.01 * 2.5 + 0.1 * 0.25 = 0.6
    assert metrics["actor/pg_loss"] == pytest.approx(0.6)
    assert metrics["actor/entropy"] == pytest.approx(2.5)
    assert metrics["actor/kl_loss"] == pytest.approx(0.25)
    assert loss.item() == pytest.approx(0.6 - 0.025 + 0.025)
    assert metrics["actor/pg_clipfrac"] == pytest.approx(0.5)
    assert "actor/kl_loss" not in losses.actor_loss(NEW, OLD, ADV, FULL, clip_low=0.2, clip_high=0.2)[1]
    with pytest.raises(ValueError, match="entropy_coeff is set"):
        losses.actor_loss(NEW, OLD, ADV, FULL, clip_low=0.2, clip_high=0.2, entropy_coeff=0.1)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    clip_low=st.floats(0.05, 0.5),
    clip_high=st.floats(0.05, 0.5),
)
def test_surrogate_matches_the_ppo_formula_token_by_token(seed, clip_low, clip_high):
    # Per token (one unmasked at a time), plain PPO-clip is max(-A * ratio, -A * clip(ratio)),
    # the pessimistic of the two objectives.
    gen = torch.Generator().manual_seed(seed)
    new = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    old = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    a = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    mask = torch.zeros(3, 6, dtype=torch.float64)
    for row in range(3):
        for col in range(6):
            mask.zero_()
            mask[row, col] = 1.0
            loss, _ = losses.policy_loss(new, old, a, mask, clip_low=clip_low, clip_high=clip_high, clip_ratio_c=None)
            ratio = math.exp(new[row, col] - old[row, col])
            adv = a[row, col].item()
            clipped_ratio = min(max(ratio, 1 - clip_low), 1 + clip_high)
            assert loss.item() == pytest.approx(max(-adv * ratio, -adv * clipped_ratio), abs=1e-12)


def test_ppo_updates_raise_the_probability_of_a_positive_advantage_token():
    # A real optimisation loop: a tiny policy over 5 tokens, AdamW, several PPO epochs on one batch.
    torch.manual_seed(0)
    policy = torch.nn.Linear(4, 5)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=0.05)
    states = torch.randn(1, 8, 4)
    actions = torch.tensor([[2] * 8])
    advantages = torch.tensor([[1.0] * 4 + [-1.0] * 4])  # token 2 good in the first four states, bad after
    mask = torch.ones(1, 8)
    with torch.no_grad():
        old = losses.token_logprobs(policy(states), actions)
    for _ in range(5):
        logprobs = losses.token_logprobs(policy(states), actions)
        loss, metrics = losses.policy_loss(logprobs, old, advantages, mask, clip_low=0.2, clip_high=0.2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        new = losses.token_logprobs(policy(states), actions)
    assert (new - old)[0, :4].mean() > 0
    assert (new - old)[0, 4:].mean() < 0
    assert metrics["ppo_kl"] != 0.0
