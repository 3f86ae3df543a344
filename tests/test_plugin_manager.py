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


def test_two_plugins_registering_the_same_name_contest_it_and_only_its_lookup_fails(tmp_path, monkeypatch):
    make_distribution(tmp_path, "userrl-fixture-dup",
                      {"fixture-dup-a": "userrl_fixture_dup_a", "fixture-dup-b": "userrl_fixture_dup_b"})
    make_distribution(tmp_path / "other", "userrl-fixture-names", {"fixture-names": "userrl_fixture_names"})
    monkeypatch.syspath_prepend(str(tmp_path / "other"))
    manager = load(monkeypatch, tmp_path)  # loading does not fail
    assert manager.plugins["fixture-dup-a"].status == manager.plugins["fixture-dup-b"].status == "ok"
    assert manager.registry.get(Kind.SIMULATOR, "fixture-sim") is not None
    with pytest.raises(PluginConflictError) as info:
        manager.registry.get(Kind.ENVIRONMENT, "Twin")
    message = str(info.value)
    assert "'Twin'" in message and "'fixture-dup-a'" in message and "'fixture-dup-b'" in message
    assert "USERRL_DISABLE_PLUGINS=fixture-dup-b" in message


class _Order:
    """Three in-process plugins showing that pluggy's hookimpl options hold."""

    calls: list[str] = []


def _lifecycle_plugin(label: str, **options):
    from userrl_core import hookimpl

    class Plugin:
        @hookimpl(**options)
        def on_run_start(self, run):
            _Order.calls.append(label)

    Plugin.__name__ = label
    return Plugin()


def test_lifecycle_hooks_keep_pluggy_order_wrappers_and_per_plugin_isolation(monkeypatch):
    from userrl_core import hookimpl

    monkeypatch.setattr(_Order, "calls", [])
    manager = PluginManager()

    class Wrapping:
        @hookimpl(wrapper=True)
        def on_run_start(self, run):
            _Order.calls.append("wrap-before")
            result = yield
            _Order.calls.append("wrap-after")
            return result

        @hookimpl
        def on_step_end(self, run, step, metrics):
            raise RuntimeError("broken on purpose")

    class Late:
        @hookimpl(trylast=True)
        def on_run_start(self, run):
            _Order.calls.append("late")

        @hookimpl
        def on_step_end(self, run, step, metrics):
            _Order.calls.append(f"step {step}")

    manager.add_plugin(Late())
    manager.add_plugin(_lifecycle_plugin("plain"))
    manager.add_plugin(_lifecycle_plugin("first", tryfirst=True))
    manager.add_plugin(Wrapping())
    assert manager.call_lifecycle("on_run_start", run=None) == []
    assert _Order.calls == ["first", "plain", "late", "wrap-before", "wrap-after"]
    errors = manager.call_lifecycle("on_step_end", run=None, step=3, metrics={})
    assert _Order.calls[-1] == "step 3"  # the broken plugin did not stop the others
    assert len(errors) == 1 and "'Wrapping' raised in on_step_end: RuntimeError: broken on purpose" in errors[0]


def test_an_unmarked_hook_function_is_not_called_and_is_reported():
    called = []

    class Unmarked:
        def register_environments(self, register):
            called.append(True)
            register("Sneaky", lambda **kwargs: None)

    manager = PluginManager()
    info = manager.add_plugin(Unmarked())
    assert called == [] and manager.registry.names(Kind.ENVIRONMENT) == []
    assert info.warnings == ["register_environments is not marked @hookimpl and is not called"]


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
