"""The async rollout engine with a scripted policy (real SmolLM2 tokenizer) and scripted
environments in a fresh registry: token-in/token-out, masks, action handling, endings,
concurrency, failures and mixed environments."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Callable

import pytest
from support.chat_templates import QWEN_STYLE_TEMPLATE

from userrl_core.config.schema import RunConfig
from userrl_core.errors import UnknownNameError
from userrl_core.registry import Kind, Registry
from userrl_core.rollout import RolloutEngine, validation_metrics
from userrl_core.rollout.actions import INTERACT_WITH_ENV_TOOL, TOOL_NAME
from userrl_core.types import (
    Action,
    EpisodeStatus,
    GenerationRequest,
    GenerationResult,
    SimulatorError,
    StepResult,
    StepStatus,
    Task,
)

Script = Callable[[str, int], str]


class ScriptedPolicy:
    """A rollout-backend test double: replies with scripted texts, tokenised with the real
    tokenizer. ``script(task_id, turn)`` gives the text; replies longer than max_new_tokens are
    cut there (no end-of-turn), as a real sampler would. Log-probs are a function of the token id
    so their alignment can be checked."""

    def __init__(self, tokenizer, script: Script):
        self.tokenizer = tokenizer
        self.script = script
        self.requests: list[GenerationRequest] = []
        self.sampled: dict[tuple[str, int], list[int]] = {}

    @staticmethod
    def logprob(token: int) -> float:
        return -((token % 13) + 1) / 10

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        self.requests.append(request)
        outputs = []
        for prompt in request.prompts:
            text = self.tokenizer.decode(prompt, skip_special_tokens=False)
            task_id = re.search(r"task:(\S+)", text).group(1)
            turn = text.count("<|im_start|>assistant") - 1
            ids = self.tokenizer.encode(self.script(task_id, turn), add_special_tokens=False)
            ids = ids + [self.tokenizer.convert_tokens_to_ids("<|im_end|>")]
            ids = ids[: request.max_new_tokens]
            self.sampled[(task_id, turn)] = ids
            outputs.append(ids)
        await asyncio.sleep(0)
        return GenerationResult(outputs, [[self.logprob(t) for t in ids] for ids in outputs])

    def sync_weights(self, source) -> None:
        raise AssertionError("not used by the rollout engine")


class InFlight:
    """Counts environment steps running at the same time."""

    def __init__(self):
        self.now = 0
        self.peak = 0

    async def hold(self, seconds: float) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.now -= 1


class EchoEnv:
    """Echoes each action; reward 1 per action or answer; 'finish' ends the episode. Fails in
    the simulator on step ``payload["fail_at"]`` (raised, or as a status when ``fail_as_status``);
    each step takes ``payload["delay"]``
    (else ``settings["delay"]``) seconds."""

    kind = "echo"

    def __init__(self, task: Task, seed: int, settings: dict, in_flight: InFlight):
        self.task, self.seed, self.settings, self.in_flight = task, seed, settings, in_flight
        self.actions: list[Action] = []

    async def reset(self):
        return self.task.prompt

    async def step(self, action: Action) -> StepResult:
        self.actions.append(action)
        await self.in_flight.hold(self.task.payload.get("delay", self.settings.get("delay", 0.0)))
        if len(self.actions) == self.task.payload.get("fail_at"):
            if self.task.payload.get("fail_as_status"):
                return StepResult("", None, False, status=StepStatus.SIMULATOR_FAILED, error="judge timed out")
            raise SimulatorError("scripted", "connection refused", attempts=3)
        if action.choice == "finish":
            return StepResult("Bye.", 0.0, True, info={"end_reason": "finish"})
        return StepResult(f"{self.kind}: {action.content}", 1.0, False, info={"env": self.kind})

    def metrics(self) -> dict[str, float]:
        return {"coverage": len(self.actions) / 4, "score": float(sum(a.choice != "finish" for a in self.actions))}


class ShoutEnv(EchoEnv):
    kind = "shout"

    async def step(self, action: Action) -> StepResult:
        result = await super().step(action)
        if result.reward:
            result.reward = 0.5
            result.observation = result.observation.upper()
        return result


@pytest.fixture
def world():
    """A fresh registry with the two scripted environments, and what they saw."""
    in_flight = InFlight()
    made: list[EchoEnv] = []

    def factory(cls):
        def make(*, task, simulator, settings, seed, **kwargs):
            env = cls(task, seed, settings, in_flight)
            made.append(env)
            return env
        return make

    registry = Registry()
    registry.add(Kind.ENVIRONMENT, "Echo", factory(EchoEnv), plugin="tests")
    registry.add(Kind.ENVIRONMENT, "Shout", factory(ShoutEnv), plugin="tests")
    return registry, in_flight, made


class NoSimulator:
    name = "none"

    async def complete(self, request):
        raise AssertionError("scripted environments do not call the simulator")

    async def aclose(self):
        return None


def make_config(**rollout) -> RunConfig:
    env = rollout.pop("env", {})
    simulator = rollout.pop("simulator", {})
    chat_template = rollout.pop("chat_template", None)
    settings = {"action_format": "plain_text", "n": 1, "max_turns": 3, "max_new_tokens": 48,
                "max_episode_tokens": 2048, **rollout}
    return RunConfig(model={"path": "unused", "chat_template": chat_template}, data={"train_files": ["unused"]},
                     rollout=settings, env=env, simulator=simulator)


def task(task_id: str, env_name: str = "Echo", data_source: str = "echo_source", **payload) -> Task:
    prompt = [{"role": "system", "content": "You help the user."},
              {"role": "user", "content": f"task:{task_id} Help me plan."}]
    return Task(id=task_id, env_name=env_name, data_source=data_source, prompt=prompt, payload=payload,
                source=f"tasks.json row {task_id}")


def tool(choice: str, content: str) -> str:
    return "<tool_call>" + json.dumps({"name": TOOL_NAME, "arguments": {"choice": choice, "content": content}}) \
        + "</tool_call>"


def run(engine: RolloutEngine, tasks, n=None, **kwargs):
    return asyncio.run(engine.run(tasks, n, seed=kwargs.pop("seed", 7), **kwargs))


def assert_token_bookkeeping(episode, tokenizer, chat_template=None):
    """decode(ids) is the rendered conversation; the mask is 1 exactly on sampled turn spans."""
    ids, mask = episode.token_ids, episode.loss_mask
    assert len(ids) == len(mask)
    decoded = tokenizer.decode(ids, skip_special_tokens=False)
    kwargs = {"chat_template": chat_template, "tools": [INTERACT_WITH_ENV_TOOL]} if chat_template else {}
    rendered = tokenizer.apply_chat_template(episode.messages, tokenize=False, **kwargs)
    assert rendered == decoded + "\n"  # the template's newline after the last <|im_end|> is never sampled
    expected = [0] * len(ids)
    for turn in episode.turns:
        expected[turn.start:turn.end] = [1] * (turn.end - turn.start)
    assert mask == expected
    assert mask[: episode.prompt_length] == [0] * episode.prompt_length
    assert episode.rollout_logprobs == [
        ScriptedPolicy.logprob(t) if m else 0.0 for t, m in zip(ids, mask)
    ]


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_plain_text_episodes_are_exactly_the_sampled_tokens(smol_tokenizer, world, mode):
    registry, _, made = world
    policy = ScriptedPolicy(smol_tokenizer, lambda t, k: f"<think>turn {k}</think>Question {k} for {t}?")
    engine = RolloutEngine(policy, registry, NoSimulator(), make_config(n=2, mode=mode))
    result = run(engine, [task("a"), task("b")])
    assert [(e.group, e.sample, e.task.id) for e in result.episodes] == [
        (0, 0, "a"), (0, 1, "a"), (1, 0, "b"), (1, 1, "b")]
    for episode in result.episodes:
        assert episode.status is EpisodeStatus.OK and episode.end_reason == "max_turns"
        assert len(episode.turns) == 3 and episode.turn_rewards == [1.0, 1.0, 1.0]
        assert_token_bookkeeping(episode, smol_tokenizer)
        for k, turn in enumerate(episode.turns):
            assert episode.token_ids[turn.start:turn.end] == policy.sampled[(episode.task.id, k)]
            assert turn.action == Action("action", f"Question {k} for {episode.task.id}?")
        assert episode.turns[0].observation == f"echo: Question 0 for {episode.task.id}?"
        assert episode.messages[3] == {"role": "user", "content": episode.turns[0].observation}
        # verl's response: everything after the opening (the echoes between turns included);
        # the policy's own tokens are the turn spans
        assert episode.policy_tokens == sum(t.end - t.start for t in episode.turns)
        assert episode.response_length == len(episode.token_ids) - episode.prompt_length > episode.policy_tokens
        assert episode.metrics == {"coverage": 0.75, "score": 3.0}
    if mode == "sync":
        assert [len(r.prompts) for r in policy.requests] == [4, 4, 4]  # one batch per turn
    else:
        assert [len(r.prompts) for r in policy.requests] == [1] * 12  # one request per episode-turn
    assert result.metrics[f"rollout/mode/{mode}"] == 1.0
    assert all(r.do_sample and r.temperature == 1.0 for r in policy.requests)
    assert len({env.seed for env in made}) == 4
    metrics = result.metrics
    assert metrics["rollout/turns/mean"] == 3.0 and metrics["rollout/end/max_turns"] == 4.0
    assert metrics["rollout/invalid_action_rate"] == 0.0 and metrics["rollout/no_action_rate"] == 0.0
    assert metrics["env/coverage/mean"] == 0.75 and metrics["env/score/mean"] == 3.0
    assert metrics["response_length/mean"] == pytest.approx(
        sum(len(e.token_ids) - e.prompt_length for e in result.episodes) / 4)
    assert metrics["rollout/policy_tokens/mean"] == pytest.approx(
        sum(t.end - t.start for e in result.episodes for t in e.turns) / 4)
    assert metrics["rollout/policy_tokens/mean"] < metrics["response_length/mean"]
    assert metrics["prompt_length/mean"] == result.episodes[0].prompt_length
    assert metrics["rollout/retokenization_mismatch_rate"] == 0.0
    assert metrics["timing_s/generate"] > 0 and metrics["timing_s/env"] > 0


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_same_seed_same_env_seeds_and_generation_seeds(smol_tokenizer, world, mode):
    registry, _, made = world
    policy = ScriptedPolicy(smol_tokenizer, lambda t, k: "Hi?")
    engine = RolloutEngine(policy, registry, NoSimulator(), make_config(n=3, max_turns=1, mode=mode))
    generation_seeds = []
    for seed in (3, 3, 4):
        policy.requests.clear()
        run(engine, [task("a")], seed=seed)
        generation_seeds.append(sorted(r.seed for r in policy.requests))
    seeds = [env.seed for env in made]
    assert seeds[:3] == seeds[3:6] and seeds[:3] != seeds[6:]
    assert generation_seeds[0] == generation_seeds[1] != generation_seeds[2]
    # sync: one seed per batch; async: one per episode-turn, all different
    assert len(set(generation_seeds[0])) == {"sync": 1, "async": 3}[mode]


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_episodes_end_independently(smol_tokenizer, world, mode):
    registry, _, _ = world
    endings = {"quick": 1, "slow": 3}
    script = lambda t, k: tool("finish", "") if k == endings[t] else tool("action", f"ask {k}")  # noqa: E731
    policy = ScriptedPolicy(smol_tokenizer, script)
    config = make_config(action_format="tool_call", max_turns=8, mode=mode)
    result = run(RolloutEngine(policy, registry, NoSimulator(), config), [task("quick"), task("slow")])
    quick, slow = result.episodes
    assert (len(quick.turns), quick.end_reason) == (2, "finish")
    assert (len(slow.turns), slow.end_reason) == (4, "finish")
    expected = {"sync": [2, 2, 1, 1], "async": [1] * 6}[mode]
    assert [len(r.prompts) for r in policy.requests] == expected
    assert result.metrics["rollout/end/finish"] == 2.0
    for episode in result.episodes:
        assert_token_bookkeeping(episode, smol_tokenizer)


def test_env_steps_of_a_turn_run_concurrently_within_the_simulator_bound(smol_tokenizer, world):
    registry, in_flight, _ = world
    policy = ScriptedPolicy(smol_tokenizer, lambda t, k: "Next question?")
    config = make_config(n=6, max_turns=2, env={"Echo": {"delay": 0.2}})
    clock = time.perf_counter()
    run(RolloutEngine(policy, registry, NoSimulator(), config), [task("a")])
    assert in_flight.peak == 6
    assert time.perf_counter() - clock < 2 * 6 * 0.2 * 0.5  # far below the sequential 2.4 s
    in_flight.peak = 0
    config = make_config(n=6, max_turns=1, env={"Echo": {"delay": 0.05}}, simulator={"max_concurrency": 2})
    run(RolloutEngine(policy, registry, NoSimulator(), config), [task("a")])
    assert in_flight.peak == 2


def test_tool_call_mode_with_a_qwen_style_template(smol_tokenizer, world):
    registry, _, made = world
    replies = [
        "<think>ask first</think>\n" + tool("action", "Where to?"),
        "<tool_call>{\"name\": \"interact_with_env\", \"arguments\": {\"choice\": </tool_call>",
        tool("dance", "now"),
        tool("answer", "Rome in May"),
        tool("finish", ""),
    ]
    policy = ScriptedPolicy(smol_tokenizer, lambda t, k: replies[k])
    config = make_config(action_format="tool_call", max_turns=8, chat_template=QWEN_STYLE_TEMPLATE)
    engine = RolloutEngine(policy, registry, NoSimulator(), config)
    (episode,) = run(engine, [task("q")]).episodes
    assert engine.observation_role == "tool"
    assert [t.invalid for t in episode.turns] == [False, True, True, False, False]
    assert episode.turn_rewards == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert made[0].actions == [Action("action", "Where to?"), Action("answer", "Rome in May"), Action("finish", "")]
    assert episode.end_reason == "finish"
    decoded = smol_tokenizer.decode(episode.token_ids, skip_special_tokens=False)
    assert '<tools>\n{"type": "function", "function": {"name": "interact_with_env"' in decoded
    assert "<tool_response>\necho: Where to?\n</tool_response>" in decoded
    assert "unknown choice 'dance'" in episode.turns[2].observation
    assert f"<tool_response>\n{episode.turns[2].observation}\n</tool_response>" in decoded
    assert_token_bookkeeping(episode, smol_tokenizer, QWEN_STYLE_TEMPLATE)


def test_adversarial_replies_never_crash_the_rollout(smol_tokenizer, world):
    registry, _, made = world
    oversized = "{\"name\": " * 10_000  # ~90 kB of text, over the 64 KiB parse cap
    replies = [oversized, "<tool_call>" + "[" * 20_000 + "</tool_call>", tool("explode", "x"),
               "<tool_call>{\"name\": \"rm -rf\", \"arguments\": {}}</tool_call>", tool("finish", "")]
    policy = ScriptedPolicy(smol_tokenizer, lambda t, k: replies[k])
    config = make_config(action_format="tool_call", max_turns=8, max_new_tokens=200_000, max_episode_tokens=800_000)
    result = run(RolloutEngine(policy, registry, NoSimulator(), config), [task("x")])
    (episode,) = result.episodes
    assert [t.invalid for t in episode.turns] == [True, True, True, True, False]
    assert "at most 65536 are parsed" in episode.turns[0].info["error"]
    assert made[0].actions == [Action("finish", "")]
    assert result.metrics["rollout/invalid_action_rate"] == pytest.approx(4 / 5)
    assert_token_bookkeeping(episode, smol_tokenizer)


def test_no_action_ends_the_episode_by_default(smol_tokenizer, world):
    registry, _, made = world
    policy = ScriptedPolicy(smol_tokenizer, lambda t, k: "Sure, I can help with that.")
    config = make_config(action_format="tool_call")
    result = run(RolloutEngine(policy, registry, NoSimulator(), config), [task("a")])
    (episode,) = result.episodes
    assert (episode.end_reason, len(episode.turns), episode.turns[0].no_action) == ("no_action", 1, True)
    assert made[0].actions == []
    assert result.metrics["rollout/no_action_rate"] == 1.0 and result.metrics["rollout/end/no_action"] == 1.0
    assert_token_bookkeeping(episode, smol_tokenizer)


def test_no_action_remind_keeps_sampled_thinking_that_the_template_would_drop(smol_tokenizer, world):
    """Qwen3-style templates drop <think> from assistant turns before the last user message. The
    reminder is such a user message; the engine still keeps the sampled ids."""
    registry, _, _ = world
    replies = ["<think>no idea</think>Let me think.", tool("finish", "")]
    policy = ScriptedPolicy(smol_tokenizer, lambda t, k: replies[k])
    config = make_config(action_format="tool_call", on_no_action="remind", chat_template=QWEN_STYLE_TEMPLATE)
    result = run(RolloutEngine(policy, registry, NoSimulator(), config), [task("a")])
    (episode,) = result.episodes
    assert [t.no_action for t in episode.turns] == [True, False] and episode.end_reason == "finish"
    assert episode.messages[3]["role"] == "user" and "no tool call" in episode.messages[3]["content"]
    first = episode.turns[0]
    assert episode.token_ids[first.start:first.end] == policy.sampled[("a", 0)]
    assert "<think>no idea</think>" in smol_tokenizer.decode(episode.token_ids)
    assert result.metrics["rollout/retokenization_mismatch_rate"] == 1.0
    assert result.metrics["rollout/no_action_rate"] == 0.5


def test_cut_off_turn_gets_an_unsampled_end_of_turn(smol_tokenizer, world):
    registry, _, _ = world
    policy = ScriptedPolicy(smol_tokenizer, lambda t, k: "word " * 50)
    config = make_config(max_new_tokens=8, max_turns=2)
    result = run(RolloutEngine(policy, registry, NoSimulator(), config), [task("a")])
    (episode,) = result.episodes
    im_end = smol_tokenizer.convert_tokens_to_ids("<|im_end|>")
    for turn in episode.turns:
        assert turn.end - turn.start == 8 and im_end not in episode.token_ids[turn.start:turn.end]
        assert episode.token_ids[turn.end] == im_end and episode.loss_mask[turn.end] == 0
    assert result.metrics["rollout/truncated_turn_rate"] == 1.0
    assert_token_bookkeeping(episode, smol_tokenizer)


def test_token_budget_ends_the_episode_within_the_budget(smol_tokenizer, world):
    registry, _, _ = world
    policy = ScriptedPolicy(smol_tokenizer, lambda t, k: "A fairly long question about the trip " * 3)
    prompt_length = len(smol_tokenizer.apply_chat_template(task("a").prompt, tokenize=False))  # chars > tokens
    config = make_config(max_new_tokens=32, max_turns=50, max_episode_tokens=prompt_length + 100)
    result = run(RolloutEngine(policy, registry, NoSimulator(), config), [task("a")])
    (episode,) = result.episodes
    assert episode.end_reason == "token_budget" and 1 <= len(episode.turns) < 50
    assert len(episode.token_ids) <= config.rollout.max_episode_tokens
    assert result.metrics["rollout/end/token_budget"] == 1.0
    assert_token_bookkeeping(episode, smol_tokenizer)


@pytest.mark.parametrize("as_status", [False, True])
def test_simulator_failure_flags_the_episode_and_never_rewards(smol_tokenizer, world, as_status):
    registry, _, _ = world
    policy = ScriptedPolicy(smol_tokenizer, lambda t, k: f"Question {k}?")
    tasks = [task("ok"), task("bad", fail_at=2, fail_as_status=as_status)]
    result = run(RolloutEngine(policy, registry, NoSimulator(), make_config(max_turns=3)), tasks)
    good, bad = result.episodes
    assert good.status is EpisodeStatus.OK and len(good.turns) == 3
    assert bad.status is EpisodeStatus.FAILED and bad.end_reason == "failed"
    assert bad.turn_rewards == [1.0, 0.0] and len(bad.turns) == 2
    assert ("judge timed out" if as_status else "connection refused") in bad.error
    assert "simulator_error" in bad.turns[1].info
    assert result.metrics["rollout/failed_episodes"] == 1.0
    assert result.metrics["rollout/failed_env_steps"] == 1.0
    assert result.metrics["rollout/failed_env_step_rate"] == pytest.approx(1 / 5)
    assert result.metrics["env/score/mean"] == 3.0  # the failed episode is left out of averages
    assert_token_bookkeeping(bad, smol_tokenizer)


def test_mixed_environments_route_by_env_name_and_validate_per_data_source(smol_tokenizer, world):
    registry, _, made = world
    policy = ScriptedPolicy(smol_tokenizer, lambda t, k: tool("finish", "") if k == 2 else tool("action", t))
    tasks = [task("e1", "Echo", "echo_source"), task("s1", "Shout", "shout_source"), task("e2", "Echo", "echo_source")]
    config = make_config(action_format="tool_call", val_n=2, n=4, max_turns=8)
    result = run(RolloutEngine(policy, registry, NoSimulator(), config), tasks, validation=True)
    assert len(result.episodes) == 6  # val_n samples per task
    for episode in result.episodes:
        assert episode.task is tasks[episode.group]  # a GRPO group never mixes tasks
        assert episode.turns[0].info["env"] == {"Echo": "echo", "Shout": "shout"}[episode.task.env_name]
    shout = [e for e in result.episodes if e.task.env_name == "Shout"][0]
    assert shout.turns[0].observation == "SHOUT: S1" and shout.turn_rewards == [0.5, 0.5, 0.0]
    assert sorted(type(env).__name__ for env in made) == ["EchoEnv"] * 4 + ["ShoutEnv"] * 2
    assert all(r.temperature == 0.0 and not r.do_sample for r in policy.requests)
    metrics = validation_metrics(result.episodes, 2)
    assert metrics["val-core/echo_source/reward/mean@2"] == 2.0
    assert metrics["val-core/shout_source/reward/mean@2"] == 2.0
    assert metrics["val-aux/echo_source/turns/mean@2"] == 3.0
    assert metrics["val-aux/shout_source/coverage/mean@2"] == 0.75
    assert metrics["val-aux/echo_source/failed_episodes"] == 0.0


def test_generation_is_chunked_by_generation_batch_size(smol_tokenizer, world):
    registry, _, _ = world
    policy = ScriptedPolicy(smol_tokenizer, lambda t, k: "Hm?")
    config = make_config(n=5, max_turns=2, generation_batch_size=2, mode="sync")
    result = run(RolloutEngine(policy, registry, NoSimulator(), config), [task("a")])
    assert [len(r.prompts) for r in policy.requests] == [2, 2, 1, 2, 2, 1]
    assert len({r.seed for r in policy.requests}) == 6
    assert result.metrics["rollout/generate_calls"] == 6.0


def test_unknown_env_name_names_the_row(smol_tokenizer, world):
    registry, _, _ = world
    engine = RolloutEngine(ScriptedPolicy(smol_tokenizer, lambda t, k: ""), registry, NoSimulator(), make_config())
    with pytest.raises(UnknownNameError, match=r"tasks.json row z: env_name: unknown environment 'Nope'.*Echo"):
        run(engine, [task("z", "Nope")])


class SlowPolicy(ScriptedPolicy):
    """ScriptedPolicy whose every call takes ``delay`` seconds; counts calls in flight."""

    def __init__(self, tokenizer, script: Script, delay: float):
        super().__init__(tokenizer, script)
        self.delay, self.in_flight = delay, InFlight()

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        result = await super().generate(request)
        await self.in_flight.hold(self.delay)
        return result


def test_async_results_keep_group_sample_order_when_episodes_finish_out_of_order(smol_tokenizer, world):
    registry, _, _ = world
    policy = ScriptedPolicy(smol_tokenizer, lambda t, k: f"Question {k}?")
    tasks = [task("slow", delay=0.3), task("mid", delay=0.1), task("fast", delay=0.0)]
    result = run(RolloutEngine(policy, registry, NoSimulator(), make_config(n=2, max_turns=2, mode="async")), tasks)
    assert [(e.group, e.sample, e.task.id) for e in result.episodes] == [
        (g, s, t) for g, t in enumerate(["slow", "mid", "fast"]) for s in range(2)]
    assert all(len(r.prompts) == 1 for r in policy.requests)  # one request per episode-turn
    second_turns = [r for r in policy.requests if "Question 0?" in smol_tokenizer.decode(r.prompts[0])]
    assert "task:fast" in smol_tokenizer.decode(second_turns[0].prompts[0])  # fast reached turn 2 first
    for episode in result.episodes:
        assert_token_bookkeeping(episode, smol_tokenizer)


def test_async_policy_concurrency_bounds_the_requests_in_flight(smol_tokenizer, world):
    registry, _, _ = world
    policy = SlowPolicy(smol_tokenizer, lambda t, k: "Hm?", delay=0.05)
    run(RolloutEngine(policy, registry, NoSimulator(), make_config(n=6, max_turns=2, mode="async")), [task("a")])
    assert policy.in_flight.peak == 6
    policy = SlowPolicy(smol_tokenizer, lambda t, k: "Hm?", delay=0.05)
    result = run(RolloutEngine(policy, registry, NoSimulator(), make_config(n=6, max_turns=2, policy_concurrency=2, mode="async")),
                 [task("a")])
    assert policy.in_flight.peak == 2
    assert result.metrics["rollout/generate_calls"] == 12.0
