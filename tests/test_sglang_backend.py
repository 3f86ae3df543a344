"""The SGLang rollout backend against a double that keeps the real engine's contract
(tests/support/sglang_double.py, each behaviour cited from sgl-project/sglang). SGLang itself
cannot be installed without CUDA: what a real engine does on a GPU is not tested here.

Three layers: the double itself (it must fail where the real engine fails), one engine on its own
thread (:class:`EngineHost`), and one engine per training rank inside 2 gloo rank processes.
"""

import asyncio
import functools
import importlib.util
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.support.sglang_double import (
    GPU_MEMORY_ALL_TYPES,
    SGLangEngineDouble,
    checkpoint_shapes,
    engine_state,
    refuse_next_push,
)
from userrl_core.errors import ConfigError, RunStopped
from userrl_core.plugins import get_plugin_manager
from userrl_core.registry import Kind
from userrl_core.types import GenerationRequest
from userrl_plugins.backends.sglang_backend import (
    RELEASE_TAGS,
    EngineHost,
    prompt_seed,
    read_output,
    sampling_params,
    weight_buckets,
)

DOUBLE = "tests.support.sglang_double:SGLangEngineDouble"


@pytest.fixture
def double(tiny_model_dir):
    engine = SGLangEngineDouble(model_path=str(tiny_model_dir))
    yield engine
    engine.child.kill()  # not engine.shutdown(): in the test process it would kill pytest's other children


@pytest.fixture
def host(tiny_model_dir):
    host = EngineHost(SGLangEngineDouble, model_path=str(tiny_model_dir))
    yield host
    host.engine.shutdown = host.engine.child.kill  # as above: keep pytest's other children alive
    host.shutdown()
    assert not host._thread.is_alive()


def some_weights(engine, scale=1.0):
    return [(name, torch.full(shape, scale)) for name, shape in engine.shapes.items()]


# ---------------------------------------------------------------------------- the double


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited")  # as with the real engine
def test_double_sync_control_methods_fail_inside_a_running_loop_like_the_real_ones(double):
    async def inside():
        double.release_memory_occupation(tags=["kv_cache"])

    with pytest.raises(RuntimeError, match="another loop is running|already running"):
        asyncio.run(inside())
    double.release_memory_occupation(tags=["kv_cache"])  # outside a loop: fine
    assert double.offload_tags == {"kv_cache"}


def test_double_memory_tags_follow_the_scheduler(double):
    double.release_memory_occupation()  # no tags: all four types
    assert double.offload_tags == set(GPU_MEMORY_ALL_TYPES)
    double.resume_memory_occupation(tags=["weights", "kv_cache"])
    assert double.offload_tags == {"weights_drafter", "cuda_graph"}  # left paused
    with pytest.raises(KeyError, match="weights"):
        double.resume_memory_occupation(tags=["weights"])  # never released (again)
    assert double.dead is not None  # the scheduler process died with it


def test_double_refuses_to_release_with_requests_in_flight(double):
    async def scenario():
        task = asyncio.ensure_future(double.async_generate(input_ids=[1, 2], sampling_params={"max_new_tokens": 50}))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        with pytest.raises(AssertionError, match="no ongoing request"):
            await double.tokenizer_manager.release_memory_occupation(type("R", (), {"tags": ["kv_cache"]})())
        task.cancel()

    asyncio.run(scenario())


def test_double_weight_update_answers_success_and_message_and_knows_the_checkpoint_names(double, caplog):
    assert double.update_weights_from_tensor(some_weights(double)) == (True, "Success")
    assert set(double.loaded) == set(double.shapes)
    assert double.update_weights_from_tensor([("model.extra.weight", torch.zeros(2))]) == (True, "Success")
    assert double.skipped == ["model.extra.weight"] and "not found in params_dict" in caplog.text  # as load_weights
    double.fail_next_push = "Failed to update weights: boom"
    assert double.update_weights_from_tensor(some_weights(double)) == (False, "Failed to update weights: boom")
    name, shape = next(iter(double.shapes.items()))
    with pytest.raises(AssertionError, match="Attempted to load weight"):
        double.update_weights_from_tensor([(name, torch.zeros(*shape, 2))])
    with pytest.raises(RuntimeError, match="not running"):
        double.flush_cache()


def test_double_unknown_stacked_projection_name_is_a_key_error(double):
    with pytest.raises(KeyError):
        double.update_weights_from_tensor([("model.layers.9.self_attn.q_proj.weight", torch.zeros(2))])


