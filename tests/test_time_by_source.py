"""Rollout time per data source (``timing_s/by_source/<data_source>/<phase>``) in both rollout
modes, with real components: IntentionGym, the ``litellm`` simulator over HTTP to a loopback
server that answers one source's tasks slowly, and a policy double that waits a little per
generate call. The slow source must show the simulator seconds, the other one next to none;
every source waits for the policy."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from support.openai_server import OpenAIServer, reply
from support.tiny_runs import JUDGE_VERDICT_NONE, is_judge_request, loopback_rollout_config

from userrl_core.data import load_tasks
from userrl_core.plugins import get_plugin_manager
from userrl_core.rollout import RolloutEngine
from userrl_core.types import EpisodeStatus, GenerationRequest, GenerationResult, SimulatorRequest
from userrl_plugins.intentiongym.tasks import DATA_DIR
from userrl_plugins.simulators.litellm_simulator import build_litellm_simulator

TURNS = 2
SLOW_S = 0.5
GENERATE_S = 0.02
SLOW_TASKS = (0, 1)  # of 4: data source "slow_user"; tasks 2 and 3 are "quick_user"


class QuestionPolicy:
    """A rollout-backend double (the ``RolloutBackend`` protocol, userrl_core/types.py): every
    prompt gets one question naming its task's index, tokenised with the real tokenizer and
    closed by the end-of-turn token as a chat model's sample is; each call takes GENERATE_S,
    as a batch costs a real backend time."""

    def __init__(self, tokenizer, openings: list[str]):
        self.tokenizer, self.openings = tokenizer, openings
        self.end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        outputs = []
        for prompt in request.prompts:
            text = self.tokenizer.decode(prompt, skip_special_tokens=False)
            index = next(i for i, opening in enumerate(self.openings) if opening in text)
            question = f"Question about request {index}: which dates suit you?"
            outputs.append(self.tokenizer.encode(question, add_special_tokens=False) + [self.end_of_turn])
        await asyncio.sleep(GENERATE_S)
        return GenerationResult(outputs, None)

    def sync_weights(self, source) -> None:
        return None


def answer(body):
    """Slow (SLOW_S) for questions about the slow source's tasks, immediate otherwise; the judge
    never marks a detail covered, so every episode runs all its turns."""
    content = " ".join(str(m.get("content", "")) for m in (body or {}).get("messages", []))
    slow = any(f"about request {index}:" in content for index in SLOW_TASKS)
    text = JUDGE_VERDICT_NONE if is_judge_request(body) else "Sometime in May, please."
    return reply(text, delay=SLOW_S if slow else 0.0)


async def warm_then_run(engine, simulator, tasks):
    """One simulator call first (the client's first call pays its set-up, which would otherwise
    land on whichever episode calls first), then the rollout, on the same event loop."""
    await simulator.complete(SimulatorRequest(purpose="reply", messages=[{"role": "user", "content": "hello"}]))
    return await engine.run(tasks, seed=1)


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_time_is_split_by_data_source_and_the_slow_simulator_shows(smol_tokenizer, mode):
    registry = get_plugin_manager().registry
    tasks = load_tasks(DATA_DIR / "userrl_splits" / "train.parquet", registry, max_tasks=4).tasks
    tasks = [dataclasses.replace(t, data_source="slow_user" if i in SLOW_TASKS else "quick_user")
             for i, t in enumerate(tasks)]
    openings = [t.prompt[-1]["content"] for t in tasks]
    with OpenAIServer(default=answer) as server:
        config = loopback_rollout_config(mode, server.base_url, turns=TURNS, n=1,
                                         max_concurrency=16)  # no queueing behind slow calls
        simulator = build_litellm_simulator(config=config.simulator)
        engine = RolloutEngine(QuestionPolicy(smol_tokenizer, openings), registry, simulator, config)
        result = asyncio.run(warm_then_run(engine, simulator, tasks))

    assert all(e.status is EpisodeStatus.OK and len(e.turns) == TURNS for e in result.episodes)
    timing = {k.removeprefix("timing_s/by_source/"): v for k, v in result.metrics.items()
              if k.startswith("timing_s/by_source/")}
    assert set(timing) == {f"{source}/{phase}" for source in ("slow_user", "quick_user")
                           for phase in ("generate", "simulator", "env_own")}
    assert all(v >= 0.0 for v in timing.values())
    for source in ("slow_user", "quick_user"):  # two episodes, each waits for TURNS generate calls
        assert timing[f"{source}/generate"] >= 2 * TURNS * GENERATE_S * 0.9
    # each slow step holds the simulator for at least SLOW_S, in each of two episodes; the quick
    # source's simulator seconds are the client's own cost per call only
    assert timing["slow_user/simulator"] >= 2 * TURNS * SLOW_S * 0.9
    assert timing["slow_user/simulator"] > timing["quick_user/simulator"] + 2 * TURNS * SLOW_S * 0.5
    # the simulator's seconds are not also counted as the environment's own: its steps' own code
    # (parsing, prompts) is short beside them
    assert timing["slow_user/env_own"] < timing["slow_user/simulator"]
