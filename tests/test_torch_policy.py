"""Real torch training steps of TorchPolicy on a tiny random Llama (seconds each)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from userrl_core.algorithms import schedules
from userrl_core.config.schema import ActorConfig
from userrl_core.errors import ConfigError
from userrl_core.types import TrainBatch
from userrl_plugins.backends.torch_policy import TorchPolicy, load_causal_lm, load_tokenizer

CPU = torch.device("cpu")


def make_policy(model_dir, *, rollout_n=2, total_steps=10, **actor):
    settings = {"lr": 1e-2, "ppo_mini_batch_size": 2, "ppo_micro_batch_size_per_gpu": 2, **actor}
    return TorchPolicy(
        model=load_causal_lm(model_dir, dtype="float32", device=CPU),
        tokenizer=load_tokenizer(model_dir),
        actor=ActorConfig(**settings),
        rollout_n=rollout_n,
        total_steps=total_steps,
    )


def make_batch(rows=4, length=24, seed=0, advantage=1.0) -> TrainBatch:
    """Right-padded episodes: a prompt, then sampled tokens (loss_mask 1), then padding."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 2000, (rows, length), generator=gen)
    attention = torch.ones(rows, length, dtype=torch.long)
    loss_mask = torch.zeros(rows, length)
    for row in range(rows):
        end = length - 3 * row  # rows of different lengths
        attention[row, end:] = 0
        ids[row, end:] = 2
        loss_mask[row, 8:end] = 1
    signs = torch.tensor([advantage if r % 2 == 0 else advantage * 0.5 for r in range(rows)])
    return TrainBatch(
        input_ids=ids, attention_mask=attention, loss_mask=loss_mask,
        advantages=loss_mask * signs[:, None], group_ids=torch.arange(rows) // 2,
    )


def masked_mean(values, mask):
    return float((values * mask).sum() / mask.sum())


def grads(policy):
    return {n: p.grad.detach().clone() for n, p in policy.model.named_parameters() if p.grad is not None}


def test_loss_decreases_and_sampled_tokens_gain_probability(tiny_model_dir):
    policy = make_policy(tiny_model_dir, lr=3e-3)
    batch = make_batch()
    batch.old_logprobs = policy.compute_logprobs(batch)  # fixed: several updates on one batch
    start = masked_mean(batch.old_logprobs, batch.loss_mask)
    losses = [policy.update(batch)["actor/pg_loss"] for _ in range(4)]
    after = masked_mean(policy.compute_logprobs(batch), batch.loss_mask)
    # on-policy the surrogate is -(token mean of the advantages)
    assert losses[0] == pytest.approx(-masked_mean(batch.advantages, batch.loss_mask), abs=1e-5)
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert after > start + 0.05


def test_logprobs_are_aligned_with_input_ids(tiny_model_dir):
    policy = make_policy(tiny_model_dir)
    batch = make_batch(rows=2)
    logprobs = policy.compute_logprobs(batch)
    assert logprobs.shape == batch.input_ids.shape
    assert torch.all(logprobs[:, 0] == 0)
    with torch.no_grad():
        logits = policy.model(input_ids=batch.input_ids[:1, :10]).logits
    expected = torch.log_softmax(logits[0, 4], -1)[batch.input_ids[0, 5]]
    assert float(logprobs[0, 5]) == pytest.approx(float(expected), abs=1e-5)


def test_logprobs_follow_the_sampling_temperature(tiny_model_dir):
    policy = make_policy(tiny_model_dir)
    batch = make_batch(rows=2)
    policy.temperature = 0.5
    logprobs = policy.compute_logprobs(batch)
    with torch.no_grad():
        logits = policy.model(input_ids=batch.input_ids[:1, :10]).logits
    expected = torch.log_softmax(logits[0, 4] / 0.5, -1)[batch.input_ids[0, 5]]
    assert float(logprobs[0, 5]) == pytest.approx(float(expected), rel=1e-5)
    unscaled = torch.log_softmax(logits[0, 4], -1)[batch.input_ids[0, 5]]
    assert float(logprobs[0, 5]) != pytest.approx(float(unscaled), abs=1e-3)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_micro_batches_accumulate_to_the_full_batch_gradient(tiny_model_dir, mode):
    small = make_policy(tiny_model_dir, loss_agg_mode=mode, ppo_micro_batch_size_per_gpu=1)
    whole = make_policy(tiny_model_dir, loss_agg_mode=mode, ppo_micro_batch_size_per_gpu=4)
    batch = make_batch()
    batch.old_logprobs = whole.compute_logprobs(batch) - 0.05  # ratio != 1: a non-trivial surrogate
    stats_small = small.accumulate_gradients(batch)
    stats_whole = whole.accumulate_gradients(batch)
    g_small, g_whole = grads(small), grads(whole)
    assert g_whole.keys() == g_small.keys() and g_whole
    for name in g_whole:
        torch.testing.assert_close(g_small[name], g_whole[name], atol=1e-5, rtol=1e-4, msg=name)
    for key in ("actor/pg_loss", "actor/entropy", "actor/pg_clipfrac", "actor/ppo_kl"):
        assert stats_small[key] == pytest.approx(stats_whole[key], abs=1e-5), key