def test_double_generation_output_shape_sampling_checks_eos_and_context_length(double):
    eos = next(iter(double.eos_token_ids))

    async def go(ids, params, **kw):
        return await double.async_generate(input_ids=ids, sampling_params=params, **kw)

    out = asyncio.run(go([1, 2, 3], {"max_new_tokens": 5, "ignore_eos": True}, return_logprob=True))
    assert set(out) == {"text", "output_ids", "meta_info"} and len(out["output_ids"]) == 5
    meta = out["meta_info"]
    assert meta["finish_reason"] == {"type": "length", "length": 5}
    assert meta["prompt_tokens"] == 3 and meta["completion_tokens"] == 5
    assert [t for _, t, _ in meta["output_token_logprobs"]] == out["output_ids"]
    double.reply_ids = [7, 8]
    out = asyncio.run(go([1], {"max_new_tokens": 10}))
    assert out["output_ids"] == [7, 8, eos] and out["meta_info"]["finish_reason"] == {"type": "stop", "matched": eos}
    assert "output_token_logprobs" not in out["meta_info"]
    with pytest.raises(TypeError, match="max_tokens"):
        asyncio.run(go([1], {"max_tokens": 4}))
    with pytest.raises(ValueError, match="top_p must be in"):
        asyncio.run(go([1], {"top_p": 0.0}))
    with pytest.raises(ValueError, match="longer than the model's context length"):
        asyncio.run(go([1] * double.context_len, {"max_new_tokens": 1}))
    with pytest.raises(ValueError, match="exceeds the model's maximum context length"):
        asyncio.run(go([1] * 10, {"max_new_tokens": double.context_len}))


def test_double_shutdown_kills_the_callers_children_and_not_the_caller(tiny_model_dir, tmp_path):
    script = textwrap.dedent(f"""
        import multiprocessing, time
        from tests.support.sglang_double import SGLangEngineDouble
        if __name__ == "__main__":
            other = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(60,))
            other.start()
            engine = SGLangEngineDouble(model_path={str(tiny_model_dir)!r})
            engine.shutdown()
            other.join(timeout=10)
            print("children alive:", engine.child.is_alive(), other.is_alive())
    """)
    (tmp_path / "shutdown_probe.py").write_text(script)
    root = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, str(tmp_path / "shutdown_probe.py")], capture_output=True, text=True,
                          timeout=120, cwd=root, env={**os.environ, "PYTHONPATH": root})
    assert done.returncode == 0, done.stderr
    assert "children alive: False False" in done.stdout


@pytest.mark.skipif(importlib.util.find_spec("sglang") is None,
                    reason="contract check against the real sglang.Engine: sglang installs only on CUDA machines; "
                           "this is the only test that needs it")
def test_double_signatures_match_the_real_engine():  # pragma: no cover - runs on a GPU machine
    import sglang

    for name in ["release_memory_occupation", "resume_memory_occupation", "update_weights_from_tensor",
                 "flush_cache", "shutdown"]:
        real = inspect.signature(getattr(sglang.Engine, name))
        ours = inspect.signature(getattr(SGLangEngineDouble, name))
        assert list(ours.parameters) == list(real.parameters), name
    real = inspect.signature(sglang.Engine.async_generate).parameters
    for name in ["prompt", "sampling_params", "input_ids", "return_logprob"]:
        assert name in real
    assert inspect.iscoroutinefunction(sglang.Engine.async_generate)


# ---------------------------------------------------------------------------- adapter helpers


def test_requests_carry_sampling_settings_stop_ids_and_a_seed_per_prompt():
    params = sampling_params(GenerationRequest(prompts=[[1]], max_new_tokens=64, temperature=0.7, top_p=0.9,
                                               stop_token_ids=[151645, 151643], seed=5))
    assert params == {"max_new_tokens": 64, "temperature": 0.7, "top_p": 0.9, "skip_special_tokens": False,
                      "no_stop_trim": True, "stop_token_ids": [151645, 151643], "sampling_seed": 5}
    greedy = sampling_params(GenerationRequest(prompts=[[1]], max_new_tokens=8, temperature=0.7, do_sample=False))
    assert greedy["temperature"] == 0.0 and greedy["top_p"] == 1.0 and "stop_token_ids" not in greedy
    assert len({prompt_seed(5, i) for i in range(8)}) == 8 and prompt_seed(None, 3) is None


def test_read_output_without_output_ids_uses_the_logprob_entries_and_rejects_mismatches():
    assert read_output({"meta_info": {"output_token_logprobs": [(-0.1, 5, None), (-0.2, 6, None)]}}) == (
        [5, 6], [-0.1, -0.2])
    with pytest.raises(ValueError, match="3 output ids but 1 log-probs"):
        read_output({"output_ids": [1, 2, 3], "meta_info": {"output_token_logprobs": [(-0.1, 1, None)]}})


