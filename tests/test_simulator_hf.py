"""The embedded ``hf`` simulator: a real transformers chat model in-process, concurrent requests
batched into one left-padded generate, failures raised as SimulatorError and counted.

Batching and padding are checked on the tiny random Llama (fast, and its spread-out logits make
any padding mistake change the greedy output); one test runs the real SmolLM2-135M-Instruct."""

from __future__ import annotations

import asyncio

import pytest

from userrl_core.config.schema import SimulatorConfig
from userrl_core.errors import ConfigError
from userrl_core.plugins import get_plugin_manager
from userrl_core.registry import Kind
from userrl_core.types import SimulatorError, SimulatorRequest
from userrl_plugins.simulators.hf_simulator import ChatGenerator, HFSimulator

QUESTIONS = ["Is it a fruit?", "Is it bigger than a car? Think about it.", "Is it red?",
             "Does it grow on trees in warm countries?", "Is it an animal?"]


def request(question: str) -> SimulatorRequest:
    return SimulatorRequest(purpose="reply", messages=[
        {"role": "system", "content": "You think of a kiwi. Answer with one word: Yes, No or Maybe."},
        {"role": "user", "content": question},
    ])


@pytest.fixture(scope="module")
def tiny_generator(tiny_model_dir):
    return ChatGenerator(tiny_model_dir)


def tiny_sim(generator, **extra) -> HFSimulator:
    return HFSimulator(SimulatorConfig(name="hf", max_tokens=6, extra=extra), generator=generator)


def test_concurrent_requests_share_one_batch_and_match_one_by_one_answers(tiny_generator):
    sim = tiny_sim(tiny_generator)

    async def together():
        return await asyncio.gather(*(sim.complete(request(q)) for q in QUESTIONS))

    async def one_by_one():
        return [await sim.complete(request(q)) for q in QUESTIONS]

    batched = asyncio.run(together())
    assert sim.batch_sizes == [len(QUESTIONS)]
    serial = asyncio.run(one_by_one())
    assert sim.batch_sizes == [len(QUESTIONS)] + [1] * len(QUESTIONS)
    # Left padding with an attention mask must not change a greedy answer.
    assert [r.text for r in batched] == [r.text for r in serial]
    assert all(r.completion_tokens <= 6 for r in batched)
    assert len({r.prompt_tokens for r in batched}) > 1  # the prompts really had different lengths
    stats = sim.stats()
    assert stats["calls"] == 2 * len(QUESTIONS) and stats["failures"] == 0
    assert stats["prompt_tokens"] == 2 * sum(r.prompt_tokens for r in batched)


def test_batches_are_capped_by_max_batch_size(tiny_generator):
    sim = tiny_sim(tiny_generator, max_batch_size=2)

    async def together():
        return await asyncio.gather(*(sim.complete(request(q)) for q in QUESTIONS))

    asyncio.run(together())
    assert sim.batch_sizes == [2, 2, 1]


def test_a_prompt_longer_than_the_context_fails_the_call_and_is_counted(tiny_generator):
    sim = tiny_sim(tiny_generator, max_prompt_tokens=32)
    with pytest.raises(SimulatorError, match=r"the prompt is \d+ tokens; at most 26 fit"):
        asyncio.run(sim.complete(request("Is it " + "very " * 40 + "small?")))
    assert sim.stats()["failures"] == 1 and sim.batches == 0


def test_a_generation_error_fails_every_request_of_its_batch(tiny_generator, monkeypatch):
    sim = tiny_sim(tiny_generator)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(sim.generator, "generate", broken)

    async def together():
        return await asyncio.gather(*(sim.complete(request(q)) for q in QUESTIONS[:3]), return_exceptions=True)

    outcomes = asyncio.run(together())
    assert all(isinstance(o, SimulatorError) and "out of memory" in str(o) for o in outcomes)
    assert sim.stats()["failures"] == 3


def test_bad_settings_name_the_key(tiny_generator):
    with pytest.raises(ConfigError, match=r"simulator\.extra\.max_batch_size"):
        tiny_sim(tiny_generator, max_batch_size=0)
    with pytest.raises(ConfigError, match=r"simulator\.extra\.batch"):
        tiny_sim(tiny_generator, batch=4)


def test_registered_as_hf_and_answers_with_the_real_smollm2(smol_model_dir):
    factory = get_plugin_manager().registry.get(Kind.SIMULATOR, "hf")
    sim = factory(config=SimulatorConfig(name="hf", model=str(smol_model_dir), max_tokens=4))
    assert sim.name == "hf"
    response = asyncio.run(sim.complete(request("Is it a fruit?")))
    assert response.text.strip() and 0 < response.completion_tokens <= 4
    assert sim.stats()["completion_tokens"] == response.completion_tokens
