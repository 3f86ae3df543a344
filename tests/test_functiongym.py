"""FunctionGym: the safe rule evaluator, the reward rules on hand-made episodes, UserRL's rows
loaded unchanged, a scripted solver over the whole test split, and an episode through the
rollout engine with no simulator at all."""

from __future__ import annotations

import asyncio
import json
import math
import re

import pytest
from support.function_solver import FunctionSolver, RuleSearch, default_probes

from userrl_core.config.schema import RunConfig
from userrl_core.data import load_tasks
from userrl_core.errors import ConfigError, DataError
from userrl_core.plugins import get_plugin_manager
from userrl_core.registry import Kind
from userrl_core.rollout import RolloutEngine
from userrl_core.types import Action, EpisodeStatus, GenerationResult, Task
from userrl_plugins.functiongym.rule import Rule, RuleEvaluationError, RuleSyntaxError
from userrl_plugins.functiongym.tasks import DATA_DIR, DEFAULT_FUNCTIONS_FILE

TEST_SPLIT = DATA_DIR / "test.parquet"
MIX_TEST = DATA_DIR.parent / "mix" / "alltest.parquet"


@pytest.fixture(scope="module")
def registry():
    return get_plugin_manager().registry


@pytest.fixture(scope="module")
def factory(registry):
    return registry.get(Kind.ENVIRONMENT, "FunctionGym")


def make_task(rule="c * (a * b) * d", test_case=(3, 5, 5, 3), expected=225.0, task_id="hand-1") -> Task:
    payload = {"env_name": "FunctionGym", "id": task_id, "rule": rule, "test_case": list(test_case),
               "expected_result": expected}
    return Task(id=task_id, env_name="FunctionGym", data_source="interact_function", prompt=[], payload=payload)


def play(factory, task: Task, moves: list[tuple[str, str]], **settings):
    async def run():
        env = factory(task=task, simulator=None, settings=settings, seed=0)
        opening = await env.reset()
        results = []
        for choice, content in moves:
            results.append(await env.step(Action(choice, content)))
            if results[-1].done:
                break
        return env, opening, results
    return asyncio.run(run())


# --------------------------------------------------------------------------------------------
# The evaluator
# --------------------------------------------------------------------------------------------


def test_every_shipped_rule_gives_its_expected_result_at_its_test_case():
    rows = json.loads(DEFAULT_FUNCTIONS_FILE.read_text(encoding="utf-8"))
    assert len(rows) == 538
    for row in rows:
        assert Rule(row["rule"])(*row["test_case"]) == pytest.approx(row["expected_result"], abs=1e-6), row


@pytest.mark.parametrize("text", [
    "__import__('os').system('true')", "a.real", "abs(a)", "a if b else c", "[a][0]", "e + a", "a // b",
    "a % b", "lambda: a", "a; b", "a == b", "'1' + a", "True + a", "a +", "",
])
def test_anything_but_arithmetic_over_abcd_is_rejected(text):
    with pytest.raises(RuleSyntaxError):
        Rule(text)


@pytest.mark.parametrize("text, inputs, value", [
    ("(a + b) ** 2 * c - d", (1, 2, 3, 4), 23.0),
    ("-a + +b", (1, 2, 0, 0), 1.0),
    ("a / b", (1, 3, 0, 0), 1 / 3),
    ("c ** d ** b ** a", (3, 3, 1, 10), 1.0),  # 1 ** 10 ** 27: constant time on floats
    ("a - b - c", (1, 2, 3, 0), -4.0),  # left-associative, as Python
    ("a ** b ** c", (2, 3, 2, 0), 512.0),  # right-associative, as Python
])
def test_rules_evaluate_like_python_arithmetic_on_floats(text, inputs, value):
    assert Rule(text)(*inputs) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("text, inputs", [
    ("a / (b - c)", (1, 2, 2, 0)),
    ("a ** b", (-8, 0.5, 0, 0)),  # complex
    ("a ** b ** c", (10, 10, 10, 0)),  # overflow
    ("a ** b", (0, -1, 0, 0)),
])
def test_inputs_without_a_real_value_raise(text, inputs):
    with pytest.raises(RuleEvaluationError):
        Rule(text)(*inputs)


# --------------------------------------------------------------------------------------------
# Reward rules on hand-made episodes
# --------------------------------------------------------------------------------------------


