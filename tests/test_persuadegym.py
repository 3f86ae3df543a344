"""PersuadeGym: the stance scale and its strict parser, UserRL's reward rule on hand-made episodes
(moves back and forth, no move, the goal), unparseable persona replies re-asked then failed,
UserRL's rows loaded unchanged, and episodes through the rollout engine with the embedded ``hf``
simulator."""

from __future__ import annotations

import asyncio
import json

import pytest

from userrl_core.config.schema import RunConfig, SimulatorConfig
from userrl_core.data import load_tasks
from userrl_core.errors import ConfigError
from userrl_core.plugins import get_plugin_manager
from userrl_core.registry import Kind
from userrl_core.rollout import RolloutEngine, validation_metrics
from userrl_core.types import (
    Action,
    EpisodeStatus,
    GenerationResult,
    SimulatorError,
    SimulatorRequest,
    SimulatorResponse,
    StepStatus,
    Task,
)
from userrl_plugins.persuadegym.stance import STANCES, StanceReplyError, levels_reward, parse_persona_reply
from userrl_plugins.persuadegym.tasks import DATA_DIR

MIX_TRAIN = DATA_DIR.parent / "mix" / "alltrain.parquet"


@pytest.fixture(scope="module")
def registry():
    return get_plugin_manager().registry


@pytest.fixture(scope="module")
def factory(registry):
    return registry.get(Kind.ENVIRONMENT, "PersuadeGym")


def persona(stance: str, response: str = "You make a point.") -> str:
    """A reply in the shape UserRL's persona prompt asks for: a JSON object in a ```json fence."""
    body = json.dumps({"thought": "Let me weigh this.", "response": response, "stance": stance}, indent=2)
    return f"```json\n{body}\n```"


class PersonaDouble:
    """A test double of a language-model simulator playing the persona: it returns scripted
    texts (or raises scripted errors) in order, and records every request."""

    name = "persona-double"

    def __init__(self, script: list[str | Exception]):
        self.script = list(script)
        self.requests: list[SimulatorRequest] = []

    async def complete(self, request: SimulatorRequest) -> SimulatorResponse:
        self.requests.append(request)
        await asyncio.sleep(0)
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return SimulatorResponse(text=item)

    async def aclose(self) -> None:
        return None


def make_task(prompt=None) -> Task:
    payload = {"env_name": "PersuadeGym", "id": "S1", "claim": "Cities should ban cars downtown.",
               "argument": "Cars make downtown loud, dangerous and polluted."}
    return Task(id="S1", env_name="PersuadeGym", data_source="interact_persuade", prompt=prompt or [],
                payload=payload)


def play(factory, script, moves, **settings):
    sim = PersonaDouble(script)

    async def run():
        env = factory(task=make_task(), simulator=sim, settings=settings, seed=0)
        opening = await env.reset()
        results = []
        for move in moves:
            action = move if isinstance(move, Action) else Action("answer", move)
            results.append(await env.step(action))
            if results[-1].done:
                break
        return env, opening, results

    env, opening, results = asyncio.run(run())
    return env, sim, opening, results


# --------------------------------------------------------------------------------------------
# The scale and the parser
# --------------------------------------------------------------------------------------------


def test_reward_is_levels_moved_toward_disagreement_over_six():
    assert levels_reward(0, 1) == round(1 / 6, 6)
    assert levels_reward(0, 6) == 1.0
    assert levels_reward(2, 5) == 0.5
    assert levels_reward(3, 3) == 0.0 and levels_reward(4, 1) == 0.0


@pytest.mark.parametrize("text, stance", [
    (persona("Neutral"), "Neutral"),
    ('Sure. {"response": "Fine.", "stance": "strongly   disagree"}', "Strongly Disagree"),
    ('{"thought": "x"} then {"response": "Ok.", "stance": "Partly Agree"}', "Partly Agree"),
])
def test_the_parser_reads_a_stance_label(text, stance):
    assert parse_persona_reply(text).stance == stance


