"""The plugin manager against real entry points of throw-away distributions on sys.path."""

from __future__ import annotations

import sys

import pytest

from fixtures.distributions import builtin_entry_point_names, cli, make_distribution
from userrl_core.errors import PluginConflictError, UnknownNameError
from userrl_core.plugins import PluginLoadError, PluginManager
from userrl_core.registry import Kind


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    for var in ("USERRL_STRICT_PLUGINS", "USERRL_DISABLE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    yield
    for name in [m for m in sys.modules if m.startswith("userrl_fixture_")]:
        del sys.modules[name]


def load(monkeypatch, root) -> PluginManager:
    monkeypatch.syspath_prepend(str(root))
    manager = PluginManager()
    manager.load_entry_points()
    return manager


def test_plugin_that_raises_at_import_is_recorded_and_others_still_load(tmp_path, monkeypatch):
    make_distribution(tmp_path, "userrl-fixture-broken", {"fixture-broken": "userrl_fixture_broken"})
    make_distribution(tmp_path, "userrl-fixture-names", {"fixture-names": "userrl_fixture_names"})
    manager = load(monkeypatch, tmp_path)

    broken = manager.plugins["fixture-broken"]
    assert broken.status == "failed"
    assert broken.distribution == "userrl-fixture-broken" and broken.version == "0.1.0"
    assert "RuntimeError: fixture plugin broken on purpose" in broken.error
    names = manager.plugins["fixture-names"]
    assert names.status == "ok"
    assert names.registers["simulator"] == ["fixture-sim"]
    assert manager.registry.get(Kind.TURN_CREDIT, "FixtureCredit") is not None


def test_strict_mode_makes_a_failing_plugin_fatal(tmp_path, monkeypatch):
    make_distribution(tmp_path, "userrl-fixture-broken", {"fixture-broken": "userrl_fixture_broken"})
    monkeypatch.setenv("USERRL_STRICT_PLUGINS", "1")
    monkeypatch.setenv("USERRL_DISABLE_PLUGINS", ",".join(builtin_entry_point_names()))
    with pytest.raises(PluginLoadError, match="fixture-broken.*userrl-fixture-broken 0.1.0.*broken on purpose"):
        load(monkeypatch, tmp_path)


def test_strict_mode_through_the_cli_exits_2_naming_the_plugin(tmp_path):
    make_distribution(tmp_path, "userrl-fixture-broken", {"fixture-broken": "userrl_fixture_broken"})
    env = {"USERRL_STRICT_PLUGINS": "1", "USERRL_DISABLE_PLUGINS": ",".join(builtin_entry_point_names())}
    result = cli("plugins", "list", pythonpath=[tmp_path], env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("userrl: error:")]
    assert len(error_lines) == 1 and "'fixture-broken'" in error_lines[0]


def test_two_plugins_registering_the_same_name_is_an_error_naming_both(tmp_path, monkeypatch):
    make_distribution(tmp_path, "userrl-fixture-dup",
                      {"fixture-dup-a": "userrl_fixture_dup_a", "fixture-dup-b": "userrl_fixture_dup_b"})
    with pytest.raises(PluginConflictError) as info:
        load(monkeypatch, tmp_path)
    message = str(info.value)
    assert "'Twin'" in message and "'fixture-dup-a'" in message and "'fixture-dup-b'" in message


def test_disabled_plugins_are_listed_but_not_loaded(tmp_path, monkeypatch):
    make_distribution(tmp_path, "userrl-fixture-dup",
                      {"fixture-dup-a": "userrl_fixture_dup_a", "fixture-dup-b": "userrl_fixture_dup_b"})
    monkeypatch.setenv("USERRL_DISABLE_PLUGINS", "fixture-dup-b, some-other")
    manager = load(monkeypatch, tmp_path)
    assert manager.plugins["fixture-dup-b"].status == "disabled"
    assert manager.plugins["fixture-dup-a"].status == "ok"
    assert manager.registry.entry(Kind.ENVIRONMENT, "Twin").plugin == "fixture-dup-a"
    assert "userrl_fixture_dup_b" not in sys.modules


def test_missing_optional_dependency_is_unavailable_with_its_install_hint(tmp_path, monkeypatch):
    make_distribution(tmp_path, "userrl-fixture-optional", {"fixture-optional": "userrl_fixture_optional"})
    manager = load(monkeypatch, tmp_path)
    info = manager.plugins["fixture-optional"]
    assert info.status == "unavailable"
    assert "pip install userrl-fixture-absent-dependency" in info.hint
    assert info.registers == {"rollout": ["fixture-gpu-engine"]}
    with pytest.raises(UnknownNameError, match="rollout.backend: .*unavailable.*pip install userrl-fixture-absent"):
        manager.registry.get(Kind.ROLLOUT_BACKEND, "fixture-gpu-engine", key_path="rollout.backend")


def test_misspelled_hook_fails_the_plugin(tmp_path, monkeypatch):
    make_distribution(tmp_path, "userrl-fixture-misspelled", {"fixture-misspelled": "userrl_fixture_misspelled"})
    make_distribution(tmp_path / "other", "userrl-fixture-names", {"fixture-names": "userrl_fixture_names"})
    monkeypatch.syspath_prepend(str(tmp_path / "other"))
    manager = load(monkeypatch, tmp_path)
    info = manager.plugins["fixture-misspelled"]
    assert info.status == "failed"
    assert "register_enviroments" in info.error
    assert "Typo" not in manager.registry.names(Kind.ENVIRONMENT)
    assert manager.plugins["fixture-names"].status == "ok"


def test_unknown_name_lists_the_registered_ones(tmp_path, monkeypatch):
    make_distribution(tmp_path, "userrl-fixture-names", {"fixture-names": "userrl_fixture_names"})
    manager = load(monkeypatch, tmp_path)
    with pytest.raises(UnknownNameError, match=r"simulator.name: unknown simulator 'nope'; registered: .*fixture-sim"):
        manager.registry.get(Kind.SIMULATOR, "nope", key_path="simulator.name")
