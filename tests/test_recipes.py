"""Recipes through the real CLI in a subprocess: malformed ones exit 2 with one line naming the
key or file; valid ones dry-run (the minimal one here and every recipe in recipes/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.distributions import REPO_ROOT, cli
from fixtures.recipes import minimal_recipe, names_plugin

RECIPES = sorted((REPO_ROOT / "recipes").glob("*.yaml"))


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    return names_plugin(tmp_path_factory.mktemp("names"))


def assert_one_line_error(result, *needles: str) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("userrl: error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_minimal_recipe_dry_run_prints_config_and_plan(tmp_path, plugin_path):
    recipe = minimal_recipe(tmp_path, tasks=10)
    result = cli("run", str(recipe), "--dry-run", "rollout.n=3", pythonpath=[plugin_path])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "# Resolved config" in out and "n: 3" in out
    # 10 tasks, 4 per step, drop_last: 2 steps an epoch, 2 epochs
    assert "train tasks: 10" in out
    assert "tasks per step: 4 x 3 samples = 12 episodes per step" in out
    assert "steps per epoch: 2" in out and "total steps: 4" in out
    assert "PPO mini-batch: 2 tasks = 6 episodes; 2 optimizer step(s) per training step" in out
    assert "gradient accumulation: 3" in out
    assert "simulator.name = fixture-sim: simulator from fixture-names (userrl-fixture-names 0.1.0) [ok]" in out


def test_override_of_a_config_group_and_a_new_key(tmp_path, plugin_path):
    recipe = minimal_recipe(tmp_path, data={"drop_last": False})
    result = cli("run", str(recipe), "--dry-run", "trainer.total_training_steps=2", pythonpath=[plugin_path])
    assert result.returncode == 0, result.stderr
    assert "steps per epoch: 3" in result.stdout and "total steps: 2" in result.stdout


def test_unknown_key_names_the_dotted_path_and_the_file(tmp_path, plugin_path):
    recipe = minimal_recipe(tmp_path, rollout={"backend": "fixture-backend", "n": 2, "max_turnz": 4})
    line = assert_one_line_error(cli("run", str(recipe), "--dry-run", pythonpath=[plugin_path]),
                                 "rollout.max_turnz", "unknown key", str(recipe))
    assert "rollout.n" not in line


def test_unknown_key_from_the_command_line(tmp_path, plugin_path):
    recipe = minimal_recipe(tmp_path)
    assert_one_line_error(cli("run", str(recipe), "trainer.epochs=3", "--dry-run", pythonpath=[plugin_path]),
                          "trainer.epochs", "unknown key")


def test_wrong_type_names_the_key_and_the_value(tmp_path, plugin_path):
    recipe = minimal_recipe(tmp_path, trainer={"total_epochs": "many"})
    assert_one_line_error(cli("run", str(recipe), "--dry-run", pythonpath=[plugin_path]),
                          "trainer.total_epochs", "'many'", str(recipe))


def test_unknown_plugin_name_lists_the_registered_ones(tmp_path, plugin_path):
    recipe = minimal_recipe(tmp_path, simulator={"name": "no-such-simulator"})
    assert_one_line_error(cli("run", str(recipe), "--dry-run", pythonpath=[plugin_path]),
                          "simulator.name", "'no-such-simulator'", "registered:", "fixture-sim")


def test_missing_recipe_file_names_the_path(tmp_path, plugin_path):
    missing = tmp_path / "nowhere.yaml"
    assert_one_line_error(cli("run", str(missing), "--dry-run", pythonpath=[plugin_path]), str(missing))


def test_missing_data_file_names_the_path(tmp_path, plugin_path):
    recipe = minimal_recipe(tmp_path, data={"train_files": [str(tmp_path / "absent.json")]})
    assert_one_line_error(cli("run", str(recipe), "--dry-run", pythonpath=[plugin_path]),
                          str(tmp_path / "absent.json"))


def test_api_key_value_never_appears_and_a_missing_key_names_the_variable(tmp_path, plugin_path):
    secret = "sk-fixture-secret-4711"
    recipe = minimal_recipe(tmp_path, simulator={"name": "fixture-sim", "api_key_env": "FIXTURE_API_KEY"})
    result = cli("-v", "run", str(recipe), "--dry-run", pythonpath=[plugin_path], env={"FIXTURE_API_KEY": secret})
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout and secret not in result.stderr
    assert "api_key_env: FIXTURE_API_KEY" in result.stdout
    assert "simulator API key: from $FIXTURE_API_KEY (set)" in result.stdout

    result = cli("run", str(recipe), "--run-dir", str(tmp_path / "run"), pythonpath=[plugin_path])
    assert_one_line_error(result, "FIXTURE_API_KEY", "not set")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_shipped_recipe_dry_runs(recipe):
    result = cli("run", str(recipe.relative_to(REPO_ROOT)), "--dry-run", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Execution plan" in result.stdout and "batch geometry:" in result.stdout
    assert "[unknown]" not in result.stdout


def test_recipes_folder_is_not_empty():
    assert any(r.name == "quickstart.yaml" for r in RECIPES)


def test_4b_recipe_takes_the_seed_runs_460_steps_over_its_380_training_tasks():
    """UserRL's 4B run: 460 steps over about 19-20 epochs of 380 tasks, i.e. 16 tasks a step."""
    import pyarrow.parquet as pq

    from userrl_core.config.compose import load_recipe
    from userrl_core.training.geometry import plan_geometry

    config = load_recipe(str(REPO_ROOT / "recipes" / "intention_4b.yaml"))
    tasks = pq.read_metadata(str(REPO_ROOT / config.data.train_files[0])).num_rows
    geometry, warnings = plan_geometry(config, tasks)
    assert tasks == 380
    assert (geometry.tasks_per_step, geometry.steps_per_epoch, geometry.total_steps) == (16, 23, 460)
    assert warnings == []
