"""The `userrl` command line in subprocesses: plugins list, doctor, keys, exit codes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.distributions import builtin_entry_point_names, cli, make_distribution
from fixtures.recipes import minimal_recipe, names_plugin
from userrl_core.cli.simulate import parse_action
from userrl_core.preflight.doctor import exit_status, recipe_checks
from userrl_core.plugins import PluginManager
from userrl_core.types import Action


@pytest.fixture(scope="module")
def fixture_plugins(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("plugins")
    make_distribution(root, "userrl-fixture-broken", {"fixture-broken": "userrl_fixture_broken"})
    make_distribution(root, "userrl-fixture-optional", {"fixture-optional": "userrl_fixture_optional"})
    names_plugin(root)
    return root


def test_plugins_list_json_shows_builtins_and_a_failed_plugin_while_succeeding(fixture_plugins):
    result = cli("plugins", "list", "--json", pythonpath=[fixture_plugins])
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    for name in builtin_entry_point_names():
        assert plugins[name]["distribution"] == "userrl"
        # a built-in whose optional dependency is absent here (sglang needs CUDA) is listed as
        # unavailable with its install hint; every other built-in loads
        if plugins[name]["status"] == "unavailable":
            assert "pip install 'userrl[" in plugins[name]["hint"], plugins[name]
        else:
            assert plugins[name]["status"] == "ok", plugins[name]
    assert plugins["intentiongym"]["status"] == "ok"
    assert plugins["backend-transformers"]["status"] == "ok"
    broken = plugins["fixture-broken"]
    assert broken["status"] == "failed" and broken["distribution"] == "userrl-fixture-broken"
    assert "fixture plugin broken on purpose" in broken["error"]
    optional = plugins["fixture-optional"]
    assert optional["status"] == "unavailable" and "pip install" in optional["hint"]
    names = plugins["fixture-names"]
    assert names["version"] == "0.1.0"
    assert names["hooks"] == ["register_backends", "register_environments", "register_rewards", "register_simulators"]
    assert names["registers"] == {
        "environment": ["FixtureEcho"], "simulator": ["fixture-sim"], "turn_credit": ["FixtureCredit"],
        "trajectory_score": ["FixtureScore"], "rollout": ["fixture-backend"], "training": ["fixture-backend"],
    }


def test_plugins_list_table_is_readable(fixture_plugins):
    result = cli("plugins", "list", pythonpath=[fixture_plugins])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["PLUGIN", "DISTRIBUTION", "VERSION", "STATUS", "HOOKS"]
    broken = next(line for line in lines if line.startswith("fixture-broken "))
    assert broken.split()[:4] == ["fixture-broken", "userrl-fixture-broken", "0.1.0", "failed"]
    assert "    error: RuntimeError: fixture plugin broken on purpose" in lines
    assert "    simulator: fixture-sim" in lines
    assert "    install: missing userrl_fixture_absent_dependency: pip install userrl-fixture-absent-dependency" in lines
    for name in builtin_entry_point_names():
        assert any(line.startswith(f"{name} ") for line in lines), name


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "userrl"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("userrl ")


def test_bad_command_line_exits_2():
    result = cli("run")
    assert result.returncode == 2 and "recipe" in result.stderr


def test_doctor_without_recipe_passes_on_a_cpu_machine():
    result = cli("doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("PASS  python: ") for line in lines)
    assert any(line.startswith("PASS  torch: ") for line in lines)
    assert any(line.startswith(("INFO  cuda", )) for line in lines)
    assert lines[-1] == "all required checks passed"


def test_doctor_fails_on_what_the_recipe_needs_and_never_shows_the_key(tmp_path, fixture_plugins):
    recipe = minimal_recipe(
        tmp_path,
        data={"val_files": [str(tmp_path / "missing_val.json")]},
        simulator={"name": "fixture-sim", "api_key_env": "FIXTURE_DOCTOR_KEY"},
    )
    result = cli("doctor", str(recipe), pythonpath=[fixture_plugins])
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "FAIL  simulator.api_key_env: environment variable FIXTURE_DOCTOR_KEY is not set" in out
    assert f"FAIL  data.val_files[0]: file not found: {tmp_path / 'missing_val.json'}" in out
    assert "PASS  plugin names:" in out and "FAIL  plugin fixture-broken:" in out

    recipe = minimal_recipe(tmp_path, simulator={"name": "fixture-sim", "api_key_env": "FIXTURE_DOCTOR_KEY"})
    secret = "sk-doctor-secret-0815"
    result = cli("doctor", str(recipe), pythonpath=[fixture_plugins], env={"FIXTURE_DOCTOR_KEY": secret})
    assert result.returncode == 0, result.stdout
    assert "PASS  simulator.api_key_env: FIXTURE_DOCTOR_KEY is set" in result.stdout
    assert secret not in result.stdout + result.stderr


@pytest.fixture
def names_manager(tmp_path, monkeypatch) -> PluginManager:
    root = names_plugin(tmp_path / "names")
    monkeypatch.syspath_prepend(str(root))
    manager = PluginManager()
    manager.add_plugin(__import__("userrl_fixture_names"))
    return manager


def _listening_socket() -> socket.socket:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    return server


def test_doctor_checks_the_loopback_simulator_server(tmp_path, names_manager):
    server = _listening_socket()
    port = server.getsockname()[1]
    try:
        recipe = minimal_recipe(tmp_path, simulator={"name": "fixture-sim", "api_base": f"http://127.0.0.1:{port}/v1"})
        checks = recipe_checks(str(recipe), [], names_manager)
        line = next(c for c in checks if c.name == "simulator.api_base")
        assert line.status == "pass" and exit_status(checks) == 0
    finally:
        server.close()
    checks = recipe_checks(str(recipe), [], names_manager)
    line = next(c for c in checks if c.name == "simulator.api_base")
    assert line.status == "fail" and "not listening" in line.detail and exit_status(checks) == 1


def test_doctor_fails_when_the_managed_server_port_is_taken(tmp_path, names_manager):
    server = _listening_socket()
    port = server.getsockname()[1]
    try:
        recipe = minimal_recipe(tmp_path, simulator_server={"enabled": True, "port": port})
        checks = recipe_checks(str(recipe), [], names_manager)
    finally:
        server.close()
    line = next(c for c in checks if c.name == "simulator_server.port")
    assert line.status == "fail" and f"127.0.0.1:{port} is in use" in line.detail
    checks = recipe_checks(str(recipe), [], names_manager)
    assert next(c for c in checks if c.name == "simulator_server.port").status == "pass"


def test_doctor_reports_an_invalid_recipe_as_a_failed_check(tmp_path, names_manager):
    recipe = minimal_recipe(tmp_path, trainer={"total_epochs": 0})
    checks = recipe_checks(str(recipe), [], names_manager)
    assert [c.name for c in checks] == ["recipe"] and "trainer.total_epochs" in checks[0].detail
    assert exit_status(checks) == 1


def test_keys_lists_every_key_with_its_description():
    result = cli("keys")
    assert result.returncode == 0
    assert "actor.ppo_mini_batch_size (int, default 8): Tasks per optimizer step" in result.stdout
    assert "guard.rules.<name>.threshold" in result.stdout


@pytest.mark.parametrize("line, action", [
    ("Is it blue?\n", Action("action", "Is it blue?")),
    ("/answer 42\n", Action("answer", "42")),
    ("/finish\n", Action("finish", "")),
    ("  50  \n", Action("action", "50")),
    ("/search test\n", Action("search", "test")),
    ("[answer] 7\n", Action("answer", "7")),
    ("/answered it\n", Action("action", "/answered it")),
])
def test_simulate_parses_actions(line, action):
    assert parse_action(line) == action