def test_kl_to_reference_is_zero_before_the_first_update(tiny_model_dir):
    policy = make_policy(tiny_model_dir, use_kl_loss=True, kl_loss_coef=0.1)
    batch = make_batch()
    batch.old_logprobs = policy.compute_logprobs(batch)
    batch.ref_logprobs = policy.compute_logprobs(batch, reference=True)
    torch.testing.assert_close(batch.old_logprobs, batch.ref_logprobs)
    first = policy.update(batch)
    assert first["actor/kl_loss"] == pytest.approx(0.0, abs=1e-6)
    batch.old_logprobs = policy.compute_logprobs(batch)
    batch.ref_logprobs = policy.compute_logprobs(batch, reference=True)  # the reference stays frozen
    second = policy.update(batch)
    assert second["actor/kl_loss"] > 1e-4


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_model_dir):
    plain = make_policy(tiny_model_dir)
    checkpointed = make_policy(tiny_model_dir, gradient_checkpointing=True)
    assert checkpointed.gradient_checkpointing and not plain.gradient_checkpointing
    batch = make_batch()
    batch.old_logprobs = plain.compute_logprobs(batch)
    plain.model.train()
    checkpointed.model.train()
    a = plain.accumulate_gradients(batch)
    b = checkpointed.accumulate_gradients(batch)
    assert a["actor/pg_loss"] == pytest.approx(b["actor/pg_loss"], abs=1e-6)
    for name, grad in grads(plain).items():
        torch.testing.assert_close(grads(checkpointed)[name], grad, atol=1e-6, rtol=1e-5)


def test_mini_batches_hold_whole_groups(tiny_model_dir):
    policy = make_policy(tiny_model_dir, ppo_mini_batch_size=2)
    batch = make_batch(rows=6)
    batch.group_ids = torch.tensor([0, 0, 1, 2, 2, 3])  # group 1 lost an episode
    assert policy.mini_batches(batch) == [[0, 1, 2], [3, 4, 5]]
    batch.group_ids = None
    assert policy.mini_batches(batch) == [[0, 1, 2, 3], [4, 5]]  # 2 tasks x rollout.n=2 rows
    batch.old_logprobs = policy.compute_logprobs(batch)
    assert policy.update(batch)["actor/optimizer_steps"] == 2


def test_update_needs_old_logprobs(tiny_model_dir):
    policy = make_policy(tiny_model_dir)
    with pytest.raises(ValueError, match="old_logprobs"):
        policy.update(make_batch())


def test_cosine_schedule_with_warmup_drives_the_learning_rate(tiny_model_dir):
    policy = make_policy(tiny_model_dir, lr=1e-3, lr_scheduler="cosine", lr_warmup_steps_ratio=0.25,
                         min_lr_ratio=0.1, total_steps=8)
    expected = schedules.lr_lambda("cosine", 8, 0.25, 0.1)
    batch = make_batch(rows=2)
    seen = []
    for _ in range(4):
        batch.old_logprobs = policy.compute_logprobs(batch)
        seen.append(policy.update(batch)["actor/lr"])
    assert seen == pytest.approx([1e-3 * expected(i) for i in range(4)])
    assert seen[0] == 0.0 and seen[2] == pytest.approx(1e-3)


def test_cosine_without_a_step_count_is_a_config_error(tiny_model_dir):
    with pytest.raises(ConfigError, match="total_training_steps"):
        make_policy(tiny_model_dir, lr_scheduler="cosine", total_steps=None)


