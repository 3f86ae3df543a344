"""The transformers rollout: batched left-padded generate, stop ids, log-probs, threads, plugin."""

from __future__ import annotations

import asyncio

import pytest
import torch

from userrl_core.config.schema import RunConfig
from userrl_core.plugins import get_plugin_manager
from userrl_core.registry import Kind
from userrl_core.types import GenerationRequest, TrainBatch
from userrl_plugins.backends.torch_policy import TorchPolicy, load_causal_lm, load_tokenizer
from userrl_plugins.backends.transformers_backend import TransformersRollout, left_pad, truncate_after_stop

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_rollout(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir, dtype="float32", device=CPU).eval()
    return TransformersRollout(model=model, tokenizer=load_tokenizer(tiny_model_dir))


@pytest.fixture(scope="module")
def smol_rollout(smol_model_dir):
    model = load_causal_lm(smol_model_dir, dtype="float32", device=CPU).eval()
    return TransformersRollout(model=model, tokenizer=load_tokenizer(smol_model_dir))


def chat_prompt(tokenizer, text):
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=False
    )


def greedy(prompts, max_new_tokens=10, stop=()):
    return GenerationRequest(prompts=prompts, max_new_tokens=max_new_tokens, do_sample=False,
                             stop_token_ids=list(stop))


def test_left_pad_and_truncate_helpers():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0, device=CPU)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert truncate_after_stop([4, 9, 2, 9, 2], {2}) == [4, 9, 2]
    assert truncate_after_stop([4, 9], {2}) == [4, 9]


def test_batched_left_padded_greedy_matches_one_by_one_on_smollm2(smol_rollout):
    tok = smol_rollout.tokenizer
    prompts = [chat_prompt(tok, "Hi!"), chat_prompt(tok, "Name three colours of the rainbow, please.")]
    assert len(prompts[0]) != len(prompts[1])  # so the batch really is padded
    stop = [tok.convert_tokens_to_ids("<|im_end|>")]
    batched = smol_rollout.generate_blocking(greedy(prompts, 12, stop))
    singles = [smol_rollout.generate_blocking(greedy([p], 12, stop)) for p in prompts]
    assert batched.token_ids == [s.token_ids[0] for s in singles]
    assert all(len(ids) > 0 for ids in batched.token_ids)
    for ids, single in zip(batched.logprobs, singles):
        assert ids == pytest.approx(single.logprobs[0], abs=1e-3)


def test_generation_stops_at_the_stop_id_and_keeps_it(tiny_rollout):
    prompt = [[11, 12, 13, 14]]
    free = tiny_rollout.generate_blocking(greedy(prompt, 12, stop=[0])).token_ids[0]  # id 0 is never sampled here
    assert len(free) == 12 and 0 not in free
    stop_id = free[4]
    first = free.index(stop_id)
    stopped = tiny_rollout.generate_blocking(greedy(prompt, 12, stop=[stop_id])).token_ids[0]
    assert stopped == free[: first + 1]
    assert stopped[-1] == stop_id


def test_logprobs_match_the_training_model(tiny_model_dir, tiny_rollout):
    """Greedy sampling log-probs equal the training model's log-probs of the same tokens."""
    prompts = [[21, 22, 23], [31, 32, 33, 34, 35, 36]]
    result = tiny_rollout.generate_blocking(greedy(prompts, 8, stop=[0]))
    assert [len(lp) for lp in result.logprobs] == [len(ids) for ids in result.token_ids] == [8, 8]
    assert all(v <= 0 for lp in result.logprobs for v in lp)
    from userrl_core.config.schema import ActorConfig

    policy = TorchPolicy(model=tiny_rollout.model, tokenizer=tiny_rollout.tokenizer, actor=ActorConfig(),
                         rollout_n=1, total_steps=1)
    for prompt, ids, lps in zip(prompts, result.token_ids, result.logprobs):
        full = torch.tensor([prompt + ids])
        batch = TrainBatch(input_ids=full, attention_mask=torch.ones_like(full),
                           loss_mask=torch.zeros_like(full), advantages=torch.zeros(full.shape))
        train_lps = policy.compute_logprobs(batch)[0, len(prompt):]
        assert train_lps.tolist() == pytest.approx(lps, abs=1e-4)


