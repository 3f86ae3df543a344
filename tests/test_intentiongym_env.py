"""IntentionGym episodes against a scripted simulator: reward rules, endings, failures, judge
re-asks, what the user and the judge are shown, and each point of UserRL's protocol
(gyms/IntentionGym/intentiongym/env/intention_env.py, .../env/prompts.py,
verl/tools/interact_tool.py in SalesforceAIResearch/UserRL) against hand-made judge replies."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

import pytest

from userrl_core.errors import ConfigError
from userrl_core.types import (
    Action,
    SimulatorError,
    SimulatorRequest,
    SimulatorResponse,
    StepStatus,
    Task,
)
from userrl_plugins.intentiongym.env import make_env
from userrl_plugins.intentiongym.tasks import DEFAULT_VAL_PARQUET, TaskBankError, default_bank

# Six details: importances 3, 2, 1, 2, 1, 1 (indices 0..5 while none is covered).
DETAILS = [
    {"description": "Destination city", "importance": "3", "inquiry": "Where to?", "options": ["Paris", "Rome"]},
    {"description": "Travel dates", "importance": "2", "inquiry": "When?", "options": ["May", "June"]},
    {"description": "Seat preference", "importance": "1", "inquiry": "Window or aisle?", "options": ["Window"]},
    {"description": "Budget", "importance": "2", "inquiry": "How much?", "options": ["$500"]},
    {"description": "Meal preference", "importance": "1", "inquiry": "Any meal?", "options": ["Vegan"]},
    {"description": "Loyalty program", "importance": "1", "inquiry": "Member?", "options": ["No"]},
]


def make_task(details=DETAILS, prompt=None) -> Task:
    return Task(
        id="trip-1",
        env_name="IntentionGym",
        data_source="interact_intention",
        prompt=prompt if prompt is not None else [],
        payload={"id": "trip-1", "env_name": "IntentionGym", "category": "Travel",
                 "task": "I would like to plan a trip next month.", "missing_details": details},
    )


Script = Any  # a list of covered labels, a raw text, or an exception to raise


def verdict_text(labels: list[int], judge_format: str = "userrl") -> str:
    """A well-formed judge reply in the format the request asks for (see plugins/intentiongym/judge.py)."""
    if judge_format == "numbered":
        return json.dumps({"covered": labels})
    return json.dumps({"analysis": "scripted", "is_task_related": True, "covered_detail_indices": labels})


class ScriptedSimulator:
    """A test double of the Simulator protocol: judge replies come from a script (a list of
    labels is answered in the format the request's context names, as a judge that follows its
    prompt would), user replies from a function; every request is recorded."""

    name = "scripted"

    def __init__(self, judge: list[Script], reply: Callable[[SimulatorRequest], str] | Exception | None = None):
        self.judge_script = list(judge)
        self.reply = reply
        self.requests: list[SimulatorRequest] = []

    async def complete(self, request: SimulatorRequest) -> SimulatorResponse:
        self.requests.append(request)
        await asyncio.sleep(0)
        if request.purpose == "judge":
            item = self.judge_script.pop(0)
            if isinstance(item, Exception):
                raise item
            text = item if isinstance(item, str) else verdict_text(item, request.context.get("judge_format", "userrl"))
            return SimulatorResponse(text=text)
        if isinstance(self.reply, Exception):
            raise self.reply
        text = self.reply(request) if callable(self.reply) else f"Answer to: {request.context['question']}"
        return SimulatorResponse(text=text)

    async def aclose(self) -> None:
        return None

    def calls(self, purpose: str) -> list[SimulatorRequest]:
        return [r for r in self.requests if r.purpose == purpose]


def run(coro):
    return asyncio.run(coro)


def episode(judge: list[Script], settings: dict | None = None, **sim_kwargs):
    sim = ScriptedSimulator(judge, **sim_kwargs)
    env = make_env(task=make_task(), simulator=sim, settings=settings or {}, seed=7)
    run(env.reset())
    return env, sim


def ask(env, text="What do you need?", choice="action"):
    return run(env.step(Action(choice=choice, content=text)))


# ------------------------------------------------------------------------------ reward table


@pytest.mark.parametrize(
    "covered, settings, reward",
    [
        ([0], {}, 1.0),  # importance 3
        ([1], {}, 0.7),  # importance 2
        ([2], {}, 0.4),  # importance 1
        ([], {}, 0.0),
        ([0, 1], {}, 0.8),  # multi-detail penalty
        ([1, 2], {}, 0.5),
        ([2, 4, 5], {}, 0.0),  # 0.4 - 0.4
        ([2, 4, 5], {"multi_detail_penalty": 0.3}, 0.0),  # floored, not negative
        ([1, 3], {"multi_detail_penalty": 0.5}, 0.2),
        ([0], {"step_penalty": 0.25}, 0.75),  # step penalty
        ([], {"step_penalty": 0.25}, 0.0),  # clipped at 0
        ([0, 1, 2, 3, 4, 5], {}, 0.0),  # everything at once: 1.0 - 1.0
    ],
)
def test_first_question_reward(covered, settings, reward):
    env, sim = episode([covered], settings)
    result = ask(env)
    assert result.status is StepStatus.OK
    assert result.reward == pytest.approx(reward)
    assert result.info["newly_covered"] == [DETAILS[n]["description"] for n in covered]
    assert result.info["remaining"] == 6 - len(covered)
    assert len(sim.calls("judge")) == 1 and len(sim.calls("reply")) == 1


def test_indices_refer_to_the_still_missing_details():
    env, sim = episode([[0], [0], [1, 2]])
    assert ask(env).reward == pytest.approx(1.0)  # Destination (3)
    second = ask(env)  # index 0 is now "Travel dates"
    assert second.info["newly_covered"] == ["Travel dates"]
    assert second.info["notes"] == ["Details covered this turn: Travel dates"]
    assert second.reward == pytest.approx(0.7)
    shown = [d["description"] for d in sim.calls("judge")[1].context["details"]]
    assert shown == ["Travel dates", "Seat preference", "Budget", "Meal preference", "Loyalty program"]
    assert [d["number"] for d in sim.calls("judge")[1].context["details"]] == [0, 1, 2, 3, 4]
    third = ask(env)  # indices 1, 2 are now Budget (2) and Meal (1)
    assert third.info["newly_covered"] == ["Budget", "Meal preference"]
    assert third.reward == pytest.approx(0.5)
    assert third.info["covered_by_importance"] == {"3": 1, "2": 2, "1": 1}
    assert third.info["coverage"] == pytest.approx(4 / 6)


# ------------------------------------------------------------------------------ endings


def test_all_covered_ends_the_episode():
    env, _ = episode([[0, 1, 2], [0, 1, 2]])
    first = ask(env)
    assert not first.done
    last = ask(env)
    assert last.done and last.info["end_reason"] == "all_covered"
    assert last.info["coverage"] == 1.0 and last.info["remaining"] == 0
    m = env.metrics()
    assert m["coverage"] == 1.0
    assert m["score"] == pytest.approx(0.6 + 0.3)  # 1.0-0.4, then 0.7-0.4
    assert m["score_max"] == pytest.approx(0.6)
    assert m["turns"] == 2
    assert m["coverage/importance_3"] == 1.0 and m["coverage/importance_1"] == 1.0


def test_finish_ends_with_zero_reward_and_no_simulator_call():
    env, sim = episode([[0]])
    ask(env)
    result = ask(env, "", choice="finish")
    assert result.done and result.reward == 0.0 and result.status is StepStatus.OK
    assert result.info["end_reason"] == "finish"
    assert "1 of 6" in result.observation and result.observation.endswith("\nReward: 0.0")
    assert len(sim.requests) == 2  # only the first question's reply + judge
    m = env.metrics()
    assert m["score"] == pytest.approx(1.0) and m["score_max"] == pytest.approx(1.0)
    assert m["turns"] == 2 and m["questions"] == 1
    assert m["coverage"] == pytest.approx(1 / 6)
    with pytest.raises(RuntimeError, match="episode is over"):
        ask(env)


def test_max_turns_ends_the_episode():
    env, _ = episode([[], [2]], {"max_turns": 2})
    assert not ask(env).done
    last = ask(env)
    assert last.done and last.info["end_reason"] == "max_turns"
    assert last.reward == pytest.approx(0.4)
    assert env.metrics()["turns"] == 2


def test_answer_is_evaluated_like_a_question():
    # UserRL strips the [answer] tag and sends the text through the same judge and user.
    env, sim = episode([[1]])
    result = ask(env, "You want to travel in June?", choice="answer")
    assert result.reward == pytest.approx(0.7)
    assert sim.calls("judge")[0].context["question"] == "You want to travel in June?"


def test_reset_starts_over_and_returns_the_dataset_prompt():
    prompt = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    sim = ScriptedSimulator([[0], [0]])
    env = make_env(task=make_task(prompt=prompt), simulator=sim, settings={}, seed=0)
    assert run(env.reset()) == prompt
    ask(env)
    assert run(env.reset()) == prompt
    assert env.metrics()["score"] == 0.0 and env.metrics()["coverage"] == 0.0
    assert ask(env).reward == pytest.approx(1.0)  # the importance-3 detail is missing again


def test_task_without_prompt_gets_opening_messages():
    env, _ = episode([])
    messages = run(env.reset())
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "I would like to plan a trip next month." in messages[1]["content"]
    assert "interact_with_env" in messages[0]["content"]


# ------------------------------------------------------------------------------ failures


def test_judge_failure_gives_no_reward():
    env, _ = episode([SimulatorError("scripted", "HTTP 503", attempts=4)])
    result = ask(env)
    assert result.status is StepStatus.SIMULATOR_FAILED
    assert result.reward is None and result.done
    assert "HTTP 503" in result.error and "4 attempt" in result.error
    assert env.failed
    assert env.metrics()["score"] == 0.0 and env.metrics()["turns"] == 1


def test_reply_failure_gives_no_reward_even_when_the_judge_answered():
    env, _ = episode([[0]], reply=SimulatorError("scripted", "timed out", attempts=2))
    result = ask(env)
    assert result.status is StepStatus.SIMULATOR_FAILED and result.reward is None
    assert "timed out" in result.error
    assert env.metrics()["coverage"] == 0.0  # the verdict of a failed turn is not applied


def test_unparsable_judge_replies_are_reasked_then_fail():
    env, sim = episode(["I think it covers the budget.", "no idea", "{covered_detail_indices: 1}"],
                       {"judge_retries": 2})
    result = ask(env)
    assert result.status is StepStatus.SIMULATOR_FAILED and result.reward is None
    assert "3 attempt" in result.error and "no JSON object" in result.error
    assert len(sim.calls("judge")) == 3
    assert env.metrics()["judge/reasks"] == 2


def test_reask_recovers_and_shows_the_judge_its_bad_reply():
    env, sim = episode(["The answer is detail zero.", '```json\n{"is_task_related": true, "covered_detail_indices": [0]}\n```'])
    result = ask(env)
    assert result.status is StepStatus.OK and result.reward == pytest.approx(1.0)
    assert result.info["simulator/calls"] == 3
    second = sim.calls("judge")[1].messages
    assert second[-2] == {"role": "assistant", "content": "The answer is detail zero."}
    assert '"covered_detail_indices": [indices]' in second[-1]["content"]


def test_prose_around_json_is_accepted():
    env, _ = episode(['The question asks where they go. {"is_task_related": true, "covered_detail_indices": [0]} '
                      "That is all."])
    assert ask(env).reward == pytest.approx(1.0)


def test_out_of_range_indices_are_ignored_and_counted():
    env, _ = episode([[-1, 0, 6, 42]])
    result = ask(env)
    assert result.reward == pytest.approx(1.0)
    assert result.info["newly_covered"] == ["Destination city"]
    assert result.info["judge/out_of_range"] == 3
    assert env.metrics()["judge/out_of_range"] == 3


def test_unknown_setting_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"env\.IntentionGym\.step_penalti"):
        make_env(task=make_task(), simulator=ScriptedSimulator([]), settings={"step_penalti": 0.1}, seed=0)
    with pytest.raises(ConfigError, match=r"env\.IntentionGym\.max_turns"):
        make_env(task=make_task(), simulator=ScriptedSimulator([]), settings={"max_turns": 0}, seed=0)


# ------------------------------------------------------------------------------ the two calls


def test_reply_and_judge_run_concurrently():
    judge_started = asyncio.Event()

    class WaitingSimulator(ScriptedSimulator):
        async def complete(self, request):
            if request.purpose == "judge":
                judge_started.set()
            else:  # the user's reply waits for the judge call to be in flight
                await asyncio.wait_for(judge_started.wait(), timeout=2)
            return await super().complete(request)

    sim = WaitingSimulator([[0]])
    env = make_env(task=make_task(), simulator=sim, settings={}, seed=0)

    async def go():
        await env.reset()
        return await env.step(Action("action", "Where to?"))

    assert asyncio.run(go()).reward == pytest.approx(1.0)


def test_user_sees_every_detail_with_its_options_and_the_judge_the_missing_ones():
    # UserRL formats the whole task (request, category, missing details with their options) into
    # the simulated user's prompt, so the user answers with a concrete, consistent value.
    env, sim = episode([[0], []], reply=lambda r: "Paris, please.")
    ask(env, "Where would you like to go?")
    ask(env, "And when?")
    reply, judge = sim.calls("reply")[1], sim.calls("judge")[1]
    reply_text = "\n".join(m["content"] for m in reply.messages)
    judge_text = "\n".join(m["content"] for m in judge.messages)
    for detail in DETAILS:
        assert detail["description"] in reply_text
        for option in detail["options"]:
            assert option in reply_text
    assert "Never mention a detail the helper did not ask about" in reply_text
    for detail in DETAILS[1:]:
        assert detail["description"] in judge_text
    assert "0. Travel dates (importance: medium)" in judge_text  # listed from 0, as UserRL lists them
    assert "Destination city" not in judge_text  # covered: no longer offered to the judge
    assert '"is_task_related"' in judge_text and '"covered_detail_indices"' in judge_text
    assert "I would like to plan a trip next month." in reply_text
    assert "Where would you like to go?" in reply_text and "Paris, please." in reply_text  # history
    assert reply.response_format == "text" and judge.response_format == "json"
    ctx = judge.context
    assert ctx["env"] == "IntentionGym" and ctx["turn"] == 2 and ctx["seed"] == 7
    assert ctx["question"] == "And when?" and ctx["judge_format"] == "userrl"
    assert ctx["details"][0] == {"number": 0, "description": "Travel dates", "inquiry": "When?",
                                 "options": ["May", "June"], "importance": 2}
    assert reply.context == ctx
    # the texts the environment keeps for the episode give the prompts built from scratch
    from userrl_plugins.intentiongym import prompts

    history = [("Where would you like to go?", "Paris, please.")]
    shown = prompts.labelled_details(list(env.spec.missing_details[1:]), "userrl")
    assert judge.messages == prompts.judge_messages(env.spec, "And when?", history, shown, "userrl")
    assert reply.messages == prompts.reply_messages(env.spec, "And when?", history)


def test_user_sees_details_false_hides_them_from_the_user():
    env, sim = episode([[0], []], {"user_sees_details": False}, reply=lambda r: "Paris, please.")
    ask(env, "Where would you like to go?")
    ask(env, "And when?")
    reply_text = "\n".join(m["content"] for m in sim.calls("reply")[1].messages)
    for detail in DETAILS:
        assert detail["description"] not in reply_text
    assert "I would like to plan a trip next month." in reply_text


def test_history_is_bounded_by_history_turns():
    env, sim = episode([[], [], []], {"history_turns": 1})
    for q in ("first question?", "second question?", "third question?"):
        ask(env, q)
    last_reply = "\n".join(m["content"] for m in sim.calls("reply")[2].messages)
    assert "second question?" in last_reply and "first question?" not in last_reply


# ------------------------------------------------------------------------------ task bank


def test_parquet_row_resolves_through_the_shipped_task_bank():
    import pyarrow.parquet as pq

    row = pq.read_table(DEFAULT_VAL_PARQUET).slice(0, 1).to_pylist()[0]
    kwargs = row["extra_info"]["tools_kwargs"]["interact_with_env"]["create_kwargs"]
    task = Task(id=kwargs["id"], env_name="IntentionGym", data_source=row["data_source"],
                prompt=row["prompt"], payload=kwargs)
    expected = default_bank().get(kwargs["id"])
    n = len(expected.missing_details)
    env = make_env(task=task, simulator=ScriptedSimulator([list(range(n))]), settings={}, seed=0)
    assert run(env.reset()) == row["prompt"]
    result = ask(env)
    assert result.done and result.info["end_reason"] == "all_covered"
    assert result.info["newly_covered"] == [d.description for d in expected.missing_details]


def test_validate_task_names_the_unknown_id():
    task = Task(id="nope", env_name="IntentionGym", data_source="x", prompt=[],
                payload={"id": "nope", "task": "t"})
    with pytest.raises(TaskBankError, match="'nope' is not in the IntentionGym task bank") as info:
        make_env.validate_task(task)
    assert info.value.field == "payload.id"


def test_custom_task_files_setting(tmp_path):
    bank = tmp_path / "bank.json"
    bank.write_text(json.dumps([{"id": "b1", "task": "Buy a laptop.", "category": "Shopping",
                                 "missing_details": [{"description": "Budget", "importance": "3"}]}]))
    task = Task(id="b1", env_name="IntentionGym", data_source="x", prompt=[], payload={"id": "b1"})
    env = make_env(task=task, simulator=ScriptedSimulator([[0]]), settings={"task_files": [str(bank)]}, seed=0)
    run(env.reset())
    assert ask(env).info["end_reason"] == "all_covered"
    with pytest.raises(ConfigError, match=r"env\.IntentionGym\.task_files: .*does not exist"):
        make_env(task=task, simulator=ScriptedSimulator([]), settings={"task_files": [str(tmp_path / "x.json")]},
                 seed=0)


def test_hostile_judge_reply_goes_through_reask_then_fail():
    """A judge that answers with nesting deeper than Python's recursion limit: the environment
    re-asks judge_retries times, then fails the turn without a reward (it used to raise
    RecursionError out of step())."""
    nested = '{"is_task_related": true, "covered_detail_indices": ' + "[" * 5000 + "]" * 5000 + "}"
    sim = ScriptedSimulator(judge=[nested, nested, nested])
    env = make_env(task=make_task(), simulator=sim, settings={"judge_retries": 2})
    asyncio.run(env.reset())
    result = asyncio.run(env.step(Action("action", "Where to?")))
    assert result.status is StepStatus.SIMULATOR_FAILED
    assert result.reward is None and result.done
    assert len(sim.calls("judge")) == 3
    assert env.metrics()["judge/reasks"] == 2


# ------------------------------------------------------------------------------ UserRL's protocol, point by point


def test_unrelated_question_covers_nothing_whatever_indices_it_lists():
    reply = '{"analysis": "small talk", "is_task_related": false, "covered_detail_indices": [0, 1]}'
    env, _ = episode([reply])
    result = ask(env, "Nice weather today, isn't it?")
    assert result.status is StepStatus.OK
    assert result.reward == 0.0 and result.info["newly_covered"] == [] and result.info["remaining"] == 6
    assert result.info["judge/task_related"] is False
    assert env.metrics()["judge/unrelated"] == 1


def test_a_repeated_index_counts_as_another_detail_as_in_userrl():
    # UserRL appends remaining[idx] once per index given: [1, 1] is two details, 0.7 - 0.2.
    env, _ = episode([[1, 1]])
    result = ask(env, "When do you travel?")
    assert result.reward == 0.7 - 0.2 == 0.49999999999999994
    assert result.info["newly_covered"] == ["Travel dates"]  # the detail itself is covered once
    assert result.info["remaining"] == 5 and result.info["judge/duplicates"] == 1
    assert env.metrics()["judge/duplicates"] == 1
    assert env.metrics()["coverage"] == pytest.approx(1 / 6)


def test_duplicate_indices_ignore_counts_a_repeated_index_once():
    env, _ = episode([[1, 1]], {"duplicate_indices": "ignore"})
    result = ask(env, "When do you travel?")
    assert result.reward == 0.7
    assert result.info["judge/duplicates"] == 1  # still reported


def test_every_observation_ends_with_the_reward_as_userrls_tool_formats_it():
    # interact_tool.py: f"{feedback}\nReward: {reward}" with the step's float reward.
    env, _ = episode([[0], [1, 2], []], reply=lambda r: "Paris.")
    assert ask(env).observation == "Paris.\nReward: 1.0"
    assert ask(env).observation == "Paris.\nReward: 0.49999999999999994"
    assert ask(env).observation == "Paris.\nReward: 0.0"
    assert env.history[0] == ("What do you need?", "Paris.")  # the user and judge see the reply only


def test_reward_in_observation_false_leaves_the_reply_alone():
    env, _ = episode([[0]], {"reward_in_observation": False}, reply=lambda r: "Paris.")
    assert ask(env).observation == "Paris."


def test_search_is_judged_as_a_question():
    # UserRL's tool accepts choice "search" and IntentionGym evaluates its text like a question.
    env, sim = episode([[0]])
    result = ask(env, "Where are you flying to?", choice="search")
    assert result.status is StepStatus.OK and result.reward == 1.0
    assert sim.calls("judge")[0].context["question"] == "Where are you flying to?"
    assert sim.calls("reply")[0].context["question"] == "Where are you flying to?"


def test_numbered_judge_format_lists_from_one_and_reads_covered():
    env, sim = episode([[1], '{"covered": [1, 1]}'], {"judge_format": "numbered", "duplicate_indices": "ignore"})
    assert ask(env).reward == 1.0  # number 1 is the destination
    judge = sim.calls("judge")[0]
    text = "\n".join(m["content"] for m in judge.messages)
    assert "1. Destination city (importance: high)" in text and '{"covered": [' in text
    assert "covered_detail_indices" not in text
    assert judge.context["judge_format"] == "numbered" and judge.context["details"][0]["number"] == 1
    assert ask(env).reward == 0.7  # number 1 is now the travel dates; the repeat is ignored


def test_a_judge_answering_in_the_other_format_is_reasked():
    env, sim = episode(['{"covered": [1]}', [0]])
    result = ask(env)
    assert result.reward == 1.0 and result.info["simulator/calls"] == 3
    assert env.metrics()["judge/reasks"] == 1
