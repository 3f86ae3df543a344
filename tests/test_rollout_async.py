"""Async rollouts with real components: the IntentionGym environment and the ``litellm``
simulator talking HTTP to a loopback OpenAI-compatible server that holds one task's
simulator calls for a few seconds. In async mode the other episodes' turns go on meanwhile;
in sync mode every episode waits for the held call at the next turn (the barrier)."""

from __future__ import annotations

import asyncio
import time

import pytest
from support.openai_server import OpenAIServer, reply

from userrl_core.config.schema import RunConfig
from userrl_core.data import load_tasks
from userrl_core.plugins import get_plugin_manager
from userrl_core.rollout import RolloutEngine
from userrl_core.types import EpisodeStatus, GenerationRequest, GenerationResult
from userrl_plugins.intentiongym.tasks import DATA_DIR
from userrl_plugins.simulators.litellm_simulator import build_litellm_simulator

HOLD_S = 3.0
STUCK = "STUCK"
JUDGE_MARKER = "You judge clarifying questions"  # the IntentionGym judge prompt's opening (prompts.py)
TURNS = 4


class QuestionPolicy:
    """A rollout-backend double: every prompt gets one question, tokenised with the real
    tokenizer and closed by the end-of-turn token as a chat model's sample is. The question names
    the task (by its index among ``openings``) and the turn, and the task ``stuck`` asks a
    question marked STUCK at turn 1. Records when each (task, turn) request arrived."""

    def __init__(self, tokenizer, openings: list[str], stuck: int):
        self.tokenizer, self.openings, self.stuck = tokenizer, openings, stuck
        self.end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.arrived: dict[tuple[int, int], float] = {}

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        outputs = []
        for prompt in request.prompts:
            text = self.tokenizer.decode(prompt, skip_special_tokens=False)
            index = next(i for i, opening in enumerate(self.openings) if opening in text)
            turn = text.count("<|im_start|>assistant") - 1
            self.arrived.setdefault((index, turn), time.perf_counter())
            mark = f" {STUCK}" if index == self.stuck and turn == 1 else ""
            question = f"Question {turn} about request {index}{mark}: which dates suit you?"
            outputs.append(self.tokenizer.encode(question, add_special_tokens=False) + [self.end_of_turn])
        return GenerationResult(outputs, None)

    def sync_weights(self, source) -> None:
        return None


def answer(body):
    """The server's answer: held for HOLD_S when the question is marked STUCK; the judge never
    marks a detail covered, so every episode runs all its turns."""
    content = " ".join(str(m.get("content", "")) for m in (body or {}).get("messages", []))
    delay = HOLD_S if STUCK in content else 0.0
    if JUDGE_MARKER in content:
        return reply('{"analysis": "none", "is_task_related": true, "covered_detail_indices": []}', delay=delay)
    return reply("Sometime in May, please.", delay=delay)


@pytest.fixture(scope="module")
def server():
    with OpenAIServer(default=answer) as srv:
        yield srv


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_an_episode_stuck_on_a_slow_simulator_call_does_not_delay_the_others(server, smol_tokenizer, mode):
    registry = get_plugin_manager().registry
    tasks = load_tasks(DATA_DIR / "userrl_splits" / "train.parquet", registry, max_tasks=4).tasks
    openings = [t.prompt[-1]["content"] for t in tasks]
    config = RunConfig(
        model={"path": "unused"}, data={"train_files": ["unused"]},
        rollout={"mode": mode, "action_format": "plain_text", "n": 2, "max_turns": TURNS, "max_new_tokens": 40,
                 "max_episode_tokens": 4096},
        simulator={"name": "litellm", "model": "openai/test-model", "api_base": server.base_url,
                   "num_retries": 0, "timeout": 30.0},
    )
    policy = QuestionPolicy(smol_tokenizer, openings, stuck=0)
    engine = RolloutEngine(policy, registry, build_litellm_simulator(config=config.simulator), config)
    result = asyncio.run(engine.run(tasks, seed=1))

    assert [(e.group, e.sample) for e in result.episodes] == [(g, s) for g in range(4) for s in range(2)]
    assert all(e.status is EpisodeStatus.OK and len(e.turns) == TURNS for e in result.episodes)
    assert result.metrics[f"rollout/mode/{mode}"] == 1.0
    held_until = policy.arrived[(0, 2)]  # the stuck task's next turn comes after the held calls
    assert held_until - policy.arrived[(0, 1)] >= HOLD_S
    others_last = max(policy.arrived[(i, TURNS - 1)] for i in range(1, 4))
    if mode == "async":
        # every other episode ran all its turns while the stuck one waited
        assert others_last < held_until
    else:
        # the barrier: every other episode's turn 2 waited for the held call
        assert all(policy.arrived[(i, 2)] >= held_until for i in range(1, 4))


class SeedRecordingPolicy(QuestionPolicy):
    """QuestionPolicy that also records the sampling seed of each (task, turn) request."""

    def __init__(self, tokenizer, openings: list[str]):
        super().__init__(tokenizer, openings, stuck=-1)
        self.seeds: dict[tuple[int, int], int] = {}

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        ((prompt,),) = (request.prompts,)
        text = self.tokenizer.decode(prompt, skip_special_tokens=False)
        index = next(i for i, opening in enumerate(self.openings) if opening in text)
        self.seeds[(index, text.count("<|im_start|>assistant") - 1)] = request.seed
        return await super().generate(request)


@pytest.mark.parametrize("validation", [False, True])
def test_async_requests_carry_the_documented_per_episode_turn_seed(server, smol_tokenizer, validation):
    """Each async request's seed is derive_seed(run seed, train|validation, turn, group, sample),
    as documented in docs/rollout.md, however the engine builds it."""
    from userrl_core.rollout import derive_seed

    registry = get_plugin_manager().registry
    tasks = load_tasks(DATA_DIR / "userrl_splits" / "train.parquet", registry, max_tasks=3).tasks
    config = RunConfig(
        model={"path": "unused"}, data={"train_files": ["unused"]},
        rollout={"mode": "async", "action_format": "plain_text", "n": 1, "val_n": 1, "max_turns": 2,
                 "max_new_tokens": 40, "max_episode_tokens": 4096},
        simulator={"name": "litellm", "model": "openai/test-model", "api_base": server.base_url,
                   "num_retries": 0, "timeout": 30.0},
    )
    policy = SeedRecordingPolicy(smol_tokenizer, [t.prompt[-1]["content"] for t in tasks])
    engine = RolloutEngine(policy, registry, build_litellm_simulator(config=config.simulator), config)
    asyncio.run(engine.run(tasks, seed=7, validation=validation))
    tag = "validation" if validation else "train"
    assert policy.seeds == {(g, t): derive_seed(7, tag, t, g, 0) for g in range(3) for t in range(2)}
    assert len(set(policy.seeds.values())) == 6
