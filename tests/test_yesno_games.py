"""TelepathyGym and TurtleGym on hand-made episodes: reward rules (improvement over the best
earlier answer, floor 0, retries), endings, strict parsing of every simulator reply (re-ask,
then a failed step with no reward), and UserRL's shipped parquet rows loaded unchanged.

The simulator is the real ``litellm`` simulator talking HTTP to the loopback OpenAI-compatible
server of ``tests/support/openai_server.py``, whose replies are scripted per test: the text a
chat model would send back (UserRL's gyms read ``choices[0].message.content`` the same way,
``gyms/TelepathyGym/telepathygym/env/prompts.py``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from support.openai_server import OpenAIServer, reply, status

from userrl_core.config.schema import SimulatorConfig
from userrl_core.data import load_tasks
from userrl_core.errors import ConfigError, DataError
from userrl_core.plugins import get_plugin_manager
from userrl_core.registry import Kind, Registry
from userrl_core.strict_reply import ReplyFormatError, parse_choice, parse_grade
from userrl_core.types import Action, StepStatus, Task
from userrl_plugins.simulators.litellm_simulator import build_litellm_simulator
from userrl_plugins.telepathygym.env import make_env as telepathy
from userrl_plugins.turtlegym.env import make_env as turtle
from userrl_plugins.turtlegym.env import parse_joint_grades
from userrl_plugins.yesno.game import turn_reward

DATA = Path(__file__).resolve().parents[1] / "data" / "userrl-gyms"
KIWI = Task(id="Kiwi", env_name="TelepathyGym", data_source="interact_telepathygym",
            prompt=[{"role": "user", "content": "I am thinking of a fruit."}],
            payload={"env_name": "TelepathyGym", "title": "Kiwi", "category": "food"})
NAILS = Task(id="The Broken Nails", env_name="TurtleGym", data_source="interact_turtlegym",
             prompt=[{"role": "user", "content": "Title: The Broken Nails"}],
             payload={"env_name": "TurtleGym", "title": "The Broken Nails"})
NAILS_WEIGHTS = [0.2, 0.3, 0.3, 0.2]  # all_stories_refined.json, "The Broken Nails"


@pytest.fixture(scope="module")
def server():
    with OpenAIServer() as srv:
        yield srv


def simulator(srv):
    return build_litellm_simulator(config=SimulatorConfig(
        name="litellm", model="openai/test-model", api_base=srv.base_url, timeout=30, num_retries=1,
        retry_backoff=0.01))


def play(env, *actions: Action):
    async def go():
        await env.reset()
        return [await env.step(a) for a in actions]

    return asyncio.run(go())


def ask(text: str) -> Action:
    return Action("action", text)


def answer(text: str) -> Action:
    return Action("answer", text)


def user_texts(srv) -> list[str]:
    return [r.body["messages"][-1]["content"] for r in srv.requests]


# ------------------------------------------------------------------------------ TelepathyGym


def test_telepathy_questions_earn_nothing_and_the_first_correct_guess_earns_one(srv):
    srv.script(reply("Yes"), reply("No."), reply('{"judgment": "No"}'), reply("Yes"))
    env = telepathy(task=KIWI, simulator=simulator(srv), settings={}, seed=0)
    q1, q2, wrong, right = play(env, ask("Is it a fruit?"), Action("search", "Is it red?"),
                                answer("Apple"), answer("Kiwi"))
    assert [r.reward for r in (q1, q2, wrong, right)] == [0.0, 0.0, 0.0, 1.0]
    assert q1.observation == "Yes\nReward: 0.0" and q2.observation == "No\nReward: 0.0"
    assert not wrong.done and right.done and right.info["end_reason"] == "solved"
    assert right.observation.endswith("\nReward: 1.0")
    # What the simulator was shown: the hidden entity, and the question or the guess.
    first = srv.requests[0].body["messages"]
    assert "Kiwi - a small, brown, fuzzy fruit" in first[0]["content"] and "Yes, No or Maybe" in first[0]["content"]
    assert user_texts(srv)[1] == "Question: Is it red?"  # search is read as a question, as UserRL does
    assert user_texts(srv)[3] == "The player's guess: Kiwi"
    metrics = env.metrics()
    assert metrics["score"] == 1.0 and metrics["solved"] == 1.0
    assert (metrics["questions"], metrics["answers"], metrics["replies/yes"], metrics["replies/no"]) == (2, 2, 1, 1)


def test_telepathy_a_wrong_guess_may_be_retried(srv):
    srv.script(reply("No"), reply("Yes"))
    env = telepathy(task=KIWI, simulator=simulator(srv), settings={"max_turns": 2}, seed=0)
    wrong, right = play(env, answer("Lemon"), answer("Kiwi"))
    assert (wrong.reward, right.reward) == (0.0, 1.0)
    assert right.done and env.metrics()["best_answer_score"] == 1.0


def test_telepathy_max_turns_and_finish_end_the_episode(srv):
    srv.script(reply("No"), reply("No"))
    env = telepathy(task=KIWI, simulator=simulator(srv), settings={"max_turns": 2}, seed=0)
    first, second = play(env, ask("Is it red?"), ask("Is it blue?"))
    assert not first.done and second.done and second.info["end_reason"] == "max_turns"
    before = srv.request_count
    env = telepathy(task=KIWI, simulator=simulator(srv), settings={"reward_in_observation": False}, seed=0)
    (end,) = play(env, Action("finish", ""))
    assert end.done and end.reward == 0.0 and end.observation == "Game finished."
    assert srv.request_count == before  # finishing asks nobody


def test_an_unparseable_reply_is_reasked_with_the_reason_then_used(srv):
    srv.script(reply("The entity is a fruit."), reply("Yes"))
    env = telepathy(task=KIWI, simulator=simulator(srv), settings={}, seed=0)
    (result,) = play(env, ask("Is it a fruit?"))
    assert result.status is StepStatus.OK and result.reward == 0.0 and result.info["simulator/calls"] == 2
    reask = srv.requests[1].body["messages"]
    assert reask[-2] == {"role": "assistant", "content": "The entity is a fruit."}
    assert "names none of Yes / No / Maybe" in reask[-1]["content"] and "exactly one word" in reask[-1]["content"]
    assert env.metrics()["simulator/reasks"] == 1.0


@pytest.mark.parametrize("bad", ["Maybe yes.", "I cannot say.", '{"response": "Probably"}'])
def test_unparseable_replies_fail_the_step_after_the_reasks_never_a_reward(srv, bad):
    srv.default = reply(bad)
    env = telepathy(task=KIWI, simulator=simulator(srv), settings={"reply_retries": 2}, seed=0)
    (result,) = play(env, ask("Is it a fruit?"))
    assert result.status is StepStatus.SIMULATOR_FAILED and result.reward is None and result.done
    assert "no usable reply after 3 attempt(s)" in result.error
    assert srv.request_count == 3


def test_an_unparseable_grade_fails_the_answer_step(srv):
    srv.default = reply("Close enough, maybe.")
    env = telepathy(task=KIWI, simulator=simulator(srv), settings={"reply_retries": 1}, seed=0)
    (result,) = play(env, answer("Kiwi"))
    assert result.status is StepStatus.SIMULATOR_FAILED and result.reward is None
    assert "TelepathyGym grader" in result.error and srv.request_count == 2


def test_a_simulator_that_keeps_failing_fails_the_step(srv):
    srv.default = status(503)
    env = telepathy(task=KIWI, simulator=simulator(srv), settings={}, seed=0)
    (result,) = play(env, ask("Is it a fruit?"))
    assert result.status is StepStatus.SIMULATOR_FAILED and result.reward is None
    assert "503" in result.error or "failed after" in result.error


# ------------------------------------------------------------------------------ TurtleGym


def grades_json(*grades: float) -> str:
    return '```json\n{"scores": [' + ", ".join(f'{{"statement": "s", "score": {g}}}' for g in grades) + "]}\n```"


def test_turtle_reward_is_the_improvement_over_the_best_earlier_answer_floored_at_zero(srv):
    srv.script(
        reply("Maybe"),
        reply(grades_json(1, 0.5, 0, 0)),     # 0.2 + 0.15 = 0.35
        reply(grades_json(0, 0, 0, 0.5)),     # 0.1: worse, reward 0 (floor), best stays 0.35
        reply(grades_json(1, 1, 0.5, 0)),     # 0.65: reward 0.3
        reply(grades_json(1, 1, 1, 1)),       # 1.0: reward 0.35, solved
    )
    env = turtle(task=NAILS, simulator=simulator(srv), settings={}, seed=0)
    results = play(env, ask("Was she murdered?"), *(answer(f"story {i}") for i in range(4)))
    assert [r.reward for r in results] == [0.0, 0.35, 0.0, 0.3, 0.35]
    assert [r.info.get("answer_score") for r in results[1:]] == [0.35, 0.1, 0.65, 1.0]
    assert results[-1].done and results[-1].info["end_reason"] == "solved"
    assert not any(r.done for r in results[:-1])
    assert env.metrics()["score"] == pytest.approx(1.0) and env.metrics()["best_answer_score"] == 1.0
    # The grader sees the surface, the hidden bottom and the numbered points, never the weights.
    grader = srv.requests[1].body["messages"][0]["content"]
    assert "strangled her" in grader and "4. The story mentions the woman's nails" in grader
    assert "0.3" not in grader and "exactly 4 numbers" in grader
    # Feedback names the fully covered points only.
    assert "mental illness" in results[1].observation and "mistakenly believes" not in results[1].observation


def test_turtle_success_threshold_is_a_setting(srv):
    srv.script(reply(grades_json(1, 1, 1, 0.5)))  # 0.9
    env = turtle(task=NAILS, simulator=simulator(srv), settings={"success_threshold": 0.9}, seed=0)
    (result,) = play(env, answer("the whole story"))
    assert result.reward == 0.9 and result.done and env.metrics()["solved"] == 1.0


def test_turtle_per_criterion_grading_asks_once_per_point(srv):
    statements_to_grade = {"mental illness": "1", "mistakenly believes": "Score: 0.5", "regains": "0",
                           "nails breaking": '{"score": 1}'}

    def by_point(body):
        system = body["messages"][0]["content"]
        return reply(next(g for key, g in statements_to_grade.items() if f"Evaluation point: The" in system
                          and key in system.split("Evaluation point:")[1]))

    srv.default = by_point
    env = turtle(task=NAILS, simulator=simulator(srv), settings={"grading": "per_criterion"}, seed=0)
    (result,) = play(env, answer("He was ill, thought she died, her nails broke."))
    assert result.info["criterion_grades"] == [1.0, 0.5, 0.0, 1.0]
    assert result.reward == pytest.approx(0.2 + 0.15 + 0.2) and srv.request_count == 4


def test_turtle_a_grade_list_of_the_wrong_length_is_reasked_then_fails(srv):
    srv.script(reply(grades_json(1, 1)), reply('{"scores": [1, 0.7, 0, 0]}'), reply("all good"))
    env = turtle(task=NAILS, simulator=simulator(srv), settings={"reply_retries": 2}, seed=0)
    (result,) = play(env, answer("story"))
    assert result.status is StepStatus.SIMULATOR_FAILED and result.reward is None
    problems = [m["content"] for m in srv.requests[2].body["messages"] if m["role"] == "user"][-2:]
    assert "exactly 4 grades, got 2" in problems[0] and "one of 0, 0.5, 1, got '0.7'" in problems[1]


def test_step_penalty_is_subtracted_per_step_and_clipped_as_in_userrl():
    assert turn_reward(1.0, 0.0, step=3, step_penalty=0.1) == 0.7
    assert turn_reward(0.5, 0.6, step=1, step_penalty=0.0) == 0.0
    assert turn_reward(0.2, 0.0, step=5, step_penalty=0.1) == 0.0


# ------------------------------------------------------------------------------ strict parsers


@pytest.mark.parametrize("text,verdict", [
    ("Yes", "Yes"), ("no.", "No"), ("No, it is not.", "No"), ("The answer is yes.", "Yes"),
    ('```json\n{"thought": "No doubt it is; maybe not", "response": "Yes"}\n```', "Yes"), ("MAYBE", "Maybe"),
])
def test_choice_parser_reads_one_verdict(text, verdict):
    assert parse_choice(text, ("Yes", "No", "Maybe"), key="response") == verdict


@pytest.mark.parametrize("text", ["Yes and no", "", "Nope", "Not sure", '{"response": ["Yes"]}', "Yesterday"])
def test_choice_parser_refuses_ambiguous_or_missing_verdicts(text):
    with pytest.raises(ReplyFormatError):
        parse_choice(text, ("Yes", "No", "Maybe"), key="response")


@pytest.mark.parametrize("text,grade", [("1", 1.0), ("Score: 0.5", 0.5), ('{"score": "0"}', 0.0), ("1.0.", 1.0)])
def test_grade_parser_reads_one_allowed_number(text, grade):
    assert parse_grade(text, (0.0, 0.5, 1.0), key="score") == grade


@pytest.mark.parametrize("text", ["point 2: 1", "0.75", "", "half", '{"score": true}', "1e0"])
def test_grade_parser_refuses_other_replies(text):
    with pytest.raises(ReplyFormatError):
        parse_grade(text, (0.0, 0.5, 1.0), key="score")


def test_joint_grades_accept_numbers_or_objects():
    assert parse_joint_grades('{"scores": [1, 0.5, {"score": 0}]}', 3) == [1.0, 0.5, 0.0]


# ------------------------------------------------------------------------------ data


@pytest.mark.parametrize("gym,env_name,counts", [
    ("telepathygym", "TelepathyGym", {"train": 360, "test": 41}),
    ("turtlegym", "TurtleGym", {"train": 423, "test": 48}),
])
def test_shipped_userrl_splits_load_unchanged_and_every_row_resolves(gym, env_name, counts):
    registry = get_plugin_manager().registry
    for split, count in counts.items():
        tasks = load_tasks(DATA / gym / f"{split}.parquet", registry)
        assert len(tasks) == count and tasks.counts() == {env_name: count}
        first = tasks.tasks[0]
        assert first.data_source == f"interact_{gym}" and first.id == first.payload["title"]
        assert first.prompt[0]["role"] == "system" and "interact_with_env" in first.prompt[0]["content"]


@pytest.mark.parametrize("split,expected", [
    ("alltest", {"TelepathyGym": 41, "TurtleGym": 48}), ("alltrain", {"TurtleGym": 423}),
])
def test_userrl_mixed_files_load_our_rows_unchanged(split, expected):
    # UserRL's own mixed sets: the other gyms' columns are null in these rows (the file has the
    # union of every gym's create_kwargs); each row still resolves to its entity or story.
    registry = Registry()  # only these two gyms: every other row is skipped with a count
    registry.add(Kind.ENVIRONMENT, "TelepathyGym", telepathy, plugin="telepathygym")
    registry.add(Kind.ENVIRONMENT, "TurtleGym", turtle, plugin="turtlegym")
    tasks = load_tasks(DATA / "mix" / f"{split}.parquet", registry)
    assert tasks.counts() == expected
    assert sum(s.count for s in tasks.skipped) + len(tasks) == {"alltest": 597, "alltrain": 2426}[split]
    mine = [t for t in tasks.tasks if t.env_name in expected]
    assert all(t.id == t.payload["title"] and "id" not in t.payload for t in mine)
    assert {t.data_source for t in mine} == {f"interact_{name.lower()}" for name in expected}


def test_the_notice_sits_beside_the_shipped_data():
    notice = (DATA / "NOTICE.md").read_text()
    assert "Apache" in notice and "SalesforceAIResearch/UserRL" in notice


def test_a_row_naming_an_unknown_entity_is_one_clear_error(tmp_path):
    import json

    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([{"id": "x", "env_name": "TelepathyGym", "title": "Unobtainium"}]))
    with pytest.raises(DataError, match=r"tasks.json row 0: payload.title: entity 'Unobtainium' is not in"):
        load_tasks(path, get_plugin_manager().registry)


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match=r"env\.TurtleGym\.grading"):
        turtle(task=NAILS, simulator=object(), settings={"grading": "vibes"}, seed=0)
    with pytest.raises(ConfigError, match=r"env\.TelepathyGym\.entity_file: .*not readable"):
        telepathy(task=KIWI, simulator=object(), settings={"entity_file": "/nonexistent.json"}, seed=0)


# ------------------------------------------------------------------------------ the command line


def test_both_gyms_are_listed_and_play_by_hand_through_userrl_simulate(srv):
    from fixtures.distributions import cli

    listing = json.loads(cli("plugins", "list", "--json").stdout)["plugins"]
    registers = {p["name"]: p.get("registers") for p in listing}
    assert registers["telepathygym"] == {"environment": ["TelepathyGym"]}
    assert registers["turtlegym"] == {"environment": ["TurtleGym"]}

    srv.script(reply("Yes"), reply('{"scores": [1, 1, 0.5, 0]}'))
    result = cli("simulate", "TurtleGym", "--recipe", "recipes/quickstart.yaml", "--simulator", "litellm",
                 "simulator.model=openai/test-model", f"simulator.api_base={srv.base_url}",
                 stdin="Did someone die?\n/answer He strangled her and staged a hanging.\n", timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "task The Broken Nails (TurtleGym, interact_turtlegym)" in out
    assert "turn 1: action 'Did someone die?'\n  reply: Yes\nReward: 0.0\n  reward: 0.0  done: False" in out
    assert "  reward: 0.65  done: False" in out  # 0.2 + 0.3 + 0.5 x 0.3