def test_seeded_sampling_is_reproducible_and_leaves_the_global_rng_alone(tiny_rollout):
    request = GenerationRequest(prompts=[[5, 6, 7]] * 3, max_new_tokens=6, temperature=1.0, seed=123,
                                stop_token_ids=[0])
    torch.manual_seed(7)
    expected_next = torch.rand(1)
    torch.manual_seed(7)
    a = tiny_rollout.generate_blocking(request)
    assert torch.equal(torch.rand(1), expected_next)
    b = tiny_rollout.generate_blocking(request)
    assert a.token_ids == b.token_ids
    other = tiny_rollout.generate_blocking(GenerationRequest(prompts=[[5, 6, 7]] * 3, max_new_tokens=6, seed=124,
                                                             stop_token_ids=[0]))
    assert other.token_ids != a.token_ids
    assert len({tuple(ids) for ids in a.token_ids}) > 1  # rows sample independently


def test_generation_batch_size_splits_without_changing_results(tiny_rollout):
    prompts = [[40 + i] * (1 + i % 3) for i in range(5)]
    whole = tiny_rollout.generate_blocking(greedy(prompts, 5, stop=[0]))
    tiny_rollout.generation_batch_size = 2
    try:
        split = tiny_rollout.generate_blocking(greedy(prompts, 5, stop=[0]))
    finally:
        tiny_rollout.generation_batch_size = None
    assert split.token_ids == whole.token_ids


def test_generate_runs_off_the_event_loop(tiny_rollout):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        task = asyncio.create_task(ticker())
        result = await tiny_rollout.generate(greedy([[3, 4, 5]] * 4, 24, stop=[0]))
        task.cancel()
        return ticks, result

    ticks, result = asyncio.run(main())
    assert len(result.token_ids) == 4
    assert ticks > 0


def test_concurrent_one_prompt_requests_share_one_generate_call(tiny_model_dir):
    """Async mode sends one request per episode; the batcher merges those arriving within the
    window into one batched generate, and each request still gets its own greedy continuation."""
    model = load_causal_lm(tiny_model_dir, dtype="float32", device=CPU).eval()
    rollout = TransformersRollout(model=model, tokenizer=load_tokenizer(tiny_model_dir), batch_window_s=0.05)
    prompts = [[40 + i] * (1 + i % 3) for i in range(4)]
    alone = [rollout.generate_blocking(greedy([p], 5, stop=[0])).token_ids[0] for p in prompts]

    async def main():
        return await asyncio.gather(*(rollout.generate(greedy([p], 5, stop=[0])) for p in prompts))

    results = asyncio.run(main())
    assert [r.token_ids[0] for r in results] == alone
    assert rollout.batcher.stats.calls == 1 and rollout.batcher.stats.largest_call == 4


def test_plugin_factories_share_one_model(tiny_model_dir):
    registry = get_plugin_manager().registry
    make_training = registry.get(Kind.TRAINING_BACKEND, "transformers")
    make_rollout = registry.get(Kind.ROLLOUT_BACKEND, "transformers")
    config = RunConfig.model_validate({
        "model": {"path": str(tiny_model_dir)},
        "data": {"train_files": ["unused.parquet"], "train_batch_size": 2},
        "actor": {"ppo_mini_batch_size": 2},
        "trainer": {"device": "cpu"},
    })
    training = make_training(config=config, total_steps=3)
    rollout = make_rollout(config=config, trainer=training)
    assert rollout.model is training.model
    assert rollout.tokenizer is training.tokenizer
    rollout.sync_weights(training)  # shared: nothing to copy, must not fail

    standalone = make_rollout(config=config)  # evaluation: loads its own copy
    assert standalone.model is not training.model
    with torch.no_grad():
        for p in training.model.parameters():
            p.add_(0.01)
    standalone.sync_weights(training)
    for a, b in zip(standalone.model.parameters(), training.model.parameters()):
        assert torch.equal(a, b)