def test_weight_buckets_respect_the_byte_limit_and_keep_order():
    tensors = [(f"t{i}", torch.zeros(n, dtype=torch.float32)) for i, n in enumerate([100, 100, 300, 50, 1000])]
    buckets = list(weight_buckets(tensors, bucket_bytes=1600))  # 400 floats
    assert [[n for n, _ in b] for b in buckets] == [["t0", "t1"], ["t2", "t3"], ["t4"]]


# ---------------------------------------------------------------------------- one engine on its own thread


def test_engine_host_controls_the_engine_from_inside_a_running_loop(host):
    """Finding 1: the trainer runs in asyncio.run; the control calls must still work."""
    order = []

    async def step():
        outs = await asyncio.gather(*(asyncio.wrap_future(host.submit_generate([1, i], {"max_new_tokens": 3}))
                                      for i in range(4)))
        host.release()
        host.release()  # idempotent
        ok = host.push_weights(weight_buckets(some_weights(host.engine), 4096),
                               before_resume=lambda: order.append("empty_cache"))
        return outs, ok

    outs, ok = asyncio.run(step())
    assert ok == (True, "Success") and all(len(o["output_ids"]) == 3 for o in outs)
    calls = [c for c in host.engine.calls]
    assert calls[0] == ("release_memory_occupation", list(RELEASE_TAGS))
    assert calls[1] == ("resume_memory_occupation", ["weights"])
    pushes = [c for c in calls if c[0] == "update_weights_from_tensor"]
    assert len(pushes) > 1 and not any(p[1]["flush_cache"] for p in pushes)
    assert calls[-2:] == [("resume_memory_occupation", ["kv_cache"]), ("flush_cache", None)]
    assert order == ["empty_cache"] and host.engine.offload_tags == set()
    assert set(host.engine.loaded) == set(host.engine.shapes)


def test_engine_host_reports_a_refused_push_and_still_draws_every_bucket(host):
    host.engine.fail_next_push = "Failed to update weights: out of memory"
    drawn = []

    def buckets():
        for bucket in weight_buckets(some_weights(host.engine), 4096):
            drawn.append(bucket)
            yield bucket

    host.release()
    ok, message = host.push_weights(buckets())
    assert not ok and "out of memory" in message and "bucket 0" in message
    assert len(drawn) == len(list(weight_buckets(some_weights(host.engine), 4096)))  # collectives stay in step
    assert host.engine.offload_tags == set()


class PolicyWithAnExtraWeight:
    """The rank's policy as RankEngine sees it, with one weight the checkpoint does not have."""

    def __init__(self, shapes):
        self.shapes = dict(shapes)
        self.drawn = []

    def full_weights(self):
        for name, shape in [*self.shapes.items(), ("model.extra_norm.weight", (4,))]:
            self.drawn.append(name)
            yield name, torch.ones(shape)


def test_a_weight_the_engine_never_loaded_fails_the_push_instead_of_being_skipped(tiny_model_dir):
    from tests.test_fsdp_backend import make_config
    from userrl_plugins.backends.sglang_backend import RankEngine

    spec = {"factory": DOUBLE, "config": make_config(tiny_model_dir), "model_dir": str(tiny_model_dir),
            "base_port": 30000}
    policy = PolicyWithAnExtraWeight(checkpoint_shapes(str(tiny_model_dir)))
    engine = RankEngine(policy, spec, rank=1, local_gpu=0)
    try:
        assert engine.describe()["port"] == 30010
        ok, message = engine.sync_weights(bucket_bytes=4096)
        assert not ok and "model.extra_norm.weight" in message and "stale" in message
        assert policy.drawn[-1] == "model.extra_norm.weight"  # every tensor drawn (collectives in step)
        assert engine.host.engine.skipped == []  # never sent: SGLang would have skipped it with a warning
        assert set(engine.host.engine.loaded) == set(policy.shapes)
    finally:
        engine.host.engine.shutdown = engine.host.engine.child.kill  # keep pytest's other children alive
        engine.shutdown()


# ---------------------------------------------------------------------------- one engine per training rank


@pytest.fixture(scope="module")
def ranks(tiny_model_dir):
    from tests.test_fsdp_backend import make_config
    from userrl_plugins.backends.fsdp_backend import FSDPTrainingBackend
    from userrl_plugins.backends.rank_processes import LocalRankGroup
    from userrl_plugins.backends.sglang_plugin import make_rollout_backend
    from userrl_plugins.backends.torch_policy import load_tokenizer

    config = make_config(tiny_model_dir)
    config = config.model_copy(update={"rollout": config.rollout.model_copy(update={"backend": "sglang"})})
    group = LocalRankGroup(config, str(tiny_model_dir), world=2)
    training = FSDPTrainingBackend(group, tokenizer=load_tokenizer(str(tiny_model_dir)))
    rollout = make_rollout_backend(config=config, trainer=training, engine_factory=DOUBLE)
    yield rollout, training, group
    rollout.close()
    training.close()


