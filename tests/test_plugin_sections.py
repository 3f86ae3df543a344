"""Plugin-owned recipe sections (docs/plugins.md, "Plugin-owned recipe sections"): the guard's
``guard``, the fsdp backend's ``ray``, the local simulator's ``simulator.local`` and a
third-party plugin's own section are validated with the plugin's model (exit status 2 naming
the key through the real CLI), listed by ``userrl keys``, and old keys keep working for one
release with one deprecation line."""

from __future__ import annotations

import logging

import pytest

from fixtures.distributions import cli, make_distribution
from userrl_core.config import validate_config
from userrl_core.config.sections import section_settings
from userrl_core.errors import ConfigError
from userrl_core.plugins import PluginManager

RECIPE = "recipes/quickstart.yaml"


@pytest.fixture(scope="module")
def third_party(tmp_path_factory):
    return make_distribution(tmp_path_factory.mktemp("dist"), "userrl-settings-owner",
                             {"settings-owner": "settings_owner"})


@pytest.mark.parametrize("override, key", [
    ("guard.max_rolbacks=1", "guard.max_rolbacks: unknown key"),
    ("ray.cpu_ranks=0", "ray.cpu_ranks: Input should be greater than or equal to 1"),
    ("simulator.local.judge_treshold=0.4", "simulator.local.judge_treshold: unknown key"),
    ("watchdog.patiense=2", "watchdog.patiense: unknown key"),
    ("watchdg.patience=2", "watchdg: unknown key"),
])
def test_a_wrong_key_in_a_plugin_section_exits_2_naming_it(third_party, override, key):
    result = cli("run", RECIPE, "--dry-run", override, pythonpath=[third_party])
    assert result.returncode == 2, result.stderr
    assert key in result.stderr
    assert "Traceback" not in result.stderr


def test_keys_lists_the_plugin_owned_sections(third_party):
    result = cli("keys", pythonpath=[third_party])
    assert result.returncode == 0, result.stderr
    keys = {line.split(" ", 1)[0] for line in result.stdout.splitlines()}
    for key in ("guard.max_rollbacks", "guard.rules.<name>.threshold", "ray.cpu_ranks", "ray.placement_strategy",
                "simulator.local.judge_threshold", "simulator.local.embedding_model",
                "simulator.local.judge_margin", "watchdog.patience", "simulator.echo.prefix"):
        assert key in keys, key
    for moved in ("simulator.judge_threshold", "simulator.embedding_model"):
        assert moved not in keys


def test_old_keys_still_work_with_one_deprecation_line():
    result = cli("run", RECIPE, "--dry-run", "simulator.judge_threshold=0.42", "simulator.embedding_model=/no/such")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "deprecated" in line]
    assert len(lines) == 2, result.stderr
    assert any("simulator.judge_threshold" in line and "simulator.local.judge_threshold" in line for line in lines)
    assert any("simulator.embedding_model" in line and "simulator.local.embedding_model" in line for line in lines)
    assert "judge_threshold: 0.42" in result.stdout and "embedding_model: /no/such" in result.stdout


def _registry(plugin):
    manager = PluginManager()
    manager.add_plugin(plugin)
    return manager.registry


def _data(**sections):
    return {"model": {"path": "m"}, "data": {"train_files": ["t.parquet"]}, **sections}


def test_a_third_party_section_is_validated_read_and_renamed(third_party, monkeypatch, caplog):
    monkeypatch.syspath_prepend(str(third_party))
    import settings_owner

    registry = _registry(settings_owner)
    config = validate_config(_data(watchdog={"patience": 5}), registry=registry)
    assert section_settings(config, "watchdog", settings_owner.WatchdogSettings).patience == 5
    default = validate_config(_data(), registry=registry)
    assert section_settings(default, "watchdog", settings_owner.WatchdogSettings).patience == 3
    with pytest.raises(ConfigError, match=r"watchdog.patience: Input should be greater than or equal to 1"):
        validate_config(_data(watchdog={"patience": 0}), registry=registry)

    with caplog.at_level(logging.WARNING, logger="userrl_core.config.sections"):
        renamed = validate_config(_data(trainer_watchdog={"patience": 7},
                                        simulator={"name": "echo", "extra": {"echo_prefix": ">"}}), registry=registry)
        validate_config(_data(trainer_watchdog={"patience": 7}), registry=registry)
    assert section_settings(renamed, "watchdog", settings_owner.WatchdogSettings).patience == 7
    assert section_settings(renamed.simulator, "echo", settings_owner.EchoSettings).prefix == ">"
    deprecations = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert sum("trainer_watchdog.patience" in m and "watchdog.patience" in m for m in deprecations) == 1
    assert any("simulator.extra.echo_prefix" in m and "simulator.echo.prefix" in m for m in deprecations)


def test_guard_changes_must_name_real_keys():
    with pytest.raises(ConfigError, match=r"guard.rules.val_reward_drop.changes: 'actor.lrr' is not a config key"):
        validate_config(_data(guard={"rules": {"val_reward_drop": {"changes": {"actor.lrr": "*0.5"}}}}))
    with pytest.raises(ConfigError, match=r"'actor.backend' is not numeric"):
        validate_config(_data(guard={"rules": {"val_reward_drop": {"changes": {"actor.backend": "*0.5"}}}}))


def test_a_section_is_not_registered_over_the_core_schema():
    from userrl_core import hookimpl

    class Squatter:
        @hookimpl
        def register_settings(self, register):
            register("trainer", dict)

    manager = PluginManager()
    info = manager.add_plugin(Squatter())
    assert info.status == "failed" and "belongs to the core recipe schema" in info.error


def test_the_trainers_failure_limit_became_the_guards_rule(caplog):
    """One place stops a run for simulator failures: the guard's rule (a recorded decision); the
    old trainer key sets its threshold, with a deprecation line."""
    from userrl_core.config.schema import TrainerConfig
    from userrl_plugins.lifecycle.settings import GuardConfig

    assert "max_simulator_failure_rate" not in TrainerConfig.model_fields
    with caplog.at_level(logging.WARNING, logger="userrl_core.config.sections"):
        config = validate_config(_data(trainer={"max_simulator_failure_rate": 0.9}))
    rule = section_settings(config, "guard", GuardConfig).rules["simulator_failure_spike"]
    assert rule.threshold == 0.9 and rule.action == "stop"
    assert any("trainer.max_simulator_failure_rate" in r.getMessage()
               and "guard.rules.simulator_failure_spike.threshold" in r.getMessage() for r in caplog.records)