@pytest.mark.parametrize("text, problem", [
    ("I now disagree with you.", "no JSON object"),
    ('{"response": "Ok.", "stance": "Somewhat Agree"}', "not one of"),
    ('{"response": "Ok.", "stance": "6"}', "not one of"),
    ('{"response": "Ok.", "stance": 6}', "must be one of"),
    ('{"response": "Ok.", "stance": "Agree, Disagree"}', "not one of"),
    ('{"response": "", "stance": "Agree"}', "non-empty"),
    ('{"stance": "Agree"}', "no JSON object"),
    ("{" * 5000, "no JSON object"),
    ("", "no JSON object"),
])
def test_the_parser_refuses_anything_else(text, problem):
    with pytest.raises(StanceReplyError, match=problem):
        parse_persona_reply(text)


# --------------------------------------------------------------------------------------------
# Hand-made episodes
# --------------------------------------------------------------------------------------------


def test_rewards_follow_the_stance_back_and_forth_until_strongly_disagree(factory):
    script = [persona("Agree", "Maybe."), persona("Neutral"), persona("Partly Agree"), persona("Partly Agree"),
              persona("Disagree"), persona("Strongly Disagree", "You convinced me.")]
    env, sim, opening, results = play(factory, script, [f"argument {i}" for i in range(6)])
    sixth = round(1 / 6, 6)
    assert [r.reward for r in results] == [sixth, round(2 / 6, 6), 0.0, 0.0, 0.5, sixth]
    assert [r.done for r in results] == [False] * 5 + [True]
    assert results[0].observation == "Maybe." and results[-1].info["end_reason"] == "persuaded"
    assert results[2].info["levels_moved"] == -1
    metrics = env.metrics()
    assert metrics["score"] == pytest.approx(sixth + round(2 / 6, 6) + 0.5 + sixth)
    assert metrics["persuaded"] == 1.0 and metrics["final_level"] == 6.0 and metrics["best_level"] == 6.0
    assert opening[0]["content"].startswith("I hold this statement: Cities should ban cars downtown.")


def test_the_persona_sees_statement_its_argument_stance_history_and_latest_argument(factory):
    _, sim, _, _ = play(factory, [persona("Agree", "Hm."), persona("Agree")], ["Noise hurts nobody.", "Buses exist."])
    prompt = sim.requests[1].messages[-1]["content"]
    assert "Cities should ban cars downtown." in prompt and "Cars make downtown loud" in prompt
    assert "Your position before this argument: Agree" in prompt
    assert "Persuader: Noise hurts nobody.\nYou: Hm." in prompt and prompt.endswith(
        '"stance": "one of: ' + ", ".join(STANCES) + '"}')
    assert "Buses exist." in prompt and sim.requests[1].response_format == "json"


def test_no_move_scores_zero_and_max_turns_ends(factory):
    env, _, _, results = play(factory, [persona("Strongly Agree")] * 3, ["a", "b", "c"], max_turns=3)
    assert [r.reward for r in results] == [0.0] * 3 and results[-1].info["end_reason"] == "max_turns"
    assert env.metrics()["score"] == 0.0 and env.metrics()["persuaded"] == 0.0


def test_finish_and_empty_arguments_call_no_simulator(factory):
    env, sim, _, results = play(factory, [], [Action("answer", "  "), Action("finish", "")])
    assert [r.reward for r in results] == [0.0, 0.0] and results[-1].info["end_reason"] == "finish"
    assert sim.requests == [] and env.metrics()["arguments"] == 0.0


def test_an_unparseable_reply_is_reasked_then_used(factory):
    env, sim, _, results = play(factory, ["I agree less now.", persona("Partly Agree")], ["argument"])
    assert results[0].reward == round(2 / 6, 6) and results[0].status is StepStatus.OK
    assert len(sim.requests) == 2 and "could not be used" in sim.requests[1].messages[-1]["content"]
    assert sim.requests[1].messages[-2] == {"role": "assistant", "content": "I agree less now."}
    assert env.metrics()["persona/reasks"] == 1.0


def test_unparseable_replies_fail_the_step_without_a_reward(factory):
    env, sim, _, results = play(factory, [persona("Agree"), "no", "still no", '{"stance": "Meh"}'],
                                ["first", "second"])
    assert results[0].reward == round(1 / 6, 6)
    failed = results[1]
    assert failed.status is StepStatus.SIMULATOR_FAILED and failed.reward is None and failed.done
    assert "no usable stance after 3 attempt(s)" in failed.error
    assert env.metrics()["persona/reasks"] == 2.0 and env.metrics()["score"] == round(1 / 6, 6)