def test_probe_search_wrong_answer_retry_then_correct(factory):
    env, opening, results = play(factory, make_task(), [
        ("action", "1 2 3 4"), ("search", "test"), ("answer", "224"), ("answer", "225.0000001"), ("action", "1 1 1 1"),
    ])
    assert opening == [{"role": "user", "content": opening[0]["content"]}] and "four numbers" in opening[0]["content"]
    assert results[0].observation == "f(1, 2, 3, 4) = 24"
    assert "3 5 5 3" in results[1].observation
    assert [r.reward for r in results] == [0.0, 0.0, 0.0, 1.0]  # wrong answer: 0 and the episode goes on
    assert [r.done for r in results] == [False, False, False, True]
    assert results[-1].info["end_reason"] == "solved"
    assert env.metrics() == {"score": 1.0, "solved": 1.0, "turns": 4.0, "probes": 1.0, "searches": 1.0,
                             "answers": 2.0, "refused_test_case": 0.0, "malformed": 0.0}


def test_the_test_case_itself_is_refused_in_any_spelling(factory):
    env, _, results = play(factory, make_task(), [("action", "3 5 5 3"), ("action", "3.0, 5, 5.00, 3")])
    assert all("test case" in r.observation and "=" not in r.observation for r in results)
    assert [r.reward for r in results] == [0.0, 0.0]
    assert env.metrics()["refused_test_case"] == 2.0


def test_probe_values_are_rounded_to_four_places(factory):
    _, _, results = play(factory, make_task("a / b + c - d", (1, 1, 1, 1), 1.0), [("action", "1 3 0 0"),
                                                                                    ("action", "2 3 0 0")])
    assert [r.observation for r in results] == ["f(1, 3, 0, 0) = 0.3333", "f(2, 3, 0, 0) = 0.6667"]


def test_malformed_contents_get_a_message_and_zero(factory):
    env, _, results = play(factory, make_task(), [
        ("action", "1 2 3"), ("action", ""), ("search", "the rule"), ("answer", "two hundred"), ("action", "1 0 0 0"),
    ])
    assert [r.reward for r in results] == [0.0] * 5 and not any(r.done for r in results)
    assert "exactly four numbers" in results[0].observation
    assert "only search is 'test'" in results[2].observation
    assert "not a number" in results[3].observation
    assert env.metrics()["malformed"] == 4.0


def test_no_value_probe_is_a_message_not_a_crash(factory):
    _, _, results = play(factory, make_task("a / (b - c) + d", (1, 2, 3, 4), 3.0), [("action", "1 2 2 0")])
    assert "no value" in results[0].observation and results[0].reward == 0.0


def test_finish_and_max_turns_end_the_episode_with_zero(factory):
    env, _, results = play(factory, make_task(), [("answer", "1"), ("finish", "")])
    assert [r.reward for r in results] == [0.0, 0.0] and results[-1].info["end_reason"] == "finish"
    env, _, results = play(factory, make_task(), [("action", "1 1 1 1")] * 5, max_turns=3)
    assert len(results) == 3 and results[-1].done and results[-1].info["end_reason"] == "max_turns"
    assert env.metrics()["score"] == 0.0


def test_wrong_settings_name_the_key(factory):
    with pytest.raises(ConfigError, match=r"env\.FunctionGym\.max_turn"):
        factory(task=make_task(), simulator=None, settings={"max_turn": 3}, seed=0)


def test_the_factory_declares_it_needs_no_simulator(factory):
    assert factory.needs_simulator is False


# --------------------------------------------------------------------------------------------
# Data: UserRL's rows unchanged
# --------------------------------------------------------------------------------------------


def test_userrl_rows_load_unchanged_and_resolve_to_rules(registry, factory):
    import pyarrow.parquet as pq

    for split, size in (("train", 460), ("test", 78)):
        path = DATA_DIR / f"{split}.parquet"
        tasks = load_tasks(path, registry).tasks
        rows = pq.read_table(path).to_pylist()
        assert len(tasks) == size == len(rows)
        for task, row in zip(tasks, rows):
            assert task.prompt == row["prompt"] and task.data_source == "interact_function"
            env = factory(task=task, simulator=None, settings={}, seed=0)
            assert env.spec.expected_result == pytest.approx(float(row["reward_model"]["ground_truth"]))
    mixed = load_tasks(MIX_TEST, registry)
    assert mixed.counts()["FunctionGym"] == 50


