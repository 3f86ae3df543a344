"""The litellm simulator's two transports (LiteLLM and the direct OpenAI-compatible client)
behave alike over real HTTP: same texts, counts, error classes and retry decisions; the choice
of transport follows ``simulator.extra.transport``; direct sessions are pooled and closed."""

from __future__ import annotations

import asyncio
import gc
import json
import warnings

import pytest

from support.openai_server import OpenAIServer, hang, raw, reply, status
from userrl_core.config.schema import SimulatorConfig
from userrl_core.errors import ConfigError
from userrl_core.types import SimulatorError, SimulatorRequest
from userrl_plugins.simulators.litellm_simulator import build_litellm_simulator, choose_transport

REQUEST = SimulatorRequest(purpose="reply", messages=[{"role": "user", "content": "Which city?"}])


@pytest.fixture(scope="module")
def server():
    with OpenAIServer(max_hang_s=10) as srv:
        yield srv


def make(srv, transport, **overrides):
    settings = dict(name="litellm", model="openai/test-model", api_base=srv.base_url, timeout=1.0,
                    num_retries=1, retry_backoff=0.01, extra={"transport": transport})
    settings.update(overrides)
    return build_litellm_simulator(config=SimulatorConfig(**settings))


@pytest.mark.parametrize("transport", ["litellm", "direct"])
def test_reply_and_usage_match(srv, transport):
    sim = make(srv, transport)
    assert sim.transport == transport
    srv.script(reply("Paris, in May.", prompt_tokens=20, completion_tokens=5))
    response = asyncio.run(sim.complete(REQUEST))
    assert (response.text, response.prompt_tokens, response.completion_tokens) == ("Paris, in May.", 20, 5)
    body = srv.requests[0].body
    assert body["model"] == "test-model" and body["messages"] == REQUEST.messages
    assert srv.requests[0].headers.get("Authorization") == "Bearer EMPTY"
    assert sim.stats()["unpriced_calls"] == 1 and sim.stats()["cost_usd"] == 0.0


@pytest.mark.parametrize("transport", ["litellm", "direct"])
@pytest.mark.parametrize("behaviour,error_name,attempts", [
    (status(500, message="backend exploded"), "InternalServerError", 2),
    (status(429, message="slow down"), "RateLimitError", 2),
    (status(401, message="no such key"), "AuthenticationError", 1),
    (status(400, message="bad request"), "BadRequestError", 1),
    (hang(5), "Timeout", 2),
    (raw("<html>502</html>", content_type="text/html"), "", 2),
], ids=["500", "429", "401", "400", "hang", "html"])
def test_failures_are_classified_alike(srv, transport, behaviour, error_name, attempts):
    sim = make(srv, transport)
    srv.default = behaviour
    with pytest.raises(SimulatorError) as info:
        asyncio.run(sim.complete(REQUEST))
    assert info.value.attempts == attempts and srv.request_count == attempts
    assert error_name in info.value.last_error
    if behaviour.kind == "status":  # the server's own message reaches the error text
        assert json.loads(behaviour.body)["error"]["message"] in info.value.last_error


def test_direct_transport_reuses_connections(srv):
    sim = make(srv, "direct")
    srv.default = reply("ok", delay=0.05)

    async def rounds():
        for _ in range(3):
            await asyncio.gather(*(sim.complete(REQUEST) for _ in range(8)))
        await sim.aclose()

    asyncio.run(rounds())
    assert srv.request_count == 24
    assert srv.connection_count <= 8  # keep-alive: later rounds ride the first round's connections


def test_direct_connections_close_with_their_event_loop(srv):
    sim = make(srv, "direct")
    client = sim._direct
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):  # a new loop each time, no aclose()
            assert asyncio.run(sim.complete(REQUEST)).text == "ok"
            assert client.open_connections() == 0  # closed when asyncio.run shut its loop down
        gc.collect()
    assert client.connections_made == 3 and len(client._http._idle) <= 1  # closed loops' entries pruned
    assert [w for w in caught if "nclosed" in str(w.message)] == []


@pytest.mark.parametrize("model,api_base,setting,expected", [
    ("openai/qwen", "http://127.0.0.1:1/v1", "auto", "direct"),
    ("openai/qwen", None, "auto", "litellm"),
    ("dashscope/qwen-plus", "http://127.0.0.1:1/v1", "auto", "litellm"),
    ("openai/qwen", "http://127.0.0.1:1/v1", "litellm", "litellm"),
])
def test_transport_choice(model, api_base, setting, expected):
    config = SimulatorConfig(name="litellm", model=model, api_base=api_base, extra={"transport": setting})
    assert choose_transport(config, api_base) == expected


@pytest.mark.parametrize("model,api_base,setting", [
    ("dashscope/qwen-plus", None, "direct"),
    ("openai/qwen", None, "direct"),
    ("openai/qwen", "http://127.0.0.1:1/v1", "fast"),
])
def test_bad_transport_settings_name_the_key(model, api_base, setting):
    config = SimulatorConfig(name="litellm", model=model, api_base=api_base, extra={"transport": setting})
    with pytest.raises(ConfigError, match="simulator.extra.transport"):
        choose_transport(config, api_base)