def test_a_simulator_error_fails_the_step(factory):
    _, _, _, results = play(factory, [SimulatorError("persona", "timed out", attempts=3)], ["argument"])
    assert results[0].status is StepStatus.SIMULATOR_FAILED and results[0].reward is None
    assert "timed out" in results[0].error


def test_wrong_settings_name_the_key(factory):
    with pytest.raises(ConfigError, match=r"env\.PersuadeGym\.stance_retry"):
        factory(task=make_task(), simulator=None, settings={"stance_retry": 1}, seed=0)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def test_userrl_rows_load_unchanged(registry):
    import pyarrow.parquet as pq

    for path, size in ((DATA_DIR / "train.parquet", 378), (DATA_DIR / "test.parquet", 42)):
        tasks = load_tasks(path, registry).tasks
        rows = pq.read_table(path).to_pylist()
        assert len(tasks) == size == len(rows)
        for task, row in zip(tasks, rows):
            kwargs = row["extra_info"]["tools_kwargs"]["interact_with_env"]["create_kwargs"]
            assert task.prompt == row["prompt"] and task.data_source == "interact_persuade"
            assert task.payload["claim"] == kwargs["claim"] and task.payload["argument"] == kwargs["argument"]
    assert load_tasks(MIX_TRAIN, registry).counts()["PersuadeGym"] == 378


# --------------------------------------------------------------------------------------------
# Through the rollout engine with the embedded simulator
# --------------------------------------------------------------------------------------------


class ArguingPolicy:
    """A rollout-backend test double that answers every turn with the same plain-text argument
    (real SmolLM2 tokenizer), ended by the end-of-turn token as a sampler would."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    async def generate(self, request):
        end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        ids = self.tokenizer.encode("[answer] It costs too much for too few people.", add_special_tokens=False)
        return GenerationResult([ids + [end] for _ in request.prompts], [[-0.5] * (len(ids) + 1)] * len(request.prompts))

    def sync_weights(self, source) -> None:
        raise AssertionError("not used by the rollout engine")


def test_episodes_through_the_rollout_engine_with_the_hf_simulator(registry, smol_tokenizer, tiny_model_dir):
    from userrl_plugins.simulators.hf_simulator import HFSimulator

    # The embedded simulator on the tiny random Llama (fast) answers with noise: every persona
    # reply is unparseable, so each episode must end failed after the re-asks, never rewarded.
    sim_config = SimulatorConfig(name="hf", model=str(tiny_model_dir), max_tokens=8)
    simulator = HFSimulator(sim_config)
    tasks = load_tasks(DATA_DIR / "test.parquet", registry, max_tasks=1).tasks
    config = RunConfig(model={"path": "unused"}, data={"train_files": ["unused"]}, simulator=sim_config.model_dump(),
                       env={"PersuadeGym": {"stance_retries": 1}},
                       rollout={"action_format": "plain_text", "n": 2, "max_turns": 3, "max_new_tokens": 24,
                                "max_episode_tokens": 2048})
    engine = RolloutEngine(ArguingPolicy(smol_tokenizer), registry, simulator, config)
    result = asyncio.run(engine.run(tasks, seed=1, validation=True, n=2))
    assert len(result.episodes) == 2
    for episode in result.episodes:
        assert episode.status is EpisodeStatus.FAILED and "no usable stance after 2 attempt(s)" in episode.error
        assert episode.turns[0].action == Action("answer", "It costs too much for too few people.")
    assert result.metrics["rollout/failed_episodes"] == 2.0
    validation = validation_metrics(result.episodes, 2)
    assert validation["val-aux/interact_persuade/failed_episodes"] == 2.0
    assert "val-core/interact_persuade/reward/mean@2" not in validation  # no made-up score
    assert simulator.stats()["calls"] == 4  # 2 episodes x (1 ask + 1 re-ask), batched
    assert simulator.batch_sizes == [2, 2]
