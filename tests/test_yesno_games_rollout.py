"""TelepathyGym and TurtleGym end to end through the rollout engine, with the embedded ``hf``
simulator (the real SmolLM2-135M-Instruct) answering and grading.

The policy is scripted (a question, then an answer, as tool calls) so the test controls the
actions; the simulator is real, so what it says is not scripted: the test checks that every
turn's reward obeys the environment's rules for whatever the model said, that a step the model
could not answer usably is a failed episode with no reward, and that the simulator's
concurrent requests from both episodes were batched."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from userrl_core.config.schema import RunConfig
from userrl_core.config.schema import SimulatorConfig
from userrl_core.data import load_tasks
from userrl_core.plugins import get_plugin_manager
from userrl_core.rollout import RolloutEngine
from userrl_core.rollout.actions import TOOL_NAME
from userrl_core.types import EpisodeStatus, GenerationRequest, GenerationResult
from userrl_plugins.simulators.hf_simulator import HFSimulator
from userrl_plugins.telepathygym.entities import DEFAULT_VAL_PARQUET as TELEPATHY_TEST
from userrl_plugins.turtlegym.stories import DEFAULT_VAL_PARQUET as TURTLE_TEST

ACTIONS = {  # turn -> tool call, per gym (found in the prompt's first user message)
    "fruit": [("action", "Is it a fruit?"), ("answer", "Kiwi")],
    "Title:": [("action", "Did someone die?"), ("answer", "Her husband strangled her and she died.")],
}


class ScriptedPolicy:
    """A rollout-backend double (``userrl_core.types.RolloutBackend``): replies with scripted
    tool calls, tokenised with the real tokenizer and closed by the end-of-turn token, as a chat
    model's sampler returns them."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        outputs = []
        for prompt in request.prompts:
            text = self.tokenizer.decode(prompt, skip_special_tokens=False)
            turn = text.count("<|im_start|>assistant") - 1
            script = next(actions for key, actions in ACTIONS.items() if key in text)
            choice, content = script[min(turn, len(script) - 1)]
            call = json.dumps({"name": TOOL_NAME, "arguments": {"choice": choice, "content": content}})
            ids = self.tokenizer.encode(f"<tool_call>{call}</tool_call>", add_special_tokens=False)
            outputs.append(ids + [self.tokenizer.convert_tokens_to_ids("<|im_end|>")])
        await asyncio.sleep(0)
        return GenerationResult(outputs, None)

    def sync_weights(self, source) -> None:
        raise AssertionError("not used by the rollout engine")


def test_one_episode_of_each_gym_runs_through_the_engine_with_the_embedded_simulator(smol_model_dir, smol_tokenizer):
    registry = get_plugin_manager().registry
    telepathy = load_tasks(TELEPATHY_TEST, registry, max_tasks=1).tasks
    turtle = load_tasks(TURTLE_TEST, registry, max_tasks=1).tasks
    config = RunConfig(
        model={"path": str(smol_model_dir)}, data={"train_files": ["unused"]},
        rollout={"action_format": "tool_call", "n": 1, "max_turns": 2, "max_new_tokens": 96,
                 "max_episode_tokens": 4096},
        env={"TurtleGym": {"grading": "per_criterion", "reply_retries": 1}, "TelepathyGym": {"reply_retries": 1}},
    )
    simulator = HFSimulator(SimulatorConfig(name="hf", model=str(smol_model_dir), max_tokens=8))
    engine = RolloutEngine(ScriptedPolicy(smol_tokenizer), registry, simulator, config)
    result = asyncio.run(engine.run(telepathy + turtle, seed=3))

    episodes = {e.task.env_name: e for e in result.episodes}
    assert set(episodes) == {"TelepathyGym", "TurtleGym"}
    for episode in episodes.values():
        if episode.status is EpisodeStatus.FAILED:
            # The 135M model gave no usable reply after the re-ask: no reward, an error naming why.
            assert "no usable reply" in (episode.error or "") and episode.turns[-1].reward == 0.0
            continue
        question, answer = episode.turns
        assert question.action.choice == "action" and question.reward == 0.0
        assert re.fullmatch(r"(Yes|No|Maybe)\nReward: 0\.0", question.observation)
        # An answer earns its score (nothing earlier to improve on), whatever the grader said.
        assert answer.action.choice == "answer" and answer.reward == answer.info["answer_score"]
        assert answer.observation.endswith(f"Reward: {answer.reward}")
    turtle_ep = episodes["TurtleGym"]
    if turtle_ep.status is EpisodeStatus.OK:
        assert len(turtle_ep.turns[1].info["criterion_grades"]) == 4
    # Both episodes asked at once: the simulator batched their requests.
    assert max(simulator.batch_sizes) >= 2
    assert simulator.stats()["calls"] >= 3 and simulator.stats()["failures"] == 0