def test_an_unknown_function_id_names_the_row(registry, tmp_path):
    rows = [{"id": "func-99999", "env_name": "FunctionGym", "prompt": [{"role": "user", "content": "go"}]}]
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    with pytest.raises(DataError, match=r"tasks.json row 0: payload.id: function id 'func-99999'"):
        load_tasks(path, registry)


# --------------------------------------------------------------------------------------------
# A scripted solver over the 78 test tasks
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rule_search():
    return RuleSearch(default_probes())


def test_scripted_solver_solves_at_least_95_percent_of_the_test_split(registry, factory, rule_search):
    tasks = load_tasks(TEST_SPLIT, registry).tasks

    async def solve(task: Task) -> dict[str, float]:
        env = factory(task=task, simulator=None, settings={}, seed=0)  # max_turns 15, as in UserRL
        await env.reset()
        solver = FunctionSolver(rule_search)
        observations = [(await env.step(Action(c, t))).observation for c, t in solver.plan()]
        for answer in solver.answers(observations):
            if env.done:
                break
            await env.step(Action("answer", answer))
        return env.metrics()

    results = [asyncio.run(solve(task)) for task in tasks]
    solved = sum(m["solved"] for m in results)
    assert len(results) == 78
    assert solved / 78 >= 0.95, f"solved {solved} of 78"
    assert all(m["score"] == m["solved"] for m in results)  # a solved episode scores exactly 1


# --------------------------------------------------------------------------------------------
# Through the rollout engine, with no simulator
# --------------------------------------------------------------------------------------------

_MESSAGE = re.compile(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>", re.S)


class SolverPolicy:
    """A rollout-backend test double that plays FunctionGym in plain text with UserRL's bracket
    tags: it decodes the conversation (real SmolLM2 tokenizer and chat template), and replies
    with the solver's next move, ended by the template's end-of-turn token as a sampler would."""

    def __init__(self, tokenizer, search: RuleSearch):
        self.tokenizer = tokenizer
        self.solver = FunctionSolver(search)

    def reply(self, messages: list[tuple[str, str]]) -> str:
        moves = self.solver.plan()
        turn = sum(role == "assistant" for role, _ in messages)
        if turn < len(moves):
            choice, content = moves[turn]
            return f"[{choice}] {content}"
        observations = [text for role, text in messages[2:] if role == "user"]  # after system + user
        answers = self.solver.answers(observations[: len(moves)])
        return f"[answer] {answers[turn - len(moves)] if turn - len(moves) < len(answers) else 0}"

    async def generate(self, request):
        outputs = []
        for prompt in request.prompts:
            text = self.tokenizer.decode(prompt, skip_special_tokens=False)  # ends with the open assistant turn
            messages = [(role, body) for role, body in _MESSAGE.findall(text)]
            ids = self.tokenizer.encode(self.reply(messages), add_special_tokens=False)
            outputs.append(ids + [self.tokenizer.convert_tokens_to_ids("<|im_end|>")])
        await asyncio.sleep(0)
        return GenerationResult(outputs, [[-0.5] * len(ids) for ids in outputs])

    def sync_weights(self, source) -> None:
        raise AssertionError("not used by the rollout engine")


def test_episodes_through_the_rollout_engine_with_no_simulator(registry, smol_tokenizer, rule_search):
    tasks = load_tasks(TEST_SPLIT, registry, max_tasks=2).tasks
    config = RunConfig(model={"path": "unused"}, data={"train_files": ["unused"]},
                       rollout={"action_format": "plain_text", "n": 1, "max_turns": 16, "max_new_tokens": 32,
                                "max_episode_tokens": 4096})
    engine = RolloutEngine(SolverPolicy(smol_tokenizer, rule_search), registry, None, config)
    result = asyncio.run(engine.run(tasks, seed=3))
    for episode in result.episodes:
        assert episode.status is EpisodeStatus.OK and episode.end_reason == "solved"
        assert episode.turns[0].action == Action("search", "test")
        rewards = episode.turn_rewards
        assert rewards[-1] == 1.0 and sum(rewards) == 1.0 and math.isclose(episode.metrics["score"], 1.0)
        assert episode.metrics["solved"] == 1.0 and episode.metrics["probes"] == 10.0
    assert result.metrics["env/solved/mean"] == 1.0