def test_one_engine_per_rank_inside_the_rank_process_with_its_own_port(ranks):
    rollout, training, group = ranks
    placed = rollout.placement
    assert [p["pid"] for p in placed] == group.pids  # inside the rank processes, not the driver
    assert [p["port"] for p in placed] == [30000, 30010]
    assert [p["base_gpu_id"] for p in placed] == [0, 0]  # each rank's own device (cuda:0 of its own view)
    states = training.engines("control", engine_state)
    assert [s["pid"] for s in states] == group.pids and all(s["child_alive"] for s in states)


def test_a_training_step_inside_the_event_loop_with_engines_in_the_ranks(ranks, tiny_model_dir):
    """Findings 1-4 end to end: requests spread over both engines; release, update, per-rank
    bucketed push, all from inside asyncio.run as the trainer does it."""
    from tests.test_fsdp_backend import make_batch

    rollout, training, group = ranks
    before = [s["requests"] for s in training.engines("control", engine_state)]

    async def step():
        result = await rollout.generate(GenerationRequest(prompts=[[1, 2, 3 + i] for i in range(6)], max_new_tokens=4,
                                                          seed=11))
        batch = make_batch(vocab=int(training.full_state_dict()["model.embed_tokens.weight"].shape[0]), rows=4)
        batch.old_logprobs = training.compute_logprobs(batch)  # releases the engines first
        assert rollout.released
        with pytest.raises(RuntimeError, match="released"):
            await rollout.generate(GenerationRequest(prompts=[[1]], max_new_tokens=2))
        training.update(batch)
        rollout.sync_weights(training)
        return result

    result = asyncio.run(step())
    assert len(result.token_ids) == 6 and all(len(ids) >= 1 for ids in result.token_ids)
    assert all(len(ids) == len(lp) for ids, lp in zip(result.token_ids, result.logprobs))
    states = training.engines("control", engine_state)
    assert [s["requests"] - b for s, b in zip(states, before)] == [3, 3]  # least-loaded routing
    full = training.full_state_dict()
    for state in states:
        assert state["offload_tags"] == []
        names = [c[0] for c in state["calls"]]
        assert names[:2] == ["release_memory_occupation", "resume_memory_occupation"]
        assert state["calls"][0][1] == ["kv_cache", "weights"]
        assert names[-2:] == ["resume_memory_occupation", "flush_cache"]
        assert set(state["loaded"]) == set(full)  # every weight, tied lm_head left out
        for name, checksum in state["loaded"].items():
            assert checksum == pytest.approx(float(full[name].double().sum()), rel=1e-5, abs=1e-4)
    assert not rollout.released


def test_a_refused_weight_push_stops_the_run_with_sglangs_message(ranks):
    rollout, training, group = ranks
    training.engines("control", functools.partial(refuse_next_push, 30010, "Failed to update weights: CUDA OOM"))
    rollout.release_memory()
    with pytest.raises(RunStopped, match=r"rank 1: bucket 0 .*CUDA OOM"):
        rollout.sync_weights(training)
    rollout.sync_weights(training)  # the ranks are still in step: the next push works
    assert all(s["offload_tags"] == [] for s in training.engines("control", engine_state))


def test_sglang_needs_the_fsdp_training_backend_and_one_gpu_per_engine(tiny_model_dir):
    from tests.test_fsdp_backend import make_config
    from userrl_plugins.backends.sglang_plugin import make_rollout_backend

    with pytest.raises(ConfigError, match="actor.backend: fsdp"):
        make_rollout_backend(config=make_config(tiny_model_dir), trainer=object(), engine_factory=DOUBLE)

    class Ranks:  # would start engines: must not be asked to
        def start_engines(self, spec):
            raise AssertionError("engines started despite the bad config")

    config = make_config(tiny_model_dir)
    config = config.model_copy(update={"rollout": config.rollout.model_copy(update={"tensor_model_parallel_size": 2})})
    with pytest.raises(ConfigError, match="rollout.tensor_model_parallel_size"):
        make_rollout_backend(config=config, trainer=Ranks(), engine_factory=DOUBLE)


def test_plugin_lists_as_unavailable_with_the_install_hint_and_what_is_verified():
    manager = get_plugin_manager(fresh=True)
    info = manager.plugins["backend-sglang"]
    if importlib.util.find_spec("sglang") is None:
        assert info.status == "unavailable" and "userrl[sglang]" in info.hint
    else:
        assert info.status == "ok"
    entry = manager.registry._entries[(Kind.ROLLOUT_BACKEND, "sglang")]
    assert "double that keeps the real engine's contract" in entry.description
    assert "Not verified here" in entry.description
