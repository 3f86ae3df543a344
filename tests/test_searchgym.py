"""SearchGym: the Serper-compatible backend against a real loopback HTTP server (key from an
environment variable, never shown), at most five searches, exact match then a strict LLM judge,
failures that fail the step instead of rewarding, UserRL's rows loaded unchanged, and episodes
through the rollout engine with the embedded ``hf`` simulator."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import pytest
from support.serper_server import SerperServer, results

from userrl_core.config.schema import RunConfig, SimulatorConfig
from userrl_core.data import load_tasks
from userrl_core.errors import ConfigError, MissingRequirementError
from userrl_core.plugins import get_plugin_manager
from userrl_core.registry import Kind
from userrl_core.rollout import RolloutEngine
from userrl_core.types import (
    Action,
    EpisodeStatus,
    GenerationResult,
    SimulatorRequest,
    SimulatorResponse,
    StepStatus,
    Task,
)
from userrl_plugins.searchgym.grading import JudgeReplyError, exact_match, normalise, parse_judgment
from userrl_plugins.searchgym.tasks import DATA_DIR, DEFAULT_QUESTIONS_FILE

KEY_ENV = "USERRL_TEST_SEARCH_KEY"
KEY = "sk-serper-test-0123456789"


@pytest.fixture(scope="module")
def registry():
    return get_plugin_manager().registry


@pytest.fixture(scope="module")
def factory(registry):
    return registry.get(Kind.ENVIRONMENT, "SearchGym")


@pytest.fixture
def serper(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with SerperServer(api_key=KEY) as server:
        yield server


def settings_for(server: SerperServer | None, **extra) -> dict:
    search = {"backend": "none"} if server is None else {"url": server.url, "api_key_env": KEY_ENV,
                                                          "retry_backoff": 0.0}
    search.update(extra.pop("search", {}))
    return {"search": search, **extra}


class JudgeDouble:
    """A test double of a language-model simulator acting as SearchGym's judge: it returns
    scripted texts in order and records every request."""

    name = "judge-double"

    def __init__(self, script: list[str]):
        self.script = list(script)
        self.requests: list[SimulatorRequest] = []

    async def complete(self, request: SimulatorRequest) -> SimulatorResponse:
        self.requests.append(request)
        await asyncio.sleep(0)
        return SimulatorResponse(text=self.script.pop(0))

    async def aclose(self) -> None:
        return None


def verdict(judgment: str) -> str:
    return "```json\n" + json.dumps({"reasoning": "Checked.", "judgment": judgment}) + "\n```"


def make_task() -> Task:
    return Task(id="Bamboogle-19", env_name="SearchGym", data_source="interact_searchgym", prompt=[],
                payload={"env_name": "SearchGym", "id": "Bamboogle-19"})


def play(factory, settings, moves, judge: list[str] | None = None):
    sim = JudgeDouble(judge or [])

    async def run():
        env = factory(task=make_task(), simulator=sim, settings=settings, seed=0)
        await env.reset()
        out = []
        for choice, content in moves:
            out.append(await env.step(Action(choice, content)))
            if out[-1].done:
                break
        return env, out

    env, out = asyncio.run(run())
    return env, sim, out


# --------------------------------------------------------------------------------------------
# Grading
# --------------------------------------------------------------------------------------------


def test_normalised_exact_match_is_userrls():
    assert normalise("James Madison.") == "jamesmadison"
    assert exact_match("november 6 1905", "November 6, 1905")
    assert not exact_match("1905", "November 6, 1905") and not exact_match("...", "")


@pytest.mark.parametrize("text, value", [(verdict("Yes"), True), ('{"judgment": " no "}', False),
                                         ('x {"reasoning": "r"} {"judgment": "YES"}', True)])
def test_the_judge_parser_reads_yes_or_no(text, value):
    assert parse_judgment(text) is value


@pytest.mark.parametrize("text", ["Yes", '{"judgment": "Probably"}', '{"judgment": true}', '{"verdict": "Yes"}',
                                  '{"judgment": "Yes, No"}', "[" * 3000])
def test_the_judge_parser_refuses_anything_else(text):
    with pytest.raises(JudgeReplyError):
        parse_judgment(text)


# --------------------------------------------------------------------------------------------
# Episodes against the loopback search API
# --------------------------------------------------------------------------------------------


def test_search_sends_serpers_request_with_the_key_and_lists_results(factory, serper):
    serper.script(results(("Sergei Witte", "Witte became the first Prime Minister in November 1905."),
                          ("Council of Ministers", "Established in 1905."),
                          answer_box={"title": "Sergei Witte", "answer": "6 November 1905"}))
    _, _, out = play(factory, settings_for(serper, search={"num_results": 2}),
                     [("search", "first prime minister of the Russian Empire")])
    request = serper.requests[0]
    assert request["path"] == "/search" and request["body"] == {"q": "first prime minister of the Russian Empire",
                                                                "num": 2}
    assert request["headers"]["X-API-KEY"] == KEY
    assert out[0].observation == ("Results for 'first prime minister of the Russian Empire':\n"
                                  "1. Sergei Witte\n   Answer: 6 November 1905\n"
                                  "2. Sergei Witte\n   Witte became the first Prime Minister in November 1905.")
    assert out[0].reward == 0.0 and not out[0].done


def test_at_most_five_searches_then_refused_without_a_request(factory, serper):
    env, _, out = play(factory, settings_for(serper), [("search", f"query {i}") for i in range(7)])
    assert len(serper.requests) == 5
    assert all("used all 5 searches" in r.observation for r in out[5:]) and all(r.reward == 0.0 for r in out)
    assert env.metrics()["refused_searches"] == 2.0 and env.metrics()["searches"] == 7.0


def test_exact_match_needs_no_judge_and_wrong_answers_may_retry(factory, serper):
    env, sim, out = play(factory, settings_for(serper), [("answer", "Sergei Witte"), ("answer", "november 6th 1905"),
                                                        ("answer", "November 6, 1905.")],
                         judge=[verdict("No"), verdict("No")])
    assert [r.reward for r in out] == [0.0, 0.0, 1.0] and out[-1].info["end_reason"] == "solved"
    assert len(sim.requests) == 2  # the third answer matched exactly: no judge call
    judge_prompt = sim.requests[0].messages[-1]["content"]
    assert "Answer to check: Sergei Witte" in judge_prompt and "Reference answer: November 6, 1905" in judge_prompt
    assert "November 6, 1905" not in out[0].observation  # the reference is never shown
    metrics = env.metrics()
    assert metrics["score"] == 1.0 and metrics["exact_matches"] == 1.0 and metrics["judge_calls"] == 2.0


def test_the_judge_can_accept_an_answer(factory):
    _, _, out = play(factory, settings_for(None), [("answer", "6th of November, 1905")], judge=[verdict("Yes")])
    assert out[0].reward == 1.0 and out[0].done


def test_an_unusable_verdict_is_reasked_then_fails_the_step(factory):
    env, sim, out = play(factory, settings_for(None), [("answer", "Witte")],
                         judge=["Yes!", '{"judgment": "maybe"}', "I think so"])
    assert out[0].status is StepStatus.SIMULATOR_FAILED and out[0].reward is None and out[0].done
    assert "no usable verdict after 3 attempt(s)" in out[0].error
    assert "could not be used" in sim.requests[1].messages[-1]["content"] and env.metrics()["judge/reasks"] == 2.0


def test_judge_exact_never_asks_the_simulator(factory):
    _, sim, out = play(factory, settings_for(None, judge="exact"), [("answer", "Witte"), ("finish", "")])
    assert [r.reward for r in out] == [0.0, 0.0] and sim.requests == []


def test_server_errors_are_retried_then_fail_the_step_without_reward(factory, serper, caplog):
    serper.script(503, results(("Witte", "First prime minister.")))
    _, _, out = play(factory, settings_for(serper), [("search", "witte")])
    assert out[0].status is StepStatus.OK and "1. Witte" in out[0].observation and len(serper.requests) == 2

    serper.script(500, 502, 429)
    with caplog.at_level(logging.DEBUG):
        _, _, out = play(factory, settings_for(serper), [("search", "witte")])
    assert out[0].status is StepStatus.SIMULATOR_FAILED and out[0].reward is None
    assert "failed after 3 attempt(s): HTTP 429" in out[0].error
    assert KEY not in caplog.text and KEY not in out[0].error


def test_a_rejected_key_fails_at_once_naming_the_variable_not_the_key(factory, serper, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "wrong-key")
    _, _, out = play(factory, settings_for(serper), [("search", "witte")])
    assert out[0].status is StepStatus.SIMULATOR_FAILED and len(serper.requests) == 1
    assert f"HTTP 403 (check the key in ${KEY_ENV})" in out[0].error and "wrong-key" not in out[0].error


def test_a_timeout_and_a_non_json_body_fail_the_step(factory, serper):
    serper.script(("sleep", 1.0))
    _, _, out = play(factory, settings_for(serper, search={"timeout": 0.2, "retries": 0}), [("search", "slow")])
    assert "no answer within 0.2 s" in out[0].error
    serper.script("<html>busy</html>")
    _, _, out = play(factory, settings_for(serper), [("search", "x")])
    assert "not a JSON object" in out[0].error


def test_backend_none_answers_with_a_notice(factory):
    _, _, out = play(factory, settings_for(None), [("search", "witte")])
    assert out[0].observation.startswith("Web search is not available") and out[0].reward == 0.0


def test_a_missing_key_stops_loading_with_the_variable_name(registry, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(MissingRequirementError, match=rf"env\.SearchGym\.search\.api_key_env: .*{KEY_ENV}"):
        load_tasks(DATA_DIR / "test.parquet", registry, env_settings={"SearchGym": {"search": {"api_key_env": KEY_ENV}}})
    with pytest.raises(ConfigError, match=r"env\.SearchGym\.search\.backend"):
        load_tasks(DATA_DIR / "test.parquet", registry, env_settings={"SearchGym": {"search": {"backend": "bing"}}})


def test_userrl_rows_load_unchanged(registry):
    import pyarrow.parquet as pq

    path = DATA_DIR / "test.parquet"
    tasks = load_tasks(path, registry, env_settings={"SearchGym": settings_for(None)}).tasks
    rows = pq.read_table(path).to_pylist()
    bank = {q["id"]: q for q in json.loads(DEFAULT_QUESTIONS_FILE.read_text(encoding="utf-8"))}
    assert len(tasks) == len(rows) == 125
    for task, row in zip(tasks, rows):
        assert task.prompt == row["prompt"] and task.data_source == "interact_searchgym"
        assert bank[task.id]["answer"] == row["reward_model"]["ground_truth"]
    mixed = load_tasks(DATA_DIR.parent / "mix" / "alltest.parquet", get_plugin_manager().registry,
                       env_settings={"SearchGym": settings_for(None)})
    assert mixed.counts()["SearchGym"] == 62


# --------------------------------------------------------------------------------------------
# Through the rollout engine with the embedded simulator
# --------------------------------------------------------------------------------------------


class KnowingPolicy:
    """A rollout-backend test double (real SmolLM2 tokenizer): searches first, then answers —
    correctly for the question it knows, "I do not know" otherwise."""

    def __init__(self, tokenizer, known: dict[str, str]):
        self.tokenizer = tokenizer
        self.known = known

    async def generate(self, request):
        end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        outputs = []
        for prompt in request.prompts:
            text = self.tokenizer.decode(prompt, skip_special_tokens=False)
            turn = text.count("<|im_start|>assistant") - 1
            answer = next((a for q, a in self.known.items() if q in text), "I do not know")
            reply = "[search] who was the first prime minister" if turn == 0 else f"[answer] {answer}"
            outputs.append(self.tokenizer.encode(reply, add_special_tokens=False) + [end])
        return GenerationResult(outputs, [[-0.5] * len(ids) for ids in outputs])

    def sync_weights(self, source) -> None:
        raise AssertionError("not used by the rollout engine")


def test_episodes_through_the_rollout_engine_with_the_hf_simulator(registry, serper, smol_tokenizer,
                                                                   tiny_model_dir):
    from userrl_plugins.simulators.hf_simulator import HFSimulator

    serper.default = results(("Sergei Witte", "The first Prime Minister of the Russian Empire, from 1905."))
    env_settings = {"SearchGym": settings_for(serper, judge_retries=0)}
    tasks = load_tasks(DATA_DIR / "test.parquet", registry, max_tasks=2, env_settings=env_settings).tasks
    # The tiny random model judges with noise: the unknown answer's verdict is unparseable, so
    # that episode fails (counted, no reward); the exact answer needs no judge.
    sim_config = SimulatorConfig(name="hf", model=str(tiny_model_dir), max_tokens=8)
    config = RunConfig(model={"path": "unused"}, data={"train_files": ["unused"]}, env=env_settings,
                       simulator=sim_config.model_dump(),
                       rollout={"action_format": "plain_text", "n": 1, "max_turns": 4, "max_new_tokens": 24,
                                "max_episode_tokens": 2048})
    known = {"first prime minister of the Russian Empire": "November 6, 1905"}
    engine = RolloutEngine(KnowingPolicy(smol_tokenizer, known), registry, HFSimulator(sim_config), config)
    solved, failed = asyncio.run(engine.run(tasks, seed=1, validation=True)).episodes
    assert solved.status is EpisodeStatus.OK and solved.end_reason == "solved" and solved.turn_rewards == [0.0, 1.0]
    assert re.search(r"1\. Sergei Witte", solved.turns[0].observation)
    assert failed.status is EpisodeStatus.FAILED and "no usable verdict" in failed.error
    assert len(serper.requests) == 2
