"""Fault injection over real HTTP: the litellm simulator against a loopback OpenAI-compatible
server that answers with errors, hangs and broken bodies. Checks retries, counts, the
concurrency bound, and that a failed turn of IntentionGym produces no reward."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from support.openai_server import OpenAIServer, hang, raw, reply, status
from userrl_core.config.schema import SimulatorConfig
from userrl_core.types import SimulatorError, SimulatorRequest, StepStatus, Task
from userrl_plugins.simulators.litellm_simulator import build_litellm_simulator

REQUEST = SimulatorRequest(purpose="reply", messages=[{"role": "user", "content": "Which city?"}])


@pytest.fixture(scope="module")
def server():
    with OpenAIServer(max_hang_s=10) as srv:
        # LiteLLM's first call builds its clients and response models: do it before timing anything.
        warm = build_litellm_simulator(config=SimulatorConfig(
            name="litellm", model="openai/test-model", api_base=srv.base_url, timeout=120))
        asyncio.run(warm.complete(REQUEST))
        yield srv


def make(srv: OpenAIServer, **overrides):
    settings = dict(name="litellm", model="openai/test-model", api_base=srv.base_url, timeout=2.0,
                    num_retries=2, retry_backoff=0.01)
    settings.update(overrides)
    return build_litellm_simulator(config=SimulatorConfig(**settings))


def run(coro):
    return asyncio.run(coro)


def test_normal_reply_counts_one_call(srv):
    sim = make(srv)
    srv.script(reply("Paris, in May.", prompt_tokens=20, completion_tokens=5))
    response = run(sim.complete(REQUEST))
    assert response.text == "Paris, in May."
    assert (response.prompt_tokens, response.completion_tokens, response.attempts) == (20, 5, 1)
    stats = sim.stats()
    assert stats["calls"] == 1 and stats["failures"] == 0 and stats["retries"] == 0
    assert stats["prompt_tokens"] == 20 and stats["completion_tokens"] == 5
    assert srv.request_count == 1


@pytest.mark.parametrize("first", [status(500), status(502), status(503), status(429)],
                         ids=["500", "502", "503", "429"])
def test_transient_error_then_success_is_retried(srv, first):
    sim = make(srv)
    srv.script(first, reply("second time lucky"))
    response = run(sim.complete(REQUEST))
    assert response.text == "second time lucky"
    assert response.attempts == 2
    assert srv.request_count == 2
    stats = sim.stats()
    assert (stats["calls"], stats["retries"], stats["failures"]) == (1, 1, 0)


def test_persistent_500_raises_after_all_attempts(srv):
    sim = make(srv, num_retries=3)
    srv.default = status(500, message="backend exploded")
    with pytest.raises(SimulatorError) as info:
        run(sim.complete(REQUEST))
    assert info.value.attempts == 4
    assert info.value.simulator == "litellm"
    assert "InternalServerError" in info.value.last_error and "backend exploded" in info.value.last_error
    assert "openai/test-model" in str(info.value)
    assert srv.request_count == 4
    stats = sim.stats()
    assert (stats["calls"], stats["failures"], stats["retries"]) == (1, 1, 3)
    assert stats["prompt_tokens"] == 0 and stats["cost_usd"] == 0
    assert sim.last_error == info.value.last_error


def test_persistent_429_raises_after_all_attempts(srv):
    sim = make(srv, num_retries=1)
    srv.default = status(429, message="slow down")
    with pytest.raises(SimulatorError) as info:
        run(sim.complete(REQUEST))
    assert info.value.attempts == 2 and "RateLimitError" in info.value.last_error
    assert srv.request_count == 2


def test_backoff_doubles_between_attempts(srv):
    sim = make(srv, num_retries=2, retry_backoff=0.2)
    srv.default = status(500)
    started = time.perf_counter()
    with pytest.raises(SimulatorError):
        run(sim.complete(REQUEST))
    elapsed = time.perf_counter() - started
    assert elapsed >= 0.2 + 0.4
    times = [r.received_at for r in srv.requests]
    assert times[1] - times[0] >= 0.19 and times[2] - times[1] >= 0.39


def test_client_errors_are_not_retried(srv):
    sim = make(srv, num_retries=3)
    srv.default = status(400, message="bad request")
    with pytest.raises(SimulatorError) as info:
        run(sim.complete(REQUEST))
    assert info.value.attempts == 1 and srv.request_count == 1
    assert sim.stats()["retries"] == 0 and sim.stats()["failures"] == 1


def test_hang_past_timeout_fails_in_bounded_time(srv):
    sim = make(srv, timeout=0.5, num_retries=1)
    srv.default = hang(8)
    started = time.perf_counter()
    with pytest.raises(SimulatorError) as info:
        run(sim.complete(REQUEST))
    elapsed = time.perf_counter() - started
    assert info.value.attempts == 2 and srv.request_count == 2
    assert "Timeout" in info.value.last_error
    assert elapsed < 8.0  # two 0.5 s time-outs and a backoff, with room for a busy machine


def test_hang_then_success(srv):
    sim = make(srv, timeout=0.5, num_retries=1)
    srv.script(hang(8), reply("there you are"))
    response = run(sim.complete(REQUEST))
    assert response.text == "there you are" and response.attempts == 2


@pytest.mark.parametrize(
    "broken",
    [
        raw('{"id": "x", "object": "chat.completion", "choices": ['),
        raw("<html><body>502 Bad Gateway</body></html>", content_type="text/html"),
        raw(""),
        raw('{"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": []}'),
        raw(json.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": None}}]})),
    ],
    ids=["truncated-json", "html", "empty-body", "no-choices", "null-content"],
)
def test_malformed_bodies_are_retried_then_fail(srv, broken):
    sim = make(srv, num_retries=1)
    srv.default = broken
    with pytest.raises(SimulatorError) as info:
        run(sim.complete(REQUEST))
    assert info.value.attempts == 2 and srv.request_count == 2
    assert sim.stats()["failures"] == 1 and sim.stats()["retries"] == 1
    srv.reset()
    srv.script(broken, reply("fine now"))
    assert run(sim.complete(REQUEST)).text == "fine now"


def test_text_that_is_not_json_is_returned_verbatim(srv):
    """The simulator does not judge content: the caller decides whether text is usable."""
    sim = make(srv)
    srv.script(reply("I think the question covers the budget."))
    request = SimulatorRequest(purpose="judge", messages=[{"role": "user", "content": "judge"}],
                               response_format="json")
    assert run(sim.complete(request)).text == "I think the question covers the budget."


def test_concurrency_bound_holds_on_the_wire(srv):
    sim = make(srv, max_concurrency=4)
    srv.default = reply("ok", delay=0.15)

    async def many():
        return await asyncio.gather(*(sim.complete(REQUEST) for _ in range(16)))

    started = time.perf_counter()
    results = run(many())
    elapsed = time.perf_counter() - started
    assert len(results) == 16 and srv.request_count == 16
    assert srv.max_in_flight == 4
    assert elapsed >= 4 * 0.15  # 16 calls, 4 at a time, 0.15 s each


def test_one_simulator_serves_several_event_loops(srv):
    """The semaphore is made per loop, so a simulator reused across asyncio.run calls works."""
    sim = make(srv, max_concurrency=2)
    for _ in range(3):
        assert run(sim.complete(REQUEST)).text == "ok"
    assert sim.stats()["calls"] == 3


# ------------------------------------------------------------------ IntentionGym end to end

JUDGE_MARKER = "You judge clarifying questions"


def _is_judge(body) -> bool:
    return bool(body) and JUDGE_MARKER in body["messages"][0]["content"]


def _env(sim, seed: int = 3):
    from userrl_plugins.intentiongym.env import make_env
    from userrl_plugins.intentiongym.tasks import default_bank

    spec = next(iter(default_bank()._tasks.values()))
    task = Task(id=spec.id, env_name="IntentionGym", data_source="interact_intention", prompt=[],
                payload={"id": spec.id})
    return make_env(task=task, simulator=sim, settings={"judge_retries": 1}, seed=seed), spec


def _ask(env, question: str):
    from userrl_core.types import Action

    async def go():
        await env.reset()
        return await env.step(Action(choice="action", content=question))

    return run(go())


def test_intentiongym_turn_through_litellm_gets_a_reward(srv):
    verdict = '{"analysis": "asks about it", "is_task_related": true, "covered_detail_indices": [0]}'
    srv.default = lambda body: reply(verdict) if _is_judge(body) else reply("Type 2, please.")
    sim = make(srv)
    env, spec = _env(sim)
    result = _ask(env, spec.missing_details[0].inquiry)
    assert result.status == StepStatus.OK
    assert result.reward is not None and result.reward > 0
    assert result.observation == f"Type 2, please.\nReward: {result.reward}"
    assert srv.request_count == 2


def test_intentiongym_unparsable_judge_fails_the_turn_without_reward(srv):
    srv.default = lambda body: reply("It asks about the budget, I believe.") if _is_judge(body) else reply("Sure.")
    sim = make(srv)
    env, spec = _env(sim)
    result = _ask(env, spec.missing_details[0].inquiry)
    assert result.status == StepStatus.SIMULATOR_FAILED
    assert result.reward is None and result.done
    assert "judge" in (result.error or "")
    judge_calls = [r for r in srv.requests if _is_judge(r.body)]
    assert len(judge_calls) == 2  # the first ask and one re-ask (judge_retries=1)


def test_intentiongym_simulator_outage_fails_the_turn_without_reward(srv):
    srv.default = status(503, message="overloaded")
    sim = make(srv, num_retries=1)
    env, spec = _env(sim)
    result = _ask(env, spec.missing_details[0].inquiry)
    assert result.status == StepStatus.SIMULATOR_FAILED
    assert result.reward is None
    assert "litellm" in (result.error or "") and "overloaded" in (result.error or "")
    stats = sim.stats()
    assert stats["failures"] >= 1 and stats["retries"] >= 1
    assert env.metrics()["score"] == 0.0


@pytest.mark.parametrize("transport", ["direct", "litellm"])
def test_retry_after_is_honoured(srv, transport):
    """A 429 with Retry-After: 1 makes the next attempt wait about a second, not the 0.01 s
    backoff (both transports carry the response headers into the error)."""
    sim = make(srv, retry_backoff=0.01, extra={"transport": transport})
    srv.script(status(429, headers={"Retry-After": "1"}), reply("after the wait"))
    response = run(sim.complete(REQUEST))
    assert response.text == "after the wait" and response.attempts == 2
    first, second = srv.requests[0].received_at, srv.requests[1].received_at
    assert second - first >= 0.95


def test_retry_after_is_capped_by_the_call_timeout(srv):
    sim = make(srv, retry_backoff=0.01, timeout=0.5, extra={"transport": "direct"})
    srv.script(status(429, headers={"Retry-After": "3600"}), reply("soon"))
    started = time.monotonic()
    assert run(sim.complete(REQUEST)).text == "soon"
    assert time.monotonic() - started < 5


def test_retry_after_parsing():
    import httpx
    import openai

    from userrl_plugins.simulators.retry import RetryPolicy, retry_after_seconds

    def error(headers):
        response = httpx.Response(429, request=httpx.Request("POST", "http://x"), headers=headers)
        return openai.RateLimitError("slow down", response=response, body=None)

    assert retry_after_seconds(error({"Retry-After": "3"})) == 3.0
    assert retry_after_seconds(error({"retry-after-ms": "250"})) == 0.25
    assert retry_after_seconds(error({"Retry-After": "Fri, 04 Dec 2026 13:00:10 GMT"}), now=1796389200.0) == 10.0
    assert retry_after_seconds(error({"Retry-After": "soon"})) is None
    assert retry_after_seconds(error({"Retry-After": "-4"})) is None
    assert retry_after_seconds(ValueError("no response")) is None
    policy = RetryPolicy(num_retries=3, backoff=0.1, max_retry_after=5.0)
    assert policy.delay(0, 3.0) == 3.0 and policy.delay(0, 100.0) == 5.0 and policy.delay(2, 0.0) == 0.4