def test_save_and_load_round_trip(tiny_model_dir, tmp_path):
    policy = make_policy(tiny_model_dir)
    batch = make_batch()
    for _ in range(2):
        batch.old_logprobs = policy.compute_logprobs(batch)
        policy.update(batch)
    policy.save_hf(tmp_path / "hf")
    policy.save_state(tmp_path)

    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
    for name, tensor in policy.model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name

    restored = make_policy(tmp_path / "hf")
    restored.load_state(tmp_path)
    for name, tensor in policy.model.state_dict().items():
        assert torch.equal(restored.model.state_dict()[name], tensor), name
    saved, loaded = policy.optimizer.state_dict(), restored.optimizer.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    assert saved["state"].keys() == loaded["state"].keys() and saved["state"]
    for key, state in saved["state"].items():
        for field in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state[field], loaded["state"][key][field])
    assert restored.scheduler.state_dict() == policy.scheduler.state_dict()

    # both continue identically
    batch.old_logprobs = policy.compute_logprobs(batch)
    policy.update(batch)
    restored.update(batch)
    for name, tensor in policy.model.state_dict().items():
        torch.testing.assert_close(restored.model.state_dict()[name], tensor, atol=0, rtol=0)


def test_load_hf_rolls_weights_back_in_place(tiny_model_dir, tmp_path):
    policy = make_policy(tiny_model_dir)
    policy.save_hf(tmp_path)
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    params = [id(p) for p in policy.model.parameters()]
    batch = make_batch()
    batch.old_logprobs = policy.compute_logprobs(batch)
    policy.update(batch)
    assert any(not torch.equal(before[k], v) for k, v in policy.model.state_dict().items())
    policy.load_hf(tmp_path)
    assert [id(p) for p in policy.model.parameters()] == params  # the optimizer still holds them
    for name, tensor in policy.model.state_dict().items():
        assert torch.equal(before[name], tensor), name


def bf16_config(model_dir, lr):
    from userrl_core.config.schema import RunConfig

    return RunConfig.model_validate({
        "model": {"path": str(model_dir), "dtype": "bfloat16"},
        "data": {"train_files": ["unused.parquet"], "train_batch_size": 2},
        "rollout": {"n": 2},
        "actor": {"lr": lr, "ppo_mini_batch_size": 2, "ppo_micro_batch_size_per_gpu": 2, "weight_decay": 0.0},
        "trainer": {"device": "cpu"},
    })


def test_bf16_recipe_keeps_fp32_master_weights_so_a_step_at_lr_1e6_changes_them(tiny_model_dir):
    """model.dtype: bfloat16 at lr 1e-6: an AdamW step (about 1e-6 per element) is far below bf16's
    resolution for the tiny model's weights (std 0.5): updating bf16 weights directly leaves them
    unchanged. With fp32 master weights most of them move, and compute still runs in bf16."""
    policy = TorchPolicy.from_config(bf16_config(tiny_model_dir, lr=1e-6))
    assert {p.dtype for p in policy.model.parameters()} == {torch.float32}
    assert policy.compute_dtype == torch.bfloat16
    batch = make_batch()
    batch.old_logprobs = policy.compute_logprobs(batch)
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    policy.update(batch)
    changed = sum(int((p.detach() != before[n]).sum()) for n, p in policy.model.named_parameters())
    total = sum(p.numel() for p in before.values())
    assert changed / total > 0.5
    ids = batch.input_ids[:1]
    with policy.autocast():
        logits = policy.model(input_ids=ids).logits
    assert logits.dtype == torch.bfloat16  # the forward computes in bf16


def test_bf16_master_weights_are_saved_in_the_recipe_dtype(tiny_model_dir, tmp_path):
    from safetensors import safe_open

    policy = TorchPolicy.from_config(bf16_config(tiny_model_dir, lr=1e-6))
    policy.save_hf(tmp_path / "hf")
    with safe_open(str(next((tmp_path / "hf").glob("*.safetensors"))), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.bfloat16}
    assert next(policy.model.parameters()).dtype == torch.float32  # the master copy stays fp32
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype="auto")
    assert reloaded.dtype == torch.bfloat16  # config.json names the saved dtype


def test_16_bit_trainable_weights_are_refused_with_a_clear_message(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir, dtype="bfloat16", device=CPU)
    with pytest.raises(ConfigError, match="master"):
        TorchPolicy(model=model, tokenizer=load_tokenizer(tiny_model_dir), actor=ActorConfig(), rollout_n=2,
                    total_steps=10)
