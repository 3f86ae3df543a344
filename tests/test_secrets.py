"""API keys never leave the environment (finding 12 of the reliability review): recipes that
hold a key are refused with a line naming the setting (never the value); the values of the
variables a recipe names as keys, and key-shaped text, are redacted from what the CLI prints,
from config dumps, and from simulator replies before anything else sees them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.openai_server import OpenAIServer, Behaviour
from support.tiny_runs import ROOT
from userrl_core.config import load_recipe
from userrl_core.config.compose import validate_config
from userrl_core.errors import ConfigError
from userrl_core.redaction import (
    MASK,
    Redactor,
    check_no_literal_secrets,
    looks_like_key,
    protect,
    redact,
    redact_config,
)

CANARY = "canary-7f3a9c2e51d84b06"
KEY_SHAPED = "sk-live-4f9a8b7c6d5e4f3a2b1c"
QUICKSTART = str(ROOT / "recipes" / "quickstart.yaml")


def test_redactor_masks_known_values_and_key_shapes():
    r = Redactor([CANARY, "short"])
    text = (f"key {CANARY} and {KEY_SHAPED}; Authorization: Bearer abcdefghijklmnop1234; "
            f"https://me:hunter22@example.com/v1?api_key=zzz999zzz&x=1; short stays")
    out = r(text)
    for leaked in (CANARY, KEY_SHAPED, "abcdefghijklmnop1234", "hunter22", "zzz999zzz"):
        assert leaked not in out
    assert "short stays" in out and "example.com" in out and out.count(MASK) == 5
    assert not looks_like_key("max_new_tokens: 40, the bearer of good news, task-abcdefghijklmnopqrst")


_SHAPED_KEYS = st.sampled_from([
    "sk-" + "a1B2" * 5, "sk-proj-abc-" + "Z9" * 10, "pk-" + "x" * 20, "rk-" + "9" * 16, "AKIA" + "ABCD1234" * 2,
    "ghp_" + "q" * 36, "gho_" + "Q1" * 16, "ghs_" + "0" * 30, "hf_" + "H" * 34, "xoxb-" + "12-ab" * 3,
    "AIza" + "y" * 35, "Bearer " + "t0k.en~+/=" * 2, "https://ann:pw1234@host.example/v1",
    "/v1?api_key=zz9", "&Access_Token=abc", "?PASSWORD=hunter2", "?key=k",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=12) | _SHAPED_KEYS | st.sampled_from([" ", "-", "_", "=", "?", "&", "gh", "sk", ":"]),
                max_size=8).map("".join))
def test_the_literal_pre_checks_skip_only_texts_no_shape_matches(text):
    """The redactor skips a shape's expression when the text lacks all of its literals; the
    result always equals running every expression on every text."""
    from userrl_core.redaction import _CONTEXT_SHAPES, _KEY_SHAPES

    expected = text
    for pattern, _ in _KEY_SHAPES:
        expected = pattern.sub(MASK, expected)
    for pattern, _ in _CONTEXT_SHAPES:
        expected = pattern.sub(lambda m: m.group(1) + MASK + (m.group(3) if m.lastindex and m.lastindex >= 3 else ""),
                               expected)
    assert Redactor()(text) == expected
    if not looks_like_key(text):
        assert expected == text


@pytest.mark.parametrize("override, key", [
    (["++simulator.extra.api_key=" + CANARY], "simulator.extra.api_key"),
    (["simulator.api_key_env=" + KEY_SHAPED], "simulator.api_key_env"),
    (["simulator.api_key_env=not a name " + CANARY], "simulator.api_key_env"),
    (["simulator.api_base=https://user:" + CANARY + "@api.example.com/v1"], "simulator.api_base"),
    (["simulator.api_base='https://api.example.com/v1?api_key=" + CANARY + "'"], "simulator.api_base"),
    (["++env.IntentionGym.judge_token=" + CANARY], "env.IntentionGym.judge_token"),
])
def test_literal_keys_are_refused_naming_the_setting_not_the_value(override, key):
    with pytest.raises(ConfigError) as info:
        load_recipe(QUICKSTART, override)
    message = str(info.value)
    assert key in message and "environment variable" in message
    assert CANARY not in message and KEY_SHAPED not in message


def test_a_protected_value_given_as_a_wrong_type_is_not_echoed():
    protect(CANARY)
    with pytest.raises(ConfigError) as info:
        load_recipe(QUICKSTART, [f"simulator.max_tokens={CANARY}x"])
    assert "simulator.max_tokens" in str(info.value) and CANARY not in str(info.value)


def test_settings_that_name_variables_or_count_tokens_are_accepted():
    config = load_recipe(QUICKSTART, ["simulator.api_key_env=MY_PROVIDER_KEY", "simulator.max_tokens=64"])
    assert config.simulator.api_key_env == "MY_PROVIDER_KEY"
    check_no_literal_secrets({"rollout": {"max_new_tokens": 40, "system_prompt": "Ask about the budget."}})


def test_config_dump_masks_secret_named_settings():
    dumped = redact_config({"simulator": {"api_key_env": "DASHSCOPE_API_KEY", "extra": {"api_key": "x" * 20}},
                            "note": f"see {KEY_SHAPED}"})
    assert dumped == {"simulator": {"api_key_env": "DASHSCOPE_API_KEY", "extra": {"api_key": MASK}},
                      "note": f"see {MASK}"}


def test_simulator_reply_that_echoes_the_key_is_scrubbed(monkeypatch):
    """A server that echoes the Authorization header back in its reply: the text the
    environment (and so the policy, the transcripts and the report) gets holds no key."""
    from userrl_core.config.schema import SimulatorConfig
    from userrl_core.types import SimulatorRequest
    from userrl_plugins.simulators.litellm_simulator import build_litellm_simulator

    monkeypatch.setenv("ECHO_TEST_API_KEY", CANARY)
    with OpenAIServer() as server:
        server.default = Behaviour("reply", text="ok")
        sim = build_litellm_simulator(config=SimulatorConfig(
            name="litellm", model="openai/test-model", api_base=server.base_url, api_key_env="ECHO_TEST_API_KEY",
            extra={"transport": "direct"}))
        server.script(Behaviour("reply", text=f"Your key is {CANARY}, right?"))
        response = asyncio.run(sim.complete(SimulatorRequest(purpose="reply", messages=[{"role": "user", "content": "hi"}])))
        assert server.requests[0].headers["Authorization"] == f"Bearer {CANARY}"
    assert CANARY not in response.text and MASK in response.text


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "userrl_core.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **env})


def test_cli_never_prints_the_key():
    """Through the real CLI: a recipe naming a variable that holds the key prints the variable's
    name, not its value, in --dry-run; a key pasted as an override is refused without echo."""
    env = {"CANARY_API_KEY": CANARY}
    dry = _cli("run", QUICKSTART, "--dry-run", "simulator.api_key_env=CANARY_API_KEY", env=env)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "CANARY_API_KEY" in dry.stdout
    assert CANARY not in dry.stdout + dry.stderr
    refused = _cli("run", QUICKSTART, "--dry-run", f"++simulator.extra.api_key={CANARY}", env=env)
    assert refused.returncode == 2
    assert "simulator.extra.api_key" in refused.stderr
    assert CANARY not in refused.stdout + refused.stderr
