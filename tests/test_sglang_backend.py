"""The SGLang rollout adapter's own logic, against RecordingSGLangEngine (a test double:
SGLang itself cannot be installed without CUDA). What a real engine does is not tested here."""

import asyncio

import torch

from userrl_core.plugins import get_plugin_manager
from userrl_core.registry import Kind
from userrl_core.types import GenerationRequest
from userrl_plugins.backends.sglang_backend import (
    RecordingSGLangEngine,
    SGLangRollout,
    read_output,
    sampling_params,
    weight_buckets,
)


class FakeTraining:
    """Stands in for the training backend: a full state dict and the before-training hooks."""

    def __init__(self, sizes):
        self.state = {f"w{i}": torch.zeros(n, dtype=torch.bfloat16) for i, n in enumerate(sizes)}
        self.before_training = []

    def full_state_dict(self):
        return self.state

    def train_step(self):
        for callback in self.before_training:
            callback()


def test_requests_carry_sampling_settings_and_stop_ids():
    params = sampling_params(GenerationRequest(prompts=[[1]], max_new_tokens=64, temperature=0.7, top_p=0.9,
                                               stop_token_ids=[151645, 151643], seed=5))
    assert params == {"max_new_tokens": 64, "temperature": 0.7, "top_p": 0.9, "skip_special_tokens": False,
                      "no_stop_trim": True, "stop_token_ids": [151645, 151643], "sampling_seed": 5}
    greedy = sampling_params(GenerationRequest(prompts=[[1]], max_new_tokens=8, temperature=0.7, do_sample=False))
    assert greedy["temperature"] == 0.0 and greedy["top_p"] == 1.0 and "stop_token_ids" not in greedy


def test_generate_sends_one_request_per_episode_and_reads_ids_and_logprobs():
    engine = RecordingSGLangEngine(reply_ids=[7, 8], eos_id=2)
    rollout = SGLangRollout(engine, tokenizer=None)
    result = asyncio.run(rollout.generate(GenerationRequest(prompts=[[1, 2, 3], [4, 5]], max_new_tokens=4,
                                                            stop_token_ids=[2])))
    assert result.token_ids == [[7, 8, 2], [7, 8, 2]]
    assert result.logprobs == [[-0.5] * 3, [-0.5] * 3]
    sent = [c[1] for c in engine.calls if c[0] == "async_generate"]
    assert [s["input_ids"] for s in sent] == [[1, 2, 3], [4, 5]]
    assert all(s["sampling_params"]["stop_token_ids"] == [2] for s in sent)


def test_read_output_without_output_ids_uses_the_logprob_entries_and_rejects_mismatches():
    assert read_output({"meta_info": {"output_token_logprobs": [(-0.1, 5, None), (-0.2, 6, None)]}}) == (
        [5, 6], [-0.1, -0.2])
    try:
        read_output({"output_ids": [1, 2, 3], "meta_info": {"output_token_logprobs": [(-0.1, 1, None)]}})
    except ValueError as exc:
        assert "3 output ids but 1 log-probs" in str(exc)
    else:
        raise AssertionError("mismatch not detected")


def test_weight_buckets_respect_the_byte_limit_and_keep_order():
    tensors = [(f"t{i}", torch.zeros(n, dtype=torch.float32)) for i, n in enumerate([100, 100, 300, 50, 1000])]
    buckets = list(weight_buckets(tensors, bucket_bytes=1600))  # 400 floats
    assert [[n for n, _ in b] for b in buckets] == [["t0", "t1"], ["t2", "t3"], ["t4"]]
    assert [n for b in buckets for n, _ in b] == [n for n, _ in tensors]


def test_memory_is_released_for_training_and_resumed_around_the_weight_push():
    engine = RecordingSGLangEngine()
    rollout = SGLangRollout(engine, tokenizer=None, bucket_bytes=2 * 1000)  # 1000 bf16 values per bucket
    training = FakeTraining([600, 600, 600, 1500])
    training.before_training.append(rollout.release_memory)
    asyncio.run(rollout.generate(GenerationRequest(prompts=[[1]], max_new_tokens=2)))
    training.train_step()
    training.train_step()  # a second training call does not release twice
    rollout.sync_weights(training)
    names = [c[0] for c in engine.calls]
    assert names == ["async_generate", "release_memory_occupation", "resume_memory_occupation",
                     "update_weights_from_tensor", "update_weights_from_tensor", "update_weights_from_tensor",
                     "update_weights_from_tensor", "resume_memory_occupation"]
    assert engine.calls[2][1] == ["weights"] and engine.calls[-1][1] == ["kv_cache"]
    pushes = [c[1] for c in engine.calls if c[0] == "update_weights_from_tensor"]
    assert [p["names"] for p in pushes] == [["w0"], ["w1"], ["w2"], ["w3"]]
    assert [p["flush_cache"] for p in pushes] == [False, False, False, True]
    assert rollout.weight_version == 1 and not engine.released
    asyncio.run(rollout.generate(GenerationRequest(prompts=[[1]], max_new_tokens=2)))  # ready again


def test_generating_while_released_is_an_error_not_a_silent_wait():
    engine = RecordingSGLangEngine()
    rollout = SGLangRollout(engine, tokenizer=None)
    rollout.release_memory()
    try:
        asyncio.run(rollout.generate(GenerationRequest(prompts=[[1]], max_new_tokens=2)))
    except RuntimeError as exc:
        assert "released" in str(exc)
    else:
        raise AssertionError("generate while released must fail")


def test_plugin_lists_as_unavailable_with_the_install_hint_and_what_is_verified():
    import importlib.util

    manager = get_plugin_manager(fresh=True)
    info = manager.plugins["backend-sglang"]
    if importlib.util.find_spec("sglang") is None:
        assert info.status == "unavailable" and "userrl[sglang]" in info.hint
    else:
        assert info.status == "ok"
    entry = manager.registry._entries[(Kind.ROLLOUT_BACKEND, "sglang")]
    assert "recording double on CPU" in entry.description and "Not verified here" in entry.description
