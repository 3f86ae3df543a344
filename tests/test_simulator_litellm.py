"""The litellm simulator over real HTTP on 127.0.0.1: registration, keys, DashScope routing,
token and cost accounting, client reuse, and that the API key never leaks."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys

import pytest

from support.openai_server import OpenAIServer, reply, status
from userrl_core.config.schema import SimulatorConfig
from userrl_core.errors import ConfigError, MissingRequirementError
from userrl_core.registry import Kind
from userrl_core.types import SimulatorError, SimulatorRequest
from userrl_plugins.simulators.litellm_simulator import build_litellm_simulator, import_litellm

REQUEST = SimulatorRequest(purpose="reply", messages=[{"role": "system", "content": "Play the user."},
                                                      {"role": "user", "content": "What is your budget?"}])
SECRET = "sk-test-3f9a1c77e2b04d51-secret"


@pytest.fixture(scope="module")
def server():
    with OpenAIServer() as srv:
        yield srv


def run(coro):
    return asyncio.run(coro)


def config(srv: OpenAIServer, **overrides) -> SimulatorConfig:
    settings = dict(name="litellm", model="openai/test-model", api_base=srv.base_url, timeout=30,
                    num_retries=1, retry_backoff=0.01)
    settings.update(overrides)
    return SimulatorConfig(**settings)


def test_both_simulators_are_registered_through_entry_points():
    from userrl_core.plugins import get_plugin_manager

    registry = get_plugin_manager(fresh=True).registry
    assert {"litellm", "local"} <= set(registry.names(Kind.SIMULATOR))
    assert registry.entry(Kind.SIMULATOR, "litellm").plugin == "simulator-litellm"
    assert registry.entry(Kind.SIMULATOR, "local").plugin == "simulator-local"


def test_registered_factory_builds_a_working_simulator(srv):
    from userrl_core.plugins import get_plugin_manager

    factory = get_plugin_manager().registry.get(Kind.SIMULATOR, "litellm")
    sim = factory(config=config(srv))
    srv.script(reply("About 2000 euros."))
    assert run(sim.complete(REQUEST)).text == "About 2000 euros."
    run(sim.aclose())


def test_loading_the_plugin_does_not_import_litellm():
    code = ("import sys, userrl_plugins.simulators.litellm_plugin, userrl_plugins.simulators.local_plugin; "
            "assert 'litellm' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_request_carries_model_messages_and_settings(srv):
    sim = build_litellm_simulator(config=config(srv, temperature=0.3, max_tokens=77))
    run(sim.complete(REQUEST))
    body = srv.requests[0].body
    assert body["model"] == "test-model"
    assert body["messages"] == REQUEST.messages
    assert body["temperature"] == 0.3 and body["max_tokens"] == 77
    assert "response_format" not in body


def test_json_mode_is_opt_in_and_only_for_json_requests(srv):
    sim = build_litellm_simulator(config=config(srv, extra={"json_mode": True}))
    judge = SimulatorRequest(purpose="judge", messages=REQUEST.messages, response_format="json")
    run(sim.complete(judge))
    run(sim.complete(REQUEST))
    assert srv.requests[0].body["response_format"] == {"type": "json_object"}
    assert "response_format" not in srv.requests[1].body


def test_model_is_required():
    with pytest.raises(ConfigError, match="simulator.model"):
        build_litellm_simulator(config=SimulatorConfig(name="litellm"))


def test_missing_key_fails_at_build_time_naming_the_variable(monkeypatch, srv):
    monkeypatch.delenv("USERRL_TEST_SIM_KEY", raising=False)
    with pytest.raises(MissingRequirementError, match="USERRL_TEST_SIM_KEY"):
        build_litellm_simulator(config=config(srv, api_key_env="USERRL_TEST_SIM_KEY"))


def test_dashscope_needs_its_key(monkeypatch):
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    with pytest.raises(MissingRequirementError, match="DASHSCOPE_API_KEY"):
        build_litellm_simulator(config=SimulatorConfig(name="litellm", model="dashscope/qwen-plus"))


def test_hosted_model_without_key_names_the_provider_variable(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(MissingRequirementError, match="OPENAI_API_KEY"):
        build_litellm_simulator(config=SimulatorConfig(name="litellm", model="openai/gpt-4o-mini"))


def test_local_server_needs_no_key(monkeypatch, srv):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    sim = build_litellm_simulator(config=config(srv))
    assert run(sim.complete(REQUEST)).text == "ok"


def test_dashscope_model_goes_to_dashscope_api_base_with_its_key_and_price(monkeypatch, srv):
    """DASHSCOPE_API_BASE redirects the dashscope/ provider (the international endpoint in real
    use); here it points at the loopback server, which checks the route, the key and the cost."""
    monkeypatch.setenv("DASHSCOPE_API_KEY", SECRET)
    monkeypatch.setenv("DASHSCOPE_API_BASE", srv.base_url)
    sim = build_litellm_simulator(config=SimulatorConfig(name="litellm", model="dashscope/qwen-plus",
                                                         num_retries=0))
    srv.script(reply("Around 50 dollars.", prompt_tokens=1000, completion_tokens=500))
    response = run(sim.complete(REQUEST))
    assert response.text == "Around 50 dollars."
    recorded = srv.requests[0]
    assert recorded.path == "/v1/chat/completions"
    assert recorded.body["model"] == "qwen-plus"
    assert recorded.headers.get("Authorization") == f"Bearer {SECRET}"
    price = import_litellm().model_cost["dashscope/qwen-plus"]
    expected = 1000 * price["input_cost_per_token"] + 500 * price["output_cost_per_token"]
    assert response.cost_usd == pytest.approx(expected)
    assert sim.stats()["cost_usd"] == pytest.approx(expected)
    assert sim.stats()["unpriced_calls"] == 0


def test_tokens_and_cost_accumulate_across_calls(monkeypatch, srv):
    monkeypatch.setenv("USERRL_TEST_SIM_KEY", SECRET)
    sim = build_litellm_simulator(config=config(srv, model="openai/gpt-4o-mini", api_key_env="USERRL_TEST_SIM_KEY"))
    srv.script(reply("a", prompt_tokens=100, completion_tokens=10), reply("b", prompt_tokens=200, completion_tokens=20))
    first = run(sim.complete(REQUEST))
    second = run(sim.complete(REQUEST))
    price = import_litellm().model_cost["gpt-4o-mini"]
    expected = 300 * price["input_cost_per_token"] + 30 * price["output_cost_per_token"]
    stats = sim.stats()
    assert stats["calls"] == 2 and stats["prompt_tokens"] == 300 and stats["completion_tokens"] == 30
    assert stats["cost_usd"] == pytest.approx(expected)
    assert first.cost_usd + second.cost_usd == pytest.approx(expected)
    assert stats["latency_s"] > 0


def test_unpriced_model_costs_zero_and_is_counted(srv):
    sim = build_litellm_simulator(config=config(srv, model="openai/Qwen/Qwen3-30B-A3B-Instruct-2507"))
    response = run(sim.complete(REQUEST))
    assert srv.requests[0].body["model"] == "Qwen/Qwen3-30B-A3B-Instruct-2507"
    assert response.cost_usd == 0.0
    assert sim.stats()["unpriced_calls"] == 1 and sim.stats()["cost_usd"] == 0.0


def test_http_connections_are_reused_across_calls(srv):
    sim = build_litellm_simulator(config=config(srv))

    async def sequential():
        for _ in range(10):
            await sim.complete(REQUEST)

    run(sequential())
    assert srv.request_count == 10
    assert srv.connection_count <= 2


def test_api_key_never_appears_in_logs_or_errors(monkeypatch, srv, caplog, capfd):
    monkeypatch.setenv("USERRL_TEST_SIM_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    sim = build_litellm_simulator(config=config(srv, api_key_env="USERRL_TEST_SIM_KEY", num_retries=1))
    assert SECRET not in repr(sim.__dict__)
    srv.default = status(500, message=f"upstream rejected key {SECRET}")  # a server that echoes it
    with pytest.raises(SimulatorError) as info:
        run(sim.complete(REQUEST))
    srv.default = status(401, message="invalid api key")
    with pytest.raises(SimulatorError) as auth:
        run(sim.complete(REQUEST))
    assert all(r.headers.get("Authorization") == f"Bearer {SECRET}" for r in srv.requests)
    out, err = capfd.readouterr()
    for text in (str(info.value), info.value.last_error, str(auth.value), caplog.text, out, err,
                 sim.last_error or ""):
        assert SECRET not in text
    assert "***" in info.value.last_error
    assert os.environ["USERRL_TEST_SIM_KEY"] == SECRET
